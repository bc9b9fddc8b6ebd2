"""How a test measures that time grows in proportion to the text, not with its square.

One timing on a loaded CI machine can be ten times another (a collection of garbage, another job): the
best of three with the collector paused is what the code costs, and a square still shows as 64 times.
"""
from __future__ import annotations

import gc
import time
from typing import Callable


def best_time(work: Callable[[], object], repeats: int = 3) -> float:
    """The shortest of ``repeats`` wall-clock timings of ``work()``, with garbage collection paused.

    The caches that remember a text's reading are emptied before each run: a repeat must cost what the first did.
    """
    from latentguard.data.covering import negative_parts

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        times = []
        for _ in range(repeats):
            negative_parts.cache_clear()
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return min(times)
    finally:
        if was_enabled:
            gc.enable()
