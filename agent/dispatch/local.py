"""The Dispatcher: per-agent concurrency, rate limits and circuit breakers.

Every agent call the engine makes goes through ``Dispatcher.slot(agent,
key=...)``.  An agent without limits costs one dict lookup.  Concurrency and
rate limits make callers wait (up to ``acquire_timeout``) rather than fail; an
open circuit fails fast with ``CircuitOpen``.  This implementation keeps its
state in the process; ``RedisDispatcher`` shares slots and buckets between
worker processes and keeps this class's breaker logic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agent.dispatch.breaker import BreakerState, CircuitBreaker
from agent.dispatch.bucket import TokenBucket
from agent.dispatch.limits import AgentLimits, RateLimit, parse_limits
from agent.errors import InvalidInput, LimitTimeout
from agent.logs import get_logger

__all__ = ["Dispatcher", "DispatchStats", "Ticket", "default_dispatcher"]

log = get_logger("agent.dispatch")

Observer = Callable[..., None]


class Ticket:
    """One admitted call: its slot (if the agent has a concurrency limit) and its breaker turn.

    ``settle`` tells the breaker how the call went (once); ``free`` gives the
    slot back (once).  They are apart because a call abandoned at its timeout
    counts as a failure at once but keeps its slot until it really returns.
    """

    __slots__ = ("dispatcher", "agent", "token", "breaker", "probe", "_settled", "_freed")

    def __init__(self, dispatcher: Dispatcher, agent: str, token: Any, breaker: CircuitBreaker | None,
                 probe: bool) -> None:
        self.dispatcher, self.agent, self.token, self.breaker, self.probe = dispatcher, agent, token, breaker, probe
        self._settled = self._freed = False

    def settle(self, error: BaseException | None) -> None:
        if self._settled:
            return
        self._settled = True
        if self.breaker is None:
            return
        if error is None:
            self.breaker.record(True, probe=self.probe)
        elif isinstance(error, InvalidInput):
            # The caller's mistake says nothing about the agent's health.
            self.breaker.cancel_probe(self.probe)
        else:
            self.breaker.record(False, probe=self.probe)

    def abstain(self) -> None:
        """Settle without a verdict: the call was given up before it said anything about the agent."""
        if not self._settled:
            self._settled = True
            if self.breaker is not None:
                self.breaker.cancel_probe(self.probe)

    def free(self) -> None:
        if self._freed:
            return
        self._freed = True
        if self.token is not None:
            self.dispatcher._release(self.agent, self.token)


@dataclass(frozen=True)
class DispatchStats:
    agent: str
    in_use: int
    waiting: int
    breaker: BreakerState


class Dispatcher:
    """In-process limits.  ``clock`` and ``sleep`` are injectable (rate-limit waits use them).

    ``observer(event, agent=..., **info)`` is told of ``wait``, ``acquired``,
    ``released``, ``rate_wait`` and ``rejected`` events (tests wait on them).
    """

    def __init__(self, limits: Mapping[str, AgentLimits | Mapping[str, Any]] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 observer: Observer | None = None) -> None:
        self.clock = clock
        self.sleep = sleep
        self.observer = observer
        self._lock = threading.Lock()
        self._limits: dict[str, AgentLimits] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._buckets: dict[tuple[str, int, tuple[str, ...]], TokenBucket] = {}
        # Re-entrant: an observer told of a "wait" may call stats() from inside the wait.
        self._cond = threading.Condition(threading.RLock())
        self._in_use: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        for agent, value in (limits or {}).items():
            self.configure(agent, value)

    # -- configuration ------------------------------------------------------------------
    def configure(self, agent: str, limits: AgentLimits | Mapping[str, Any]) -> AgentLimits:
        parsed = parse_limits(agent, limits)
        with self._lock:
            self._limits[agent] = parsed
            self._breakers.pop(agent, None)
            for bucket in [b for b in self._buckets if b[0] == agent]:
                del self._buckets[bucket]
        return parsed

    def limits_for(self, agent: str) -> AgentLimits | None:
        return self._limits.get(agent)

    def breaker(self, agent: str) -> CircuitBreaker | None:
        limits = self._limits.get(agent)
        if limits is None or limits.breaker is None:
            return None
        breaker = self._breakers.get(agent)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.setdefault(agent, CircuitBreaker(agent, limits.breaker, self.clock))
        return breaker

    def stats(self, agent: str) -> DispatchStats:
        breaker = self.breaker(agent)
        with self._cond:
            return DispatchStats(agent, self._in_use.get(agent, 0), self._waiting.get(agent, 0),
                                 breaker.state if breaker else "closed")

    # -- the call path ------------------------------------------------------------------
    def acquire(self, agent: str, *, key: Mapping[str, str | None] | None = None,
                timeout: float | None = None) -> Ticket | None:
        """Admit one call of ``agent`` (None when it has no limits), waiting up to the deadline.

        The slot comes first, then the rate tokens, so tokens are not spent while a
        caller is still queued for a slot.  The caller must ``settle`` the ticket
        with the call's outcome and ``free`` it when the call is over.
        """
        limits = self._limits.get(agent)
        if limits is None:
            return None
        breaker = self.breaker(agent)
        probe = breaker.before_call() if breaker else False
        deadline = self.clock() + (limits.acquire_timeout if timeout is None else timeout)
        token = None
        try:
            if limits.concurrency:
                token = self._acquire(agent, limits.concurrency, deadline)
            for index, rate in enumerate(limits.rates):
                self._take_token(agent, index, rate, _bucket_key(rate, key), deadline)
        except BaseException:
            if token is not None:
                self._release(agent, token)
            if breaker:
                breaker.cancel_probe(probe)
            raise
        return Ticket(self, agent, token, breaker, probe)

    @contextmanager
    def slot(self, agent: str, *, key: Mapping[str, str | None] | None = None,
             timeout: float | None = None) -> Iterator[None]:
        """Hold a slot of ``agent`` for one call; the body's outcome feeds the breaker."""
        ticket = self.acquire(agent, key=key, timeout=timeout)
        if ticket is None:
            yield
            return
        try:
            yield
        except BaseException as exc:
            ticket.settle(exc)
            raise
        else:
            ticket.settle(None)
        finally:
            ticket.free()

    def call(self, agent: str, fn: Callable[..., Any], *args: Any,
             key: Mapping[str, str | None] | None = None, **kwargs: Any) -> Any:
        with self.slot(agent, key=key):
            return fn(*args, **kwargs)

    # -- primitives (RedisDispatcher overrides these) -------------------------------------
    def _acquire(self, agent: str, limit: int, deadline: float) -> Any:
        with self._cond:
            if self._in_use.get(agent, 0) >= limit:
                self._waiting[agent] = self._waiting.get(agent, 0) + 1
                self._notify("wait", agent)
                try:
                    while self._in_use.get(agent, 0) >= limit:
                        remaining = deadline - self.clock()
                        if remaining <= 0 or not self._cond.wait(remaining):
                            if self._in_use.get(agent, 0) < limit:
                                break
                            raise LimitTimeout(agent, f"no free slot (limit {limit}) within the wait")
                finally:
                    self._waiting[agent] -= 1
            self._in_use[agent] = self._in_use.get(agent, 0) + 1
        self._notify("acquired", agent)
        return True

    def _release(self, agent: str, token: Any) -> None:
        with self._cond:
            self._in_use[agent] -= 1
            self._cond.notify_all()
        self._notify("released", agent)

    def _take_token(self, agent: str, index: int, rate: RateLimit, key: tuple[str, ...],
                    deadline: float) -> None:
        bucket_id = (agent, index, key)
        bucket = self._buckets.get(bucket_id)
        if bucket is None:
            with self._lock:
                bucket = self._buckets.setdefault(bucket_id, TokenBucket(rate.rate, rate.burst, self.clock))
        while True:
            wait = bucket.take()
            if wait <= 0:
                return
            self._wait_for_token(agent, key, wait, deadline)

    def _wait_for_token(self, agent: str, key: tuple[str, ...], wait: float, deadline: float) -> None:
        if self.clock() + wait > deadline:
            self._notify("rejected", agent, key=key)
            raise LimitTimeout(agent, f"rate limit: next call allowed in {wait:.3f}s, after the wait ends")
        self._notify("rate_wait", agent, key=key, seconds=wait)
        self.sleep(wait)

    def _notify(self, event: str, agent: str, **info: Any) -> None:
        if self.observer is not None:
            try:
                self.observer(event, agent=agent, **info)
            except Exception:
                log.exception("dispatcher observer failed on %s", event)


def _bucket_key(rate: RateLimit, key: Mapping[str, str | None] | None) -> tuple[str, ...]:
    if not rate.by:
        return ()
    key = key or {}
    return tuple(f"{part}={key.get(part) or '-'}" for part in rate.by)


_default: Dispatcher | None = None
_default_lock = threading.Lock()


def default_dispatcher() -> Dispatcher:
    """The process-wide in-process Dispatcher, made on first use.

    Engines made without a dispatcher share it, so an agent's limits hold for
    the whole process, not per orchestrator instance.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = Dispatcher()
        return _default
