"""Mid-epoch resume through a real Lightning Trainer: a run stopped at a checkpoint and resumed from
it sees exactly the batches an uninterrupted run sees, in the same order (also when
`configure_optimizers` calls `trainer.estimated_stepping_batches`, which makes Lightning skip its
own dataloader restore, and with worker processes that prefetch)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_data_utils import audio_manifest

from kwav2vec.data.datamodule import PretrainDataModule

EPOCHS = 2


class RecordIds(pl.LightningModule):
    def __init__(self, call_estimated_steps: bool = False) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.call_estimated_steps = call_estimated_steps
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, tuple(batch["ids"])))
        return (self.w - batch["audio"].mean()) ** 2

    def configure_optimizers(self):
        if self.call_estimated_steps:
            assert self.trainer.estimated_stepping_batches > 0  # builds the train dataloader early
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
                      default_root_dir=tmp_path, **kwargs)


def _datamodule(manifest, num_workers) -> PretrainDataModule:
    return PretrainDataModule(str(manifest), max_samples_per_batch=12000, max_sample_size=6000,
                              min_sample_size=400, seed=5, num_workers=num_workers)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    lengths = [1600 + 331 * i for i in range(24)]  # 0.1 to 0.6 s: 8 or 9 batches an epoch
    return audio_manifest(root, lengths)


@pytest.mark.parametrize(
    "stop_after, call_estimated_steps, num_workers",
    [(3, False, 0), (3, True, 0), (5, False, 2), ("epoch", False, 0)],
    ids=["mid-epoch", "estimated_stepping_batches-first", "workers", "epoch-boundary"],
)
def test_trainer_resume_sees_exactly_the_remaining_batches(tmp_path, manifest, stop_after, call_estimated_steps,
                                                           num_workers):
    full = RecordIds()
    _trainer(tmp_path / "full").fit(full, datamodule=_datamodule(manifest, num_workers))
    per_epoch = len(full.seen) // EPOCHS
    assert per_epoch >= 6 and len(full.seen) == EPOCHS * per_epoch
    assert full.seen[:per_epoch] != full.seen[per_epoch:]  # epochs are shuffled differently

    k = per_epoch if stop_after == "epoch" else stop_after
    first = RecordIds(call_estimated_steps)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=k, save_top_k=-1)
    _trainer(tmp_path / "first", max_steps=k, callbacks=[ckpt]).fit(first, datamodule=_datamodule(manifest, num_workers))
    assert first.seen == full.seen[:k]
    path = ckpt.best_model_path or ckpt.last_model_path or str(next((tmp_path / "ckpt").glob("*.ckpt")))

    resumed = RecordIds(call_estimated_steps)
    dm = _datamodule(manifest, num_workers)
    _trainer(tmp_path / "resumed").fit(resumed, datamodule=dm, ckpt_path=path)
    assert first.seen + resumed.seen == full.seen
