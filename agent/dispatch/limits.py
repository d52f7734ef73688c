"""Limit values for one agent, validated: unknown options fail early."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import InvalidInput
from agent.validation import first_error

__all__ = ["AgentLimits", "RateLimit", "BreakerPolicy", "parse_limits"]

KeyPart = Literal["tenant", "campaign"]


class RateLimit(BaseModel):
    """A token bucket: ``rate`` calls per second on average, bursts of up to ``burst``.

    ``by`` splits the bucket: ``()`` is one bucket for the agent, ``("tenant",)``
    one per tenant, ``("tenant", "campaign")`` one per campaign of each tenant.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    rate: float = Field(gt=0, le=1_000_000)
    burst: int = Field(default=1, ge=1, le=1_000_000)
    by: tuple[KeyPart, ...] = ()


class BreakerPolicy(BaseModel):
    """Open after ``failures`` failures in a row; after ``reset_after`` seconds let ``probes`` calls test it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    failures: int = Field(default=5, ge=1, le=10_000)
    reset_after: float = Field(default=30.0, gt=0, le=86_400)
    probes: int = Field(default=1, ge=1, le=1_000)


class AgentLimits(BaseModel):
    """What the Dispatcher enforces for one agent.

    ``concurrency``: calls in flight at once (callers wait up to
    ``acquire_timeout`` seconds, then ``LimitTimeout``); ``rates``: token buckets,
    all of which must grant a token; ``breaker``: the circuit breaker, or None.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    concurrency: int | None = Field(default=None, ge=1, le=100_000)
    rates: tuple[RateLimit, ...] = ()
    acquire_timeout: float = Field(default=60.0, ge=0, le=86_400)
    breaker: BreakerPolicy | None = BreakerPolicy()


def parse_limits(agent: str, value: AgentLimits | Mapping[str, Any]) -> AgentLimits:
    """``value`` as ``AgentLimits``; an error names ``limits.<agent>.<field>``."""
    if isinstance(value, AgentLimits):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput(f"limits.{agent}", "must be an object of limit options")
    try:
        return AgentLimits.model_validate(dict(value))
    except ValidationError as exc:
        raise InvalidInput(*first_error(exc, f"limits.{agent}")) from None
