"""Bulk inserts without per-row ORM or Core overhead.

Core's executemany builds and processes a parameter dict per row, which cost
more than SQLite's own work on a 100,000-row import.  Here the statement is
rendered once for the dialect's parameter style, per-row values go to the
driver as tuples, and values shared by every row (timestamps) pass their type's
bind processor once.  Per-row values must be plain str/int/float/None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection

__all__ = ["insert_many"]

_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def insert_many(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                shared: Mapping[str, Any] | None = None) -> None:
    """INSERT ``rows`` (tuples ordered as ``columns``) plus ``shared`` values in every row."""
    if not rows:
        return
    dialect = conn.dialect
    placeholder = _PLACEHOLDER.get(dialect.paramstyle)
    shared = dict(shared or {})
    processed = []
    for name, value in shared.items():
        processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        processed.append(processor(value) if processor else value)
    names = [*columns, *shared]
    if placeholder is None:  # an unusual driver: let Core do the work
        conn.execute(table.insert(), [dict(zip(names, (*row, *processed))) for row in rows])
        return
    quote = dialect.identifier_preparer.quote
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
           f"VALUES ({', '.join([placeholder] * len(names))})")
    tail = tuple(processed)
    conn.exec_driver_sql(sql, [(*row, *tail) for row in rows])
