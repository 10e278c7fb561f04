"""Long recordings: windows with context, read in blocks, merged into one log-prob stream per file.

A file longer than one chunk is cut into windows of `chunk` samples that overlap by `2 * stride`:

    window w reads samples [s_w, s_w + chunk)   s_w = w * (chunk - 2 * stride)
    and keeps the global frames [lo_w, lo_{w+1})   lo_0 = 0, lo_w = (s_w + stride) / FRAME_STRIDE

(the last window ends at the file's end and keeps every frame up to the file's last one). Chunk and
stride are rounded to whole 320-sample frames, as transformers' ASR pipeline rounds its strides, so a
window's frame j is the file's frame s_w / 320 + j: the convolutional front end is shift-equivariant
by whole frames, and the frames each window keeps are exactly the file's frames, each from one window,
at least `stride` away from that window's edges. The kept frames form one continuous stream, which
segments.py cuts at pauses and hands to the decoders segment by segment.

Audio is read window by window with soundfile's seek (or from a `.pcm` offset), so memory holds one
batch of windows plus the open segment's log-probabilities, never the whole waveform. A file at another rate
is read at its own rate with a margin and resampled per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from kwav2vec.data.audio import (
    _WAV_BYTES_PER_SAMPLE,
    PCM_DTYPE,
    PCM_SUFFIXES,
    SAMPLE_RATE,
    AudioError,
    _wav_declared_data_bytes,
)
from kwav2vec.models.config import STANDARD_GEOMETRY

# Windows are planned in the standard geometry's frames; `predict` refuses a model with another
# conv stack (`check_geometry`) rather than cut its windows at the wrong frames.
FRAME_STRIDE = STANDARD_GEOMETRY.samples_per_frame  # samples per encoder frame: 20 ms at 16 kHz
FRAME_SECONDS = FRAME_STRIDE / SAMPLE_RATE
DEFAULT_CHUNK_SECONDS = 20.0  # see the README's long-recordings figures
DEFAULT_STRIDE_SECONDS = 2.0  # context kept on each side of a window (dropped from its log-probs)
RESAMPLE_MARGIN = 256  # native-rate samples read beyond a block so the resampler's edges fall outside it


def frames_for(num_samples: int) -> int:
    """Encoder frames of `num_samples` samples (the conv stack's output length); 0 below one frame."""
    return STANDARD_GEOMETRY.num_frames(num_samples)


@dataclass(frozen=True)
class ChunkConfig:
    """Window sizes in samples, whole frames (use `from_seconds`)."""

    chunk: int  # samples a window reads; files of at most this many samples are not chunked
    stride: int  # context samples each side of a window, dropped from its log-probs

    @classmethod
    def from_seconds(cls, chunk_seconds: float, stride_seconds: float) -> ChunkConfig:
        chunk = round(chunk_seconds * SAMPLE_RATE / FRAME_STRIDE) * FRAME_STRIDE
        stride = round(stride_seconds * SAMPLE_RATE / FRAME_STRIDE) * FRAME_STRIDE
        if stride < FRAME_STRIDE:
            # the last frame a window keeps needs 80 samples beyond it: at least one frame of context
            raise ValueError(f"--stride-seconds must be >= {FRAME_SECONDS} (one frame), got {stride_seconds}")
        if chunk - 2 * stride < FRAME_STRIDE:
            raise ValueError(
                f"--chunk-seconds ({chunk_seconds}) must exceed twice --stride-seconds ({stride_seconds}) "
                f"by at least one frame ({FRAME_SECONDS} s)"
            )
        return cls(chunk, stride)


@dataclass  # not frozen: Lightning's batch transfer rebuilds dataclasses found in a batch
class Window:
    """One window of a long file."""

    number: int  # position in the file (0-based)
    count: int  # windows of the file
    start: int  # first sample (16 kHz)
    length: int  # samples read
    keep_from: int  # first local frame kept
    keep_to: int  # one past the last local frame kept
    total_samples: int  # the file's length (16 kHz)
    total_frames: int  # the file's frames: the kept frames of all windows, concatenated


def plan_windows(num_samples: int, config: ChunkConfig) -> list[Window]:
    """The windows of a file of `num_samples` samples (> config.chunk), kept frames tiling it."""
    chunk, stride = config.chunk, config.stride
    if num_samples <= chunk:
        raise ValueError(f"{num_samples} samples fit in one chunk of {chunk}: no windows needed")
    step = chunk - 2 * stride
    starts = [0]
    while starts[-1] + chunk < num_samples:
        starts.append(starts[-1] + step)
    total = frames_for(num_samples)
    bounds = [0] + [(s + stride) // FRAME_STRIDE for s in starts[1:]] + [total]  # global frames kept
    windows = []
    for w, s in enumerate(starts):
        length = min(chunk, num_samples - s)
        first = s // FRAME_STRIDE
        windows.append(Window(w, len(starts), s, length, bounds[w] - first, bounds[w + 1] - first,
                              num_samples, total))
    return windows


def num_samples_16k(path: str) -> int:
    """The file's length at 16 kHz from its header; AudioError naming the file if it is unusable
    (zero-length, or a WAV header declaring more audio than the file holds)."""
    p = Path(path)
    size = p.stat().st_size if p.exists() else -1
    if size < 0:
        raise AudioError(path, "missing", "no such file")
    if size == 0:
        raise AudioError(path, "empty", "file has 0 bytes")
    if path.lower().endswith(PCM_SUFFIXES):
        return size // PCM_DTYPE.itemsize
    try:
        info = sf.info(path)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(path, "unreadable", str(err).replace(f"'{path}'", "file")) from None
    if info.frames == 0:
        raise AudioError(path, "empty", "no audio frames")
    if path.lower().endswith(".wav") and info.subtype in _WAV_BYTES_PER_SAMPLE:
        declared = _wav_declared_data_bytes(p)
        have = info.frames * info.channels * _WAV_BYTES_PER_SAMPLE[info.subtype]
        if declared is not None and have < declared:
            frame_bytes = info.channels * _WAV_BYTES_PER_SAMPLE[info.subtype]
            raise AudioError(path, "truncated", (
                f"header declares {declared} bytes of audio ({declared / frame_bytes / info.samplerate:.2f} s), "
                f"the file ends at {info.frames / info.samplerate:.2f} s (byte {have} of the data)"))
    return math.ceil(info.frames * SAMPLE_RATE / info.samplerate)


def read_block(path: str, start: int, length: int) -> torch.Tensor:
    """Samples [start, start + length) of the file at 16 kHz, mono float32 (length,); AudioError
    naming the file and the position when the block cannot be read or the file ends early."""
    where = f"at {start / SAMPLE_RATE:.2f} s (16 kHz sample {start})"
    if path.lower().endswith(PCM_SUFFIXES):
        with open(path, "rb") as f:
            f.seek(start * PCM_DTYPE.itemsize)
            raw = f.read(length * PCM_DTYPE.itemsize)
        data = np.frombuffer(raw[: len(raw) // PCM_DTYPE.itemsize * PCM_DTYPE.itemsize], dtype=PCM_DTYPE)
        block = torch.from_numpy(data.astype(np.float32) / 32768.0)
    else:
        try:
            with sf.SoundFile(path) as f:
                rate = f.samplerate
                if rate == SAMPLE_RATE:
                    f.seek(start)
                    data = f.read(length, dtype="float32", always_2d=True)  # (S, C)
                    block = torch.from_numpy(data).mean(dim=1)
                else:
                    lo = max(0, math.floor(start * rate / SAMPLE_RATE) - RESAMPLE_MARGIN)
                    hi = math.ceil((start + length) * rate / SAMPLE_RATE) + RESAMPLE_MARGIN
                    f.seek(lo)
                    data = f.read(hi - lo, dtype="float32", always_2d=True)
                    wav = AF.resample(torch.from_numpy(data).mean(dim=1), rate, SAMPLE_RATE)
                    offset = start - round(lo * SAMPLE_RATE / rate)
                    block = wav[offset: offset + length]
        except (sf.SoundFileError, RuntimeError, OSError) as err:
            raise AudioError(path, "unreadable", f"{where}: {str(err).replace(repr(path), 'file')}") from None
    if block.shape[0] < length:
        raise AudioError(path, "truncated", (
            f"{where}: the header promises {length} more samples, the file ends after {block.shape[0]} "
            f"(at {(start + block.shape[0]) / SAMPLE_RATE:.2f} s)"))
    return block.contiguous()
