"""Lead loader agent: lead ids in, the tenant's lead records for them out, in that order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from agent.agents.base import BaseAgent
from agent.context import RunContext
from agent.envelope import make_envelope, make_provenance
from agent.errors import PayloadError
from agent.leads.records import load_leads
from agent.storage.db import Database

__all__ = ["LeadLoaderAgent", "MAX_LEAD_IDS"]

MAX_LEAD_IDS = 10_000


def _lead_ids(request: Mapping[str, Any]) -> list[int]:
    ids = request.get("lead_ids")
    if not isinstance(ids, (list, tuple)):
        raise PayloadError("lead_ids", "must be a list of lead ids (integers)")
    if len(ids) > MAX_LEAD_IDS:
        raise PayloadError("lead_ids", f"at most {MAX_LEAD_IDS} ids per request, not {len(ids)}")
    for index, value in enumerate(ids):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PayloadError(f"lead_ids[{index}]", "must be a positive integer")
    return list(ids)


class LeadLoaderAgent(BaseAgent):
    """Loads lead records by id from the lead store (the context's tenant only)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"read"})
    source = "leads_db"

    def __init__(self, db: Database | None = None) -> None:
        self._db = db

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        ids = _lead_ids(request)
        unique = list(dict.fromkeys(ids))
        db = self._db or Database.for_settings(context.settings)
        records = load_leads(db, context.tenant, unique)
        for record in records:
            record["provenance"] = make_provenance(
                record, source=self.source, source_id=f"contacts/{record['lead_id']}", agent="lead_loader",
                run_id=context.run_id, node=context.node, table="contacts", row_id=record["lead_id"],
                hash_now=False,
            )
        found = {r["lead_id"] for r in records}
        missing = [i for i in unique if i not in found]
        return make_envelope(
            records, source=self.source, run_id=context.run_id, flow=context.flow, node=context.node,
            agent="lead_loader", duration_ms=context.elapsed_ms(), requested=len(unique),
            missing=len(missing), missing_ids=missing[:100], duplicates=len(ids) - len(unique),
        )
