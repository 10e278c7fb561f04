"""A TSV or CSV listing of audio files and transcripts (tab-separated, comma for `.csv`), paths
relative to the listing's folder (or `audio_root`) or absolute. Ids are the paths without extension.

Columns are found by name:
- with a header row (a cell named path/audio/file/filename/wav/audio_path): the audio column is the
  first such cell, the transcript the first cell named text/transcript/transcription/sentence (none:
  no transcripts, fine for unlabeled manifests); every other column is kept as metadata in the
  manifest line (`"meta": {"speaker": "spk01", ...}`), never appended to the transcript;
- `--columns path,text,speaker`: the same names given for a listing without a header;
- otherwise rows are `path<TAB>text` (or a path alone): a row with more than two columns is an error
  naming the line and suggesting a header or `--columns`.
A row whose path cell is empty becomes a reject ("listing:empty-path", naming the line).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from kwav2vec.data.prepare import Candidate, read_text_file

PATH_NAMES = ("path", "audio", "file", "filename", "wav", "audio_path")
TEXT_NAMES = ("text", "transcript", "transcription", "sentence")


def _layout(names: Sequence[str], where: str) -> tuple[int, int | None]:
    """(audio column, transcript column or None) of a header row / --columns."""
    lowered = [n.strip().lower() for n in names]
    audio = next((i for i, n in enumerate(lowered) if n in PATH_NAMES), None)
    if audio is None:
        raise ValueError(f"{where}: no audio column among {list(names)} (name it one of {', '.join(PATH_NAMES)})")
    text = next((i for i, n in enumerate(lowered) if n in TEXT_NAMES), None)
    return audio, text


def tsv_candidates(src: str | os.PathLike, audio_root: str | os.PathLike | None = None,
                   delimiter: str | None = None, columns: str | Sequence[str] | None = None) -> Iterator[Candidate]:
    src = Path(src)
    root = Path(audio_root) if audio_root is not None else src.parent
    if delimiter is None:
        delimiter = "," if src.suffix.lower() == ".csv" else "\t"
    text, _ = read_text_file(src)
    rows = csv.reader(text.splitlines(), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else
                      csv.QUOTE_NONE)
    names: list[str] | None = None
    if columns is not None:
        names = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)]
        layout = _layout(names, f"--columns {','.join(names)}")
    first = True
    for lineno, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if first:
            first = False
            cells = [c.strip().lower() for c in row]
            if names is not None and cells == [n.lower() for n in names]:
                continue  # a header row that repeats --columns
            if names is None and any(c in PATH_NAMES for c in cells):
                names = [c.strip() for c in row]
                layout = _layout(names, f"{src}:{lineno}")
                continue
        if names is None:
            if len(row) > 2:
                raise ValueError(
                    f"{src}:{lineno}: {len(row)} columns in a listing without a header row, expected 2 "
                    f"(path{'<TAB>' if delimiter == chr(9) else delimiter}text); name the columns in a header "
                    f"row (path, text, speaker, ...) or with --columns path,text,..."
                )
            audio_col, text_col, meta_cols = 0, (1 if len(row) > 1 else None), []
        else:
            if len(row) > len(names):
                raise ValueError(f"{src}:{lineno}: {len(row)} columns, the header names {len(names)} "
                                 f"({', '.join(names)}); a transcript with a {delimiter!r} inside needs quoting")
            audio_col, text_col = layout
            meta_cols = [i for i in range(len(names)) if i not in (audio_col, text_col)]
        cells = [c.strip() for c in row] + [""] * (len(names or ()) - len(row))
        path = cells[audio_col]
        if not path:
            yield Candidate(f"{src.name}:{lineno}", str(src), problem=(
                "listing:empty-path", f"{src}:{lineno}: the audio path is empty"))
            continue
        audio = Path(path) if os.path.isabs(path) else root / path
        meta = {names[i]: cells[i] for i in meta_cols if cells[i]} if names is not None else {}
        transcript = row[text_col] if text_col is not None and text_col < len(row) else None
        uid = Path(path).with_suffix("").as_posix().lstrip("/")
        yield Candidate(uid, str(audio.absolute()), text=transcript, meta=meta or None)
