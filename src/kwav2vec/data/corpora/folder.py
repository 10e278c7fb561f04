"""A plain folder of audio files, each with a same-named `.txt` transcript (UTF-8 or CP949)
unless the manifest is unlabeled. Ids are the paths relative to the folder, without extension.
Symbolic links are listed too, so a dangling or looping one becomes a reject with its reason
(audio:dangling-symlink, audio:symlink-loop) instead of vanishing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from kwav2vec.data.prepare import Candidate

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".pcm")


def folder_candidates(src: str | os.PathLike) -> Iterator[Candidate]:
    src = Path(src)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and (p.is_file() or p.is_symlink()))
    for audio in files:
        uid = audio.relative_to(src).with_suffix("").as_posix()
        yield Candidate(uid, str(audio.absolute()), text_path=str(audio.with_suffix(".txt").absolute()))
