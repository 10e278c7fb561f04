"""Inference through Lightning's predict loop, sharded over processes, results gathered once.

    sources ─▶ PredictDataModule (length-sorted batches, batch i on rank i % world_size)
            ─▶ HierarchicalFineTuner.predict_step (log-probs of both heads, on the rank's device)
            ─▶ DecodingWriter (decodes each batch on its rank's CPU, keeps only the results)
            ─▶ gather_results (every rank's results to rank 0, checked: each utterance exactly once)

Sharding: Lightning's DistributedSampler pads the last shard by repeating utterances, which would
count them twice. Here every rank builds the same batch list from the lengths and takes every
world_size-th batch, so the shards are disjoint and cover the input; ranks may get one batch more
or less than each other, which the predict loop tolerates (it has no collective per step, and the
model is not wrapped in DistributedDataParallel outside fitting). Decoding runs where the
log-probs are, so nothing larger than the texts crosses processes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from kwav2vec.data.audio import SAMPLE_RATE, AudioError, load_audio
from kwav2vec.data.collate import pad_1d
from kwav2vec.data.dataset import SkippedItem
from kwav2vec.data.sampler import pack_batches
from kwav2vec.decoding.beam import Hypothesis
from kwav2vec.inference.allocator import fix_mmap_threshold
from kwav2vec.inference.chunking import (
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_STRIDE_SECONDS,
    FRAME_SECONDS,
    ChunkConfig,
    Window,
    num_samples_16k,
    plan_windows,
    read_block,
)
from kwav2vec.inference.decoders import HEADS, Decoded, MultiDecoder, add_decoder_arguments
from kwav2vec.inference.segments import (
    DEFAULT_MAX_SEGMENT_SECONDS,
    DEFAULT_PAUSE_SECONDS,
    Segment,
    SegmentConfig,
    StreamSegmenter,
    combine,
    shift_words,
)
from kwav2vec.inference.timestamps import word_times
from kwav2vec.models.config import STANDARD_GEOMETRY

log = logging.getLogger(__name__)

# --reencode-segments runs a segment's speech (first to last non-blank frame of the first pass) with
# this many frames (0.2 s) of its pauses on each side, not the whole pause: a model trained on single
# utterances errs more with more silence around them. Chosen on the demo dev split (joined, chunks of
# 20 s; greedy / joint-rescore CER %: whole segment 14.6 / 9.1, margin 5 frames 13.8 / 8.4, 10: 13.4 /
# 8.4, 15: 13.5 / 8.9, 20: 14.0 / 9.2); frames outside keep the first pass's (blank) log-probs.
SPEECH_MARGIN = 10
ONE_FRAME = STANDARD_GEOMETRY.receptive_field  # samples: shorter clips get no frame (see check_geometry)

DEFAULT_MAX_SAMPLES_PER_BATCH = 1_600_000  # 100 s of 16 kHz audio per batch (padded)


@dataclass(frozen=True)
class Source:
    """One utterance to recognise."""

    index: int  # position in the input (manifest line order / command-line order): the output order
    id: str  # utterance id (the path itself for `transcribe`)
    path: str  # audio file
    num_samples: int  # length at 16 kHz, for batching (an estimate is fine)
    ref: str | None = None  # reference transcript (evaluation)


@dataclass
class UtteranceResult:
    """Everything kept of one utterance (small: texts and a few numbers)."""

    index: int
    id: str
    path: str
    num_samples: int  # loaded length at 16 kHz
    frames: int  # encoder frames
    decoded: dict[str, Decoded] = field(default_factory=dict)  # decoder name -> result
    # decoder name -> (words with start/end seconds, what the times come from); see timestamps.py
    words: dict[str, tuple[list[dict], str]] = field(default_factory=dict)


@dataclass
class RankResults:
    """What one rank sends to rank 0."""

    rank: int
    utterances: list[UtteranceResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # utterances whose audio failed to load
    too_short: list[dict] = field(default_factory=list)  # index, id, path, num_samples: empty transcripts
    forward_seconds: float = 0.0  # predict_step time (model forward incl. device transfers back)
    decode_seconds: dict[str, float] = field(default_factory=dict)  # per decoder, as if run alone
    batches: int = 0


# ------------------------------------------------------------------------------------------- data
class PredictDataset(Dataset):
    """Loads a source's audio (16 kHz mono float32); unreadable files become `SkippedItem`s."""

    def __init__(self, sources: Sequence[Source], windows: Sequence[Window | None] | None = None) -> None:
        self.sources = list(sources)
        # item i is window windows[i] of sources[i] (read as a block), or the whole file when None
        self.windows = list(windows) if windows is not None else [None] * len(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict | SkippedItem:
        src, window = self.sources[i], self.windows[i]
        try:
            wav = load_audio(src.path) if window is None else read_block(src.path, window.start, window.length)
        except AudioError as err:
            return SkippedItem(src.index, src.id, err.path, err.reason, err.detail)
        item = {"index": src.index, "id": src.id, "audio": wav}
        if window is not None:
            item["window"] = window
        return item


def collate_predict(items: Sequence[dict | SkippedItem]) -> dict:
    """Batch: ids, indices, audio (B, S) zero-padded, audio_lengths (B,), skipped (unreadable files)
    and short: clips shorter than one frame (`ONE_FRAME` samples), which the model cannot take
    and which are kept out of `audio`: each gets an empty transcript and a warning, the rest of the
    batch is transcribed."""
    good = [it for it in items if not isinstance(it, SkippedItem) and len(it["audio"]) >= ONE_FRAME]
    short = [{"index": it["index"], "id": it["id"], "num_samples": len(it["audio"])}
             for it in items if not isinstance(it, SkippedItem) and len(it["audio"]) < ONE_FRAME]
    skipped = [it.as_dict() for it in items if isinstance(it, SkippedItem)]
    if good:
        audio, lengths = pad_1d([it["audio"] for it in good], 0.0)
    else:
        audio, lengths = torch.zeros(0, ONE_FRAME), torch.zeros(0, dtype=torch.long)
    return {
        "ids": [it["id"] for it in good],
        "indices": [it["index"] for it in good],
        "audio": audio,
        "audio_lengths": lengths,
        "skipped": skipped,
        "short": short,
        **({"windows": [it.get("window") for it in good]} if any("window" in it for it in good) else {}),
    }


def too_short_message(num_samples: int) -> str:
    return (f"{num_samples} samples ({num_samples / SAMPLE_RATE:.3f} s at 16 kHz), shorter than one frame "
            f"({ONE_FRAME} samples): empty transcript")


def shard_batches(
    lengths: Sequence[int], max_samples_per_batch: int, max_batch_size: int | None, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's batches (positions into `lengths`): every rank packs the same length-sorted
    batches and takes batch i when i % world_size == rank. Disjoint across ranks, covering all."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    lengths = np.asarray(lengths, dtype=np.int64)
    # Longest first: an out-of-memory batch shows up at once, not at the end of a long run.
    order = np.argsort(-lengths, kind="stable")
    batches = pack_batches(lengths, order, max_samples_per_batch, max_batch_size)
    return [b.tolist() for b in batches[rank::world_size]]


class ShardBatchSampler:
    """A fixed list of batches (a rank's shard). A class rather than a list: Lightning's predict loop
    wraps the batch sampler and copies its attributes."""

    drop_last = False  # every utterance of the shard is returned

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PredictDataModule(pl.LightningDataModule):
    """Predict batches over `sources`, sharded by the trainer's rank (run the Trainer with
    `use_distributed_sampler=False` so Lightning keeps this sharding).

    Args:
        sources: the utterances, each with a length estimate for batching.
        max_samples_per_batch: padded samples per batch (count × longest).
        max_batch_size: optional cap on utterances per batch.
        num_workers: DataLoader worker processes (audio loading).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        max_samples_per_batch: int = DEFAULT_MAX_SAMPLES_PER_BATCH,
        max_batch_size: int | None = None,
        num_workers: int = 0,
        chunking: ChunkConfig | None = None,
    ) -> None:
        super().__init__()
        self.chunking = chunking  # None: every file whole (as before chunking existed)
        if max_samples_per_batch <= 0:
            raise ValueError(f"max_samples_per_batch must be > 0, got {max_samples_per_batch}")
        if max_batch_size is not None and max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be > 0 or None, got {max_batch_size}")
        self.sources = list(sources)
        self.max_samples_per_batch, self.max_batch_size = max_samples_per_batch, max_batch_size
        self.num_workers = num_workers

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        items, windows = self._items()
        whole = [i for i, w in enumerate(windows) if w is None]
        batches = [[whole[j] for j in b] for b in shard_batches(
            [items[i].num_samples for i in whole], self.max_samples_per_batch, self.max_batch_size, rank, world
        )]
        batches += self._window_batches(windows, rank, world)
        return DataLoader(
            PredictDataset(items, windows),
            batch_sampler=ShardBatchSampler(batches),
            collate_fn=collate_predict,
            num_workers=self.num_workers,
        )


    def _items(self) -> tuple[list[Source], list[Window | None]]:
        """Dataset items: each source whole, or, when longer than one chunk, one item per window."""
        items, windows = [], []
        for src in self.sources:
            plan = None
            if self.chunking is not None and src.num_samples > self.chunking.chunk:
                try:  # the estimate said long: plan on the header's exact length
                    n = num_samples_16k(src.path)
                except AudioError:
                    n = 0  # loading it whole reports the same error, naming the file
                if n > self.chunking.chunk:
                    plan = plan_windows(n, self.chunking)
            for w in plan or [None]:
                items.append(src)
                windows.append(w)
        return items, windows

    def _window_batches(self, windows: list[Window | None], rank: int, world: int) -> list[list[int]]:
        """Long file k goes to rank k % world, whole (so its windows merge there); its windows are
        batched in order, several files' windows sharing a batch, so few files are open at once."""
        positions, files = [], -1
        for i, w in enumerate(windows):
            if w is not None:
                files += w.number == 0
                if files % world == rank:
                    positions.append(i)
        lengths = np.zeros(len(windows), dtype=np.int64)
        for i in positions:
            lengths[i] = windows[i].length
        return [b.tolist() for b in pack_batches(lengths, np.asarray(positions, dtype=np.int64),
                                                 self.max_samples_per_batch, self.max_batch_size)]


# ---------------------------------------------------------------------------------------- writer
class DecodingWriter(pl.Callback):
    """Decodes each predicted batch on its rank and keeps the per-utterance results.

    `make_decoder(model)` builds the `MultiDecoder` once the model (and its vocabularies) is known.
    """

    def __init__(
        self, make_decoder: Callable[[pl.LightningModule], MultiDecoder], *, times: bool = False,
        progress: bool = False, segmenting: SegmentConfig | None = None, reencode: bool = False,
        max_samples_per_batch: int = DEFAULT_MAX_SAMPLES_PER_BATCH,
    ) -> None:
        self.make_decoder = make_decoder
        self.times = times  # also align each decoder's best text: UtteranceResult.words
        self.progress = progress  # a line on stderr per window of a long file: audio seconds done
        # long files: cut at pauses and decoded segment by segment (segments.py); None: no cutting
        self.segmenting = segmenting or SegmentConfig(0, 0)
        # run each closed segment through the model again, alone: its neighbours leave the attention's
        # context, as in per-utterance decoding (2.3-2.9x the first pass's model time). Not without
        # cuts (--pause-seconds 0): the one "segment" is then the whole file, which chunking avoids.
        self.reencode = reencode and self.segmenting.min_pause > 0
        self.max_samples_per_batch = max_samples_per_batch
        self._module: pl.LightningModule | None = None
        self._window = max_samples_per_batch  # samples a window reads (set from the datamodule)
        self._trainer: pl.Trainer | None = None
        self.segmenter: StreamSegmenter | None = None
        self._partial: dict[int, dict] = {}  # long file -> its decoded segments so far
        self._failed: set[int] = set()  # long files one of whose blocks failed to load
        self._sources_long: set[int] = set()
        self.decoder: MultiDecoder | None = None
        self.results = RankResults(rank=0)
        self._sources: dict[int, Source] = {}
        self._started = 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results = RankResults(rank=trainer.global_rank)
        self.decoder = self.make_decoder(pl_module)
        self._module, self._trainer = pl_module, trainer
        self.segmenter = StreamSegmenter(self.segmenting, {h: v.blank_id for h, v in self.decoder.vocabs.items()
                                                           if v is not None})
        datamodule = trainer.datamodule
        self._sources = {s.index: s for s in getattr(datamodule, "sources", [])}
        chunk = getattr(datamodule, "chunking", None)
        self._window = chunk.chunk if chunk is not None else self.max_samples_per_batch
        self._sources_long = {i for i, s in self._sources.items() if chunk is not None and s.num_samples > chunk.chunk}

    def on_predict_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._started = time.perf_counter()

    def on_predict_batch_end(
        self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        res = self.results
        res.forward_seconds += time.perf_counter() - self._started
        res.batches += 1
        for item in batch["skipped"]:  # a long file fails once, whichever of its blocks failed
            if item["index"] not in self._failed:
                res.skipped.append(item)
            if item["index"] in self._sources_long:
                self._failed.add(item["index"])
                assert self.segmenter is not None
                self.segmenter.drop(item["index"])
                self._partial.pop(item["index"], None)
        assert self.decoder is not None
        for clip in batch.get("short", []):
            path = self._sources[clip["index"]].path if clip["index"] in self._sources else ""
            res.too_short.append({**clip, "path": path})
            empty = Decoded("", 0.0, [Hypothesis("", 0.0, {})])  # 0 frames: the empty path, probability 1
            res.utterances.append(UtteranceResult(
                index=clip["index"], id=clip["id"], path=path, num_samples=clip["num_samples"], frames=0,
                decoded={name: empty for name in self.decoder.output_names},
                words={name: ([], "no frames") for name in self.decoder.output_names} if self.times else {},
            ))
        if list(outputs["ids"]) != list(batch["ids"]):
            raise RuntimeError(
                f"predict_step returned ids {list(outputs['ids'])[:5]}... for a batch of {list(batch['ids'])[:5]}..."
            )
        if not batch["ids"]:
            return
        if batch.get("windows") is not None:
            self._merge_windows(outputs, batch)
            return
        frames = outputs["frame_lengths"]  # (B,)
        decoded = self.decoder.decode(outputs["grapheme_log_probs"], outputs["syllable_log_probs"], frames)
        lengths = batch["audio_lengths"].tolist()
        for b, (index, uid) in enumerate(zip(batch["indices"], batch["ids"], strict=True)):
            res.utterances.append(
                UtteranceResult(
                    index=index, id=uid, path=self._sources[index].path if index in self._sources else "",
                    num_samples=int(lengths[b]), frames=int(frames[b]),
                    decoded={name: per_utt[b] for name, per_utt in decoded.items()},
                    words=self._times(decoded, b, outputs, int(frames[b])),
                )
            )

    def _times(self, decoded: dict[str, list[Decoded]], b: int, outputs: dict, frames: int) -> dict:
        if not self.times:
            return {}
        lps = {h: None if outputs[f"{h}_log_probs"] is None else outputs[f"{h}_log_probs"][b, :frames]
               for h in HEADS}
        assert self.decoder is not None
        return {name: word_times(name, per_utt[b].text, lps, self.decoder.vocabs) for name, per_utt in decoded.items()}

    def _merge_windows(self, outputs: dict, batch: dict) -> None:
        """Hands each window's frames to the segmenter and decodes the segments it closed, all of
        the batch's at once; a long file's result is complete with its last segment."""
        assert self.segmenter is not None
        frames = outputs["frame_lengths"]
        closed: list[Segment] = []
        for b, (index, uid, window) in enumerate(zip(batch["indices"], batch["ids"], batch["windows"], strict=True)):
            if index in self._failed:
                continue
            lps = {h: None if outputs[f"{h}_log_probs"] is None else outputs[f"{h}_log_probs"][b, : int(frames[b])]
                   for h in HEADS}
            self._partial.setdefault(index, {"id": uid, "window": window, "decoded": [], "words": [], "from": []})
            closed += self.segmenter.add(index, window, lps)
            if self.progress:
                path = self._sources[index].path if index in self._sources else ""
                done = min(window.start + window.length, window.total_samples) / SAMPLE_RATE
                print(f"{path}: window {window.number + 1}/{window.count}, {done:.1f} of "
                      f"{window.total_samples / SAMPLE_RATE:.1f} s of audio", file=sys.stderr, flush=True)
        if closed:
            self._decode_segments(closed)

    def _reencoded(self, segments: list[Segment]) -> list[Segment]:
        """The segments with log-probs of their own speech alone: the samples of frames [lo, hi)
        (`_speech_span`) read again from the file and run through the model in batches of at most
        `max_samples_per_batch` padded samples; frames outside keep their first-pass log-probs. The
        frame count is the span's by construction (`FrameGeometry.num_frames` of that length), checked."""
        assert self._module is not None and self._trainer is not None
        stride, field = STANDARD_GEOMETRY.samples_per_frame, STANDARD_GEOMETRY.receptive_field
        started = time.perf_counter()
        spans = [self._speech_span(seg) for seg in segments]  # frames [lo, hi) of each segment
        audio = [read_block(self._sources[seg.index].path, (seg.start + lo) * stride, (hi - lo - 1) * stride + field)
                 for seg, (lo, hi) in zip(segments, spans, strict=True)]
        new: dict[int, Segment] = {}
        device = self._module.device
        for idx in self._reencode_batches([len(a) for a in audio]):
            wav, lengths = pad_1d([audio[i] for i in idx], 0.0)
            with self._trainer.precision_plugin.forward_context():
                log_probs, frames = self._module(wav.to(device), lengths.to(device))
            for b, i in enumerate(idx):
                seg, (lo, hi) = segments[i], spans[i]
                if int(frames[b]) != hi - lo:
                    raise RuntimeError(f"segment span of {hi - lo} frames re-encoded to {int(frames[b])}")
                lps = {h: None if seg.log_probs[h] is None else torch.cat(
                    [seg.log_probs[h][:lo], log_probs[h][b, : hi - lo].float().cpu(), seg.log_probs[h][hi:]])
                       for h in HEADS}
                new[i] = Segment(seg.index, seg.start, lps, seg.last)
        self.results.forward_seconds += time.perf_counter() - started
        return [new[i] for i in range(len(segments))]

    def _reencode_batches(self, lengths: list[int]) -> list[list[int]]:
        """Batches of segment positions, shortest first, each within the first pass's budget twice
        over: padded samples (count x longest) <= --max-samples-per-batch, and attention cost
        (count x longest^2) <= that of a batch of full windows, since a segment (up to
        --max-segment-seconds) may be longer than a window and attention grows with its square."""
        windows = max(1, self.max_samples_per_batch // max(1, self._window))
        n = np.array(lengths, dtype=np.int64)
        return [b.tolist() for b in pack_batches(n, np.argsort(n, kind="stable"), self.max_samples_per_batch,
                                                 max_squared=windows * self._window ** 2)]

    def _speech_span(self, seg: Segment) -> tuple[int, int]:
        """Frames [lo, hi) of `seg` from its first non-blank best label (any head) minus
        SPEECH_MARGIN to its last plus SPEECH_MARGIN; the whole segment when it is all blank."""
        assert self.segmenter is not None
        speech = torch.zeros(seg.frames, dtype=torch.bool)
        for h, lp in seg.log_probs.items():
            if lp is not None:
                speech |= lp.argmax(dim=-1) != self.segmenter.blank_ids[h]
        where = speech.nonzero().flatten()
        if len(where) == 0:
            return 0, seg.frames
        return max(0, int(where[0]) - SPEECH_MARGIN), min(seg.frames, int(where[-1]) + 1 + SPEECH_MARGIN)

    def _decode_segments(self, segments: list[Segment]) -> None:
        assert self.decoder is not None
        if self.reencode:
            segments = self._reencoded(segments)
        lengths = torch.tensor([seg.frames for seg in segments])
        padded = {h: None if segments[0].log_probs[h] is None else
                  torch.nn.utils.rnn.pad_sequence([seg.log_probs[h] for seg in segments], batch_first=True)
                  for h in HEADS}
        decoded = self.decoder.decode(padded["grapheme"], padded["syllable"], lengths)
        for i, seg in enumerate(segments):
            part = self._partial[seg.index]
            part["decoded"].append({name: per_utt[i] for name, per_utt in decoded.items()})
            if self.times:
                timed = self._times(decoded, i, {f"{h}_log_probs": padded[h] for h in HEADS}, seg.frames)
                part["words"].append({name: shift_words(w, seg.start * FRAME_SECONDS) for name, (w, _) in timed.items()})
                part["from"].append({name: source for name, (_, source) in timed.items()})
            if seg.last:
                self._finish(seg.index, self._partial.pop(seg.index))

    def _finish(self, index: int, part: dict) -> None:
        """One long file's result from its segments: texts joined, n-best combined, times concatenated."""
        assert self.decoder is not None
        window: Window = part["window"]
        decoded, words = {}, {}
        for name in self.decoder.output_names:
            nbests = [d[name].nbest for d in part["decoded"]]
            # nbest None: as many as the longest segment's list (the decoders keep every hypothesis)
            hyps = combine(nbests, self.decoder.nbest or max(map(len, nbests), default=1))
            decoded[name] = Decoded(hyps[0].text, hyps[0].score, hyps) if hyps else Decoded("", float("-inf"), [])
            if self.times:
                sources = sorted({f[name] for f in part["from"]})
                words[name] = ([w for seg in part["words"] for w in seg[name]], "; ".join(sources))
        self.results.utterances.append(UtteranceResult(
            index=index, id=part["id"], path=self._sources[index].path if index in self._sources else "",
            num_samples=window.total_samples, frames=window.total_frames, decoded=decoded, words=words,
        ))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.decoder is not None:
            self.results.decode_seconds = dict(self.decoder.seconds)
            self.decoder.close()


# ------------------------------------------------------------------------------------ gathering
def gather_results(local: RankResults, num_sources: int) -> list[RankResults] | None:
    """Every rank's results on rank 0 (None on the other ranks), checked for completeness.

    Runs after the predict loop, so ranks without any batch (more ranks than batches) take part too.
    Raises RuntimeError on rank 0 if an utterance is missing or appears twice.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[RankResults] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None  # type: ignore[list-item]
        dist.gather_object(local, gathered, dst=0)
        if dist.get_rank() != 0:
            return None
        assert gathered is not None
    else:
        gathered = [local]
    seen: dict[int, int] = {}
    for part in gathered:
        for index in [u.index for u in part.utterances] + [s["index"] for s in part.skipped]:
            seen[index] = seen.get(index, 0) + 1
    doubled = sorted(i for i, n in seen.items() if n > 1)
    missing = sorted(set(range(num_sources)) - set(seen))
    if doubled or missing:
        raise RuntimeError(
            f"sharded prediction lost or doubled utterances: missing indices {missing[:10]}, "
            f"doubled {doubled[:10]} (of {num_sources})"
        )
    return gathered


# --------------------------------------------------------------------------------------- trainer
def add_trainer_arguments(parser) -> None:
    """`--trainer.*` flags handed to `lightning.Trainer` (the subset that matters for inference)."""
    group = parser.add_argument_group("trainer (lightning.Trainer options for the predict loop)")
    group.add_argument("--trainer.accelerator", dest="accelerator", default="auto",
                       help="cpu, gpu, cuda, mps or auto (default: auto)")
    group.add_argument("--trainer.devices", dest="devices", default="1",
                       help="devices per node: a count, a list like 0,1, or auto (default: 1)")
    group.add_argument("--trainer.strategy", dest="strategy", default="auto",
                       help="auto, ddp, ... (several devices or nodes: ddp; default: auto)")
    group.add_argument("--trainer.num_nodes", dest="num_nodes", type=int, default=1,
                       help="number of nodes (default: 1)")
    group.add_argument("--trainer.precision", dest="precision", default="32-true",
                       help="32-true, bf16-mixed, 16-mixed (default: 32-true; log-softmax stays float32)")


def _devices(value: str) -> int | str | list[int]:
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return int(value)


def make_trainer(args, callbacks: list[pl.Callback], progress_bar: bool) -> pl.Trainer:
    """A Trainer for the predict loop from `add_trainer_arguments` flags: no logger, no checkpoints,
    our own sharding (`use_distributed_sampler=False`)."""
    return pl.Trainer(
        accelerator=args.accelerator,
        devices=_devices(str(args.devices)),
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        use_distributed_sampler=False,
        callbacks=callbacks,
    )


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (GPU available..., worker-count hints) off the terminal."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # about our ShardBatchSampler, which returns every utterance of its shard by construction
    warnings.filterwarnings("ignore", message=r".*custom batch sampler .* for prediction.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*Mean of empty slice.*")  # pyctcdecode on a 0-frame clip
    warnings.filterwarnings("ignore", message=r".*invalid value encountered in divide.*")


FINETUNER_EXPECTED = "a HierarchicalFineTuner checkpoint (.ckpt) from `kwav2vec finetune fit`"


def load_finetuner(path: str):
    """The `HierarchicalFineTuner` of a checkpoint, on the CPU, in eval mode, built from one read of
    the file, verified by `read_checkpoint`: a missing, empty, unreadable or damaged file, a
    directory or a checkpoint of something else gets one line naming it."""
    from kwav2vec.checkpoints.integrity import read_checkpoint
    from kwav2vec.lit.checkpoint_io import module_from_checkpoint
    from kwav2vec.lit.finetune import HierarchicalFineTuner

    # mmap: the tensors stay in the page cache until the module's parameters copy them
    blob = read_checkpoint(path, FINETUNER_EXPECTED, mmap=True)
    if not (isinstance(blob, dict) and "state_dict" in blob and "hyper_parameters" in blob):
        found = sorted(blob)[:10] if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: not a HierarchicalFineTuner checkpoint (expected {FINETUNER_EXPECTED}; "
                         f"found {found})")
    try:
        model = module_from_checkpoint(HierarchicalFineTuner, blob, path)
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: not a HierarchicalFineTuner checkpoint ({type(err).__name__}: {err})") from err
    model.eval()
    return model


def check_geometry(model: pl.LightningModule) -> None:
    """Chunk plans, short-clip checks and word times count standard frames (`STANDARD_GEOMETRY`,
    every preset and known import): a model with another conv stack is refused with one line
    instead of transcribed at the wrong frames."""
    config = getattr(model, "config", None)
    geometry = config.frame_geometry if config is not None else STANDARD_GEOMETRY
    if geometry != STANDARD_GEOMETRY:
        raise ValueError(f"the model's conv stack gives {geometry.samples_per_frame} samples per frame and a "
                         f"receptive field of {geometry.receptive_field}; transcription supports the standard "
                         f"{STANDARD_GEOMETRY.samples_per_frame} / {STANDARD_GEOMETRY.receptive_field} of every preset")


def run_prediction(
    model: pl.LightningModule,
    sources: Sequence[Source],
    make_decoder: Callable[[pl.LightningModule], MultiDecoder],
    args,
    *,
    progress_bar: bool,
    times: bool = False,
) -> tuple[list[RankResults] | None, float, int]:
    """Runs the predict loop over `sources` -> (every rank's results on rank 0 else None, wall
    seconds of the loop, world size). Files longer than `--chunk-seconds` go in windows
    (kwav2vec.inference.chunking); `times`: word times of every decoder's best text."""
    check_geometry(model)
    writer = DecodingWriter(make_decoder, times=times, progress=progress_bar, segmenting=segment_config(args),
                            reencode=getattr(args, "reencode_segments", None) is not False,  # default on
                            max_samples_per_batch=args.max_samples_per_batch)
    chunking = chunk_config(args)
    if writer.reencode and chunking is not None and any(s.num_samples > chunking.chunk for s in sources):
        # segments re-encoded in batches of varying lengths fragment glibc's heap (allocator.py); not
        # otherwise, where the fixed threshold only costs time (tiny model: forward 2.4 -> 3.0 s)
        fix_mmap_threshold()
    trainer = make_trainer(args, [writer], progress_bar)
    datamodule = PredictDataModule(
        sources, args.max_samples_per_batch, args.batch_size, num_workers=args.num_workers, chunking=chunking,
    )
    start = time.perf_counter()
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    wall = time.perf_counter() - start
    # A rank without batches skips the loop and its hooks: label its (empty) results here.
    writer.results.rank = trainer.global_rank
    gathered = gather_results(writer.results, len(sources))
    return gathered, wall, trainer.world_size


def command_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a command that reads a fine-tuned checkpoint: its first positional argument."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="HierarchicalFineTuner checkpoint (.ckpt), or a `convert --to onnx` directory")
    return parser


def add_prediction_arguments(parser: argparse.ArgumentParser, multiple_decoders: bool) -> None:
    """Decoder, batching and `--trainer.*` flags, which every prediction command takes."""
    add_decoder_arguments(parser, multiple=multiple_decoders)
    add_batching_arguments(parser)
    add_trainer_arguments(parser)


def chunk_config(args) -> ChunkConfig | None:
    """The --chunk-seconds / --stride-seconds windows (None: --chunk-seconds 0, every file whole)."""
    chunk = getattr(args, "chunk_seconds", 0) or 0
    return ChunkConfig.from_seconds(chunk, args.stride_seconds) if chunk > 0 else None


def segment_config(args) -> SegmentConfig:
    """The --pause-seconds / --max-segment-seconds cutting of long files' streams."""
    return SegmentConfig.from_seconds(getattr(args, "pause_seconds", DEFAULT_PAUSE_SECONDS),
                                      getattr(args, "max_segment_seconds", DEFAULT_MAX_SEGMENT_SECONDS))


def add_batching_arguments(parser) -> None:
    parser.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS,
                        help=f"files longer than this go through the model in windows of this length "
                        f"(default {DEFAULT_CHUNK_SECONDS}; 0: every file whole)")
    parser.add_argument("--stride-seconds", type=float, default=DEFAULT_STRIDE_SECONDS,
                        help=f"context on each side of a window, dropped from its output "
                        f"(default {DEFAULT_STRIDE_SECONDS}; rounded to 20 ms frames)")
    parser.add_argument("--pause-seconds", type=float, default=DEFAULT_PAUSE_SECONDS,
                        help=f"a long file's output is cut and decoded where every head is blank this long, "
                        f"with a word break there (default {DEFAULT_PAUSE_SECONDS}; 0: one stream per file)")
    parser.add_argument("--max-segment-seconds", type=float, default=DEFAULT_MAX_SEGMENT_SECONDS,
                        help=f"without such a pause, cut at the most certain blank after this long "
                        f"(default {DEFAULT_MAX_SEGMENT_SECONDS})")
    parser.add_argument("--reencode-segments", action=argparse.BooleanOptionalAction, default=None,
                        help="run each segment of a long file through the model again on its own speech, "
                        "so its neighbours are out of the attention's context, as in per-utterance decoding "
                        "(default on the lightning backend, 2.3-2.9x the first pass's model time; the onnx backend "
                        "decodes the first pass and refuses the flag)")
    parser.add_argument("--max-samples-per-batch", type=int, default=DEFAULT_MAX_SAMPLES_PER_BATCH,
                        help=f"padded 16 kHz samples per batch (default {DEFAULT_MAX_SAMPLES_PER_BATCH}, 100 s)")
    parser.add_argument("--batch-size", type=int, default=None, help="at most this many utterances per batch")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers loading audio (default 0)")
