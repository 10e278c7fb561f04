"""Small audio/manifest builders shared by the tests/test_data_*.py files (no tests here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def tone(num_samples: int, rate: int = SR, freq: float = 220.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, (S,) or (S, C) float32 in [-0.6, 0.6]."""
    t = np.arange(num_samples) / rate
    rng = np.random.default_rng(seed)
    x = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(num_samples)
    x = x.astype(np.float32)
    if channels > 1:
        x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    return x


def write_wav(path: Path, num_samples: int, rate: int = SR, channels: int = 1, seed: int = 0,
              subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(num_samples, rate, channels=channels, seed=seed), rate, subtype=subtype)
    return path


def write_flac(path: Path, num_samples: int, rate: int = SR, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(num_samples, rate, seed=seed), rate, format="FLAC")
    return path


def write_pcm(path: Path, num_samples: int, seed: int = 0, silent: bool = False) -> Path:
    """KsponSpeech-style headerless 16 kHz 16-bit little-endian PCM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.zeros(num_samples, np.float32) if silent else tone(num_samples, seed=seed)
    (x * 32767).astype("<i2").tofile(path)
    return path


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def audio_manifest(root: Path, lengths: list[int], texts: list[str] | None = None, name: str = "train.jsonl") -> Path:
    """WAV files of the given lengths under root/audio and a manifest root/name pointing at them."""
    rows = []
    for i, n in enumerate(lengths):
        write_wav(root / "audio" / f"u{i:03d}.wav", n, seed=i)
        row = {"id": f"u{i:03d}", "audio": f"audio/u{i:03d}.wav", "num_samples": n, "sample_rate": SR}
        if texts is not None:
            row |= {"text": texts[i], "norm": texts[i]}
        rows.append(row)
    return write_jsonl(root / name, rows)
