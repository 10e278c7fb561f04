"""Zeroth-Korean (OpenSLR 40): FLAC audio with one `<speaker>_<chapter>.trans.txt` per folder,
lines `<utterance_id> <transcript>`; audio is `<utterance_id>.flac` beside it.

    train_data_01/003/106/106_003.trans.txt, 106_003_0000.flac, ...
    test_data_01/...

Split "train" / "test" selects `train_data_01` / `test_data_01` when SRC holds them; otherwise (or
for any other split name) every `.trans.txt` under SRC is read.

The id and the transcript may be separated by any whitespace (some copies use a TAB). A line whose
first word is not an utterance id of its file (`<speaker>_<chapter>_...` for `<speaker>_<chapter>.trans.txt`)
becomes a reject, "listing:malformed-line", naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from kwav2vec.data.prepare import Candidate, read_text_file


def zeroth_candidates(src: str | os.PathLike, split: str = "train") -> Iterator[Candidate]:
    src = Path(src)
    if (src / f"{split}_data_01").is_dir():
        src = src / f"{split}_data_01"
    for trans in sorted(src.rglob("*.trans.txt")):
        text, _ = read_text_file(trans)
        prefix = trans.name[: -len(".trans.txt")] + "_"
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            uid, *rest = line.split(maxsplit=1)
            transcript = rest[0] if rest else None
            if not uid.startswith(prefix):
                yield Candidate(f"{trans.name}:{lineno}", str(trans.absolute()), problem=(
                    "listing:malformed-line",
                    f"{trans}:{lineno}: expected '<utterance id> <transcript>' with an id starting {prefix!r}, "
                    f"got {line.strip()[:60]!r}"))
                continue
            # without a transcript it is kept: the preparer rejects it as transcript:missing, so it is counted
            yield Candidate(uid, str((trans.parent / f"{uid}.flac").absolute()), text=transcript)
