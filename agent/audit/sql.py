"""SQL audit store (SQLite or PostgreSQL) through SQLAlchemy Core.

Writes that must happen once use the database's own arbiters, so they hold
across processes: ``INSERT ... ON CONFLICT`` for runs, envelopes and
deliveries, and a compare-and-set ``UPDATE`` for state changes.  On SQLite a
write transaction begins IMMEDIATE, so writers queue instead of failing an upgrade.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from agent.audit.base import (
    FINISHED_STATES,
    AuditDelivery,
    AuditEnvelope,
    AuditFailure,
    AuditRun,
    AuditStore,
    TRANSITIONS,
    RunState,
    advance,
    check_page,
    check_start,
    check_states,
    delivery_from,
    dumps,
    envelope_hash,
    envelope_json,
    error_text,
    failure_from,
    found_record,
    index_records,
    unknown_run,
)
from agent.envelope import validate_envelope
from agent.errors import ConfigurationError
from agent.storage.db import Database, upsert_insert
from agent.storage.times import as_utc, aware, utc_clock
from agent.storage.models import (
    AuditDeliveryRow,
    AuditEnvelopeRow,
    AuditFailureRow,
    AuditRecordRow,
    AuditRunRow,
)

__all__ = ["SqlAuditStore"]

_RUNS = AuditRunRow.__table__
_ENVELOPES = AuditEnvelopeRow.__table__
_RECORDS = AuditRecordRow.__table__
_FAILURES = AuditFailureRow.__table__
_DELIVERIES = AuditDeliveryRow.__table__
_CHILDREN = (_RECORDS, _ENVELOPES, _FAILURES, _DELIVERIES)


class SqlAuditStore(AuditStore):
    """The audit trail in the ``audit_*`` tables of ``db`` (a ``Database`` or a URL)."""

    def __init__(self, db: Database | str, *, clock: Callable[[], datetime] | None = None) -> None:
        self.db = Database(db) if isinstance(db, str) else db
        self._insert = upsert_insert(self.db.dialect)
        if self._insert is None:
            raise ConfigurationError(f"SqlAuditStore works on SQLite or PostgreSQL, not {self.db.dialect}")
        if self.db.dialect == "sqlite" and self.db.engine.url.database in (None, "", ":memory:"):
            # Each connection of an in-memory SQLite database is a database of its own.
            raise ConfigurationError("SqlAuditStore needs a SQLite file (or PostgreSQL); "
                                     "for an audit trail in memory use InMemoryAuditStore")
        self.db.migrate()
        self._clock = utc_clock(clock)
        self._sqlite = self.db.dialect == "sqlite"
        # SQLite has one writer at a time: this process's threads queue here, not in its busy handler.
        self._thread_lock = threading.Lock()

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        if not self._sqlite:
            with self.db.connect() as conn:
                yield conn
            return
        with self._thread_lock, self.db.connect(lock="agent:audit") as conn:
            yield conn

    def _require_run(self, conn: Connection, run_id: str) -> None:
        if conn.execute(select(_RUNS.c.id).where(_RUNS.c.run_id == run_id)).first() is None:
            raise unknown_run(run_id)

    # -- writes ------------------------------------------------------------------------------
    def start_run(self, run_id: str, *, orchestrator: str, job_id: str | None = None,
                  campaign_id: str | None = None, tenant: str = "default",
                  meta: Mapping[str, Any] | None = None) -> AuditRun:
        body = dumps(check_start(run_id, orchestrator, job_id, campaign_id, tenant, meta))
        now = self._clock()
        values = {"run_id": run_id, "orchestrator": orchestrator, "state": "queued", "job_id": job_id,
                  "campaign_id": campaign_id, "tenant_id": tenant, "meta_json": body, "attempts": 0,
                  "error": None, "created_at": now, "updated_at": now, "started_at": None, "finished_at": None}
        with self._writing() as conn:
            conn.execute(self._insert(_RUNS).values(values).on_conflict_do_nothing(index_elements=["run_id"]))
            row = conn.execute(select(_RUNS).where(_RUNS.c.run_id == run_id)).mappings().one()
        return _run(row)

    def set_state(self, run_id: str, state: RunState, *, error: str | BaseException | None = None) -> AuditRun:
        check_states(state)
        message = error_text(error)
        sources = [name for name, moves in TRANSITIONS.items() if state in moves]
        while True:
            now = self._clock()
            running = state == "running"
            # One statement: the move happens only from a state the machine allows, atomically.
            # Entering "running" counts an attempt; "failed" -> "dead" keeps why it failed.
            kept_error = _RUNS.c.error if state in ("failed", "dead") else None
            change = (update(_RUNS).where(_RUNS.c.run_id == run_id, _RUNS.c.state.in_(sources))
                      .values(state=state, updated_at=now,
                              error=message if message is not None else kept_error,
                              attempts=_RUNS.c.attempts + 1 if running else _RUNS.c.attempts,
                              started_at=now if running else _RUNS.c.started_at,
                              finished_at=now if state in FINISHED_STATES else None)
                      .returning(*_RUNS.c))
            with self._writing() as conn:
                row = conn.execute(change).mappings().first()
            if row is not None:
                return _run(row)
            run = self.get_run(run_id)
            if run is None:
                raise unknown_run(run_id)
            advance(run, state, error=message, now=now)  # names the refused move; else it moved meanwhile

    def save_envelope(self, run_id: str, envelope: Mapping[str, Any]) -> bool:
        return self.save_envelopes(run_id, [envelope]) == 1

    def save_envelopes(self, run_id: str, envelopes: Sequence[Mapping[str, Any]], *,
                       validated: bool = False) -> int:
        if not validated:
            for envelope in envelopes:
                validate_envelope(envelope)
        now = self._clock()
        rows: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for envelope in envelopes:
            digest = envelope_hash(envelope)
            if digest in rows:
                continue
            meta = envelope["metadata"]
            indexed = index_records(envelope)
            rows[digest] = ({"run_id": run_id, "node": meta["node"], "flow": meta["flow"], "envelope_hash": digest,
                             "envelope_json": envelope_json(envelope, indexed), "created_at": now},
                            [{**r, "run_id": run_id, "node": meta["node"]} for r in indexed])
        if not rows:
            return 0
        with self._writing() as conn:
            self._require_run(conn, run_id)
            known = set(conn.execute(select(_ENVELOPES.c.envelope_hash).where(
                _ENVELOPES.c.run_id == run_id, _ENVELOPES.c.envelope_hash.in_(list(rows)))).scalars())
            fresh = [row for digest, row in rows.items() if digest not in known]  # saved already: records and all
            if not fresh:
                return 0
            # One multi-row INSERT whose RETURNING says which were new: a concurrent saver of the same
            # envelope (PostgreSQL) inserts it once, and only the winner writes its records.
            insert = (self._insert(_ENVELOPES).values([row for row, _ in fresh])
                      .on_conflict_do_nothing(index_elements=["run_id", "envelope_hash"])
                      .returning(_ENVELOPES.c.envelope_hash))
            inserted = set(conn.execute(insert).scalars())
            records = [record for row, indexed in fresh if row["envelope_hash"] in inserted for record in indexed]
            if records:
                conn.execute(_RECORDS.insert(), records)
        return len(inserted)

    def save_failure(self, run_id: str, error: str | BaseException, envelope: Any = None) -> AuditFailure:
        failure = failure_from(run_id, error, envelope, self._clock())
        with self._writing() as conn:
            self._require_run(conn, run_id)
            conn.execute(_FAILURES.insert().values(
                run_id=run_id, node=failure.node, error_type=failure.error_type, message=failure.message,
                code=failure.code, envelope_json=None if envelope is None else dumps(failure.envelope),
                created_at=failure.saved_at))
        return failure

    def save_delivery(self, run_id: str, record: Mapping[str, Any]) -> AuditDelivery:
        return self.save_deliveries(run_id, [record])[0]

    def save_deliveries(self, run_id: str, records: Sequence[Mapping[str, Any]]) -> list[AuditDelivery]:
        deliveries = [delivery_from(run_id, record, self._clock()) for record in records]
        if not deliveries:
            return []
        rows = [{"message_id": d.message_id, "run_id": run_id, "to_address": d.to, "lead_id": d.lead_id,
                 "campaign_id": d.campaign_id, "step": d.step, "status": d.status, "created_at": d.saved_at,
                 "provenance_json": None if d.provenance is None else dumps(d.provenance)} for d in deliveries]
        insert = self._insert(_DELIVERIES)
        upsert = insert.on_conflict_do_update(
            index_elements=["message_id"], set_={k: insert.excluded[k] for k in rows[0] if k != "message_id"})
        with self._writing() as conn:
            self._require_run(conn, run_id)
            conn.execute(upsert, rows)
        return deliveries

    # -- queries -----------------------------------------------------------------------------
    def get_run(self, run_id: str) -> AuditRun | None:
        with self.db.connect() as conn:
            row = conn.execute(select(_RUNS).where(_RUNS.c.run_id == run_id)).mappings().first()
        return None if row is None else _run(row)

    def list_runs(self, *, state: str | Sequence[str] | None = None, campaign_id: str | None = None,
                  limit: int = 50, offset: int = 0) -> list[AuditRun]:
        states = check_states(state)
        check_page(limit, offset)
        query = select(_RUNS)
        if states is not None:
            query = query.where(_RUNS.c.state.in_(states))
        if campaign_id is not None:
            query = query.where(_RUNS.c.campaign_id == campaign_id)
        query = query.order_by(_RUNS.c.created_at.desc(), _RUNS.c.id.desc()).limit(limit).offset(offset)
        with self.db.connect() as conn:
            return [_run(row) for row in conn.execute(query).mappings()]

    def envelopes(self, run_id: str, node: str | None = None) -> list[AuditEnvelope]:
        query = select(_ENVELOPES).where(_ENVELOPES.c.run_id == run_id)
        if node is not None:
            query = query.where(_ENVELOPES.c.node == node)
        with self.db.connect() as conn:
            rows = conn.execute(query.order_by(_ENVELOPES.c.id)).mappings().all()
        return [AuditEnvelope(r["run_id"], r["node"], r["flow"], r["envelope_hash"], json.loads(r["envelope_json"]),
                              aware(r["created_at"])) for r in rows]

    def last_envelope(self, run_id: str) -> AuditEnvelope | None:
        query = select(_ENVELOPES).where(_ENVELOPES.c.run_id == run_id).order_by(_ENVELOPES.c.id.desc()).limit(1)
        with self.db.connect() as conn:
            r = conn.execute(query).mappings().first()
        return None if r is None else AuditEnvelope(r["run_id"], r["node"], r["flow"], r["envelope_hash"],
                                                    json.loads(r["envelope_json"]), aware(r["created_at"]))

    def failures(self, run_id: str) -> list[AuditFailure]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_FAILURES).where(_FAILURES.c.run_id == run_id)
                                .order_by(_FAILURES.c.id)).mappings().all()
        return [AuditFailure(r["run_id"], r["error_type"], r["message"], r["code"], r["node"],
                             None if r["envelope_json"] is None else json.loads(r["envelope_json"]),
                             aware(r["created_at"])) for r in rows]

    def records_for_lead(self, lead_id: str) -> list[dict[str, Any]]:
        return self._records(_RECORDS.c.lead_id == str(lead_id))

    def find_record(self, record_hash: str) -> dict[str, Any] | None:
        found = self._records(_RECORDS.c.hash == record_hash, limit=1)
        return found[0] if found else None

    def _records(self, condition: Any, limit: int | None = None) -> list[dict[str, Any]]:
        query = select(_RECORDS).where(condition).order_by(_RECORDS.c.id).limit(limit)
        with self.db.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [found_record(r["run_id"], r["node"], r) for r in rows]

    def message(self, message_id: str) -> AuditDelivery | None:
        with self.db.connect() as conn:
            r = conn.execute(select(_DELIVERIES).where(_DELIVERIES.c.message_id == message_id)).mappings().first()
        if r is None:
            return None
        return AuditDelivery(r["message_id"], r["run_id"], r["to_address"], r["lead_id"], r["campaign_id"],
                             r["step"], r["status"],
                             None if r["provenance_json"] is None else json.loads(r["provenance_json"]),
                             aware(r["created_at"]))

    def prune(self, *, older_than: timedelta, now: datetime | None = None,
              states: Sequence[str] = FINISHED_STATES) -> int:
        chosen = check_states(states, "states") or ()
        cutoff = as_utc(now or self._clock()) - older_than
        old = select(_RUNS.c.run_id).where(_RUNS.c.state.in_(chosen), _RUNS.c.updated_at < cutoff)
        with self._writing() as conn:
            # Lock the old runs first (PostgreSQL): a retry cannot revive a run whose trail is going.
            conn.execute(old.with_for_update()).all()
            for table in _CHILDREN:
                conn.execute(delete(table).where(table.c.run_id.in_(old)))
            return int(conn.execute(delete(_RUNS).where(_RUNS.c.run_id.in_(old))).rowcount or 0)


def _run(row: Mapping[str, Any]) -> AuditRun:
    return AuditRun(row["run_id"], row["orchestrator"], row["state"], row["job_id"], row["campaign_id"],
                    row["tenant_id"], json.loads(row["meta_json"]), row["attempts"], row["error"],
                    aware(row["created_at"]), aware(row["updated_at"]), aware(row["started_at"]),
                    aware(row["finished_at"]))
