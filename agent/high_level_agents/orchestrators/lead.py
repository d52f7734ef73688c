"""LeadOrchestrator: a ``lead_query`` in, an envelope of matching leads out.

The flow::

    parse ──┬── search_lexical ──┬── merge (by lead_id) ── rank
            └── search_<other> ──┘

``parse`` checks the query once; each search strategy is an agent node run in
parallel; ``merge`` keeps the first record of each lead (a failed strategy
leaves the others' results, marked ``partial``, when there are several);
``rank`` orders them.  With one strategy the order, ``total_count`` and
pagination are that strategy's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from agent.agents.lead_search import parse_lead_query
from agent.engine.flow import Flow, FlowGraph
from agent.engine.outputs import Output
from agent.engine.state import FlowState
from agent.high_level_agents.orchestrators.base import BaseOrchestrator

__all__ = ["LeadOrchestrator", "LeadPayload", "reciprocal_rank_fusion"]

# Metadata every envelope has; the rest (query, strategies, pagination...) is the strategy's own.
_CORE = frozenset({"run_id", "flow", "node", "source", "created_at", "total_count", "partial", "errors",
                   "duration_ms"})
RRF_K = 60


class LeadPayload(BaseModel):
    """``lead_query``: an object of filters, or free text ("leads at Acme in Berlin")."""

    model_config = ConfigDict(extra="forbid")
    lead_query: dict[str, Any] | str


def reciprocal_rank_fusion(rankings: Mapping[str, list[dict[str, Any]]], *, key: str = "lead_id",
                           k: int = RRF_K) -> list[tuple[float, dict[str, Any]]]:
    """Records fused over several rankings: the sum of 1/(k + rank), best first, ties by first seen."""
    scores: dict[Any, float] = {}
    first: dict[Any, dict[str, Any]] = {}
    order: dict[Any, int] = {}
    for records in rankings.values():
        for rank, record in enumerate(records, start=1):
            value = record.get(key)
            scores[value] = scores.get(value, 0.0) + 1.0 / (k + rank)
            first.setdefault(value, record)
            order.setdefault(value, len(order))
    ranked = sorted(scores, key=lambda v: (-scores[v], order[v]))
    return [(round(scores[v], 6), first[v]) for v in ranked]


class LeadOrchestrator(BaseOrchestrator):
    """Finds leads: fuzzy company names, filters, full text, with provenance."""

    name: ClassVar[str] = "lead_orchestrator"
    capabilities: ClassVar[frozenset[str]] = frozenset({"read"})
    payload_model: ClassVar[type[BaseModel]] = LeadPayload
    search_agent: ClassVar[str] = "lead_search"
    # Strategy name -> search agent; each becomes a parallel branch ``search_<name>``.
    strategies: ClassVar[Mapping[str, str] | None] = None

    def search_strategies(self) -> dict[str, str]:
        return dict(self.strategies) if self.strategies else {"lexical": self.search_agent}

    def build_flow(self, variant: Any = None) -> FlowGraph:
        branches = [f"search_{name}" for name in self.search_strategies()]
        flow = Flow(self.name, input_model=LeadPayload).node("parse", _parse, lineage=None,
                                    description="check the query once, before any search")
        for branch, agent in zip(branches, self.search_strategies().values(), strict=True):
            flow.node(branch, agent=agent, request=_search_request, description=f"search with {agent}")
        return (flow.merge("merge", key="lead_id", allow_partial=len(branches) > 1)
                .node("rank", _rank, description="order the merged leads")
                .fan_out("parse", branches, join="merge")
                .then("merge", "rank")
                .build())


def _parse(state: FlowState) -> list[dict[str, Any]]:
    query = parse_lead_query(state.input.lead_query)
    return [{"lead_query": query.model_dump(exclude_none=True)}]


def _search_request(state: FlowState) -> dict[str, Any]:
    return {"lead_query": state.records("parse")[0]["lead_query"]}


def _rank(state: FlowState) -> Output:
    merged = state["merge"]
    branches = [name for name in merged["metadata"]["branches"] if name in state.results]
    meta = {k: v for k, v in merged["metadata"].items() if k in ("total_count", "partial", "errors", "branches")}
    if len(branches) == 1:
        # One strategy: its order, total and pagination stand as they are.
        only = state[branches[0]]["metadata"]
        meta.update({k: v for k, v in only.items() if k not in _CORE})
        return Output(merged["records"], source=only["source"], **meta)
    fused = reciprocal_rank_fusion({b: state[b]["records"] for b in branches})
    meta["total_count"] = len(fused)
    meta["strategies"] = sorted({s for b in branches for s in state[b]["metadata"].get("strategies", [])})
    return Output([{**record, "fused_score": score} for score, record in fused], **meta)
