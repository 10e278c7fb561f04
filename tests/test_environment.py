"""The installed environment is the locked one, and torch / torchaudio load together.

`make install` installs exactly `requirements.lock`; a package at another version (installed by
hand, or by a resolver that ignored the lock) makes these tests fail with the names to fix, before
any other test fails in a confusing way. The torchaudio test loads its compiled extension: a
torchaudio built for another torch release fails there (e.g. torchaudio 2.11.1 beside torch 2.11.0:
`undefined symbol: torch_exception_get_what_without_backtrace`).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked_requirements(text: str) -> list[tuple[str, str, str | None]]:
    """(name, version, marker or None) of every `name==version` line of a pip requirements file."""
    out = []
    for line in text.splitlines():
        if not line or line[0] in "# -":  # comments, continuation lines (hashes), options
            continue
        match = REQUIREMENT.match(line)
        if match is None:
            raise ValueError(f"{LOCK.name}: line {line!r} is not an exact pin (name==version)")
        out.append((match.group(1), match.group(2), match.group(3)))
    return out


def test_lock_parser_reads_pins_markers_and_hashes():
    text = ("# header\nfoo==1.2 \\\n    --hash=sha256:ab\nbar-baz==2.0 ; sys_platform == 'linux' \\\n"
            "    --hash=sha256:cd\n    # via foo\n")
    assert locked_requirements(text) == [("foo", "1.2", None), ("bar-baz", "2.0", "sys_platform == 'linux'")]
    with pytest.raises(ValueError, match="not an exact pin"):
        locked_requirements("foo>=1\n")


def test_every_locked_package_is_installed_at_its_locked_version():
    if not LOCK.is_file():
        pytest.fail(f"{LOCK} is missing: `make lock` writes it")
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a virtual environment: `make install` / `make test` make the locked one")
    wrong = []
    for name, version, marker in locked_requirements(LOCK.read_text(encoding="utf-8")):
        if marker is not None and not Marker(marker).evaluate():
            continue  # for another platform or Python
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (locked {version})")
            continue
        # local version labels (torch's +cu130) are the same release
        if installed.split("+")[0] != version.split("+")[0]:
            wrong.append(f"{canonicalize_name(name)}: {installed} installed, {version} locked")
    assert not wrong, ("the environment differs from requirements.lock (run `make clean install`):\n  "
                       + "\n  ".join(wrong))


def test_torch_and_torchaudio_are_the_pinned_pair():
    import torch
    import torchaudio

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pins = dict(re.findall(r'"(torch|torchaudio)==([0-9.]+)"', pyproject))
    assert set(pins) == {"torch", "torchaudio"}, "pyproject.toml must pin torch and torchaudio exactly"
    assert torch.__version__.split("+")[0] == pins["torch"]
    assert torchaudio.__version__.split("+")[0] == pins["torchaudio"]


def test_torchaudio_compiled_extension_loads_beside_torch():
    import torch

    try:
        from torchaudio import _extension
    except (ImportError, OSError) as e:  # undefined symbol: a torchaudio built for another torch
        pytest.fail(f"torchaudio's compiled extension does not load beside torch {torch.__version__} ({e}); "
                    "install the pair pinned in pyproject.toml: `make clean install`")
    assert _extension._IS_TORCHAUDIO_EXT_AVAILABLE, "torchaudio's _torchaudio extension is not available"
    # an operator implemented in libtorchaudio, run once
    import torchaudio.functional as F

    log_probs = torch.randn(1, 5, 3).log_softmax(-1)
    alignment, _ = F.forced_align(log_probs, torch.tensor([[1, 2]], dtype=torch.int32), blank=0)
    assert alignment.shape == (1, 5)
