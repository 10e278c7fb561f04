"""fairseq's wav2vec manifests, so existing data can come in and our data can go out.

    train.tsv   first line: the audio root; then `relative/path.wav<TAB>nframes` per utterance
    train.ltr   letters separated by spaces, `|` closing every word:  "ᄋ ᅡ ᆫ | ᄂ ᅧ ᆼ |"
    train.wrd   the words:                                            "안 녕"

Lines of the three files correspond one to one. fairseq assumes 16 kHz audio, so `nframes` is
taken as (and written from) our `num_samples` at 16 kHz. For Korean the letters are the conjoining
jamo of `kwav2vec.text.hangul.decompose`, as K-wav2vec's fine-tuning manifests use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from kwav2vec.data.audio import SAMPLE_RATE
from kwav2vec.data.manifest import ManifestEntry, ManifestError, manifest_audio_path, resolve_audio_path
from kwav2vec.fileio import atomic_write_text
from kwav2vec.text.hangul import WORD_BOUNDARY, compose, decompose


def letters(text: str) -> str:
    """fairseq `.ltr` line of a normalized transcript: one token per jamo, `|` after every word."""
    words = text.split()
    return " ".join(" ".join(decompose(w)) + " " + WORD_BOUNDARY for w in words)


def text_from_letters(line: str) -> str:
    """Inverse of `letters` (also accepts fairseq English-style letter lines)."""
    chars = ["" if t == WORD_BOUNDARY else t for t in line.split()]
    words, current = [], []
    for c in chars:
        if c:
            current.append(c)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return compose(" ".join(words))


def read_fairseq_manifest(
    tsv: str | os.PathLike,
    *,
    ltr: str | os.PathLike | None = None,
    wrd: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
) -> list[ManifestEntry]:
    """Entries of a fairseq `.tsv` (+ `.wrd` or `.ltr` transcripts, looked up beside it when not
    given). The transcript goes to `text` (raw, to be normalized by the caller); ids are the
    relative paths without extension."""
    tsv = Path(tsv)
    lines = tsv.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ManifestError(tsv, None, "empty fairseq manifest (expected the audio root on line 1)")
    root = Path(os.path.abspath(lines[0].strip() or tsv.parent))
    rows = [(n, line) for n, line in enumerate(lines[1:], start=2) if line.strip()]

    texts: list[str] | None = None
    wrd = Path(wrd) if wrd is not None else tsv.with_suffix(".wrd")
    ltr = Path(ltr) if ltr is not None else tsv.with_suffix(".ltr")
    if wrd.is_file():
        texts = [t.strip() for t in wrd.read_text(encoding="utf-8").splitlines()]
        source = wrd
    elif ltr.is_file():
        texts = [text_from_letters(t) for t in ltr.read_text(encoding="utf-8").splitlines()]
        source = ltr
    if texts is not None and len(texts) != len(rows):
        raise ManifestError(source, None, f"{len(texts)} transcripts for {len(rows)} audio lines in {tsv}")

    entries = []
    for i, (lineno, line) in enumerate(rows):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise ManifestError(tsv, lineno, f"expected 'path<TAB>nframes', got {line[:80]!r}")
        rel, nframes = parts[0], int(parts[1])
        path = resolve_audio_path(rel, root, allow_outside_root, tsv, lineno)
        uid = os.path.splitext(rel)[0]
        entries.append(ManifestEntry(uid, path, nframes, SAMPLE_RATE,
                                     text=texts[i] if texts is not None else None, path=path))
    return entries


def write_fairseq_manifest(
    entries: Sequence[ManifestEntry], out_dir: str | os.PathLike, split: str, *, root: str | os.PathLike
) -> list[Path]:
    """Write `{split}.tsv` (audio relative to `root` when under it) and, when the entries carry
    normalized transcripts, `{split}.ltr` and `{split}.wrd`. Returns the files written."""
    out_dir, root = Path(out_dir), Path(os.path.abspath(root))
    out_dir.mkdir(parents=True, exist_ok=True)
    tsv = out_dir / f"{split}.tsv"
    lines = [f"{manifest_audio_path(e.path or e.audio, root)}\t{e.num_samples}\n" for e in entries]
    atomic_write_text(tsv, f"{root}\n" + "".join(lines))
    written = [tsv]
    if entries and all(e.norm is not None for e in entries):
        for suffix, fn in ((".ltr", letters), (".wrd", lambda t: t)):
            out = out_dir / f"{split}{suffix}"
            atomic_write_text(out, "".join(fn(e.norm) + "\n" for e in entries))
            written.append(out)
    return written
