"""Semantic lead search agent: a ``lead_query`` in, the leads nearest its free text out.

The query's free text is embedded whole ("fintech startups in Berlin hiring
sales people"); its filters (industry, company size, location, title) are
resolved in SQL first and only the leads that pass them are ranked, so a
filter never hides a match behind the top-k cut.  Each record's ``match``
gives the strategy and its cosine similarity; the envelope metadata names the
embedder that ran (``embedder: {name, kind}``) and the index.

A query the semantic strategy does not serve (no free text, ``search:
lexical``, or an exact name / company / domain / email under ``auto``)
returns no records and ``skipped`` with the reason, so the lexical strategy's
answer stands alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from agent.agents.base import BaseAgent
from agent.agents.lead_search import parse_lead_query
from agent.context import RunContext
from agent.embeddings import embedder_for
from agent.envelope import make_envelope, make_provenance
from agent.leads.search import LeadSearch
from agent.storage.db import Database
from agent.vectors import lead_vectors

__all__ = ["SemanticSearchAgent"]


class SemanticSearchAgent(BaseAgent):
    """Ranks a tenant's leads by embedding similarity to the query's free text, within its filters."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"read"})
    source = "leads_db"

    def __init__(self, db: Database | None = None) -> None:
        self._db = db
        self._searches: dict[tuple[str, str], LeadSearch] = {}

    def _search_for(self, db: Database, tenant: str) -> LeadSearch:
        key = (db.url, tenant)
        search = self._searches.get(key)
        if search is None or search.db is not db:
            search = self._searches[key] = LeadSearch(db, tenant=tenant)
        return search

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        query = parse_lead_query(request.get("lead_query", request))
        embedder = embedder_for(context.settings)
        meta: dict[str, Any] = {"embedder": {"name": embedder.name, "kind": embedder.kind},
                                "strategies": ["semantic"], "limit": query.limit, "offset": query.offset}
        if not query.uses_semantic():
            reason = "no free text" if not query.text else f"search is {query.search!r} for this query"
            return self._envelope([], context, total_count=0, skipped=reason, **meta)
        db = self._db or Database.for_settings(context.settings)
        vectors = lead_vectors(db, context.tenant, embedder)
        indexed = vectors.sync()
        search = self._search_for(db, context.tenant)
        with db.connect() as conn:
            index = vectors.index(conn)
            allowed = search.filtered_ids(conn, query.with_place())
            wanted = query.offset + query.limit
            hits = index.search(embedder.embed([query.text or ""])[0], wanted,
                                None if allowed is None else np.asarray(allowed, dtype=np.int64))
            page = hits[query.offset:]
            rows = [{"lead_id": lead} for lead, _ in page] if query.ids_only else search.load(
                conn, [lead for lead, _ in page])
        score_of = dict(page)
        records = []
        for row in rows:
            row["match"] = {"strategies": ["semantic"], "score": round(score_of[row["lead_id"]], 4)}
            row["provenance"] = make_provenance(
                row, source=self.source, source_id=f"contacts/{row['lead_id']}", agent="semantic_search",
                run_id=context.run_id, node=context.node, table="contacts", row_id=row["lead_id"],
                embedder=embedder.name,
            )
            records.append(row)
        candidates = len(index) if allowed is None else len(allowed)
        return self._envelope(records, context, total_count=min(candidates, len(index)),
                              index=index.name, indexed=indexed.to_dict(), filtered=allowed is not None,
                              next_offset=query.offset + len(records) if len(hits) == wanted
                              and candidates > wanted else None, **meta)

    def _envelope(self, records: list[dict[str, Any]], context: RunContext, **meta: Any) -> dict[str, Any]:
        return make_envelope(records, source=self.source, run_id=context.run_id, flow=context.flow,
                             node=context.node, agent="semantic_search", duration_ms=context.elapsed_ms(),
                             **meta)

