"""What the step benchmarks share: worker processes stepped in turn, and how a step is measured.

Each implementation lives in its own spawned worker process with the same thread count. The parent
sends "step" to one worker at a time, rotating the order every round, so load drifts on a shared
machine hit every implementation equally. A worker measures each step's wall-clock time, process
CPU time and peak resident-memory growth:

Memory method: before the step the worker collects garbage, reads VmRSS, and resets the kernel's
high-water mark (`echo 5 > /proc/self/clear_refs`); after the step it reads VmHWM. Peak = VmHWM -
VmRSS-before: activations, gradients and temporaries on top of the resident weights and optimizer
state. Memory runs use workers started with MALLOC_MMAP_THRESHOLD_=65536, so every tensor over 64 KiB
is its own mmap, returned to the OS when freed, and RSS follows live tensor memory instead of glibc's
cached heap. That setting slows allocation, so timed runs use other workers with the normal allocator.
Linux only.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SAMPLE_RATE = 16000


def memory_measurable() -> bool:
    return Path("/proc/self/clear_refs").exists()


def rss_kib(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def serve(step: Callable[[int], None], params: int, conn) -> None:
    """The worker side: announce `params`, then run and measure `step(i)` on each "step" message."""
    conn.send(("ready", params))
    i = 0
    while conn.recv() != "stop":
        gc.collect()
        before = rss_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS high-water mark
        t0, c0 = time.perf_counter(), time.process_time()
        step(i)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        conn.send((elapsed, cpu, (rss_kib("VmHWM") - before) * 1024))
        i += 1


def run_workers(worker: Callable, impls: Sequence[str], args: tuple, steps: int, warmup: int,
                malloc_mmap: bool) -> tuple[dict, dict, dict, dict]:
    """Starts `worker(impl, *args, conn)` per implementation and steps them in turn. Returns params and
    per-step wall times, process CPU times and peak RSS growths, per implementation."""
    ctx = mp.get_context("spawn")
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if malloc_mmap:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by glibc when the worker starts
    else:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    workers = {}
    try:
        for impl in impls:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(impl, *args, child), daemon=True)
            p.start()
            workers[impl] = (p, parent)
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    params = {impl: conn.recv()[1] for impl, (_, conn) in workers.items()}
    times, cpus, peaks = ({impl: [] for impl in impls} for _ in range(3))
    for r in range(warmup + steps):
        k = r % len(impls)
        for impl in (*impls[k:], *impls[:k]):  # one step at a time: the others idle meanwhile
            conn = workers[impl][1]
            conn.send("step")
            elapsed, cpu, peak = conn.recv()
            if r >= warmup:
                times[impl].append(elapsed)
                cpus[impl].append(cpu)
                peaks[impl].append(peak)
    for p, conn in workers.values():
        conn.send("stop")
        p.join(timeout=60)
    return params, times, cpus, peaks


def compare(worker: Callable, impls: Sequence[str], args: tuple, repeats: int, warmup: int) -> dict:
    """Medians of wall time and CPU time (normal allocator) and of peak memory (mmap allocator)."""
    params, times, cpus, _ = run_workers(worker, impls, args, repeats, warmup, malloc_mmap=False)
    _, _, _, peaks = run_workers(worker, impls, args, 1, 1, malloc_mmap=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    mem = {k: statistics.median(v) for k, v in peaks.items()}
    return {"params": params, "time": med, "cpu": cpu, "mem": mem}
