"""Per-node policy: a validated ``Retry`` value and a pure backoff function.

``compute_backoff`` takes its random draw as an argument, so a test can give
it any jitter it likes and the engine's injected clock never has to sleep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.errors import AgentCallError, InvalidInput

__all__ = ["Retry", "compute_backoff", "NO_RETRY", "DEFAULT_RETRY_ON"]

# Transient by default: an agent that failed, a timeout, a refused or reset connection.
# Bad input, a malformed envelope or a bug in a plain function never gets better on retry.
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (AgentCallError, TimeoutError, ConnectionError)


def compute_backoff(attempt: int, *, base: float, multiplier: float, max_delay: float,
                    jitter: float, draw: float) -> float:
    """Delay before retry number ``attempt`` (1 = the first retry).

    Exponential growth capped at ``max_delay``; ``jitter`` (0..1) is the share of
    the delay that is random, and ``draw`` (0..1) is that random share's value:
    ``jitter=0`` gives a fixed schedule, ``jitter=1`` "full jitter".
    """
    if attempt < 1:
        raise InvalidInput("attempt", "must be 1 or more")
    try:
        raw = min(max_delay, base * multiplier ** (attempt - 1))
    except OverflowError:  # far past max_delay anyway (a zero base stays zero)
        raw = max_delay if base > 0 else 0.0
    return raw * (1.0 - jitter) + raw * jitter * min(max(draw, 0.0), 1.0)


@dataclass(frozen=True)
class Retry:
    """How often a node is tried and how long to wait in between.

    ``max_attempts`` counts the first try (1 = no retry).  Only errors that are
    instances of ``retry_on`` (and not of ``never``) are retried.
    """

    max_attempts: int = 3
    base: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.5
    retry_on: tuple[type[BaseException], ...] = field(default=DEFAULT_RETRY_ON)
    never: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        checks = (
            ("max_attempts", isinstance(self.max_attempts, int) and not isinstance(self.max_attempts, bool)
             and 1 <= self.max_attempts <= 1000, "must be an integer from 1 to 1000"),
            ("base", _number(self.base) and self.base >= 0, "must be a number >= 0"),
            ("multiplier", _number(self.multiplier) and self.multiplier >= 1, "must be a number >= 1"),
            ("max_delay", _number(self.max_delay) and self.max_delay >= self.base,
             "must be a number >= base"),
            ("jitter", _number(self.jitter) and 0 <= self.jitter <= 1, "must be between 0 and 1"),
            ("retry_on", _exception_types(self.retry_on), "must be a tuple of exception classes"),
            ("never", _exception_types(self.never), "must be a tuple of exception classes"),
        )
        for name, ok, reason in checks:
            if not ok:
                raise InvalidInput(f"retry.{name}", reason)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether try number ``attempt`` (1-based), which raised ``error``, gets another go."""
        return (attempt < self.max_attempts and isinstance(error, self.retry_on)
                and not isinstance(error, self.never))

    def delay(self, attempt: int, draw: float) -> float:
        return compute_backoff(attempt, base=self.base, multiplier=self.multiplier,
                               max_delay=self.max_delay, jitter=self.jitter, draw=draw)



def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _exception_types(value: object) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value)


NO_RETRY = Retry(max_attempts=1)
