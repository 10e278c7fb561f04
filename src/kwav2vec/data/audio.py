"""Read one audio file as a 16 kHz mono float32 waveform.

Everything that touches audio bytes goes through `load_audio`, so every failure (missing, empty,
truncated, not audio at all) becomes one exception type, `AudioError`, that names the file and
carries a short machine-readable `reason` the preparers and the dataset count by.

Formats: WAV / FLAC / OGG (anything libsndfile reads) through soundfile, and KsponSpeech's
headerless `.pcm` (16 kHz, 16-bit signed little-endian, mono). Other rates are resampled with
torchaudio's windowed-sinc resampler; several channels are averaged to mono.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000  # Hz: every model in this project consumes 16 kHz audio
PCM_SAMPLE_RATE = 16000  # KsponSpeech .pcm files are 16 kHz ...
PCM_DTYPE = np.dtype("<i2")  # ... 16-bit signed little-endian, mono, no header
PCM_SUFFIXES = (".pcm", ".raw")


class AudioError(ValueError):
    """An audio file could not be used. `reason` is one of: missing, empty, unreadable, truncated,
    dangling-symlink, symlink-loop, format-mismatch (a WAV file named `.pcm`)."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str) -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}: {detail}")


@dataclass(frozen=True)
class AudioInfo:
    """What `load_audio_with_info` found about a file besides its samples."""

    sample_rate: int  # the file's own rate (before resampling)
    channels: int  # the file's channel count (before the downmix)
    frames: int  # length in the file's own rate


def load_audio(path: str | os.PathLike, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Return the file's samples as a float32 tensor (S,) in [-1, 1], mono, at `target_rate` Hz.

    Raises `AudioError` (naming the path) for missing, empty, unreadable or truncated files.
    """
    return load_audio_with_info(path, target_rate)[0]


def load_audio_with_info(
    path: str | os.PathLike, target_rate: int = SAMPLE_RATE
) -> tuple[torch.Tensor, AudioInfo]:
    """`load_audio` that also reports the file's own rate and channel count (the preparers count
    resampled and downmixed files)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if path.is_symlink():
            raise AudioError(path, "dangling-symlink", f"symbolic link to {os.readlink(path)}, which does not exist") from None
        raise AudioError(path, "missing", "no such file") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise AudioError(path, "symlink-loop", "symbolic links that point at each other in a loop") from None
        raise AudioError(path, "unreadable", str(err)) from None
    if size == 0:
        raise AudioError(path, "empty", "file has 0 bytes")

    if path.suffix.lower() in PCM_SUFFIXES:
        with open(path, "rb") as f:
            head = f.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":  # its 44-byte header would be read as samples
            raise AudioError(path, "format-mismatch", "a RIFF/WAVE header in a headerless .pcm file: it is a WAV "
                             "file, rename it .wav")
        samples, rate, channels = _read_pcm(path, size), PCM_SAMPLE_RATE, 1
    else:
        samples, rate, channels = _read_soundfile(path)
    frames = samples.shape[0]
    if frames == 0:
        raise AudioError(path, "empty", "no audio frames")

    wav = torch.from_numpy(samples)  # (S, C)
    wav = wav.mean(dim=1) if channels > 1 else wav[:, 0]  # (S,)
    if rate != target_rate:
        wav = AF.resample(wav, rate, target_rate)
    return wav.contiguous(), AudioInfo(sample_rate=rate, channels=channels, frames=frames)


def _read_pcm(path: Path, size: int) -> np.ndarray:
    if size % PCM_DTYPE.itemsize:
        raise AudioError(path, "truncated", f"{size} bytes is not a whole number of 16-bit samples")
    data = np.fromfile(path, dtype=PCM_DTYPE)
    return (data.astype(np.float32) / 32768.0)[:, None]  # (S, 1)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int, int]:
    try:
        with sf.SoundFile(path) as f:
            rate, subtype = f.samplerate, f.subtype
            data = f.read(dtype="float32", always_2d=True)  # (S, C)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(path, "unreadable", str(err).replace(f"'{path}'", "file")) from None
    if path.suffix.lower() == ".wav" and subtype in _WAV_BYTES_PER_SAMPLE:
        # libsndfile silently returns the frames that are there when a WAV was cut short, so
        # compare with what the header promises.
        declared = _wav_declared_data_bytes(path)
        have = data.size * _WAV_BYTES_PER_SAMPLE[subtype]
        if declared is not None and have < declared:
            raise AudioError(path, "truncated", f"header declares {declared} bytes of audio, file holds {have}")
    return data, int(rate), int(data.shape[1])


_WAV_BYTES_PER_SAMPLE = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def _wav_declared_data_bytes(path: Path) -> int | None:
    """Size of the `data` chunk as the RIFF header states it; None if unknown (streamed WAVs write
    0 or 0xFFFFFFFF there) or if the header is not plain RIFF/WAVE."""
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF":
            return None
        f.read(4)
        if f.read(4) != b"WAVE":
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            chunk, length = head[:4], struct.unpack("<I", head[4:])[0]
            if chunk == b"data":
                return None if length in (0, 0xFFFFFFFF) else length
            f.seek(length + (length & 1), os.SEEK_CUR)


def is_silent(wav: torch.Tensor, threshold: float = 1e-4) -> bool:
    """True when no sample reaches `threshold` (about -80 dBFS): digital silence or DC only."""
    return wav.numel() == 0 or float((wav - wav.mean()).abs().max()) < threshold
