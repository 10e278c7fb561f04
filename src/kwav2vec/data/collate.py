"""Turn dataset items into padded batches: the batch contract between the data layer and the models.

This docstring (and the TypedDicts below) is where the batch layout is fixed; the LightningModules
(`kwav2vec.lit.pretrain`, `kwav2vec.lit.finetune`) and the predict loop read exactly these keys.
Shapes use B batch, S samples, Lg/Ls target lengths (the longest in the batch).

Pretraining batch (`collate_audio`, `PretrainBatch`):

    ids              list[str]          manifest ids, batch order
    audio            (B, S) float32     16 kHz waveforms as the dataset returns them (read, cropped),
                                        each zero-padded after its own length
    audio_lengths    (B,) int64         valid samples per row; the model derives frame lengths
    skipped          list[dict]         items of this batch that failed to load (index, id, path,
                                        reason, detail); usually empty. Dropped from every other key

Fine-tuning batch (`collate_labeled`, `FinetuneBatch`): the pretraining keys plus

    graphemes        (B, Lg) int64      jamo ids of the grapheme vocabulary, padded with
                                        TARGET_PAD_ID = 0 (the blank id of both vocabularies)
    grapheme_lengths (B,) int64         valid ids per row (needed when λ < 1)
    syllables        (B, Ls) int64      syllable ids (<unk> for a syllable outside the vocabulary),
                                        padded with TARGET_PAD_ID
    syllable_lengths (B,) int64         valid ids per row (needed when λ > 0)
    texts            list[str]          normalized references (`norm`), used by validation and test

Predict batch (`kwav2vec.inference.predict.collate_predict`, for `transcribe` / `evaluate`):

    ids, audio, audio_lengths, skipped  as above
    indices          list[int]          positions of the rows in the list of sources being decoded
    short            list[dict]         clips shorter than one frame (index, id, num_samples): kept
                                        out of `audio`, each decoded to ""
    windows          list               only for long files cut into windows: per row, the window
                                        it is (kwav2vec.inference.chunking)

A batch whose items all failed (or were all short) has B = 0 in every key: audio (0, S) for some S.
Lengths and padding travel together: no consumer may read past `*_lengths`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch

from kwav2vec.data.dataset import SkippedItem

TARGET_PAD_ID = 0  # the vocabularies' blank id doubles as target padding (kwav2vec.text.vocab)


class PretrainBatch(TypedDict):
    """The pretraining batch (module docstring)."""

    ids: list[str]
    audio: torch.Tensor  # (B, S) float32, zero-padded
    audio_lengths: torch.Tensor  # (B,) int64
    skipped: list[dict]


class FinetuneBatch(PretrainBatch):
    """The fine-tuning batch (module docstring)."""

    graphemes: torch.Tensor  # (B, Lg) int64, padded with TARGET_PAD_ID
    grapheme_lengths: torch.Tensor  # (B,) int64
    syllables: torch.Tensor  # (B, Ls) int64, padded with TARGET_PAD_ID
    syllable_lengths: torch.Tensor  # (B,) int64
    texts: list[str]


def pad_1d(seqs: Sequence[torch.Tensor], pad_value: float | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D tensors into (B, max_len) padded with `pad_value`, and their lengths (B,).

    Built in numpy: in the main process (num_workers=0) torch would run these copies on its
    intra-op threads, which on a loaded machine costs more than the copies themselves."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    width = int(lengths.max()) if len(seqs) else 0
    dtype = seqs[0].numpy().dtype if len(seqs) else np.float32
    out = np.full((len(seqs), width), pad_value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s.numpy()
    return torch.from_numpy(out), torch.from_numpy(lengths)


def _split(items: Sequence[dict | SkippedItem]) -> tuple[list[dict], list[dict]]:
    good = [it for it in items if not isinstance(it, SkippedItem)]
    skipped = [it.as_dict() for it in items if isinstance(it, SkippedItem)]
    return good, skipped


def collate_audio(items: Sequence[dict | SkippedItem]) -> PretrainBatch:
    """Pretraining batch: ids, audio (B, S), audio_lengths (B,), skipped."""
    good, skipped = _split(items)
    audio, audio_lengths = pad_1d([it["audio"] for it in good], 0.0)
    return PretrainBatch(ids=[it["id"] for it in good], audio=audio, audio_lengths=audio_lengths, skipped=skipped)


def collate_labeled(items: Sequence[dict | SkippedItem]) -> FinetuneBatch:
    """Fine-tuning batch: the pretraining keys plus grapheme/syllable targets and texts."""
    good, _ = _split(items)
    batch: FinetuneBatch = collate_audio(items)  # type: ignore[assignment]  (the target keys follow)
    batch["graphemes"], batch["grapheme_lengths"] = pad_1d(
        [it["graphemes"] for it in good] or [torch.zeros(0, dtype=torch.long)], TARGET_PAD_ID)
    batch["syllables"], batch["syllable_lengths"] = pad_1d(
        [it["syllables"] for it in good] or [torch.zeros(0, dtype=torch.long)], TARGET_PAD_ID)
    if not good:  # keep B = 0 consistent across keys
        for key in ("graphemes", "grapheme_lengths", "syllables", "syllable_lengths"):
            batch[key] = batch[key][:0]
    batch["texts"] = [it["text"] for it in good]
    return batch
