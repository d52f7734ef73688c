"""The clock every time-dependent decision reads: send windows, caps, sequence delays, jitter waits.

A ``Clock`` gives aware UTC instants (``now``) and waits (``sleep``).  The
real one is ``SYSTEM_CLOCK``.  A ``FrozenClock`` stands still until a test
moves it, and its ``sleep`` moves it instead of waiting, so a test of "three
days later the follow-up goes out" runs in milliseconds and always the same
way.  A clock reaches the code that needs it through the Registry: register
one under ``"clock"`` (kind ``tool``) and every orchestrator built on that
registry, and every agent call of their runs (``RunContext.clock``), reads it.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from agent.storage.times import as_utc

__all__ = ["Clock", "SystemClock", "FrozenClock", "SYSTEM_CLOCK", "clock_from"]


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time in UTC; ``sleep`` really waits."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


class FrozenClock:
    """A clock that moves only when told (``advance``, ``set``) or when someone ``sleep``s on it."""

    def __init__(self, at: datetime) -> None:
        self._now = as_utc(at)
        self._lock = threading.Lock()
        self.slept = 0.0  # every second waited on this clock, for tests to read

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, at: datetime) -> None:
        with self._lock:
            self._now = as_utc(at)

    def advance(self, delta: timedelta | float = 0.0, **units: float) -> datetime:
        """Move on by ``delta`` (seconds or a timedelta) plus ``units`` (``days=3``); the new now."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step + timedelta(**units)
            return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self._now += timedelta(seconds=seconds)
                self.slept += seconds

    def __repr__(self) -> str:
        return f"FrozenClock({self._now.isoformat()})"


SYSTEM_CLOCK = SystemClock()


def clock_from(registry: Any) -> Clock:
    """The clock registered under ``"clock"`` in ``registry``, else the system clock."""
    if registry is not None and "clock" in registry:
        return registry.get("clock")
    return SYSTEM_CLOCK
