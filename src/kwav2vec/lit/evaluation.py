"""Validation, test and prediction steps of `HierarchicalFineTuner` (`EvaluationSteps`) and what
they sum over an epoch (`EpochCounts`): per head, the error counts of its greedy transcripts
(`metrics.ErrorCounts`) and its CTC loss sum and target tokens; and the utterances whose targets
could not fit their frames. Summed over ranks once, at the epoch's end, so every logged rate is a
corpus rate over all batches of all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kwav2vec.decoding.greedy import greedy_decode
from kwav2vec.metrics import ErrorCounts, normalize_for_scoring
from kwav2vec.models.ctc_loss import CTCTerms, multitask_ctc_loss
from kwav2vec.text.vocab import Vocabulary


class EpochCounts:
    """Counts of one evaluation epoch for the heads `heads` ("syllable" | "grapheme")."""

    def __init__(self, heads: Sequence[str]) -> None:
        self.heads = tuple(heads)
        self.errors = {h: ErrorCounts() for h in self.heads}
        self.loss_sum = dict.fromkeys(self.heads, 0.0)  # summed per-utterance CTC of the feasible ones
        self.ntokens = dict.fromkeys(self.heads, 0.0)  # their target tokens
        self.infeasible = 0.0  # utterances infeasible for any head

    def add(self, terms: dict[str, CTCTerms], refs: Sequence[str], hyps: dict[str, list[str]],
            known: Vocabulary | None) -> None:
        """One batch: per-head CTC `terms`, the references and each head's transcripts; `known`:
        the syllable vocabulary (OOV recovery counts), or None."""
        self.infeasible += float(torch.stack([t.infeasible for t in terms.values()]).any(0).sum())
        refs = [normalize_for_scoring(r) for r in refs]  # once, for every head
        for h, t in terms.items():
            self.loss_sum[h] += float(t.loss_sum)
            self.ntokens[h] += float(t.ntokens)
            self.errors[h].add(refs, hyps[h], known, refs_normalized=True)

    def to_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Every count in one float64 vector (one all-reduce): per head its ErrorCounts, loss sum and
        tokens, then the infeasible count."""
        parts = [torch.cat([self.errors[h].to_tensor(device),
                            torch.tensor([self.loss_sum[h], self.ntokens[h]], dtype=torch.float64, device=device)])
                 for h in self.heads]
        return torch.cat([*parts, torch.tensor([self.infeasible], dtype=torch.float64, device=device)])

    def load_tensor(self, values: torch.Tensor) -> None:
        """The inverse of `to_tensor` (after the sum over ranks)."""
        values = values.cpu()
        width = len(ErrorCounts.__dataclass_fields__) + 2
        for i, h in enumerate(self.heads):
            part = values[i * width:(i + 1) * width]
            self.errors[h] = ErrorCounts.from_tensor(part[:-2])
            self.loss_sum[h], self.ntokens[h] = float(part[-2]), float(part[-1])
        self.infeasible = float(values[-1])

    def logs(self, stage: str, mtl_weight: float, with_oov: bool) -> dict[str, float]:
        """`{stage}/...` metrics: per head cer, wer, swer, jer, loss (and oov_recovery when
        `with_oov`); the λ-combined loss, ctc_infeasible, and `cer`, the lower CER of the heads."""
        def rate(num: float, den: float) -> float:
            return num / den if den else float("nan")

        logs: dict[str, float] = {f"{stage}/ctc_infeasible": self.infeasible}
        per_head = {}
        for h in self.heads:
            per_head[h] = rate(self.loss_sum[h], self.ntokens[h])
            logs[f"{stage}/loss_{h}"] = per_head[h]
            rates = self.errors[h].rates()
            for name in ("cer", "wer", "swer", "jer"):
                logs[f"{stage}/{name}_{h}"] = rates[name]
            if with_oov:
                logs[f"{stage}/oov_recovery_{h}"] = rates["oov_recovery"]
        def tensor(h: str) -> torch.Tensor | None:  # float32, as the training loss's terms
            return torch.tensor(per_head[h]) if h in per_head else None

        logs[f"{stage}/loss"] = float(multitask_ctc_loss(mtl_weight, tensor("syllable"), tensor("grapheme")))
        logs[f"{stage}/cer"] = min(logs[f"{stage}/cer_{h}"] for h in self.heads)
        return logs


HEADS = ("syllable", "grapheme")


class EvaluationSteps:
    """The validation / test / predict hooks of the fine-tuner (a mixin of `HierarchicalFineTuner`,
    which provides `heads_used`, the vocabularies, `_check_batch`, `_forward_batch`, `_ctc` and
    `sum_over_ranks`).

    Validation / test (logged under `val/` and `test/`, corpus rates from edit counts summed over
    batches and ranks): per head h in {syllable, grapheme} (the grapheme head's jamo recomposed
    into syllables): `cer_h`, `wer_h`, `swer_h`, `jer_h` (jamo error rate), `oov_recovery_h` (share
    of reference syllables missing from the syllable vocabulary that come out right; NaN when there
    are none), `loss_h`; `loss` (the λ-combination) and `ctc_infeasible`. `cer` is the lower CER of
    the built heads: the best single-head greedy transcription, what checkpoint selection wants
    (the joint decoder of both heads is evaluated separately).
    """

    _counts: EpochCounts

    @torch.no_grad()
    def transcribe(self, audio: torch.Tensor, audio_lengths: torch.Tensor | None = None) -> dict[str, list[str]]:
        """Greedy transcripts of each built head: {"grapheme": [...], "syllable": [...]} (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            log_probs, frames = self(audio, audio_lengths)
        finally:
            self.train(was_training)
        return {h: greedy_decode(lp, frames, getattr(self, f"{h}_vocab")) for h, lp in log_probs.items()}

    def _evaluate(self, batch: dict) -> None:
        self._check_batch(batch, with_targets=True, with_texts=True)
        if batch["audio"].shape[0] == 0:
            return
        log_probs, frames = self._forward_batch(batch)
        hyps = {h: greedy_decode(lp, frames, getattr(self, f"{h}_vocab")) for h, lp in log_probs.items()}
        self._counts.add(self._ctc(log_probs, frames, batch), list(batch["texts"]), hyps, self.syllable_vocab)

    def _log_evaluation(self, stage: str) -> None:
        counts, self._counts = self._counts, EpochCounts(self.heads_used)
        counts.load_tensor(self.sum_over_ranks(counts.to_tensor(self.device)))
        logs = counts.logs(stage, self.hparams.mtl_weight, with_oov=self.syllable_vocab is not None)
        # values are already summed over ranks: identical everywhere, nothing left to synchronise
        self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._counts = EpochCounts(self.heads_used)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    on_test_epoch_start = on_validation_epoch_start  # the test loop counts as validation does
    test_step = validation_step

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """-> {"ids": list[str], "frame_lengths": (B,) long, "grapheme_log_probs": (B, T, Vg) float32
        or None (head not built), "syllable_log_probs": (B, T, Vs) float32 or None}, on the CPU (the
        predict loop keeps every batch's output)."""
        self._check_batch(batch, with_targets=False)
        audio = batch["audio"]
        if audio.shape[0] == 0:  # every file of the batch failed to load
            empty = {h: torch.zeros(0, 0, len(getattr(self, f"{h}_vocab"))) for h in self.heads_used}
            return {"ids": [], "frame_lengths": torch.zeros(0, dtype=torch.long),
                    **{f"{h}_log_probs": empty.get(h) for h in HEADS}}
        log_probs, frames = self._forward_batch(batch)
        out: dict[str, Any] = {"ids": list(batch.get("ids", [])), "frame_lengths": frames.cpu()}
        for h in HEADS:
            out[f"{h}_log_probs"] = log_probs[h].cpu() if h in log_probs else None
        return out
