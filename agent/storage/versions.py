"""Data versions: a counter per (tenant, scope) that writers bump in their transaction.

Readers that cache derived data (the company-name index) compare one integer
instead of scanning a table to learn whether anything changed.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from agent.storage.db import upsert_insert
from agent.storage.models import DataVersion

__all__ = ["bump_version", "read_version"]


def bump_version(conn: Connection, tenant: str, scope: str) -> None:
    """Increment the counter, creating it on first use (an atomic upsert)."""
    # PostgreSQL's upsert, else SQLite's (the same ON CONFLICT syntax)
    dialect = "postgresql" if conn.dialect.name == "postgresql" else "sqlite"
    stmt = upsert_insert(dialect)(DataVersion).values(tenant_id=tenant, scope=scope, version=1)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[DataVersion.tenant_id, DataVersion.scope],
        set_={"version": DataVersion.version + 1}))


def read_version(conn: Connection, tenant: str, scope: str) -> int:
    stmt = select(DataVersion.version).where(DataVersion.tenant_id == tenant, DataVersion.scope == scope)
    return int(conn.execute(stmt).scalar() or 0)
