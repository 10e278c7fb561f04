"""A heap that does not keep what long transcriptions free: glibc's mmap threshold held fixed.

glibc serves an allocation above its mmap threshold with its own mapping, returned to the system on
free. The threshold is dynamic by default: each freed mapping raises it to that block's size (up to
32 MiB), after which blocks of that size come from the heap, where a later block of another size
reuses them only in part. A long file's segments are re-encoded in batches of varying lengths, so
the heap kept growing with the recording: a random BASE model over 3 minutes (`bench/longform.py`'s
recording, 2026-12-03) kept 1,499 MiB resident after re-encoding and peaked at 2,141 MiB (first
pass alone: 1,888 MiB); with the threshold fixed at 4 MiB (activations are tens to hundreds of MiB;
small tensors stay on the heap) 1,197 and 1,946 MiB, and a 1,700 MiB peak with segments of at most
20 s (first pass alone: 1,691), for 6-11% more wall time (new mappings are zero-filled on first
touch). On the tiny model the cost is larger: the demo's 60 test utterances joined (3.4 min) took
3.03 s of forward time at 4 MiB, 2.65 at 16 MiB and 2.40 at 32 MiB; at 16 MiB the 3-minute BASE run
peaked at 1,832 MiB. So `predict.run_prediction` holds the threshold only where segments are
re-encoded (a long file, cut at pauses): a stream decoded in equal windows reuses its heap as it is.

Linux with glibc only: elsewhere (no `mallopt`) nothing changes. A MALLOC_MMAP_THRESHOLD_ in the
environment is the user's choice and is left as it is.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 4 << 20


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Holds glibc's mmap threshold at `threshold` bytes for this process; True when it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
