"""Hot statements compiled once and run on the driver's cursor.

A Core statement costs a cache-key walk, parameter processing and a result
wrapper on every execution: about 100 to 250 µs, more than the SQLite write
it describes.  The job path (claim, audit, finish) runs a handful of such
statements per job, so there ``Prepared`` compiles each statement once per
dialect and hands the SQL to the driver's cursor of the Core connection in
hand: same transaction, same connection, a tenth of the overhead.

Parameters are bound by name (``param``); constants in the statement
(``in_`` lists) are rendered as parameters of their own at compile time.
Only values the drivers take as they are, and datetimes, are expected:
SQLite gets datetimes as SQLAlchemy's own naive UTC text, so Core reads them
back as usual.  Rows come back as the driver's tuples (``read_time`` turns a
SQLite datetime text into a datetime).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.engine import Connection

from agent.errors import StorageError
from agent.storage.times import as_utc

__all__ = ["Prepared", "param", "read_time"]


def param(name: str) -> Any:
    """A named parameter of a ``Prepared`` statement."""
    return bindparam(name, required=False)  # given at execution, not at compile time


_compiling = threading.Lock()


def _after_fork_in_child() -> None:
    global _compiling
    _compiling = threading.Lock()  # another thread may have been compiling at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


class Prepared:
    """One statement with named ``param``s, compiled once per dialect."""

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}

    def _for(self, conn: Connection) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        dialect = conn.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            with _compiling:
                done = self.statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
                # qmark drivers (SQLite) bind by position; pyformat ones (psycopg) by name.
                order = tuple(done.positiontup) if done.positiontup else None
                found = self._compiled.setdefault(dialect.name, (str(done), order, dict(done.params)))
        return found

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """Run on ``conn``'s transaction; the driver's cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        sql, order, defaults = self._for(conn)
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql, _bind(conn, order, defaults, params or {}))
        except conn.dialect.loaded_dbapi.Error as exc:
            raise StorageError(f"database error: {_first_line(exc)}") from exc
        return cursor

    def execute_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        sql, order, defaults = self._for(conn)
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(sql, [_bind(conn, order, defaults, row) for row in rows])
        except conn.dialect.loaded_dbapi.Error as exc:
            raise StorageError(f"database error: {_first_line(exc)}") from exc


def _bind(conn: Connection, order: tuple[str, ...] | None, defaults: dict[str, Any],
          params: Mapping[str, Any]) -> Any:
    if order is None:
        return {**defaults, **params}
    values = []
    for name in order:
        value = params[name] if name in params else defaults[name]
        if isinstance(value, datetime):
            value = _sqlite_time(value)
        values.append(value)
    return values


_last_time: tuple[datetime, str] | None = None


def _sqlite_time(value: datetime) -> str:
    """What SQLAlchemy's SQLite DateTime writes: naive text in UTC.  A statement most often binds
    one ``now`` several times, and a job's statements the same one: the last text is reused."""
    global _last_time
    last = _last_time
    if last is not None and last[0] is value:
        return last[1]
    text = as_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")
    _last_time = (value, text)
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def read_time(value: Any) -> datetime | None:
    """A datetime the driver gave back (SQLite: text), in UTC; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value)
