"""Suppression gate agent: which of these addresses may not be contacted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from agent.agents.base import BaseAgent
from agent.context import RunContext
from agent.delivery.suppression import SuppressionList
from agent.envelope import make_envelope
from agent.storage.db import Database

__all__ = ["SuppressionGateAgent"]


class SuppressionGateAgent(BaseAgent):
    """Looks addresses up in the tenant's suppression list."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"read"})

    def __init__(self, db: Database | None = None) -> None:
        self._db = db

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        db = self._db or Database.for_settings(context.settings)
        addresses = list(dict.fromkeys(request["addresses"]))
        found = SuppressionList(db, tenant=context.tenant).suppressed(addresses)
        records = [{"address": a, "suppressed": a in found, "reason": found.get(a)} for a in addresses]
        return make_envelope(records, source="suppressions", run_id=context.run_id, flow=context.flow,
                             node=context.node, agent="suppression_gate", duration_ms=context.elapsed_ms())
