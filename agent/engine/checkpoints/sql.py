"""SQL checkpoints (SQLite or PostgreSQL) through SQLAlchemy Core.

One short transaction per saved step, its statement compiled once.  On
SQLite writers take turns on the database's writer lock and begin IMMEDIATE,
so they queue instead of failing an upgrade.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update

from agent.engine.checkpoints.base import CheckpointRun, CheckpointStore, RunStatus, utc_clock, as_utc
from agent.errors import ConfigurationError, StorageError
from agent.storage.db import Database
from agent.storage.prepared import Prepared, param
from agent.storage.times import aware
from agent.storage.models import EngineRun, EngineStep

__all__ = ["SqlCheckpointStore"]

_RUNS = EngineRun.__table__
_STEPS = EngineStep.__table__
# The statements of every step, compiled once (see agent.storage.prepared).
_INSERT_STEP = Prepared(insert(_STEPS).values({c: param(c) for c in (
    "run_id", "step", "seq", "envelope_json", "created_at")}))
_INSERT_RUN = Prepared(insert(_RUNS).values({c: param(c) for c in (
    "run_id", "flow", "status", "waiting_for", "input_hash", "input_json", "created_at", "updated_at")}))
_SET = {"status": param("status"), "waiting_for": param("waiting_for"), "updated_at": param("updated_at")}
_SET_STATUS = Prepared(update(_RUNS).where(_RUNS.c.run_id == param("target_run_id")).values(_SET))
_CLAIM = Prepared(update(_RUNS).where(_RUNS.c.run_id == param("target_run_id"),
                                      _RUNS.c.status == param("expected_status")).values(_SET))
_CLAIM_WAITING = Prepared(update(_RUNS).where(_RUNS.c.run_id == param("target_run_id"),
                                              _RUNS.c.status == param("expected_status"),
                                              _RUNS.c.waiting_for == param("expected_waiting_for")).values(_SET))


def _duplicate(error: BaseException | None) -> bool:
    """A broken unique key (the row is there already); a missing run (foreign key) is not one."""
    if isinstance(error, sqlite3.IntegrityError):
        return "UNIQUE" in str(error)
    return getattr(error, "sqlstate", None) == "23505"


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

    def _writing(self) -> Any:
        return self.db.connect(lock="agent:checkpoints")

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

    def _write(self, statement: Prepared, params: dict[str, Any]) -> int | None:
        """One statement in its own transaction: the rows it changed, None when it broke a unique key."""
        try:
            with self.db.connect(write=True) as conn:
                return int(statement.execute(conn, params).rowcount)
        except StorageError as exc:
            if _duplicate(exc.__cause__):
                return None
            raise

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
