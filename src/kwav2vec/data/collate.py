"""Turn dataset items into padded batches (the batch layout is fixed in CONTRACTS.md).

    ids              list[str]
    audio            (B, S) float32, zero-padded
    audio_lengths    (B,) long
    graphemes        (B, Lg) long, padded with 0 (= the vocabularies' blank/pad id)   [fine-tuning]
    grapheme_lengths (B,) long                                                         [fine-tuning]
    syllables        (B, Ls) long, padded with 0                                       [fine-tuning]
    syllable_lengths (B,) long                                                         [fine-tuning]
    texts            list[str] normalized references                                   [fine-tuning]
    skipped          list[dict] utterances of this batch that failed to load (index, id, path,
                     reason, detail); usually empty. Dropped from every other key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kwav2vec.data.dataset import SkippedItem

TARGET_PAD_ID = 0  # the vocabularies' blank id doubles as target padding (CONTRACTS.md)


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


def collate_audio(items: Sequence[dict | SkippedItem]) -> dict:
    """Pretraining batch: ids, audio (B, S), audio_lengths (B,), skipped."""
    good, skipped = _split(items)
    audio, audio_lengths = pad_1d([it["audio"] for it in good], 0.0)
    return {"ids": [it["id"] for it in good], "audio": audio, "audio_lengths": audio_lengths, "skipped": skipped}


def collate_labeled(items: Sequence[dict | SkippedItem]) -> dict:
    """Fine-tuning batch: the pretraining keys plus grapheme/syllable targets and texts."""
    good, _ = _split(items)
    batch = collate_audio(items)
    batch["graphemes"], batch["grapheme_lengths"] = pad_1d(
        [it["graphemes"] for it in good] or [torch.zeros(0, dtype=torch.long)], TARGET_PAD_ID)
    batch["syllables"], batch["syllable_lengths"] = pad_1d(
        [it["syllables"] for it in good] or [torch.zeros(0, dtype=torch.long)], TARGET_PAD_ID)
    if not good:  # keep B = 0 consistent across keys
        for key in ("graphemes", "grapheme_lengths", "syllables", "syllable_lengths"):
            batch[key] = batch[key][:0]
    batch["texts"] = [it["text"] for it in good]
    return batch
