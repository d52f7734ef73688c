"""SQL checkpoints (SQLite or PostgreSQL) through SQLAlchemy Core.

One short transaction per saved step.  On SQLite it begins IMMEDIATE, so
concurrent writers queue on the lock instead of failing an upgrade.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from agent.engine.checkpoints.base import CheckpointRun, CheckpointStore, RunStatus, utc_clock, as_utc
from agent.errors import ConfigurationError, StorageError
from agent.storage.db import Database
from agent.storage.times import aware
from agent.storage.models import EngineRun, EngineStep

__all__ = ["SqlCheckpointStore"]

_RUNS = EngineRun.__table__
_STEPS = EngineStep.__table__
# Values are bound at execution; the SET / VALUES columns are the parameters' keys.
_INSERT_STEP = insert(_STEPS)
_INSERT_RUN = insert(_RUNS)
_SET_STATUS = update(_RUNS).where(_RUNS.c.run_id == bindparam("target_run_id"))
_CLAIM = _SET_STATUS.where(_RUNS.c.status == bindparam("expected_status"))
_CLAIM_WAITING = _CLAIM.where(_RUNS.c.waiting_for == bindparam("expected_waiting_for"))


def _sqlite_time(value: datetime) -> str:
    # How SQLAlchemy's SQLite DateTime stores a value: naive text (the clock gives UTC).
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


class SqlCheckpointStore(CheckpointStore):
    """Checkpoints in the ``engine_runs`` / ``engine_steps`` tables of ``db``."""

    def __init__(self, db: Database | str, *, clock: Any = None) -> None:
        self.db = Database(db) if isinstance(db, str) else db
        if self.db.dialect == "sqlite" and self.db.engine.url.database in (None, "", ":memory:"):
            # Each connection of an in-memory SQLite database is a database of its own.
            raise ConfigurationError("SqlCheckpointStore needs a SQLite file (or PostgreSQL); "
                                     "for checkpoints in memory use MemoryCheckpointStore")
        self.db.migrate()
        self._clock = utc_clock(clock)
        # SQLite has one writer at a time: threads of this process queue on a lock here
        # rather than in SQLite's busy handler, which sleeps in steps of milliseconds.
        self._sqlite = self.db.dialect == "sqlite"
        self._thread_lock = threading.Lock()
        self._compiled: dict[Any, tuple[str, tuple[str, ...]]] = {}

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        if not self._sqlite:
            with self.db.connect() as conn:
                yield conn
            return
        with self._thread_lock, self.db.connect(lock="agent:checkpoints") as conn:
            yield conn

    def begin(self, run_id: str, flow: str, *, input_hash: str,
              input_json: str | None) -> tuple[CheckpointRun, bool]:
        now = self._clock()
        created = self._write(_INSERT_RUN, {"run_id": run_id, "flow": flow, "status": "running",
                                            "waiting_for": None, "input_hash": input_hash,
                                            "input_json": input_json, "created_at": now, "updated_at": now})
        if created is None:
            run = self.get_run(run_id)
            if run is None:  # deleted in between: try once more
                return self.begin(run_id, flow, input_hash=input_hash, input_json=input_json)
            return run, False
        return CheckpointRun(run_id, flow, "running", input_hash,
                             json.loads(input_json) if input_json is not None else None,
                             input_json is not None, None, now, now), True

    def get_run(self, run_id: str) -> CheckpointRun | None:
        with self.db.connect() as conn:
            row = conn.execute(select(_RUNS).where(_RUNS.c.run_id == run_id)).mappings().first()
        if row is None:
            return None
        raw = row["input_json"]
        return CheckpointRun(row["run_id"], row["flow"], row["status"], row["input_hash"],
                             json.loads(raw) if raw is not None else None, raw is not None,
                             row["waiting_for"], aware(row["created_at"]), aware(row["updated_at"]))

    def load(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_STEPS.c.step, _STEPS.c.envelope_json)
                                .where(_STEPS.c.run_id == run_id).order_by(_STEPS.c.seq)).all()
        return {step: json.loads(body) for step, body in rows}

    def save(self, run_id: str, step: str, envelope: dict[str, Any]) -> None:
        # seq orders the steps as saved; nanoseconds need no read of the last one.  A step
        # saved already (a concurrent resume got there first) keeps its first envelope.
        self._write(_INSERT_STEP, {"run_id": run_id, "step": step, "seq": time.time_ns(),
                                   "envelope_json": json.dumps(envelope, ensure_ascii=False, separators=(",", ":")),
                                   "created_at": self._clock()})

    def set_status(self, run_id: str, status: RunStatus, *, waiting_for: str | None = None) -> None:
        self._write(_SET_STATUS, {"target_run_id": run_id, "status": status, "waiting_for": waiting_for,
                                  "updated_at": self._clock()})

    def claim(self, run_id: str, *, status: RunStatus, waiting_for: str | None = None) -> bool:
        params = {"target_run_id": run_id, "expected_status": status, "status": "running", "waiting_for": None,
                  "updated_at": self._clock()}
        if waiting_for is None:
            return self._write(_CLAIM, params) == 1
        return self._write(_CLAIM_WAITING, {**params, "expected_waiting_for": waiting_for}) == 1

    def _write(self, statement: Any, params: dict[str, Any]) -> int | None:
        """One statement in its own transaction: the rows it changed, None when it broke a unique key."""
        if self._sqlite:
            return self._sqlite_write(statement, params)
        try:
            with self.db.connect() as conn:
                return int(conn.execute(statement, params).rowcount)
        except StorageError as exc:
            cause = exc.__cause__
            # Only a duplicate key means "there already"; a missing run (foreign key) is an error.
            if isinstance(cause, IntegrityError) and getattr(cause.orig, "sqlstate", None) == "23505":
                return None
            raise

    def _sqlite_write(self, statement: Any, params: dict[str, Any]) -> int | None:
        # The hot path of every step on the embedded default: the driver directly, with the
        # statement compiled once, is three times faster than a Core round trip here.
        cache_key = (statement, tuple(params))
        compiled = self._compiled.get(cache_key)
        if compiled is None:
            columns = [k for k in params if k in statement.table.c]  # the rest are WHERE parameters
            done = statement.compile(dialect=self.db.engine.dialect, column_keys=columns)
            compiled = self._compiled.setdefault(cache_key, (str(done), tuple(done.positiontup or ())))
        sql, order = compiled
        values = tuple(_sqlite_time(v) if isinstance(v, datetime) else v for v in map(params.__getitem__, order))
        with self._thread_lock:
            conn = self.db.engine.raw_connection()
            try:
                cursor = conn.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    cursor.execute(sql, values)
                    changed = cursor.rowcount
                except sqlite3.IntegrityError as exc:
                    cursor.execute("ROLLBACK")
                    if "UNIQUE" in str(exc):
                        return None
                    raise
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
                cursor.execute("COMMIT")
                return changed
            except sqlite3.Error as exc:
                raise StorageError(f"database error: {type(exc).__name__}: {exc}") from exc
            finally:
                conn.close()

    def delete(self, run_id: str) -> None:
        with self._writing() as conn:
            conn.execute(delete(_STEPS).where(_STEPS.c.run_id == run_id))
            conn.execute(delete(_RUNS).where(_RUNS.c.run_id == run_id))

    def prune(self, *, older_than: timedelta, now: datetime | None = None,
              statuses: tuple[RunStatus, ...] = ("succeeded", "failed")) -> int:
        cutoff = as_utc(now or self._clock()) - older_than
        old = select(_RUNS.c.run_id).where(_RUNS.c.updated_at < cutoff, _RUNS.c.status.in_(statuses))
        with self._writing() as conn:
            conn.execute(delete(_STEPS).where(_STEPS.c.run_id.in_(old)))
            return int(conn.execute(delete(_RUNS).where(_RUNS.c.run_id.in_(old))).rowcount or 0)
