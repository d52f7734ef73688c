"""A circuit breaker: closed, open (fail fast), half-open (a few probes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from agent.dispatch.limits import BreakerPolicy
from agent.errors import CircuitOpen

__all__ = ["CircuitBreaker", "BreakerState"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts failures in a row; opens at ``policy.failures``; probes after ``reset_after``.

    ``before_call`` raises ``CircuitOpen`` while open (and for callers beyond
    the probe allowance while half-open).  A probe's success closes the
    breaker, its failure opens it again for another ``reset_after``.
    """

    def __init__(self, agent: str, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self.agent = agent
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.policy.reset_after:
            return "half_open"
        return "open"

    def before_call(self) -> bool:
        """Admit a call (True when it is a half-open probe) or raise ``CircuitOpen``."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return False
            if state == "half_open" and self._probes < self.policy.probes:
                self._probes += 1
                return True
            retry_in = max(0.0, self.policy.reset_after - (self._clock() - (self._opened_at or 0.0)))
            raise CircuitOpen(self.agent, f"circuit open after {self._failures} failures in a row; "
                                          f"next probe in {retry_in:.1f}s")

    def record(self, ok: bool, *, probe: bool) -> None:
        with self._lock:
            if probe:
                self._probes = max(0, self._probes - 1)
            if ok:
                # Only a probe closes an open breaker: a call let in before it opened that
                # happens to succeed late proves nothing about the agent now.
                if probe or self._opened_at is None:
                    self._failures = 0
                    self._opened_at = None
                return
            self._failures += 1
            if probe or self._failures >= self.policy.failures:
                self._opened_at = self._clock()

    def cancel_probe(self, probe: bool) -> None:
        """A probe that never called the agent (it timed out waiting) gives its turn back."""
        if probe:
            with self._lock:
                self._probes = max(0, self._probes - 1)
