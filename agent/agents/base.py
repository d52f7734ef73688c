"""BaseAgent: the contract of an operational agent (one job, returns an envelope)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from agent.context import RunContext

__all__ = ["BaseAgent"]


class BaseAgent:
    """An operational agent: DB, vector search, LLM, delivery channel...

    Subclasses set the class metadata the Registry reads and implement
    ``run(request, context=...)``, returning a canonical envelope.
    Orchestrators call agents only through the registry, never directly.
    """

    kind: ClassVar[str] = "agent"
    description: ClassVar[str | None] = None
    version: ClassVar[str] = "0.1.0"
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        raise NotImplementedError
