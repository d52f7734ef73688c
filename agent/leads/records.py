"""Lead records by id: the same record shape lead search returns, for one tenant only.

``load_leads(db, tenant, ids)`` reads the contacts named by ``ids`` (with their
company) and returns one record per id found, in the order given; ids of
another tenant are simply not found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, select

from agent.leads.search import _RECORD_COLUMNS
from agent.storage.db import Database
from agent.storage.models import Company, Contact

__all__ = ["load_leads", "lead_record"]

# Ids per statement: well under every driver's bound-parameter limit.
_CHUNK = 500

_LOAD_FOR_TENANT = (
    select(*_RECORD_COLUMNS)
    .select_from(Contact)
    .outerjoin(Company, Contact.company_id == Company.id)
    .where(Contact.tenant_id == bindparam("tenant"))
    .where(Contact.id.in_(bindparam("ids", expanding=True)))
)


def lead_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the record columns as a lead record (``full_name``, ISO ``updated_at``)."""
    record = dict(row)
    record["full_name"] = " ".join(p for p in (row["first_name"], row["last_name"]) if p) or None
    updated = row["updated_at"]
    record["updated_at"] = updated.isoformat() if updated else None
    return record


def load_leads(db: Database, tenant: str, ids: Iterable[int]) -> list[dict[str, Any]]:
    """The lead records of ``tenant`` for ``ids``, in the order given, each id once; unknown ids are left out."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    by_id: dict[int, dict[str, Any]] = {}
    with db.connect() as conn:
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            for row in conn.execute(_LOAD_FOR_TENANT, {"tenant": tenant, "ids": chunk}).mappings():
                by_id[row["lead_id"]] = lead_record(row)
    return [by_id[i] for i in wanted if i in by_id]
