"""The Dispatcher family: per-agent concurrency, rate limits and circuit breakers.

``Dispatcher`` keeps its state in the process; ``RedisDispatcher`` shares
slots (as expiring leases) and token buckets between worker processes.
"""

from agent.dispatch.breaker import BreakerState, CircuitBreaker
from agent.dispatch.bucket import TokenBucket
from agent.dispatch.limits import AgentLimits, BreakerPolicy, RateLimit, parse_limits
from agent.dispatch.local import Dispatcher, DispatchStats, Ticket, default_dispatcher
from agent.dispatch.redis import RedisDispatcher

__all__ = [
    "Dispatcher",
    "default_dispatcher",
    "RedisDispatcher",
    "DispatchStats",
    "Ticket",
    "AgentLimits",
    "RateLimit",
    "BreakerPolicy",
    "parse_limits",
    "CircuitBreaker",
    "BreakerState",
    "TokenBucket",
]
