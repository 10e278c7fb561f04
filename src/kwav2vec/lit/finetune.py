"""Hierarchical multi-task CTC fine-tuning (K-wav2vec): a grapheme head and a syllable head on one
wav2vec 2.0 backbone, loss = λ·CTC_syllable + (1 − λ)·CTC_grapheme.

Consumes the fine-tuning batch of the data layer (`kwav2vec.data.collate.FinetuneBatch`): targets
of the built heads for training, `texts` too for validation/test, only `ids`, `audio`,
`audio_lengths` for prediction. Validation, test and predict steps: `kwav2vec.lit.evaluation`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from kwav2vec.checkpoints.format import HeadCheckpoint, load_head_weights
from kwav2vec.checkpoints.reader import load_backbone_weights, read_model_checkpoint, upgrade_finetuner_state
from kwav2vec.lit.base import TrainingModule
from kwav2vec.lit.evaluation import HEADS, EpochCounts, EvaluationSteps
from kwav2vec.lit.schedules import tri_stage_schedule
from kwav2vec.models.config import Wav2Vec2Config, preset
from kwav2vec.models.ctc_loss import CTCTerms, ctc_terms, multitask_ctc_loss
from kwav2vec.models.heads import GraphemeHead, SyllableHead
from kwav2vec.models.hierarchical import HierarchicalCTC
from kwav2vec.models.wav2vec2 import Wav2Vec2Model
from kwav2vec.text.vocab import Vocabulary

log = logging.getLogger(__name__)

TARGET_KEYS = {"grapheme": ("graphemes", "grapheme_lengths"), "syllable": ("syllables", "syllable_lengths")}
# Written into every checkpoint beside the hyper-parameters (see on_save_checkpoint).
CHECKPOINT_KEY = "kwav2vec_finetune"
CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------------------------------- module
class HierarchicalFineTuner(EvaluationSteps, TrainingModule):
    """Grapheme + syllable CTC fine-tuning of a wav2vec 2.0 backbone (K-wav2vec's multi-task recipe).

    Model: backbone -> GraphemeHead (dropout + linear over jamo) and SyllableHead (N transformer
    layers of the backbone's width + linear over syllables). λ = `mtl_weight`; λ = 0 builds only the
    grapheme head and λ = 1 only the syllable head, whose loss is then exactly single-task CTC.

    Loss: per head, fairseq's token normalisation: summed per-utterance CTC over the feasible
    utterances / their target tokens, the token count summed over all ranks (so under DDP the averaged
    gradient is that of sum / global ntokens, whatever each rank's share). With gradient accumulation
    every micro-batch is normalised by its own (global) token count and Lightning averages the
    micro-batches. Utterances whose target cannot fit their frames (length + adjacent repeats >
    frames) are excluded from the loss and counted: `train/ctc_infeasible` (any head), and
    `train/ctc_infeasible_{grapheme,syllable}`. Log-softmax and CTC run in float32 with autocast off.

    Trainer options, not arguments here: `gradient_clip_val` (fairseq `clip_norm`, 0 = off),
    `accumulate_grad_batches` (fairseq `update_freq`), `precision` ("bf16-mixed", "16-mixed"). Under
    DDP use `strategy="ddp_find_unused_parameters_true"` when `freeze_backbone_updates` > 0 or
    `layerdrop` > 0 (some parameters get no gradient in a step).

    Validation / test metrics: see `kwav2vec.lit.evaluation.EvaluationSteps`; the CLI's checkpoint
    selection monitors `val/cer`.

    Args:
        model: backbone preset, "tiny" | "base" | "large" (ignored when `init_from` or
            `backbone_config` give the architecture).
        model_overrides: Wav2Vec2Config fields to change, e.g. {"encoder_layers": 2}.
        init_from: backbone weights to start from, anything `checkpoints.read_model_checkpoint`
            reads (read once): a converted file from our importers (fairseq / Hugging Face /
            K-wav2vec imports), a `Pretrainer` checkpoint, or a `HierarchicalFineTuner` checkpoint
            (backbone only). None = from scratch. Its config gives the architecture.
        init_heads: when `init_from` is a converted file that stores heads (a K-wav2vec multi-task
            import), start the built heads from them: a missing vocabulary argument is taken from the
            stored head and the syllable head gets the stored number of layers. False = new heads.
        grapheme_vocabulary: grapheme vocabulary JSON path (or its `to_dict()`, as checkpoints store
            it). None = taken from the datamodule (`FinetuneDataModule.grapheme_vocab`, by default
            `vocab_grapheme.json` beside the train manifest) in `setup`; the heads are then built
            there. If both are given they must be equal.
        syllable_vocabulary: the same for the syllable vocabulary (also the "known syllables" of
            the OOV-recovery metric, so it is used when present even with λ = 0).
        mtl_weight: λ in [0, 1], weight of the syllable CTC (K-wav2vec: 0.5).
        syllable_layers: transformer layers of the syllable head (K-wav2vec: 2).
        final_dropout: dropout before both output projections (fairseq `final_dropout`).
        dropout: backbone (and syllable head) residual dropout during fine-tuning (fairseq `dropout`).
        attention_dropout: fairseq `attention_dropout`.
        activation_dropout: fairseq `activation_dropout` (0.1 in fairseq's BASE fine-tuning configs).
        dropout_input: dropout after the feature projection (fairseq `dropout_input`).
        layerdrop: probability of skipping a backbone transformer layer (fairseq `layerdrop`).
        mask_prob: time masking of the latent frames with `mask_emb`, fraction of span starts
            (fairseq `mask_prob`; 0.5-0.75 in its recipes). Training only.
        mask_length: time-mask span in frames (fairseq `mask_length`).
        mask_channel_prob: channel masking, fraction of span starts (fairseq `mask_channel_prob`).
        mask_channel_length: channel-mask span (fairseq `mask_channel_length`).
        freeze_feature_encoder: keep the conv feature encoder fixed (fairseq `feature_grad_mult`
            0.0): it runs without autograd and its weights are not optimised.
        freeze_backbone_updates: the whole backbone runs without autograd, only the heads learn, for
            the first N optimizer updates (fairseq `freeze_finetune_updates`).
        lr: peak learning rate (backbone, and heads unless `head_lr`).
        head_lr: optional separate peak learning rate of the heads (same schedule).
        total_steps: updates of the tri-stage schedule; None = the Trainer's `max_steps`.
        phase_ratio: warmup / hold / decay fractions of `total_steps` (fairseq `phase_ratio`).
        init_lr_scale: warmup start as a fraction of the peak (fairseq `init_lr_scale`).
        final_lr_scale: end of the decay as a fraction of the peak (fairseq `final_lr_scale`).
        betas: AdamW betas (fairseq `adam_betas`).
        eps: AdamW epsilon (fairseq `adam_eps`).
        weight_decay: AdamW decoupled weight decay, all trained parameters (fairseq applies it to all).
        backbone_config: a complete Wav2Vec2Config as a dict. Checkpoints store the resolved config
            here so `load_from_checkpoint` needs no other file; leave None otherwise.
    """

    def __init__(
        self,
        model: str = "base",
        model_overrides: dict[str, Any] | None = None,
        init_from: str | None = None,
        init_heads: bool = True,
        grapheme_vocabulary: str | dict | None = None,
        syllable_vocabulary: str | dict | None = None,
        mtl_weight: float = 0.5,
        syllable_layers: int = 2,
        final_dropout: float = 0.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.1,
        dropout_input: float = 0.0,
        layerdrop: float = 0.1,
        mask_prob: float = 0.5,
        mask_length: int = 10,
        mask_channel_prob: float = 0.1,
        mask_channel_length: int = 64,
        freeze_feature_encoder: bool = True,
        freeze_backbone_updates: int = 0,
        lr: float = 5e-5,
        head_lr: float | None = None,
        total_steps: int | None = None,
        phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5),
        init_lr_scale: float = 0.01,
        final_lr_scale: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        backbone_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= mtl_weight <= 1.0:
            raise ValueError(f"mtl_weight must lie in [0, 1], got {mtl_weight}")
        if freeze_backbone_updates < 0:
            raise ValueError(f"freeze_backbone_updates must be >= 0, got {freeze_backbone_updates}")
        # the vocabularies can be large: logged hparams keep what was passed (paths); checkpoints get
        # the resolved tokens in on_save_checkpoint
        self.save_hyperparameters()
        self.heads_used = tuple(h for h in HEADS if (mtl_weight > 0 if h == "syllable" else mtl_weight < 1))
        self.tuned_weights: dict[str, float] | None = None  # joint decoding weights, see on_load_checkpoint

        init = None if init_from is None else read_model_checkpoint(init_from, what="init_from checkpoint", mmap=True)
        if backbone_config is not None:
            cfg = Wav2Vec2Config.from_dict(dict(backbone_config))
        elif init is not None:
            cfg = init.config
        else:
            cfg = preset(model)
        cfg = cfg.replace(**dict(model_overrides or {}))
        # fine-tuning values override the pretraining ones, as fairseq's `arg_overrides` do
        cfg = cfg.replace(
            dropout=dropout, attention_dropout=attention_dropout, activation_dropout=activation_dropout,
            dropout_input=dropout_input, encoder_layerdrop=layerdrop,
            **({"feature_grad_mult": 0.0} if freeze_feature_encoder else {}),
        )
        self.model = HierarchicalCTC(cfg)  # backbone + heads; the heads are added in _build_heads
        if init is not None:  # with backbone_config too: the loader checks the architectures agree
            load_backbone_weights(self.backbone, init, origin=init_from)
        self.backbone.remove_pretraining_modules()  # quantizer and projections: pretraining only
        if freeze_feature_encoder:
            self.backbone.feature_extractor.requires_grad_(False)

        self.grapheme_vocab = Vocabulary.coerce(grapheme_vocabulary, "grapheme")
        self.syllable_vocab = Vocabulary.coerce(syllable_vocabulary, "syllable")
        # heads of a converted K-wav2vec checkpoint ({} for other files): loaded when the heads are built
        self._stored_heads: dict[str, HeadCheckpoint] = {}
        self._vocab_from_init: set[str] = set()  # kinds whose vocabulary came from a stored head
        if init is not None and init_heads and init.kind != "finetuner":  # a fine-tuner's heads: not reused
            self._stored_heads = {h: s for h, s in init.heads.items() if h in self.heads_used}
        self._adopt_stored_heads()
        if self._vocabularies_complete():
            self._build_heads()
        self._counts = EpochCounts(self.heads_used)

    # ------------------------------------------------------------------ the model's parts
    @property
    def config(self) -> Wav2Vec2Config:
        return self.model.config

    @property
    def backbone(self) -> Wav2Vec2Model:
        return self.model.backbone

    @property
    def grapheme_head(self) -> GraphemeHead | None:
        return self.model.heads["grapheme"] if "grapheme" in self.model.heads else None

    @property
    def syllable_head(self) -> SyllableHead | None:
        return self.model.heads["syllable"] if "syllable" in self.model.heads else None

    # ------------------------------------------------------------------ construction
    def _adopt_stored_heads(self) -> None:
        """Missing vocabularies and the syllable head's depth from the stored heads. The resolved
        depth goes into the hyper-parameters, so checkpoints rebuild the same head."""
        for h, stored in self._stored_heads.items():
            if getattr(self, f"{h}_vocab") is None:
                setattr(self, f"{h}_vocab", stored.vocab)
                self._vocab_from_init.add(h)
        syllable = self._stored_heads.get("syllable")
        if syllable is not None:
            depth = int(syllable.options.get("num_layers", self.hparams.syllable_layers))
            if depth != self.hparams.syllable_layers:
                log.warning("%s stores a syllable head of %d layers; using it instead of syllable_layers=%d "
                            "(init_heads=False starts a new head)", self.hparams.init_from, depth,
                            self.hparams.syllable_layers)
                self.hparams.syllable_layers = depth

    def _vocabularies_complete(self) -> bool:
        return all(getattr(self, f"{h}_vocab") is not None for h in self.heads_used)

    def _build_heads(self) -> None:
        hp = self.hparams
        # grapheme first: the heads' parameter order (optimizer state of older checkpoints) is theirs
        if "grapheme" in self.heads_used and self.grapheme_head is None:
            self.model.add_grapheme_head(len(self.grapheme_vocab), hp.final_dropout)
        if "syllable" in self.heads_used and self.syllable_head is None:
            self.model.add_syllable_head(len(self.syllable_vocab), hp.syllable_layers, hp.dropout,
                                         hp.attention_dropout, hp.activation_dropout, hp.final_dropout)
        for h, stored in self._stored_heads.items():
            try:
                load_head_weights(getattr(self, f"{h}_head"), h, stored, getattr(self, f"{h}_vocab"), hp.init_from)
            except ValueError as e:
                raise ValueError(f"{e} (or pass init_heads=False to start new heads)") from None
        self._stored_heads = {}  # loaded once: a later setup() must not undo training or a restore

    def setup(self, stage: str) -> None:
        """Takes missing vocabularies from the datamodule and builds the heads (before the optimizer
        and any checkpoint restore); checks given ones against the datamodule's."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for kind in ("grapheme", "syllable"):
            theirs = getattr(datamodule, f"{kind}_vocab", None)
            ours = getattr(self, f"{kind}_vocab")
            if ours is None:
                setattr(self, f"{kind}_vocab", theirs)
            elif theirs is not None and theirs != ours:
                hint = (f"; it is the stored {kind} head's of init_from={self.hparams.init_from!r}: train with that "
                        "vocabulary, or pass init_heads=False for a new head") if kind in self._vocab_from_init else ""
                raise ValueError(
                    f"the model's {kind} vocabulary ({ours!r}) differs from the datamodule's ({theirs!r}): "
                    f"targets would be decoded with the wrong ids; use the vocabulary files the model was trained with{hint}"
                )
        if not self._vocabularies_complete():
            missing = [h for h in self.heads_used if getattr(self, f"{h}_vocab") is None]
            raise ValueError(
                f"no {' / '.join(missing)} vocabulary: pass `{missing[0]}_vocabulary` to HierarchicalFineTuner or "
                "use a datamodule with `grapheme_vocab` and `syllable_vocab` (FinetuneDataModule)"
            )
        self._build_heads()  # only the missing ones

    # ------------------------------------------------------------------ forward
    def _heads(self) -> dict[str, torch.nn.Module]:
        heads = {"grapheme": self.grapheme_head, "syllable": self.syllable_head}
        if any(heads[h] is None for h in self.heads_used):
            raise RuntimeError(
                "the output heads are not built yet: their vocabularies come from the datamodule in "
                "`setup`; pass grapheme_vocabulary / syllable_vocabulary to use the model outside a Trainer"
            )
        return {h: heads[h] for h in self.heads_used}

    def forward(
        self, audio: torch.Tensor, audio_lengths: torch.Tensor | None = None, *, freeze_backbone: bool = False
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """audio (B, S), audio_lengths (B,) -> ({head: float32 log-probs (B, T, V)}, frame_lengths (B,)).

        Time/channel masking is applied in training mode only. `freeze_backbone` runs the backbone
        without autograd (the heads still learn)."""
        hp = self.hparams
        return self.model(
            audio, audio_lengths, heads=tuple(self._heads()), freeze_backbone=freeze_backbone,
            mask_time_prob=hp.mask_prob, mask_time_length=hp.mask_length,
            mask_channel_prob=hp.mask_channel_prob, mask_channel_length=hp.mask_channel_length,
        )

    def _forward_batch(self, batch: dict, freeze_backbone: bool = False):
        try:
            return self(batch["audio"], batch["audio_lengths"], freeze_backbone=freeze_backbone)
        except ValueError as e:  # name the utterances: the model only knows shapes
            raise ValueError(f"fine-tuning batch with ids {list(batch.get('ids', []))}: {e}") from e

    # ------------------------------------------------------------------ loss
    def _check_batch(self, batch: Any, with_targets: bool, with_texts: bool = False) -> None:
        needed = ["audio", "audio_lengths"]
        if with_targets:
            needed += [k for h in self.heads_used for k in TARGET_KEYS[h]]
        if with_texts:
            needed += ["texts"]
        if not isinstance(batch, dict) or any(k not in batch for k in needed):
            found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise KeyError(f"fine-tuning batch needs keys {needed} (heads {list(self.heads_used)}), found {found}")

    def _global_tokens(self, ntokens: torch.Tensor) -> torch.Tensor:
        """Mean target tokens per rank (sum over ranks / world size): dividing each rank's loss sum by
        it makes DDP's gradient average equal to d(sum over ranks)/d(.) / total tokens."""
        n = ntokens.float()
        if self._world_size() > 1:
            n = self.sum_over_ranks(n) / self._world_size()
        return n.clamp(min=1.0)

    def _ctc(self, log_probs: dict[str, torch.Tensor], frames: torch.Tensor, batch: dict) -> dict[str, CTCTerms]:
        """Per-head CTC sums, token counts and infeasible utterances (no collective: safe anywhere)."""
        terms = {}
        for h, lp in log_probs.items():
            targets_key, lengths_key = TARGET_KEYS[h]
            vocab = getattr(self, f"{h}_vocab")
            try:
                terms[h] = ctc_terms(lp, frames, batch[targets_key], batch[lengths_key], vocab.blank_id)
            except ValueError as e:
                raise ValueError(f"{h} targets of the batch with ids {list(batch.get('ids', []))}: {e}") from e
        return terms

    def _loss(
        self, log_probs: dict[str, torch.Tensor], frames: torch.Tensor, batch: dict
    ) -> tuple[torch.Tensor, dict[str, CTCTerms], dict[str, torch.Tensor]]:
        """-> (λ-combined training loss, per-head CTC terms, per-head normalised losses).

        Under DDP every rank must call this once per training step (one all-reduce per head)."""
        terms = self._ctc(log_probs, frames, batch)
        per_head = {h: t.loss_sum / self._global_tokens(t.ntokens) for h, t in terms.items()}
        loss = multitask_ctc_loss(self.hparams.mtl_weight, per_head.get("syllable"), per_head.get("grapheme"))
        return loss, terms, per_head

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._check_batch(batch, with_targets=True)
        B = batch["audio"].shape[0]
        if B == 0:  # every file of the batch failed to load: a zero step keeps DDP ranks in lockstep
            log.warning("empty training batch %d (all utterances skipped)", batch_idx)
            for _ in self.heads_used:  # the other ranks' token all-reduces wait for this one's
                self._global_tokens(torch.zeros((), device=self.device))
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        frozen = self.global_step < self.hparams.freeze_backbone_updates
        log_probs, frames = self._forward_batch(batch, freeze_backbone=frozen)
        loss, terms, per_head = self._loss(log_probs, frames, batch)
        infeasible = torch.stack([t.infeasible for t in terms.values()]).any(0).sum().float()
        logs = {"train/loss": loss.detach(), "train/ctc_infeasible": infeasible}
        logs.update({f"train/loss_{h}": v.detach() for h, v in per_head.items()})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=B, prog_bar=False)
        # counts also summed over the epoch, so none goes unseen between logging steps
        self.log_dict(
            {"train/ctc_infeasible_epoch": infeasible,
             **{f"train/ctc_infeasible_{h}": t.infeasible.sum().float() for h, t in terms.items()}},
            on_step=False, on_epoch=True, reduce_fx="sum", batch_size=B, sync_dist=True,
        )
        return loss

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        self._heads()  # the heads must exist before their parameters are handed to the optimizer
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        heads = [p for p in self.model.heads.parameters() if p.requires_grad]
        groups = [{"params": backbone, "lr": hp.lr, "name": "backbone"},
                  {"params": heads, "lr": hp.head_lr if hp.head_lr is not None else hp.lr, "name": "heads"}]
        optimizer = self._adamw([g for g in groups if g["params"]])
        clock = self._budget_clock(self._total_steps())
        scheduler = tri_stage_schedule(
            optimizer, clock.total_steps, tuple(hp.phase_ratio), hp.init_lr_scale, hp.final_lr_scale, clock
        )
        return self._per_step(optimizer, scheduler)

    # ------------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Renames the state dict of a checkpoint written before the fine-tuner held a
        `HierarchicalCTC` (top-level `backbone.` / `grapheme_head.` / `syllable_head.` keys) for
        `load_from_checkpoint` and `--ckpt_path` resumes alike. Keeps the joint weights `evaluate
        --tune-weight` stored (kwav2vec.inference.tune); they are not saved again: after more
        training they belong to other weights."""
        from kwav2vec.inference.tune import stored_entry

        checkpoint["state_dict"] = upgrade_finetuner_state(checkpoint["state_dict"])

        self.tuned_weights = stored_entry(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Makes the checkpoint self-contained for `load_from_checkpoint(path)`: the resolved backbone
        config and both vocabularies' tokens go into the hyper-parameters (a copy Lightning made), and
        `init_from` is cleared there (its weights are in the state dict; the path is kept for the record
        under `kwav2vec_finetune`)."""
        hp = checkpoint.setdefault(self.CHECKPOINT_HYPER_PARAMS_KEY, {})
        hp["backbone_config"] = self.config.to_dict()
        hp["grapheme_vocabulary"] = self.grapheme_vocab.to_dict() if self.grapheme_vocab is not None else None
        hp["syllable_vocabulary"] = self.syllable_vocab.to_dict() if self.syllable_vocab is not None else None
        hp["init_from"] = None
        checkpoint[CHECKPOINT_KEY] = {"format": CHECKPOINT_FORMAT, "init_from": self.hparams.init_from,
                                      "heads": list(self.heads_used)}

