"""LightningDataModules for pretraining (audio only) and fine-tuning (audio + jamo + syllables).

Both batch by total padded samples with length bucketing (`BucketBatchSampler`), shard batches
over ranks themselves (so run the Trainer with `use_distributed_sampler=False`; the `kwav2vec`
CLI does), and resume mid-epoch from a checkpoint (see `kwav2vec.data.loader`). Files that fail to
load are skipped and counted: read `skipped` / `skipped_reasons` here, or `len(batch["skipped"])`
per batch, to log them.

The model owns what depends on its architecture: waveform normalisation happens inside it (its
config's `normalize`), and the frame geometry that decides which utterances are too short or too
long for CTC is the attached model's (`Wav2Vec2Config.frame_geometry`, read in `setup`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl

from kwav2vec.data.augment import check_speeds
from kwav2vec.data.collate import collate_audio, collate_labeled
from kwav2vec.data.dataset import AudioDataset, LabeledAudioDataset
from kwav2vec.data.loader import ResumableDataLoader
from kwav2vec.data.manifest import GRAPHEME_VOCAB_FILE, SYLLABLE_VOCAB_FILE, read_manifest
from kwav2vec.data.sampler import BucketBatchSampler
from kwav2vec.models.config import STANDARD_GEOMETRY, FrameGeometry
from kwav2vec.text.vocab import Vocabulary

log = logging.getLogger(__name__)


class _BucketedDataModule(pl.LightningDataModule):
    """Shared loader plumbing: samplers, resumable train loader, skip counters, checkpoint state."""

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, AudioDataset] = {}
        self._loaders: dict[str, ResumableDataLoader] = {}
        self._pending_train_state: dict | None = None

    # subclasses: self.hparams holds the __init__ arguments; _collate is the batch builder
    _collate = staticmethod(collate_audio)

    @property
    def geometry(self) -> FrameGeometry:
        """The frame geometry of the model this datamodule feeds: the Trainer's LightningModule's
        config when attached (any module with a `config: Wav2Vec2Config`), else that of every
        preset and known import (`STANDARD_GEOMETRY`)."""
        config = getattr(getattr(self.trainer, "lightning_module", None), "config", None)
        return config.frame_geometry if hasattr(config, "frame_geometry") else STANDARD_GEOMETRY

    def _loader(self, split: str, train: bool) -> ResumableDataLoader:
        hp = self.hparams
        dataset = self.datasets[split]
        sampler = BucketBatchSampler(
            dataset.lengths,
            hp.max_samples_per_batch,
            max_batch_size=hp.max_batch_size,
            bucketing=hp.bucketing,
            shuffle=hp.shuffle and train,
            seed=hp.seed,
            rank=hp.rank,
            world_size=hp.world_size,
            uneven=hp.uneven,
        )
        loader = ResumableDataLoader(
            dataset,
            sampler,
            self._collate,
            # Validation crops (pretraining) stay the same every epoch so the loss is comparable.
            pass_epoch=train,
            name=split,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )
        if train and self._pending_train_state is not None:
            loader.load_state_dict(self._pending_train_state)
            self._pending_train_state = None
        self._loaders[split] = loader
        return loader

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> ResumableDataLoader | list:
        return self._loader("val", train=False) if "val" in self.datasets else []

    # -- skip accounting ------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        """Utterances dropped from batches because their file failed to load (all loaders)."""
        return sum(loader.skipped for loader in self._loaders.values())

    @property
    def skipped_reasons(self) -> Counter:
        total: Counter[str] = Counter()
        for loader in self._loaders.values():
            total.update(loader.skipped_reasons)
        return total

    @property
    def filtered(self) -> dict[str, Counter]:
        """Utterances left out at construction (too short/long, CTC-infeasible), per split."""
        return {split: ds.filtered for split, ds in self.datasets.items()}

    # -- checkpoint state (restored before configure_optimizers, see kwav2vec.data.loader) -------
    def state_dict(self) -> dict:
        loader = self._loaders.get("train")
        return {"train_loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        state = state_dict.get("train_loader")
        if state is None:
            return
        if "train" in self._loaders:
            self._loaders["train"].load_state_dict(state)
        else:
            self._pending_train_state = state


def require_manifests(**manifests: str | None) -> None:
    """Fails at construction, before any training, when a train or validation manifest is missing:
    one line naming the file and the flag, instead of an error about what would be read next
    (the vocabularies beside it) or a failure after the first epoch. The test manifest is checked
    when a test runs: a fit does not need it to exist yet."""
    for name, path in manifests.items():
        if path is not None and not os.path.isfile(path):
            what = "a directory" if os.path.isdir(path) else "no such file"
            raise FileNotFoundError(f"{path}: {name.replace('_', ' ')} not found ({what}; --data.{name}); "
                                    "`kwav2vec prepare` writes manifests")


class PretrainDataModule(_BucketedDataModule):
    """Unlabeled audio for wav2vec 2.0 pretraining.

    Args:
        train_manifest: JSONL manifest of the training audio.
        val_manifest: optional JSONL manifest for validation.
        audio_root: folder relative audio paths are resolved against (default: each manifest's folder).
        max_samples_per_batch: padded samples per batch per device (fairseq `max_tokens`;
            BASE used 1.4 M samples per GPU).
        max_sample_size: longer utterances are randomly cropped to this many samples (fairseq
            `max_sample_size`, 250 k = 15.6 s).
        min_sample_size: shorter utterances are left out (fairseq `min_sample_size`, 32 k = 2 s);
            never below one frame of the model.
        max_batch_size: optional cap on utterances per batch.
        bucketing: batch utterances of similar length (False: random batches).
        shuffle: shuffle the order of training batches every epoch.
        seed: seeds batch packing, epoch shuffles and crops.
        uneven: when batches do not divide over ranks, "pad" repeats a few, "drop" leaves a few out.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader pin_memory (for GPU training).
        rank: this process's rank (default: from torch.distributed when initialised, else 0).
        world_size: number of processes (default: from torch.distributed when initialised, else 1).
    """

    def __init__(
        self,
        train_manifest: str,
        val_manifest: str | None = None,
        audio_root: str | None = None,
        max_samples_per_batch: int = 1_400_000,
        max_sample_size: int = 250_000,
        min_sample_size: int = 32_000,
        max_batch_size: int | None = None,
        bucketing: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        uneven: Literal["pad", "drop"] = "pad",
        num_workers: int = 0,
        pin_memory: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        require_manifests(train_manifest=train_manifest, val_manifest=val_manifest)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for split, manifest in (("train", hp.train_manifest), ("val", hp.val_manifest)):
            if manifest is None or split in self.datasets:
                continue
            self.datasets[split] = AudioDataset(
                read_manifest(manifest, audio_root=hp.audio_root),
                max_sample_size=hp.max_sample_size,
                min_sample_size=hp.min_sample_size,
                crop=True,
                seed=hp.seed,
                geometry=self.geometry,
                name=f"{split} ({manifest})",
            )


class FinetuneDataModule(_BucketedDataModule):
    """Transcribed audio with grapheme (jamo) and syllable targets for hierarchical CTC fine-tuning.

    Args:
        train_manifest: JSONL manifest with `norm` transcripts.
        val_manifest: optional validation manifest.
        test_manifest: optional test manifest.
        grapheme_vocab: vocabulary JSON (default: `vocab_grapheme.json` beside the train manifest).
        syllable_vocab: vocabulary JSON (default: `vocab_syllable.json` beside the train manifest).
        audio_root: folder relative audio paths are resolved against (default: each manifest's folder).
        max_samples_per_batch: padded samples per batch per device (fairseq `max_tokens`; 3.2 M
            in fairseq's BASE fine-tuning recipes).
        max_sample_size: longer utterances are left out (labeled audio is never cropped).
        min_sample_size: shorter utterances are left out; never below one frame of the model.
        max_batch_size: optional cap on utterances per batch.
        bucketing: batch utterances of similar length (False: random batches).
        shuffle: shuffle the order of training batches every epoch.
        seed: seeds batch packing, epoch shuffles and speed perturbation.
        speed_perturb: speed perturbation factors of the training audio, one drawn per utterance and
            epoch, e.g. [0.9, 1.0, 1.1] (Kaldi's; `kwav2vec.data.augment`); None: the audio as read.
        uneven: when batches do not divide over ranks, "pad" repeats a few, "drop" leaves a few out.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader pin_memory (for GPU training).
        rank: this process's rank (default: from torch.distributed when initialised, else 0).
        world_size: number of processes (default: from torch.distributed when initialised, else 1).

    Transcripts too long for their audio under CTC (with the model's frame geometry) are left out
    and counted.
    """

    _collate = staticmethod(collate_labeled)

    def __init__(
        self,
        train_manifest: str,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        grapheme_vocab: str | None = None,
        syllable_vocab: str | None = None,
        audio_root: str | None = None,
        max_samples_per_batch: int = 3_200_000,
        max_sample_size: int = 480_000,
        min_sample_size: int = STANDARD_GEOMETRY.receptive_field,
        max_batch_size: int | None = None,
        bucketing: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        uneven: Literal["pad", "drop"] = "pad",
        num_workers: int = 0,
        pin_memory: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        speed_perturb: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_speeds(speed_perturb)  # a bad factor fails here, before any data is read
        require_manifests(train_manifest=train_manifest, val_manifest=val_manifest)
        folder = Path(train_manifest).parent
        # Loaded now (small files) so the model can size its heads from the datamodule.
        self.grapheme_vocab = Vocabulary.load(grapheme_vocab or folder / GRAPHEME_VOCAB_FILE)
        self.syllable_vocab = Vocabulary.load(syllable_vocab or folder / SYLLABLE_VOCAB_FILE)

    @property
    def num_graphemes(self) -> int:
        return len(self.grapheme_vocab)

    @property
    def num_syllables(self) -> int:
        return len(self.syllable_vocab)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        splits = (("train", hp.train_manifest), ("val", hp.val_manifest), ("test", hp.test_manifest))
        for split, manifest in splits:
            if manifest is None or split in self.datasets:
                continue
            self.datasets[split] = LabeledAudioDataset(
                read_manifest(manifest, audio_root=hp.audio_root, require_norm=True),
                self.grapheme_vocab,
                self.syllable_vocab,
                max_sample_size=hp.max_sample_size,
                min_sample_size=hp.min_sample_size,
                geometry=self.geometry,
                name=f"{split} ({manifest})",
                speeds=hp.speed_perturb if split == "train" else None,
                seed=hp.seed,
            )

    def test_dataloader(self) -> ResumableDataLoader | list:
        return self._loader("test", train=False) if "test" in self.datasets else []
