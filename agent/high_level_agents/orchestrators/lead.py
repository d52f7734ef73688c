"""LeadOrchestrator: a ``lead_query`` in, an envelope of matching leads out.

The flow::

    parse ──┬── search_lexical  ──┬── merge (by lead_id) ── rank
            └── search_semantic ──┘

``parse`` checks the query once; each search strategy is an agent node run in
parallel (full text with fuzzy names and filters; embeddings within the same
filters); ``merge`` keeps the first record of each lead (a failed strategy
leaves the others' results, marked ``partial``); ``rank`` orders them.

A strategy that does not serve the query says ``skipped`` (the semantic one
for a query without free text).  When one strategy answers, its order,
``total_count`` and pagination stand as they are.  When both do (hybrid),
each ranks its first ``MAX_FUSED`` lead ids, the lists are fused by reciprocal
rank, the page is cut from the fused list and only its leads are loaded; each record's
``match`` then says which strategies found it, its rank and score in each, and
the fused score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from agent.agents.lead_search import parse_lead_query
from agent.leads.query import LeadQuery
from agent.engine.flow import Flow, FlowGraph
from agent.engine.outputs import Output
from agent.engine.state import FlowState
from agent.high_level_agents.orchestrators.base import BaseOrchestrator

__all__ = ["LeadOrchestrator", "LeadPayload", "reciprocal_rank_fusion"]

# Metadata every envelope has; the rest (query, strategies, pagination...) is the strategy's own.
_CORE = frozenset({"run_id", "flow", "node", "source", "created_at", "total_count", "partial", "errors",
                   "duration_ms"})
RRF_K = 60
# Leads each strategy ranks for a fused page, whatever the page: every page of a query is cut from
# one fused list, so pages never overlap or skip, and total_count is the same on each.
MAX_FUSED = 500


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
    loader_agent: ClassVar[str] = "lead_loader"
    semantic_agent: ClassVar[str | None] = "semantic_search"
    # Strategy name -> search agent; each becomes a parallel branch ``search_<name>``.
    strategies: ClassVar[Mapping[str, str] | None] = None

    def search_strategies(self) -> dict[str, str]:
        if self.strategies:
            return dict(self.strategies)
        found = {"lexical": self.search_agent}
        if self.semantic_agent:
            found["semantic"] = self.semantic_agent
        return found

    def flow_variant(self, payload: Any) -> Any:
        """Which strategies serve this query: ("lexical",), ("semantic",) or both (hybrid)."""
        if self.strategies or not self.semantic_agent:
            return None
        try:
            query = parse_lead_query(payload.lead_query if isinstance(payload, LeadPayload)
                                     else dict(payload or {}).get("lead_query"))
        except Exception:  # noqa: BLE001 - the parse node reports it, naming the field
            return ("lexical",)
        if not query.uses_semantic():
            return ("lexical",)
        return ("semantic",) if not query.uses_lexical() else ("lexical", "semantic")

    def build_flow(self, variant: Any = None) -> FlowGraph:
        strategies = self.search_strategies()
        if variant is not None:
            strategies = {name: agent for name, agent in strategies.items() if name in variant}
        branches = [f"search_{name}" for name in strategies]
        flow = Flow(self.name, input_model=LeadPayload).node("parse", _parse, lineage=None,
                                    description="check the query once, before any search")
        for branch, agent in zip(branches, strategies.values(), strict=True):
            flow.node(branch, agent=agent, request=_search_request, description=f"search with {agent}")
        return (flow.merge("merge", key="lead_id", allow_partial=len(branches) > 1)
                .node("rank", self._rank, description="order the merged leads; fuse several rankings")
                .fan_out("parse", branches, join="merge")
                .then("merge", "rank")
                .build())

    def _rank(self, state: FlowState) -> Output:
        merged = state["merge"]
        ran = [name for name in merged["metadata"]["branches"] if name in state.results]
        branches = [name for name in ran if not state[name]["metadata"].get("skipped")] or ran[:1]
        meta = {k: v for k, v in merged["metadata"].items() if k in ("total_count", "partial", "errors", "branches")}
        skipped = {name: state[name]["metadata"]["skipped"] for name in ran if state[name]["metadata"].get("skipped")}
        if skipped:
            meta["skipped"] = skipped
        for name in ran:  # which embedder ran (or would have), whatever the outcome
            if "embedder" in state[name]["metadata"]:
                meta["embedder"] = state[name]["metadata"]["embedder"]
        if len(branches) == 1:
            # One strategy: its order, total and pagination stand as they are.
            only = state[branches[0]]["metadata"]
            meta.update({k: v for k, v in only.items() if k not in _CORE and k != "skipped"})
            return Output(merged["records"], source=only["source"], **meta)
        query = state.records("parse")[0]["lead_query"]
        offset, limit = query.get("offset", 0), query.get("limit", 25)
        rankings = {b.removeprefix("search_"): state[b]["records"] for b in branches}
        fused = reciprocal_rank_fusion(rankings)
        positions = {name: {r["lead_id"]: (rank, r.get("match", {}).get("score"))
                            for rank, r in enumerate(records, start=1)} for name, records in rankings.items()}
        cut = fused[offset : offset + limit]
        if query.get("ids_only") or not _fused(query):  # ids asked for, or strategies that gave records
            records = [record for _, record in cut]
        else:  # the strategies ranked ids: the page's lead records, through the loader, in fused order
            loaded = self.call(self.loader_agent, {"lead_ids": [int(r["lead_id"]) for _, r in cut]}, state.context,
                               node="rank")["records"]
            by_id = {r["lead_id"]: r for r in loaded}
            records = [by_id[r["lead_id"]] for _, r in cut if r["lead_id"] in by_id]
        scores = {r["lead_id"]: score for score, r in cut}
        page = []
        for record in records:
            found = {name: {"rank": pos[record["lead_id"]][0], "score": pos[record["lead_id"]][1]}
                     for name, pos in positions.items() if record["lead_id"] in pos}
            match = {"strategies": sorted(found), "fused_score": scores[record["lead_id"]], "by_strategy": found}
            page.append({**{k: v for k, v in record.items() if k != "match"}, "match": match})
        meta["total_count"] = len(fused)
        meta["strategies"] = sorted({s for b in branches for s in state[b]["metadata"].get("strategies", [])})
        more = offset + len(page) < len(fused) or any(state[b]["metadata"].get("next_offset") is not None
                                                       for b in branches)
        meta.update(fusion="reciprocal_rank", rrf_k=RRF_K, offset=offset, limit=limit,
                    next_offset=offset + len(page) if more and page else None)
        return Output(page, source="leads_db", **meta)


def _parse(state: FlowState) -> list[dict[str, Any]]:
    query = parse_lead_query(state.input.lead_query)
    return [{"lead_query": query.model_dump(exclude_none=True)}]


def _search_request(state: FlowState) -> dict[str, Any]:
    query = dict(state.records("parse")[0]["lead_query"])
    if _fused(query):
        # Each strategy ranks from the top; the page is cut from the fused list.  The lexical half
        # ranks the text's keywords, as the semantic half ranks its meaning.
        query["limit"] = MAX_FUSED
        query["offset"] = 0
        query["keywords"] = True
        query["ids_only"] = True  # ranked by id; the page's records are loaded once, after the fusion
    return {"lead_query": query}


def _fused(query: Mapping[str, Any]) -> bool:
    parsed = LeadQuery.model_validate(query)
    return parsed.uses_semantic() and parsed.uses_lexical()


