"""LeadOrchestrator: a ``lead_query`` in, an envelope of matching leads out."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from agent.agents.lead_search import parse_lead_query
from agent.context import RunContext
from agent.high_level_agents.orchestrators.base import BaseOrchestrator

__all__ = ["LeadOrchestrator", "LeadPayload"]


class LeadPayload(BaseModel):
    """``lead_query``: an object of filters, or free text ("leads at Acme in Berlin")."""

    model_config = ConfigDict(extra="forbid")
    lead_query: dict[str, Any] | str


class LeadOrchestrator(BaseOrchestrator):
    """Finds leads: fuzzy company names, filters, full text, with provenance."""

    name: ClassVar[str] = "lead_orchestrator"
    capabilities: ClassVar[frozenset[str]] = frozenset({"read"})
    payload_model: ClassVar[type[BaseModel]] = LeadPayload
    search_agent: ClassVar[str] = "lead_search"

    def execute(self, payload: LeadPayload, context: RunContext) -> dict[str, Any]:
        query = parse_lead_query(payload.lead_query)
        request = {"lead_query": query.model_dump(exclude_none=True)}
        return self.call(self.search_agent, request, context, node="search")
