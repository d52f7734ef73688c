"""What the benchmarks share: a reading of the machine's speed at the time."""

from __future__ import annotations

import time

__all__ = ["cpu_reference"]


def cpu_reference() -> float:
    """Seconds for a fixed pure-Python loop: the machine's speed right now.

    The CI machines' speed swings by up to 4x from minute to minute; printing
    this beside the figures says which speed they were taken at.
    """
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return round(time.perf_counter() - started, 3)
