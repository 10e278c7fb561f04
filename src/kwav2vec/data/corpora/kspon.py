"""KsponSpeech (AI Hub): 16 kHz 16-bit little-endian headerless `.pcm` with CP949 `.txt`
transcripts in KsponSpeech markup.

Layout as distributed:

    KsponSpeech_01/KsponSpeech_0001/KsponSpeech_000001.pcm  (+ .txt)   ... KsponSpeech_05  (train)
    KsponSpeech_eval/eval_clean/KsponSpeech_E00001.pcm       (+ .txt)
    KsponSpeech_eval/eval_other/KsponSpeech_E03001.pcm       (+ .txt)
    KsponSpeech_scripts/{train,dev,eval_clean,eval_other}.trn   lines `path :: transcript`

With a `.trn` script list (given, or found as `KsponSpeech_scripts/{split}.trn` under SRC) the
utterances and transcripts come from it; otherwise the tree is walked: split "train" takes every
`.pcm` outside `*eval*` folders, "eval_clean"/"eval_other" the `.pcm` under the folder of that
name, each with its same-named `.txt`. The "dev" split exists only as a script list.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from kwav2vec.data.prepare import Candidate, read_text_file

SPLITS = ("train", "dev", "eval_clean", "eval_other")
TRN_SEPARATOR = " :: "


def ksponspeech_candidates(src: str | os.PathLike, split: str = "train", trn: str | os.PathLike | None = None
                           ) -> Iterator[Candidate]:
    src = Path(src)
    if trn is None and (src / "KsponSpeech_scripts" / f"{split}.trn").is_file():
        trn = src / "KsponSpeech_scripts" / f"{split}.trn"
    if trn is not None:
        yield from _from_trn(src, Path(trn))
        return
    if split not in SPLITS or split == "dev":
        raise ValueError(f"KsponSpeech split {split!r}: without a .trn script list use one of "
                         f"train, eval_clean, eval_other (dev is defined only by KsponSpeech_scripts/dev.trn)")
    for pcm in sorted(src.rglob("*.pcm")):
        parts = [p.lower() for p in pcm.relative_to(src).parts[:-1]]
        in_eval = any("eval" in p for p in parts)
        if (split == "train" and not in_eval) or (split != "train" and split in parts):
            yield Candidate(pcm.stem, str(pcm.absolute()), text_path=str(pcm.with_suffix(".txt").absolute()))


def _from_trn(src: Path, trn: Path) -> Iterator[Candidate]:
    text, _ = read_text_file(trn)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if TRN_SEPARATOR.strip() not in line:
            raise ValueError(f"{trn}:{lineno}: expected 'path :: transcript', got {line[:80]!r}")
        path, transcript = (s.strip() for s in line.split(TRN_SEPARATOR.strip(), 1))
        audio = _locate(src, path)
        yield Candidate(Path(path).stem, str(audio), text=transcript)


def _locate(src: Path, path: str) -> Path:
    """The script lists' paths are relative to wherever the corpus was unpacked (sometimes with a
    leading folder or an absolute prefix): take the longest tail of the path that exists under SRC."""
    parts = Path(path).parts
    for k in range(len(parts)):
        candidate = src.joinpath(*parts[k:]) if not Path(*parts[k:]).is_absolute() else None
        if candidate is not None and candidate.is_file():
            return candidate.absolute()
    return (src / path.lstrip("/")).absolute()
