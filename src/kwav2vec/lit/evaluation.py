"""What `HierarchicalFineTuner` sums over a validation or test epoch: per head, the error counts of
its greedy transcripts (`metrics.ErrorCounts`) and its CTC loss sum and target tokens; and the
utterances whose targets could not fit their frames. Summed over ranks once, at the epoch's end,
so every logged rate is a corpus rate over all batches of all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kwav2vec.metrics import ErrorCounts
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
        for h, t in terms.items():
            self.loss_sum[h] += float(t.loss_sum)
            self.ntokens[h] += float(t.ntokens)
            self.errors[h].add(refs, hyps[h], known)

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
