"""Self-supervised wav2vec 2.0 pretraining as a LightningModule.

Consumes the pretraining batch of the data layer (`ids`, `audio` (B, S), `audio_lengths` (B,)).
Gradient clipping, gradient accumulation and bf16 / 16-mixed precision are Trainer options
(`gradient_clip_val`, `accumulate_grad_batches`, `precision`); the quantizer and every loss term
run in float32 whatever the precision.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from kwav2vec.checkpoints.reader import load_backbone_weights, read_model_checkpoint
from kwav2vec.lit.base import TrainingModule
from kwav2vec.lit.schedules import polynomial_decay_schedule
from kwav2vec.models.config import preset
from kwav2vec.models.losses import default_feature_pen_weight, pretraining_loss
from kwav2vec.models.wav2vec2 import Wav2Vec2Model

log = logging.getLogger(__name__)


class CodebookCollapseError(RuntimeError):
    """Raised when the codebook collapsed and could not be recovered."""


def _map_tensors(obj: Any, fn):
    """`obj` (nested dicts/lists of an optimizer state_dict) with `fn` applied to every leaf."""
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return fn(obj)

# Codebook collapse: every frame picks the same codeword, the distractors then equal their positive
# and are masked out, and the contrastive task becomes trivial (accuracy 1, loss near 0). Checked
# every this many updates (each check reads a value back from the device).
COLLAPSE_CHECK_EVERY = 50
# Collapsed: code perplexity below this many times its floor G (one codeword in each group).
COLLAPSE_PERPLEXITY_FACTOR = 1.5

class Pretrainer(TrainingModule):
    """wav2vec 2.0 contrastive pretraining.

    Args:
        model: backbone preset, "tiny" | "base" | "large" (ignored when `init_from` is given: the
            architecture then comes from that file).
        model_overrides: Wav2Vec2Config fields to change, e.g. {"mask_prob": 0.5, "encoder_layerdrop": 0.0}.
        init_from: optional model file to start from, anything `checkpoints.read_model_checkpoint`
            reads (a converted import, a Pretrainer or fine-tuner checkpoint); its config gives the
            architecture, and absent pretraining-only modules keep their initialisation.
        lr: peak learning rate (fairseq BASE: 5e-4).
        warmup_steps: linear warmup updates (fairseq BASE: 32000).
        total_steps: updates of the polynomial decay; None uses the Trainer's `max_steps`.
        end_lr_ratio: final learning rate as a fraction of `lr`.
        power: exponent of the polynomial decay (1 = linear).
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: AdamW decoupled weight decay (applied to all parameters, as fairseq).
        diversity_weight: weight of the codebook diversity loss (fairseq 0.1).
        feature_pen_weight: weight of the feature L2 penalty (fairseq 10 for BASE, 0 for LARGE); None
            chooses by the feature encoder, as fairseq's two recipes do: 10 for the "default" extractor
            (group norm on conv 0 only), 0 for the "layer_norm" one (LARGE, tiny). Behind a layer norm
            in every conv block the penalty is met by shrinking the conv output towards a constant
            vector, which takes the time variation with it. Measured on the tiny preset (second corpus, 300 updates):
            the penalty fell from 0.39 to 0.008 in 150 updates while the contrastive loss stayed at
            chance (3.93), the conv output's std over time fell from 0.35 to 0.03, and fine-tuning from
            that backbone reached a test CER of 66% against 40% from a random one.
    """

    def __init__(
        self,
        model: str = "base",
        model_overrides: dict[str, Any] | None = None,
        init_from: str | None = None,
        lr: float = 5e-4,
        warmup_steps: int = 32000,
        total_steps: int | None = None,
        end_lr_ratio: float = 0.0,
        power: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        diversity_weight: float = 0.1,
        feature_pen_weight: float | None = None,
        collapse_recoveries: int = 3,
        collapse_lr_factor: float = 0.5,
    ) -> None:
        """`collapse_recoveries`: how often a detected codebook collapse is undone (weights and
        optimizer state of the last healthy check restored, learning rate times
        `collapse_lr_factor`) before the run stops with `CodebookCollapseError`; 0 stops at once."""
        super().__init__()
        self.save_hyperparameters()
        overrides = dict(model_overrides or {})
        if init_from is not None:
            init = read_model_checkpoint(init_from, what="init_from checkpoint", mmap=True)  # read once
            cfg = init.config.replace(**overrides) if overrides else init.config
        else:
            cfg = preset(model, **overrides)
        self.config = cfg
        self.model = Wav2Vec2Model(cfg)
        self.feature_pen_weight = (feature_pen_weight if feature_pen_weight is not None
                                   else default_feature_pen_weight(cfg))
        if init_from is not None:
            load_backbone_weights(self.model, init, origin=init_from)
        self._collapsed_checks = 0  # consecutive collapse checks that found the codebook collapsed
        self._healthy: dict | None = None  # CPU copy of weights + optimizer at the last healthy check
        self.recoveries = 0

    # ------------------------------------------------------------------ steps
    def _unpack(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, dict) or "audio" not in batch or "audio_lengths" not in batch:
            found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise KeyError(f"pretraining batch needs 'audio' (B, S) and 'audio_lengths' (B,), found {found}")
        return batch["audio"], batch["audio_lengths"]

    def _log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int, **extra: float) -> None:
        logs = {f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        logs.update({f"{stage}/{k}": float(v) for k, v in extra.items()})
        on_step = stage == "train"
        self.log_dict(logs, on_step=on_step, on_epoch=not on_step, batch_size=batch_size,
                      prog_bar=False, sync_dist=not on_step)
        self.log(f"{stage}/loss", terms["loss"].detach(), on_step=on_step, on_epoch=not on_step,
                 batch_size=batch_size, prog_bar=True, sync_dist=not on_step)

    def _forward(self, batch: dict, generator: torch.Generator | None = None):
        audio, lengths = self._unpack(batch)
        try:
            return self.model(audio, lengths, generator=generator)
        except ValueError as e:  # name the utterances: the model only knows shapes
            raise ValueError(f"pretraining batch with ids {list(batch.get('ids', []))}: {e}") from e

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.model.set_num_updates(self.global_step)  # anneals the Gumbel temperature

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self._forward(batch)
        terms = pretraining_loss(out, self.hparams.diversity_weight, self.feature_pen_weight)
        self._log_terms("train", terms, batch["audio"].shape[0], temperature=out.temperature)
        self._check_collapse(terms["code_perplexity"])
        return self._global_normalised(terms["loss"], out.mask.sum().float())

    def _check_collapse(self, code_perplexity: torch.Tensor) -> None:
        """Every COLLAPSE_CHECK_EVERY updates: remember a healthy state, or count a collapsed check.
        Two collapsed checks in a row (one may be a noisy batch) trigger `_recover` after this
        update's optimizer step (`on_train_batch_end`): a collapsed run learns nothing useful, and a
        warning alone would let it run on and be checkpointed."""
        if self.global_step % COLLAPSE_CHECK_EVERY:
            return
        if self.is_collapsed(code_perplexity):
            self._collapsed_checks += 1
            self._last_collapsed = (self.global_step, float(code_perplexity))
        else:
            self._collapsed_checks = 0
            self._snapshot_healthy()

    def _snapshot_healthy(self) -> None:
        if self._trainer is None or not self.trainer.optimizers:
            return
        def cpu(t):  # off the device: the copy must not cost accelerator memory
            return t.detach().to("cpu", copy=True) if torch.is_tensor(t) else copy.deepcopy(t)

        self._healthy = {
            "step": self.global_step,
            "model": {k: cpu(v) for k, v in self.model.state_dict().items()},
            "optimizer": _map_tensors(self.trainer.optimizers[0].state_dict(), cpu),
        }

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._collapsed_checks >= 2:
            self._collapsed_checks = 0
            self._recover()

    def _recover(self) -> None:
        """Restore the last healthy weights and optimizer state and scale every learning rate (the
        schedule's base included) by collapse_lr_factor; or stop when the budget is spent or no
        healthy state was seen. The collapse is an attractor reached by too large steps while the
        Gumbel temperature is high, so the same state with smaller steps usually stays healthy."""
        hp = self.hparams
        groups = self.config.latent_groups
        step, perplexity = self._last_collapsed
        what = (f"codebook collapse at update {step}: code perplexity "
                f"{perplexity:.2f} is near its floor of {groups} (one codeword per group)")
        if self._healthy is None or self.recoveries >= hp.collapse_recoveries:
            why = ("no healthy state was seen before it" if self._healthy is None
                   else f"{self.recoveries} recoveries with a lower learning rate did not prevent it")
            raise CodebookCollapseError(
                f"{what}; {why}. Lower the learning rate, lengthen the warmup or raise diversity_weight."
            )
        self.recoveries += 1
        self.model.load_state_dict(self._healthy["model"])
        optimizer = self.trainer.optimizers[0]
        optimizer.load_state_dict(self._healthy["optimizer"])  # moves state to the params' device
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler  # LambdaLR: lr = base_lr * lambda(step)
            sched.base_lrs = [lr * hp.collapse_lr_factor for lr in sched.base_lrs]
            for group, base, fn in zip(optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
                group["lr"] = base * fn(sched.last_epoch)
        scale = hp.collapse_lr_factor**self.recoveries
        log.warning(
            "%s; recovery %d of %d: restored the weights and optimizer state of update %d and scaled the "
            "learning rate by %g (now %g of the configured one)", what, self.recoveries, hp.collapse_recoveries,
            self._healthy["step"], hp.collapse_lr_factor, scale,
        )
        self.log("train/collapse_recoveries", float(self.recoveries), on_step=True, on_epoch=False)

    def _global_normalised(self, loss: torch.Tensor, masked_frames: torch.Tensor) -> torch.Tensor:
        """The loss as a share of the global batch's: under DDP each rank's loss is averaged over its
        own masked frames, and DDP averages gradients over ranks, which would weight a rank with few
        masked frames as much as one with many. Scaling by frames * world / global frames makes the
        averaged gradient that of the loss over all masked frames of all ranks (fairseq's
        sample_size normalisation)."""
        world = self._world_size()
        if world == 1:
            return loss
        total = self.sum_over_ranks(masked_frames.detach())
        return loss * masked_frames * world / total.clamp(min=1.0)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        audio, _ = self._unpack(batch)
        # a fixed mask/distractor draw per batch makes validation numbers comparable across epochs
        gen = torch.Generator(device=audio.device).manual_seed(batch_idx)
        out = self._forward(batch, gen)
        terms = pretraining_loss(out, self.hparams.diversity_weight, self.feature_pen_weight)
        # A collapsed codebook makes the contrastive task trivial (the distractors that share the
        # positive's codes are masked out), so its val/loss is the lowest of the run and a
        # ModelCheckpoint monitoring val/loss (mode min) would keep exactly the collapsed model. A
        # collapsed batch therefore reports val/loss = +inf (never "better" than a finite value, and
        # not NaN, which Lightning's checkpointing handles inconsistently); the epoch mean is then
        # +inf as soon as one batch collapsed. val/collapsed is the share of collapsed batches.
        collapsed = self.is_collapsed(terms["code_perplexity"])
        if collapsed:
            terms = {**terms, "loss": torch.full_like(terms["loss"], float("inf"))}
        self._log_terms("val", terms, audio.shape[0], collapsed=float(collapsed))

    def is_collapsed(self, code_perplexity: torch.Tensor) -> bool:
        """Code perplexity near its floor, the number of groups G (one codeword per group)."""
        return float(code_perplexity) < COLLAPSE_PERPLEXITY_FACTOR * self.config.latent_groups

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = self._adamw(p for p in self.parameters() if p.requires_grad)
        total = self._total_steps()
        scheduler = polynomial_decay_schedule(optimizer, min(hp.warmup_steps, total), total, hp.end_lr_ratio, hp.power,
                                              self._budget_clock(total))
        return self._per_step(optimizer, scheduler)
