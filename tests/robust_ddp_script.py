"""A 2-process CPU DDP run (Lightning strategy "ddp", gloo) of pretraining and fine-tuning, for
tests/test_robust_distributed.py (not a test itself):

    python tests/robust_ddp_script.py OUT_DIR PRETRAIN_MANIFEST FINETUNE_MANIFEST STEPS

Lightning's launcher starts rank 1 by running this script again with LOCAL_RANK=1. Every rank
writes OUT_DIR/{job}_rank{r}.json with the utterance ids and loss of each step, a hash of its RNG
state when OUT_DIR/{job}.ckpt was saved (with RNGStateCallback and AtomicCheckpointIO) and, for the
first steps, a check of the gradient normalisation:

The right objective of a distributed step is the one of the whole global batch: for pretraining
the contrastive loss (and the other terms) averaged over the masked frames of *all* ranks, for
fine-tuning each head's CTC summed over all ranks' utterances divided by all ranks' target tokens.
Each rank's share of that objective (`contribution`) is computed here by re-running the step's
forward with the step's RNG state; the sum over ranks of the contributions' gradients is the right
gradient, to be compared with what DDP left in `.grad` (the average of the ranks' gradients of the
losses their training_step returned). The naive alternative, every rank normalising by its own
count (`local`), is computed too, to show the two differ for this data.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from robust_utils import StepRecorder, finetune_data, finetuner, pretrain_data, pretrainer

from kwav2vec.lit.checkpoint_io import AtomicCheckpointIO
from kwav2vec.lit.rng_state import RNGStateCallback
from kwav2vec.models.ctc_loss import ctc_terms
from kwav2vec.models.losses import pretraining_loss

CHECKED_STEPS = 2


def pretrain_shares(module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(contribution to the global objective, locally normalised loss) of this rank's batch."""
    out = module.model(batch["audio"], batch["audio_lengths"])
    local = pretraining_loss(out, module.hparams.diversity_weight, module.feature_pen_weight)["loss"]
    frames = out.mask.sum().float()
    total = frames.clone()
    dist.all_reduce(total)
    return local * frames / total, local


def finetune_shares(module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    log_probs, frames = module(batch["audio"], batch["audio_lengths"])
    lam = module.hparams.mtl_weight
    weights = {"syllable": lam, "grapheme": 1.0 - lam}
    keys = {"grapheme": ("graphemes", "grapheme_lengths"), "syllable": ("syllables", "syllable_lengths")}
    contribution = local = 0.0
    for head, lp in log_probs.items():
        targets, lengths = (batch[k] for k in keys[head])
        terms = ctc_terms(lp, frames, targets, lengths, getattr(module, f"{head}_vocab").blank_id)
        tokens = terms.ntokens.float()
        total = tokens.clone()
        dist.all_reduce(total)
        contribution = contribution + weights[head] * terms.loss_sum / total
        local = local + weights[head] * terms.loss_sum / tokens
    return contribution, local


class NormalisationProbe(pl.Callback):
    def __init__(self, shares) -> None:
        self.shares = shares
        self.checks: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch, self.rng = batch, torch.get_rng_state()

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step >= CHECKED_STEPS:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        synced = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
        )
        after = torch.get_rng_state()
        torch.set_rng_state(self.rng)  # the same masks, distractors, dropout as the step itself
        contribution, local = self.shares(pl_module, self.batch)
        torch.set_rng_state(after)
        flat = []
        for loss in (contribution, local):
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            flat.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).flatten()
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
            )
        right, naive = flat
        dist.all_reduce(right)  # sum of the contributions' gradients
        dist.all_reduce(naive)
        naive /= dist.get_world_size()

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).norm() / b.norm())

        self.checks.append(
            {
                "step": trainer.global_step,
                "err_right": rel(synced, right),
                "err_naive": rel(synced, naive),
                "gap": rel(naive, right),
            }
        )


def run(job: str, out_dir: Path, manifest: str, steps: int) -> None:
    pl.seed_everything(0, verbose=False)
    if job == "pretrain":
        module, data, shares = pretrainer(steps), pretrain_data(Path(manifest)), pretrain_shares
    else:
        # layerdrop off: DDP's default strategy wants every parameter to get a gradient each step
        module, data, shares = finetuner(steps, layerdrop=0.0), finetune_data(Path(manifest)), finetune_shares
    rec, probe = StepRecorder(), NormalisationProbe(shares)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[rec, probe, RNGStateCallback()],
        default_root_dir=out_dir,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=data)
    sampler = trainer.train_dataloader.bucket_sampler
    # every rank's RNG state goes into the checkpoint that rank 0 writes
    rng = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
    trainer.save_checkpoint(out_dir / f"{job}.ckpt")
    result = {
        "rng": rng,
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "steps": rec.steps,
        "checks": probe.checks,
        "sampler": {"rank": sampler.rank, "world_size": sampler.world_size, "num_batches": len(sampler)},
    }
    (out_dir / f"{job}_rank{dist.get_rank()}.json").write_text(json.dumps(result))


def main(argv: list[str]) -> None:
    out_dir, pretrain_manifest, finetune_manifest, steps = Path(argv[0]), argv[1], argv[2], int(argv[3])
    torch.set_num_threads(1)
    for job, manifest in (("pretrain", pretrain_manifest), ("finetune", finetune_manifest)):
        run(job, out_dir, manifest, steps)
    print(f"rank {os.environ.get('LOCAL_RANK', '0')} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
