"""Lead search agent: a ``lead_query`` in, an envelope of leads out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import ValidationError

from agent.agents.base import BaseAgent
from agent.context import RunContext
from agent.envelope import make_envelope, make_provenance
from agent.errors import PayloadError
from agent.leads.query import LeadQuery
from agent.leads.search import LeadSearch
from agent.storage.db import Database
from agent.validation import first_error

__all__ = ["LeadSearchAgent", "parse_lead_query"]


def parse_lead_query(raw: Any, *, field: str = "lead_query") -> LeadQuery:
    """A ``LeadQuery`` from a dict (or a free-text string); errors name the field."""
    if isinstance(raw, LeadQuery):
        return raw
    if isinstance(raw, str):
        raw = {"text": raw}
    if not isinstance(raw, Mapping):
        raise PayloadError(field, "must be an object or a free-text string")
    try:
        query = LeadQuery.model_validate(dict(raw))
    except ValidationError as exc:
        raise PayloadError(*first_error(exc, field)) from None
    if query.search in ("semantic", "hybrid"):
        exact = [f for f in ("name", "company", "domain", "email") if getattr(query, f)]
        if exact:
            raise PayloadError(f"{field}.search", f"{query.search!r} cannot honour {', '.join(exact)} (embeddings "
                                                  "rank meaning, not identity); use 'lexical' or 'auto'")
        if not query.text:
            raise PayloadError(f"{field}.search", f"{query.search!r} needs free text (text) to rank by")
    if query.is_empty():
        raise PayloadError(field, "needs at least one of name, company, domain, email, title, "
                                  "industry, location or text")
    return query


class LeadSearchAgent(BaseAgent):
    """Finds leads in the lead store: fuzzy company names, filters, full text."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"read"})
    source = "leads_db"

    def __init__(self, db: Database | None = None) -> None:
        self._db = db
        self._searches: dict[tuple[str, str], LeadSearch] = {}

    def _search_for(self, context: RunContext) -> LeadSearch:
        db = self._db or Database.for_settings(context.settings)
        key = (db.url, context.tenant)
        search = self._searches.get(key)
        if search is None:
            search = self._searches[key] = LeadSearch(
                db, tenant=context.tenant, fuzzy_cutoff=context.settings.fuzzy_cutoff)
        return search

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        query = parse_lead_query(request.get("lead_query", request))
        if not query.uses_lexical():
            return make_envelope([], source=self.source, run_id=context.run_id, flow=context.flow,
                                 node=context.node, agent="lead_search", total_count=0,
                                 duration_ms=context.elapsed_ms(), skipped="search is 'semantic'",
                                 strategies=[], limit=query.limit, offset=query.offset)
        result = self._search_for(context).search(query)
        records = []
        for row in result.rows:
            row["provenance"] = make_provenance(
                row, source=self.source, source_id=f"contacts/{row['lead_id']}", agent="lead_search",
                run_id=context.run_id, node=context.node, table="contacts", row_id=row["lead_id"],
                hash_now=False,
            )
            records.append(row)
        if result.total is None:  # a keyset page: the next one starts after its last lead
            paging = {"after_id": query.after_id,
                      "next_after_id": records[-1]["lead_id"] if len(records) == query.limit else None}
        else:
            more = query.offset + len(records) < result.total
            paging = {"offset": query.offset, "next_offset": query.offset + len(records) if more else None}
        return make_envelope(
            records, source=self.source, run_id=context.run_id, flow=context.flow, node=context.node,
            agent="lead_search", total_count=result.total, duration_ms=context.elapsed_ms(),
            query=result.query, strategies=result.strategies, limit=query.limit, **paging,
        )
