"""A TSV or CSV listing `path<TAB>text` (`path,text` for `.csv`), paths relative to the listing's
folder (or `audio_root`) or absolute. A header row whose first cell is path/audio/file/filename/wav
is skipped; rows with only a path have no transcript (fine for unlabeled manifests). Ids are the
paths without extension."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from kwav2vec.data.prepare import Candidate, read_text_file

HEADER_NAMES = {"path", "audio", "file", "filename", "wav", "audio_path"}


def tsv_candidates(src: str | os.PathLike, audio_root: str | os.PathLike | None = None,
                   delimiter: str | None = None) -> Iterator[Candidate]:
    src = Path(src)
    root = Path(audio_root) if audio_root is not None else src.parent
    if delimiter is None:
        delimiter = "," if src.suffix.lower() == ".csv" else "\t"
    text, _ = read_text_file(src)
    rows = csv.reader(text.splitlines(), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else
                      csv.QUOTE_NONE)
    for lineno, row in enumerate(rows, start=1):
        if not row or not row[0].strip():
            continue
        if lineno == 1 and row[0].strip().lower() in HEADER_NAMES:
            continue
        path = row[0].strip()
        audio = Path(path) if os.path.isabs(path) else root / path
        transcript = delimiter.join(row[1:]) if len(row) > 1 else None
        uid = Path(path).with_suffix("").as_posix().lstrip("/")
        yield Candidate(uid, str(audio.absolute()), text=transcript)
