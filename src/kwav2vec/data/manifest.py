"""JSONL manifests: one utterance per line.

    {"id": "KsponSpeech_000001", "audio": "audio/KsponSpeech_000001.pcm", "num_samples": 51200,
     "sample_rate": 16000, "text": "raw transcript", "norm": "normalized transcript"}

`audio` is relative to the manifest's folder (its *root*) or absolute; `num_samples` is the length
at 16 kHz (after resampling), `sample_rate` the file's own rate. `text`/`norm` are absent for
unlabeled audio. Reading checks every line and fails with the file and line number, so a broken
manifest stops a run before training instead of in the middle of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kwav2vec.data.audio import SAMPLE_RATE
from kwav2vec.fileio import atomic_open

GRAPHEME_VOCAB_FILE = "vocab_grapheme.json"  # vocabularies live beside the training manifest
SYLLABLE_VOCAB_FILE = "vocab_syllable.json"


class ManifestError(ValueError):
    """A manifest line is unusable. Names the manifest file and the 1-based line."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ManifestEntry:
    id: str
    audio: str  # as written in the manifest (relative to its root, or absolute)
    num_samples: int  # length at 16 kHz
    sample_rate: int = SAMPLE_RATE  # the file's own rate
    text: str | None = None  # raw transcript
    norm: str | None = None  # normalized transcript (the training target)
    path: str = ""  # `audio` resolved against the root (filled by read_manifest)

    def to_json(self) -> dict:
        out: dict = {"id": self.id, "audio": self.audio, "num_samples": self.num_samples,
                     "sample_rate": self.sample_rate}
        if self.text is not None:
            out["text"] = self.text
        if self.norm is not None:
            out["norm"] = self.norm
        return out


def read_manifest(
    path: str | os.PathLike,
    *,
    audio_root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    require_norm: bool = False,
) -> list[ManifestEntry]:
    """Parse and check a JSONL manifest.

    Args:
        audio_root: folder relative `audio` paths are resolved against; default the manifest's folder.
        allow_outside_root: accept relative paths that climb out of the root with `..` (absolute
            paths are always accepted: they are explicit, `..` escapes are usually an accident).
        require_norm: every line must carry a `norm` transcript (fine-tuning).

    Raises `ManifestError` naming file and line for: a line that is not a JSON object, a missing or
    ill-typed field, a duplicate id, a path that escapes the root.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, None, "manifest not found")
    root = Path(os.path.abspath(audio_root if audio_root is not None else path.parent))
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            entry = _parse_line(path, lineno, line, root, allow_outside_root, require_norm)
            if entry.id in seen:
                raise ManifestError(path, lineno, f"duplicate id {entry.id!r} (first on line {seen[entry.id]})")
            seen[entry.id] = lineno
            entries.append(entry)
    return entries


def _parse_line(
    path: Path, lineno: int, line: str, root: Path, allow_outside_root: bool, require_norm: bool
) -> ManifestEntry:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ManifestError(path, lineno, f"not JSON ({err.msg}): {line.strip()[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ManifestError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")

    def field(name: str, kind: type, required: bool = True):
        value = obj.get(name)
        if value is None:
            if required:
                raise ManifestError(path, lineno, f"missing field {name!r}")
            return None
        # bool is an int subclass; `"num_samples": true` is a mistake, not 1 sample.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ManifestError(path, lineno, f"field {name!r} must be {kind.__name__}, got {value!r}")
        return value

    uid, audio = field("id", str), field("audio", str)
    num_samples = field("num_samples", int)
    if num_samples < 0:
        raise ManifestError(path, lineno, f"num_samples must be >= 0, got {num_samples}")
    sample_rate = field("sample_rate", int, required=False) or SAMPLE_RATE
    text, norm = field("text", str, required=False), field("norm", str, required=False)
    if require_norm and norm is None:
        raise ManifestError(path, lineno, f"utterance {uid!r} has no 'norm' transcript (needed for fine-tuning)")
    return ManifestEntry(uid, audio, num_samples, sample_rate, text, norm,
                         path=resolve_audio_path(audio, root, allow_outside_root, path, lineno))


def resolve_audio_path(
    audio: str, root: Path, allow_outside_root: bool = False, manifest: Path | None = None, line: int | None = None
) -> str:
    """Absolute path of a manifest `audio` value; relative paths must stay under `root`."""
    if os.path.isabs(audio):
        return os.path.normpath(audio)
    resolved = os.path.normpath(os.path.join(root, audio))
    if not allow_outside_root and os.path.commonpath([resolved, str(root)]) != str(root):
        raise ManifestError(
            manifest or root, line,
            f"audio path {audio!r} points outside the manifest root {str(root)!r}; write an absolute path "
            "in the manifest, or set the root it is relative to (--data.audio_root DIR when training, "
            "--audio-root DIR for kwav2vec evaluate)",
        )
    return resolved


def manifest_audio_path(audio_path: str | os.PathLike, manifest_dir: str | os.PathLike) -> str:
    """What to write as `audio`: relative to the manifest's folder when the file lies under it, so the
    tree can be moved as a whole; otherwise absolute."""
    audio_path, manifest_dir = os.path.abspath(audio_path), os.path.abspath(manifest_dir)
    if os.path.commonpath([audio_path, manifest_dir]) == manifest_dir:
        return os.path.relpath(audio_path, manifest_dir)
    return audio_path


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry | dict]) -> int:
    """Write entries as JSONL (UTF-8, Korean unescaped) atomically (`kwav2vec.fileio`), so a reader
    never sees half a manifest. Returns the number of lines."""
    count = 0
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        for entry in entries:
            obj = entry.to_json() if isinstance(entry, ManifestEntry) else entry
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
    return count
