"""Full-text index maintenance that triggers do not cover.

On SQLite the external-content FTS5 table ``contacts_fts`` mirrors updates and
deletes through triggers, but new contacts are indexed here, in one statement per write
transaction: a per-row insert trigger made large imports several times
slower.  Every code path that inserts contacts calls ``index_new_contacts``
in the same transaction.  PostgreSQL indexes an expression and needs nothing.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

from agent.storage.models import Contact

__all__ = ["max_contact_id", "index_new_contacts"]

# Rows above the bound that the index does not know yet.  Writes are serialised on
# SQLite, so no other writer can slip rows in between; the NOT EXISTS guard still
# keeps a row from being indexed twice.
_INDEX_NEW = text(
    "INSERT INTO contacts_fts(rowid, search_text) "
    "SELECT c.id, c.search_text FROM contacts AS c WHERE c.id > :after "
    "AND NOT EXISTS (SELECT 1 FROM contacts_fts_docsize AS d WHERE d.id = c.id)"
)


def max_contact_id(conn: Connection) -> int:
    return int(conn.execute(select(func.max(Contact.id))).scalar() or 0)


def index_new_contacts(conn: Connection, after_id: int) -> None:
    """Index contacts with ``id > after_id`` (SQLite only; a no-op elsewhere)."""
    if conn.dialect.name == "sqlite":
        conn.execute(_INDEX_NEW, {"after": after_id})
