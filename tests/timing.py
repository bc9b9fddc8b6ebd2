"""How a test measures that time grows in proportion to the text, not with its square.

One timing on a loaded machine can be ten times another (a collection of garbage, another job taking the cores
for a while): the small and the large case are timed in turn, each the best of its runs, with the collector
paused and the text caches emptied, so a busy spell slows both alike. A square still shows as 64 times.
"""
from __future__ import annotations

import gc
import time
from typing import Callable


def best_times(small: Callable[[], object], large: Callable[[], object], repeats: int = 3) -> tuple[float, float]:
    """The shortest of ``repeats`` wall-clock timings of ``small()`` and of ``large()``, run in turn."""
    from latentguard.data.covering import negative_parts

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        times: dict[int, list[float]] = {0: [], 1: []}
        for _ in range(repeats):
            for which, work in enumerate((small, large)):
                negative_parts.cache_clear()  # a repeat must cost what the first run did
                start = time.perf_counter()
                work()
                times[which].append(time.perf_counter() - start)
        return min(times[0]), min(times[1])
    finally:
        if was_enabled:
            gc.enable()
