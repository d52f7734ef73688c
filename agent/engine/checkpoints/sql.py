"""SQL checkpoints (SQLite or PostgreSQL) through SQLAlchemy Core.

One short transaction per saved step.  On SQLite it begins IMMEDIATE, so
concurrent writers queue on the lock instead of failing an upgrade.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from agent.engine.checkpoints.base import CheckpointRun, CheckpointStore, RunStatus
from agent.errors import StorageError
from agent.storage.db import Database
from agent.storage.models import EngineRun, EngineStep

__all__ = ["SqlCheckpointStore"]

_RUNS = EngineRun.__table__
_STEPS = EngineStep.__table__


class SqlCheckpointStore(CheckpointStore):
    """Checkpoints in the ``engine_runs`` / ``engine_steps`` tables of ``db``."""

    def __init__(self, db: Database | str, *, clock: Any = None) -> None:
        self.db = Database(db) if isinstance(db, str) else db
        self.db.migrate()
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = "agent:checkpoints" if self.db.dialect == "sqlite" else None

    def begin(self, run_id: str, flow: str, *, input_hash: str, input_json: str | None) -> CheckpointRun:
        existing = self.get_run(run_id)
        if existing is not None:
            return existing
        now = self._clock()
        try:
            with self.db.connect(lock=self._lock) as conn:
                conn.execute(insert(_RUNS).values(
                    run_id=run_id, flow=flow, status="running", waiting_for=None, input_hash=input_hash,
                    input_json=input_json, created_at=now, updated_at=now))
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
        run = self.get_run(run_id)
        assert run is not None
        return run

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
            with self.db.connect(lock=self._lock) as conn:
                seq = conn.execute(select(_STEPS.c.seq).where(_STEPS.c.run_id == run_id)
                                   .order_by(_STEPS.c.seq.desc()).limit(1)).scalar()
                conn.execute(insert(_STEPS).values(run_id=run_id, step=step, seq=(seq or 0) + 1,
                                                   envelope_json=body, created_at=self._clock()))
        except StorageError as exc:
            # Saved already (a concurrent resume got there first): the first envelope stands.
            if not isinstance(exc.__cause__, IntegrityError):
                raise

    def set_status(self, run_id: str, status: RunStatus, *, waiting_for: str | None = None) -> None:
        with self.db.connect(lock=self._lock) as conn:
            conn.execute(update(_RUNS).where(_RUNS.c.run_id == run_id)
                         .values(status=status, waiting_for=waiting_for, updated_at=self._clock()))

    def delete(self, run_id: str) -> None:
        with self.db.connect(lock=self._lock) as conn:
            conn.execute(delete(_STEPS).where(_STEPS.c.run_id == run_id))
            conn.execute(delete(_RUNS).where(_RUNS.c.run_id == run_id))

    def prune(self, *, older_than: timedelta, now: datetime | None = None,
              statuses: tuple[RunStatus, ...] = ("succeeded", "failed")) -> int:
        cutoff = (now or self._clock()) - older_than
        old = select(_RUNS.c.run_id).where(_RUNS.c.updated_at < cutoff, _RUNS.c.status.in_(statuses))
        with self.db.connect(lock=self._lock) as conn:
            conn.execute(delete(_STEPS).where(_STEPS.c.run_id.in_(old)))
            return int(conn.execute(delete(_RUNS).where(_RUNS.c.run_id.in_(old))).rowcount or 0)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
