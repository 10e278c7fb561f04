"""Builders shared by tests/test_robust_*.py and tests/robust_ddp_script.py (no tests here): tiny
corpora, tiny modules, a Trainer factory and a callback that records what every step saw."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_data_utils import audio_manifest

from kwav2vec.data.datamodule import FinetuneDataModule, PretrainDataModule
from kwav2vec.data.prepare import build_vocabularies
from kwav2vec.lit.finetune import HierarchicalFineTuner
from kwav2vec.lit.pretrain import Pretrainer

# 0.4 to 0.75 s: 19 to 37 frames, enough for the tiny preset's 10-frame mask spans
LENGTHS = [6400 + 350 * i for i in range(16)]
TEXTS = ["안녕 하세요", "반갑 습니다", "좋은 아침", "감사 합니다", "네 맞아요", "안녕"]
MAX_SAMPLES_PER_BATCH = 24000  # 1 to 3 utterances a batch, 8 batches an epoch (one rank)
# A tiny preset cut down further: two transformer layers, few distractors. Dropout stays on, so the
# RNG state matters for exact resume.
MODEL_OVERRIDES = {"encoder_layers": 2, "num_negatives": 10}


@pytest.fixture(scope="module")
def one_thread():
    """These models are tiny: intra-op threads buy nothing, and on a loaded 2-core machine their spin
    waits make a step 10x slower. Restores the thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pretrain_corpus(root: Path, lengths: list[int] = LENGTHS) -> Path:
    return audio_manifest(root, lengths)


def finetune_corpus(root: Path, lengths: list[int] = LENGTHS) -> Path:
    """Labeled manifest + grapheme/syllable vocabularies beside it."""
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(lengths))]
    graphemes, syllables = build_vocabularies(TEXTS)
    root.mkdir(parents=True, exist_ok=True)
    graphemes.save(root / "vocab_grapheme.json")
    syllables.save(root / "vocab_syllable.json")
    return audio_manifest(root, lengths, texts)


def pretrain_data(manifest: Path, **kw) -> PretrainDataModule:
    args = dict(
        max_samples_per_batch=MAX_SAMPLES_PER_BATCH, max_sample_size=16000, min_sample_size=400, seed=3
    )
    return PretrainDataModule(str(manifest), **(args | kw))


def finetune_data(manifest: Path, **kw) -> FinetuneDataModule:
    return FinetuneDataModule(
        str(manifest), **(dict(max_samples_per_batch=MAX_SAMPLES_PER_BATCH, seed=3) | kw)
    )


def pretrainer(total_steps: int, **kw) -> Pretrainer:
    args = dict(
        model="tiny", model_overrides=MODEL_OVERRIDES, lr=1e-3, warmup_steps=2, total_steps=total_steps
    )
    return Pretrainer(**(args | kw))


def finetuner(total_steps: int, **kw) -> HierarchicalFineTuner:
    """Vocabularies come from the datamodule in `setup`. Masking and layerdrop stay on (RNG matters)."""
    args = dict(
        model="tiny",
        model_overrides={"encoder_layers": 2},
        syllable_layers=1,
        lr=1e-3,
        total_steps=total_steps,
        mask_prob=0.3,
        mask_length=5,
        mask_channel_length=16,
    )
    return HierarchicalFineTuner(**(args | kw))


def trainer(root: Path, max_steps: int, callbacks=(), **kw) -> pl.Trainer:
    args = dict(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=root,
        log_every_n_steps=1,
    )
    args |= kw
    if any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks):
        args["enable_checkpointing"] = True
    return pl.Trainer(callbacks=list(callbacks), **args)


class StepRecorder(pl.Callback):
    """Records, per training step: global step, utterance ids, the loss training_step returned."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, tuple[str, ...], float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.steps.append((trainer.global_step, tuple(batch["ids"]), float(loss)))

    @property
    def ids(self) -> list[tuple[str, ...]]:
        return [s[1] for s in self.steps]

    @property
    def losses(self) -> list[float]:
        return [s[2] for s in self.steps]


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}
