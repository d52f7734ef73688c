"""RunContext: what every call inside one run knows about that run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from agent.clock import SYSTEM_CLOCK, Clock
from agent.envelope import new_run_id
from agent.settings import Settings, get_settings

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """Immutable run identity; ``child(node=...)`` derives a node's context."""

    run_id: str = field(default_factory=new_run_id)
    flow: str | None = None
    node: str | None = None
    tenant: str = "default"
    settings: Settings = field(default_factory=get_settings, repr=False)
    started: float = field(default_factory=time.perf_counter, repr=False)
    # What "now" is for this run's decisions (send windows, caps, delays); a test's frozen clock.
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)

    def child(self, **changes: Any) -> RunContext:
        return replace(self, **changes)

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)
