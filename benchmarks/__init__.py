"""Benchmarks: each script prints its figures against a named baseline measured in the same run."""

import os
import time
from collections.abc import Callable

MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def allocator_description() -> str:
    """The host allocator setting, printed with figures it sways: under glibc's defaults every
    buffer over 32 MiB is mmap'd per allocation and page-faulted in again on each use, which
    eager PyTorch pays op by op (README, codec row)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload:
        return f"allocator LD_PRELOAD={preload}"
    tuned = [f"{k}={os.environ[k]}" for k in MALLOC_VARIABLES if k in os.environ]
    return "malloc " + (" ".join(tuned) if tuned else "glibc defaults (>32 MiB buffers mmap'd)")


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of `fn`, after one unmeasured call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
