"""SQL checkpoints (SQLite or PostgreSQL) through SQLAlchemy Core.

One short transaction per saved step.  On SQLite it begins IMMEDIATE, so
concurrent writers queue on the lock instead of failing an upgrade.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from agent.engine.checkpoints.base import CheckpointRun, CheckpointStore, RunStatus, _utc_clock, as_utc
from agent.errors import StorageError
from agent.storage.db import Database
from agent.storage.models import EngineRun, EngineStep

__all__ = ["SqlCheckpointStore"]

_RUNS = EngineRun.__table__
_STEPS = EngineStep.__table__
_INSERT_STEP = insert(_STEPS)


class SqlCheckpointStore(CheckpointStore):
    """Checkpoints in the ``engine_runs`` / ``engine_steps`` tables of ``db``."""

    def __init__(self, db: Database | str, *, clock: Any = None) -> None:
        self.db = Database(db) if isinstance(db, str) else db
        self.db.migrate()
        self._clock = _utc_clock(clock)
        # SQLite has one writer at a time: threads of this process queue on a lock here
        # rather than in SQLite's busy handler, which sleeps in steps of milliseconds.
        self._sqlite = self.db.dialect == "sqlite"
        self._thread_lock = threading.Lock()

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
        try:
            with self._writing() as conn:
                conn.execute(insert(_RUNS).values(
                    run_id=run_id, flow=flow, status="running", waiting_for=None, input_hash=input_hash,
                    input_json=input_json, created_at=now, updated_at=now))
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            run = self.get_run(run_id)
            if run is None:
                raise
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
                             row["waiting_for"], _aware(row["created_at"]), _aware(row["updated_at"]))

    def load(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_STEPS.c.step, _STEPS.c.envelope_json)
                                .where(_STEPS.c.run_id == run_id).order_by(_STEPS.c.seq)).all()
        return {step: json.loads(body) for step, body in rows}

    def save(self, run_id: str, step: str, envelope: dict[str, Any]) -> None:
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
        try:
            with self._writing() as conn:
                # seq orders the steps as saved; nanoseconds need no read of the last one.
                conn.execute(_INSERT_STEP, {"run_id": run_id, "step": step, "seq": time.time_ns(),
                                            "envelope_json": body, "created_at": self._clock()})
        except StorageError as exc:
            # Saved already (a concurrent resume got there first): the first envelope stands.
            if not isinstance(exc.__cause__, IntegrityError):
                raise

    def set_status(self, run_id: str, status: RunStatus, *, waiting_for: str | None = None) -> None:
        with self._writing() as conn:
            conn.execute(update(_RUNS).where(_RUNS.c.run_id == run_id)
                         .values(status=status, waiting_for=waiting_for, updated_at=self._clock()))

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


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
