"""glibc's mmap threshold held fixed for transcription (`inference.allocator`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import sys
from kwav2vec.inference.allocator import fix_mmap_threshold
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
fixed = fix_mmap_threshold() if sys.argv[1] == "fixed" else False
keep = [bytearray(1000) for _ in range(1000)]  # small blocks stay on the heap either way
base = rss()
grown = 0
for size in (24, 8, 20, 12, 16, 6, 22, 10, 18, 14) * 3:  # varying sizes, as re-encoded segments
    block = bytearray(size << 20)  # zero-filled: touched
    small = bytearray(100)  # a small block after it: the heap's top cannot be trimmed past it
    keep.append(small)
    del block
    grown = max(grown, rss() - base)
print(fixed, rss() - base, grown)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc: Linux")
def test_fixed_threshold_returns_freed_blocks():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    runs = {}
    for mode in ("fixed", "default"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, check=True)
        fixed, kept, _ = out.stdout.split()
        runs[mode] = (fixed == "True", int(kept))
    assert runs["fixed"][0] and not runs["default"][0]
    assert runs["fixed"][1] < 4, runs  # every freed block of >= 4 MiB went back to the system (measured 0)
    assert runs["default"][1] > 12, runs  # the dynamic threshold kept them on the heap (measured 24)


def test_the_users_own_setting_is_left_alone(monkeypatch):
    from kwav2vec.inference.allocator import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False
