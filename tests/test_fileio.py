"""One atomic writer: every file kwav2vec writes goes through `kwav2vec.fileio`, and `atomic_move`
puts a file another library wrote in place as `atomic_open` does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kwav2vec import fileio

SRC = Path(__file__).resolve().parents[1] / "src" / "kwav2vec"
# Calls that write a file (or rename one into place) past the helper; safetensors' `save_file`
# writes in place (its `save` returns the bytes for `atomic_write_bytes`).
DIRECT_WRITES = re.compile(
    r"""\bopen\([^)]*['"][wax]b?['"]|\.write_text\(|\.write_bytes\(|\bjson\.dump\(|\btorch\.save\(|"""
    r"""\bimport save_file\b|\b(?:sf|soundfile)\.write\(|\bos\.replace\(|\bos\.rename\("""
)
# The only places allowed to: the helper itself, and prepare's staged publish, which renames files
# that were each written with the helper (fsynced) into place and then fsyncs the folder once.
ALLOWED = {"fileio.py": None, "data/prepare.py": {"os.replace("}}


def _code_lines(path: Path) -> list[tuple[int, str]]:
    lines, in_doc = [], False
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.count('"""') == 1:  # a docstring opens or closes here
            in_doc = not in_doc
            continue
        if in_doc or stripped.startswith(("#", '"""')):
            continue
        lines.append((i, line.split("  #")[0]))
    return lines


def test_no_writer_in_src_bypasses_the_atomic_helper():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        allowed = ALLOWED.get(rel, set())
        if allowed is None:
            continue
        for number, line in _code_lines(path):
            for match in DIRECT_WRITES.finditer(line):
                if match.group(0) not in allowed:
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert found == [], "write through kwav2vec.fileio (atomic_open / atomic_write_* / atomic_move):\n" + "\n".join(found)


def test_atomic_move_replaces_the_destination_whole(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    staged = tmp_path / "staging" / "model.onnx"
    staged.parent.mkdir()
    staged.write_bytes(b"new model")
    fileio.atomic_move(staged, target)
    assert target.read_bytes() == b"new model" and not staged.exists()
    with pytest.raises(FileNotFoundError):
        fileio.atomic_move(staged, target)  # nothing to move: the destination stays
    assert target.read_bytes() == b"new model"
