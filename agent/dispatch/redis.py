"""RedisDispatcher: concurrency slots and token buckets shared by worker processes.

A slot is a lease: a member of a sorted set scored by its expiry time (Redis
server time, so workers' clocks never disagree).  Acquiring first drops
expired leases, so a worker that died holding a slot gives it back when its
lease runs out.  A live holder renews its leases from a background thread
every third of the lease.  Releasing pushes a wake-up onto a list that waiters
block on, so a freed slot is taken at once rather than at the next poll.
Token buckets live in Redis hashes, refilled by a script from server time.
The circuit breaker stays per process (each worker learns on its own that an
agent is down).  Needs the ``redis`` extra: ``pip install 'agent-sdr[redis]'``.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from agent.dispatch.limits import AgentLimits, RateLimit
from agent.dispatch.local import Dispatcher
from agent.errors import ConfigurationError, LimitTimeout, StorageError
from agent.logs import get_logger

__all__ = ["RedisDispatcher"]

log = get_logger("agent.dispatch.redis")

# KEYS[1] leases (zset); ARGV limit, lease_ms, token.  -1 = acquired, else ms until the next expiry.
# The set itself expires a second after its latest lease, so one worker's short lease never cuts
# another's long one short.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1000)
  return -1
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) - now)
"""

# KEYS[1] leases; ARGV lease_ms, token...  Renews the tokens still held; returns how many.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1000) end
return renewed
"""

# KEYS[1] leases, KEYS[2] wake-up list; ARGV token.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 63)
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
"""

# KEYS[1] bucket (hash); ARGV rate, burst.  Returns "0" (token taken) or the seconds to wait.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local stamp = tonumber(redis.call('HGET', KEYS[1], 'stamp'))
if tokens == nil or stamp == nil then tokens = burst; stamp = now end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisDispatcher(Dispatcher):
    """Limits shared through Redis.  ``lease`` (seconds) bounds how long a dead holder keeps a slot."""

    def __init__(self, redis: Any = "redis://127.0.0.1:6379/0",
                 limits: Mapping[str, AgentLimits | Mapping[str, Any]] | None = None, *,
                 lease: float = 30.0, prefix: str = "agent:dispatch", poll: float = 0.25,
                 clock: Callable[[], float] | None = None, sleep: Callable[[float], None] | None = None,
                 observer: Any = None) -> None:
        try:
            import redis as redis_lib
        except ImportError:
            raise ConfigurationError("RedisDispatcher needs the redis package: "
                                     "pip install 'agent-sdr[redis]'") from None
        kwargs = {k: v for k, v in (("clock", clock), ("sleep", sleep)) if v is not None}
        super().__init__(limits, observer=observer, **kwargs)
        if not (isinstance(lease, (int, float)) and lease >= 0.1):
            raise ConfigurationError("RedisDispatcher lease must be at least 0.1 seconds")
        self.client = redis_lib.Redis.from_url(redis) if isinstance(redis, str) else redis
        self._errors = (redis_lib.RedisError,)
        self.lease = float(lease)
        self.prefix = prefix
        self.poll = poll
        self._scripts = {name: self.client.register_script(body) for name, body in
                         (("acquire", _ACQUIRE), ("renew", _RENEW), ("release", _RELEASE), ("take", _TAKE))}
        self._held: dict[str, set[str]] = {}
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._stopped = threading.Event()
        weakref.finalize(self, self._stopped.set)

    def close(self) -> None:
        """Stop renewing leases (held slots then expire on their own)."""
        self._stopped.set()

    def in_use(self, agent: str) -> int:
        """Live leases of ``agent`` across every process."""
        key = self._key("slots", agent)
        return int(self._redis(lambda: (self.client.zremrangebyscore(key, "-inf", self._now_ms()),
                                        self.client.zcard(key))[1]))

    # -- primitives ----------------------------------------------------------------------
    def _acquire(self, agent: str, limit: int, deadline: float) -> Any:
        token = uuid.uuid4().hex
        slots, wake = self._key("slots", agent), self._key("wake", agent)
        lease_ms = int(self.lease * 1000)
        announced = False
        while True:
            result = int(self._redis(lambda: self._scripts["acquire"](keys=[slots], args=[limit, lease_ms, token])))
            if result < 0:
                break
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise LimitTimeout(agent, f"no free slot (limit {limit}) within the wait")
            if not announced:
                self._notify("wait", agent)
                announced = True
            # Woken by a release, or at the next lease expiry, or at the poll interval at most.
            block = max(0.01, min(remaining, result / 1000, self.poll))
            self._redis(lambda: self.client.blpop([wake], timeout=block))
        with self._held_lock:
            self._held.setdefault(agent, set()).add(token)
            self._start_renewer()
        self._notify("acquired", agent)
        return token

    def _release(self, agent: str, token: Any) -> None:
        with self._held_lock:
            self._held.get(agent, set()).discard(token)
        try:
            self._redis(lambda: self._scripts["release"](
                keys=[self._key("slots", agent), self._key("wake", agent)], args=[token]))
        except StorageError:
            log.warning("could not release a %s slot; its lease will expire", agent)
        self._notify("released", agent)

    def _take_token(self, agent: str, index: int, rate: RateLimit, key: tuple[str, ...],
                    deadline: float) -> None:
        bucket = self._key("rate", agent, str(index), *key)
        while True:
            wait = float(self._redis(lambda: self._scripts["take"](keys=[bucket], args=[rate.rate, rate.burst])))
            if wait <= 0:
                return
            self._wait_for_token(agent, key, wait, deadline)

    # -- helpers -------------------------------------------------------------------------
    def _start_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            # The thread holds the dispatcher weakly, so dropping the dispatcher ends it.
            self._renewer = threading.Thread(target=_renew_loop, args=(weakref.ref(self), self._stopped,
                                                                       self.lease / 3),
                                             name="agent-lease-renewer", daemon=True)
            self._renewer.start()

    def _renew_once(self) -> None:
        lease_ms = int(self.lease * 1000)
        with self._held_lock:
            held = {agent: list(tokens) for agent, tokens in self._held.items() if tokens}
        for agent, tokens in held.items():
            try:
                renewed = int(self._scripts["renew"](keys=[self._key("slots", agent)], args=[lease_ms, *tokens]))
            except self._errors as exc:
                log.warning("could not renew %s leases: %s", agent, type(exc).__name__)
                continue
            if renewed < len(tokens):
                log.warning("%d of %d %s leases had expired before renewal (Redis unreachable for longer "
                            "than a lease?): another worker may hold those slots too",
                            len(tokens) - renewed, len(tokens), agent)

    def _now_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _redis(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._errors as exc:
            raise StorageError(f"redis error: {type(exc).__name__}: {exc}") from exc


def _renew_loop(ref: Any, stopped: threading.Event, every: float) -> None:
    while not stopped.wait(every):
        dispatcher = ref()
        if dispatcher is None:
            return
        dispatcher._renew_once()
        del dispatcher
