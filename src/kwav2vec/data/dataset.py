"""Datasets over a manifest: audio only (pretraining) and audio + grapheme/syllable targets
(fine-tuning).

Filtering happens once, at construction, from the manifest alone (no audio is read): too short for
the conv front end, too long, and (fine-tuning) targets the audio cannot carry under CTC. Every
filtered utterance is counted by reason in `filtered` and summarised in the log.

A file whose length disagrees with its manifest line's `num_samples` by more than
`LENGTH_TOLERANCE` (a hand-written or stale manifest: batches were sized and CTC feasibility judged
by the wrong length) is skipped the same way, as "length-mismatch", naming both lengths.

A file that fails to load while training is not fatal: `__getitem__` returns a `SkippedItem` that
names the file and the reason, the collate function drops it and lists it under the batch's
`skipped` key, and `ResumableDataLoader` logs and counts it in the main process (worker processes
have their own copies of the dataset, so counters kept here only see the items this process
loaded; they are exact with num_workers=0).

Items are looked up by index or by `(index, epoch)`: the random crop of pretraining is drawn from
a generator seeded by (seed, epoch, index), so it is the same whichever worker loads the item and
whether or not the run was resumed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from kwav2vec.data.audio import AudioError, load_audio
from kwav2vec.data.augment import change_speed, check_speeds, draw_speed, length_range
from kwav2vec.data.manifest import ManifestEntry
from kwav2vec.models.config import STANDARD_GEOMETRY, FrameGeometry

log = logging.getLogger(__name__)

# samples a file may differ from its manifest's num_samples: one standard frame (20 ms), room for
# another resampler's rounding in a manifest `kwav2vec prepare` did not write (prepare's are exact)
LENGTH_TOLERANCE = STANDARD_GEOMETRY.samples_per_frame


class Encoder(Protocol):
    """What the datasets need of a `kwav2vec.text.vocab.Vocabulary`."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class SkippedItem:
    """Stands in for an utterance whose audio could not be loaded."""

    index: int
    id: str
    path: str
    reason: str  # AudioError.reason (missing, empty, unreadable, truncated, ...) or length-mismatch
    detail: str

    def as_dict(self) -> dict:
        return {"index": self.index, "id": self.id, "path": self.path, "reason": self.reason, "detail": self.detail}


def ctc_min_frames(targets: Sequence) -> int:
    """Shortest input CTC can align with `targets`: one frame per label plus a blank between
    repeated labels."""
    return len(targets) + sum(1 for a, b in zip(targets, targets[1:], strict=False) if a == b)


class AudioDataset(Dataset):
    """Audio-only utterances of a manifest (pretraining).

    Args:
        entries: manifest entries (see `kwav2vec.data.manifest.read_manifest`).
        max_sample_size: longer utterances are randomly cropped to this (`crop=True`) or dropped.
        min_sample_size: shorter utterances are dropped (never less than one frame).
        crop: crop long utterances (pretraining) instead of dropping them (labeled data).
        seed: seeds the crops together with epoch and index.
        geometry: the model's frame geometry (`Wav2Vec2Config.frame_geometry`).
        name: used in log lines (e.g. the manifest path).

    Audio is returned as read: waveform normalisation belongs to the model (its config's
    `normalize`), so a checkpoint sees the same input in training, evaluation and export.
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        *,
        max_sample_size: int | None = None,
        min_sample_size: int = 0,
        crop: bool = True,
        seed: int = 0,
        geometry: FrameGeometry = STANDARD_GEOMETRY,
        name: str = "dataset",
    ) -> None:
        self.max_sample_size, self.crop, self.seed = max_sample_size, crop, seed
        self.min_sample_size = max(int(min_sample_size), geometry.receptive_field)
        self.geometry, self.name = geometry, name
        self.filtered: Counter[str] = Counter()
        self.filtered_ids: dict[str, list[str]] = {}  # reason -> ids left out, for the log line
        self.skipped: Counter[str] = Counter()  # load failures seen by this process, by reason
        kept = [e for e in entries if self._keep(e)]
        self.entries = self._filter_more(kept)
        self._log_filtered(len(entries))
        sizes = np.array([e.num_samples for e in self.entries], dtype=np.int64)
        self.sizes = np.minimum(sizes, max_sample_size) if (crop and max_sample_size) else sizes  # (N,)

    def _leave_out(self, e: ManifestEntry, reason: str) -> None:
        self.filtered[reason] += 1
        self.filtered_ids.setdefault(reason, []).append(e.id)

    def _keep(self, e: ManifestEntry) -> bool:
        if e.num_samples < self.min_sample_size:
            self._leave_out(e, "too-short")
            return False
        if not self.crop and self.max_sample_size is not None and e.num_samples > self.max_sample_size:
            self._leave_out(e, "too-long")
            return False
        return True

    def _filter_more(self, entries: list[ManifestEntry]) -> list[ManifestEntry]:
        return entries

    def _log_filtered(self, total: int, shown: int = 5) -> None:
        """One warning naming the reasons, counts and the first `shown` ids of each."""
        if self.filtered:
            reasons = "; ".join(
                f"{r}: {n} ({', '.join(self.filtered_ids[r][:shown])}{', ...' if n > shown else ''})"
                for r, n in sorted(self.filtered.items())
            )
            log.warning("%s: kept %d of %d utterances (left out %s)", self.name, len(self.entries), total, reasons)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def lengths(self) -> np.ndarray:
        """Samples per utterance as batched (after cropping), for the batch sampler."""
        return self.sizes

    def __getitem__(self, key: int | tuple[int, int]) -> dict | SkippedItem:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        entry = self.entries[index]
        try:
            wav = load_audio(entry.path)  # (S,)
        except AudioError as err:
            self.skipped[err.reason] += 1
            log.debug("%s: skipping %s (%s): %s", self.name, entry.id, err.path, err)
            return SkippedItem(index, entry.id, err.path, err.reason, err.detail)
        if abs(len(wav) - entry.num_samples) > LENGTH_TOLERANCE:
            self.skipped["length-mismatch"] += 1
            return SkippedItem(index, entry.id, entry.path, "length-mismatch",
                               f"the manifest says num_samples {entry.num_samples}, the file has {len(wav)} samples "
                               "at 16 kHz; re-run `kwav2vec prepare` to write the true lengths")
        if self.crop and self.max_sample_size is not None and len(wav) > self.max_sample_size:
            rng = np.random.default_rng([self.seed, epoch, index])
            start = int(rng.integers(0, len(wav) - self.max_sample_size + 1))
            wav = wav[start : start + self.max_sample_size]
        return {"index": index, "id": entry.id, "audio": wav}


class LabeledAudioDataset(AudioDataset):
    """Utterances with grapheme and syllable targets (fine-tuning). Never crops (the transcript
    covers the whole file): utterances over `max_sample_size` are dropped and counted.

    Utterances whose targets need more CTC frames than the audio yields are dropped as
    "ctc-infeasible" (frames counted with `geometry`), those whose transcript encodes to nothing
    as "empty-target".

    `speeds` (training only): speed perturbation factors, one drawn per item and epoch
    (`kwav2vec.data.augment`). Feasibility is then judged at the fastest factor (the shortest
    audio) and batches are sized by the slowest (the longest), so no batch outgrows its cap.
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        grapheme_vocab: Encoder,
        syllable_vocab: Encoder,
        *,
        max_sample_size: int | None = None,
        min_sample_size: int = 0,
        geometry: FrameGeometry = STANDARD_GEOMETRY,
        name: str = "dataset",
        speeds: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        self.grapheme_vocab, self.syllable_vocab = grapheme_vocab, syllable_vocab
        self.speeds = check_speeds(speeds)
        self._targets: list[tuple[np.ndarray, np.ndarray]] = []
        super().__init__(entries, max_sample_size=max_sample_size, min_sample_size=min_sample_size, crop=False,
                         seed=seed, geometry=geometry, name=name)
        if self.speeds:
            self.sizes = np.array([length_range(e.num_samples, self.speeds)[1] for e in self.entries], dtype=np.int64)

    def _filter_more(self, entries: list[ManifestEntry]) -> list[ManifestEntry]:
        kept = []
        for e in entries:
            if e.norm is None:
                raise ValueError(f"{self.name}: utterance {e.id!r} has no 'norm' transcript")
            graphemes = self.grapheme_vocab.encode(e.norm)
            syllables = self.syllable_vocab.encode(e.norm)
            if len(graphemes) == 0 or len(syllables) == 0:
                self._leave_out(e, "empty-target")
                continue
            # The grapheme vocabulary spells every normalized transcript; an <unk> among its ids
            # means the `norm` was not normalized (punctuation, another script): training on it
            # would teach <unk>.
            if self.grapheme_vocab.unk_id in graphemes:
                self._leave_out(e, "unnormalized-text")
                continue
            frames = self.geometry.num_frames(length_range(e.num_samples, self.speeds)[0])
            if max(ctc_min_frames(graphemes), ctc_min_frames(syllables)) > frames:
                self._leave_out(e, "ctc-infeasible")
                continue
            kept.append(e)
            # int32 arrays: a fraction of the memory of lists of Python ints, for every worker's copy.
            self._targets.append((np.array(graphemes, dtype=np.int32), np.array(syllables, dtype=np.int32)))
        return kept

    def __getitem__(self, key: int | tuple[int, int]) -> dict | SkippedItem:
        item = super().__getitem__(key)
        if isinstance(item, SkippedItem):
            return item
        if self.speeds:
            index, epoch = key if isinstance(key, tuple) else (key, 0)
            item["audio"] = change_speed(item["audio"], draw_speed(self.speeds, self.seed, epoch, index))
        graphemes, syllables = self._targets[item["index"]]
        item["graphemes"] = torch.from_numpy(graphemes.astype(np.int64))
        item["syllables"] = torch.from_numpy(syllables.astype(np.int64))
        item["text"] = self.entries[item["index"]].norm
        return item
