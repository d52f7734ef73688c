"""SQL audit store (SQLite or PostgreSQL) through SQLAlchemy Core.

Writes that must happen once use the database's own arbiters, so they hold
across processes: ``INSERT ... ON CONFLICT`` for runs, envelopes and
deliveries, and a compare-and-set ``UPDATE`` for state changes.  On SQLite a
write transaction begins IMMEDIATE, so writers queue instead of failing an upgrade.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from agent.audit.base import (
    FINISHED_STATES,
    LOST_ATTEMPT,
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
from agent.storage.prepared import Prepared, param, read_time
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
_RUN_COLUMNS = tuple(_RUNS.c.keys())
_START_COLUMNS = ("run_id", "orchestrator", "state", "job_id", "campaign_id", "tenant_id", "meta_json", "attempts",
                  "created_at", "updated_at")
_ENVELOPE_COLUMNS = ("run_id", "node", "flow", "envelope_hash", "envelope_json", "created_at")
_DELIVERY_COLUMNS = ("message_id", "run_id", "to_address", "lead_id", "campaign_id", "step", "status", "created_at",
                     "provenance_json")
_GET_RUN = Prepared(select(_RUNS).where(_RUNS.c.run_id == param("run_id")))
_ADD_RECORD = Prepared(insert(_RECORDS).values({c: param(c) for c in (
    "run_id", "node", "hash", "lead_id", "message_id", "parents_json", "envelope_id", "position")}))
_ADD_FAILURE = Prepared(insert(_FAILURES).values({c: param(c) for c in (
    "run_id", "node", "error_type", "message", "code", "envelope_json", "created_at")}))


class SqlAuditStore(AuditStore):
    """The audit trail in the ``audit_*`` tables of ``db`` (a ``Database`` or a URL)."""

    def __init__(self, db: Database | str, *, clock: Callable[[], datetime] | None = None) -> None:
        self.db = Database(db) if isinstance(db, str) else db
        insert = upsert_insert(self.db.dialect)
        if insert is None:
            raise ConfigurationError(f"SqlAuditStore works on SQLite or PostgreSQL, not {self.db.dialect}")
        self._insert = insert
        if self.db.dialect == "sqlite" and self.db.engine.url.database in (None, "", ":memory:"):
            # Each connection of an in-memory SQLite database is a database of its own.
            raise ConfigurationError("SqlAuditStore needs a SQLite file (or PostgreSQL); "
                                     "for an audit trail in memory use InMemoryAuditStore")
        self.db.migrate()
        self._clock = utc_clock(clock)
        # The statements every job runs, compiled once (see agent.storage.prepared).
        self._start = Prepared(insert(_RUNS).values({c: param(c) for c in _START_COLUMNS})
                               .on_conflict_do_nothing(index_elements=["run_id"]))
        self._add_envelope = Prepared(insert(_ENVELOPES).values({c: param(c) for c in _ENVELOPE_COLUMNS})
                                      .on_conflict_do_nothing(index_elements=["run_id", "envelope_hash"])
                                      .returning(_ENVELOPES.c.id))
        self._changes: dict[tuple[str, bool], Prepared] = {}
        keep = insert(_DELIVERIES)
        self._keep_delivery = keep.on_conflict_do_update(
            index_elements=["message_id"], set_={k: keep.excluded[k] for k in _DELIVERY_COLUMNS if k != "message_id"})

    def _writing(self) -> Any:
        # On SQLite, writers wait for the file's writer lock and begin IMMEDIATE.
        return self.db.connect(write=True)

    def _require_run(self, conn: Connection, run_id: str) -> None:
        if _GET_RUN.execute(conn, {"run_id": run_id}).fetchone() is None:
            raise unknown_run(run_id)

    # -- writes ------------------------------------------------------------------------------
    def _start_values(self, run_id: str, orchestrator: str, job_id: str | None, campaign_id: str | None,
                      tenant: str, meta: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
        body = dumps(check_start(run_id, orchestrator, job_id, campaign_id, tenant, meta))
        return {"run_id": run_id, "orchestrator": orchestrator, "state": "queued", "job_id": job_id,
                "campaign_id": campaign_id, "tenant_id": tenant, "meta_json": body, "attempts": 0,
                "created_at": now, "updated_at": now}

    def start_run(self, run_id: str, *, orchestrator: str, job_id: str | None = None,
                  campaign_id: str | None = None, tenant: str = "default",
                  meta: Mapping[str, Any] | None = None) -> AuditRun:
        values = self._start_values(run_id, orchestrator, job_id, campaign_id, tenant, meta, self._clock())
        with self._writing() as conn:
            self._start.execute(conn, values)
            return _run_row(_GET_RUN.execute(conn, {"run_id": run_id}).fetchone())

    def begin_attempt(self, run_id: str, *, orchestrator: str, job_id: str | None = None,
                      campaign_id: str | None = None, tenant: str = "default",
                      meta: Mapping[str, Any] | None = None) -> AuditRun:
        now = self._clock()
        values = self._start_values(run_id, orchestrator, job_id, campaign_id, tenant, meta, now)
        with self._writing() as conn:  # one transaction
            self._start.execute(conn, values)
            row = self._change(conn, run_id, "running", None, now)  # from queued or failed: the usual case
            if row is not None:
                return _run_row(row)
            run = _run_row(_GET_RUN.execute(conn, {"run_id": run_id}).fetchone())
            if run.state != "running":
                return run  # succeeded or dead: nothing to run
            # Its previous attempt died with its worker: recorded, and this one begins.
            self._add_failure(conn, failure_from(run_id, LOST_ATTEMPT, None, now))
            self._change(conn, run_id, "failed", None, now)
            row = self._change(conn, run_id, "running", None, now)
            return run if row is None else _run_row(row)

    def end_attempt(self, run_id: str, state: RunState, *, envelopes: Sequence[Mapping[str, Any]] = (),
                    error: str | BaseException | None = None, runs: Sequence[Mapping[str, Any]] = (),
                    deliveries: Sequence[Mapping[str, Any]] = ()) -> AuditRun:
        check_states(state)
        now = self._clock()
        rows = self._envelope_rows(run_id, envelopes, now)
        failure = None if error is None else failure_from(run_id, error, None, now)
        starts = [self._start_values(start["run_id"], start["orchestrator"], start.get("job_id"),
                                     start.get("campaign_id"), start.get("tenant", "default"), start.get("meta"), now)
                  for start in runs]
        upsert, kept = self._delivery_rows(run_id, deliveries)
        with self._writing() as conn:  # one transaction
            self._require_run(conn, run_id)
            self._insert_envelopes(conn, rows)
            if failure is not None:
                self._add_failure(conn, failure)
            if starts:
                self._start.execute_many(conn, starts)
            if kept:
                conn.execute(upsert, kept)
            row = self._change(conn, run_id, state, error_text(error), now)
        # Refused: set_state names the refused move (or makes it, if the run moved meanwhile).
        return _run_row(row) if row is not None else self.set_state(run_id, state, error=error)

    def set_state(self, run_id: str, state: RunState, *, error: str | BaseException | None = None) -> AuditRun:
        check_states(state)
        message = error_text(error)
        while True:
            now = self._clock()
            with self._writing() as conn:
                row = self._change(conn, run_id, state, message, now)
            if row is not None:
                return _run_row(row)
            self._refused(run_id, state, message, now)  # raises, unless it moved meanwhile: try again

    def _change(self, conn: Connection, run_id: str, state: str, message: str | None, now: datetime) -> Any:
        """The compare-and-set move of ``run_id`` to ``state``: the changed row, or None if refused."""
        key = (state, message is not None)
        change = self._changes.get(key)
        if change is None:
            sources = [name for name, moves in TRANSITIONS.items() if state in moves]
            running = state == "running"
            # One statement: the move happens only from a state the machine allows, atomically.
            # Entering "running" counts an attempt; "failed" -> "dead" keeps why it failed.
            kept_error = _RUNS.c.error if state in ("failed", "dead") else None
            change = self._changes.setdefault(key, Prepared(
                update(_RUNS).where(_RUNS.c.run_id == param("target"), _RUNS.c.state.in_(sources))
                .values(state=state, updated_at=param("now"),
                        error=param("message") if message is not None else kept_error,
                        attempts=_RUNS.c.attempts + 1 if running else _RUNS.c.attempts,
                        started_at=param("now") if running else _RUNS.c.started_at,
                        finished_at=param("now") if state in FINISHED_STATES else None)
                .returning(*_RUNS.c)))
        params = {"target": run_id, "now": now}
        if message is not None:
            params["message"] = message
        return change.execute(conn, params).fetchone()

    def _refused(self, run_id: str, state: str, message: str | None, now: datetime) -> AuditRun:
        run = self.get_run(run_id)
        if run is None:
            raise unknown_run(run_id)
        return advance(run, state, error=message, now=now)  # names the refused move; else it moved meanwhile

    def save_envelope(self, run_id: str, envelope: Mapping[str, Any]) -> bool:
        return self.save_envelopes(run_id, [envelope]) == 1

    def save_envelopes(self, run_id: str, envelopes: Sequence[Mapping[str, Any]], *,
                       validated: bool = False) -> int:
        if not validated:
            for envelope in envelopes:
                validate_envelope(envelope)
        rows = self._envelope_rows(run_id, envelopes, self._clock())
        if not rows:
            return 0
        with self._writing() as conn:
            self._require_run(conn, run_id)
            return self._insert_envelopes(conn, rows)

    @staticmethod
    def _envelope_rows(run_id: str, envelopes: Sequence[Mapping[str, Any]],
                       now: datetime) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each distinct envelope's row, with the rows of the records it is first to hold: a record
        carried unchanged through later nodes (same hash, same text) is indexed once per save."""
        rows: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        memo: dict[int, tuple[Any, dict[str, Any]]] = {}
        indexed_once: set[tuple[str, str]] = set()
        for envelope in envelopes:
            indexed = index_records(envelope, memo)
            digest = envelope_hash(envelope, indexed)
            if digest in rows:
                continue
            meta = envelope["metadata"]
            records = []
            for position, r in enumerate(indexed):
                seen = (r["hash"], r["record_json"])
                if seen not in indexed_once:
                    indexed_once.add(seen)
                    # The JSON itself stays in the envelope: the row points at it.
                    records.append({"run_id": run_id, "node": meta["node"], "hash": r["hash"],
                                    "lead_id": r["lead_id"], "message_id": r["message_id"],
                                    "parents_json": r["parents_json"], "position": position})
            rows[digest] = ({"run_id": run_id, "node": meta["node"], "flow": meta["flow"], "envelope_hash": digest,
                             "envelope_json": envelope_json(envelope, indexed), "created_at": now}, records)
        return list(rows.values())

    def _insert_envelopes(self, conn: Connection, rows: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> int:
        """Each envelope once (a concurrent saver of the same one, on PostgreSQL, inserts it once), and
        the records of those that were new; how many were new."""
        records: list[dict[str, Any]] = []
        new = 0
        for row, indexed in rows:
            inserted = self._add_envelope.execute(conn, row).fetchone()
            if inserted is not None:
                new += 1
                records.extend({**r, "envelope_id": inserted[0]} for r in indexed)
        if records:
            _ADD_RECORD.execute_many(conn, records)
        return new

    def save_failure(self, run_id: str, error: str | BaseException, envelope: Any = None) -> AuditFailure:
        failure = failure_from(run_id, error, envelope, self._clock())
        with self._writing() as conn:
            self._require_run(conn, run_id)
            self._add_failure(conn, failure)
        return failure

    @staticmethod
    def _add_failure(conn: Connection, failure: AuditFailure) -> None:
        _ADD_FAILURE.execute(conn, {
            "run_id": failure.run_id, "node": failure.node, "error_type": failure.error_type,
            "message": failure.message, "code": failure.code,
            "envelope_json": None if failure.envelope is None else dumps(failure.envelope),
            "created_at": failure.saved_at})

    def save_delivery(self, run_id: str, record: Mapping[str, Any]) -> AuditDelivery:
        return self.save_deliveries(run_id, [record])[0]

    def save_deliveries(self, run_id: str, records: Sequence[Mapping[str, Any]]) -> list[AuditDelivery]:
        deliveries = [delivery_from(run_id, record, self._clock()) for record in records]
        if not deliveries:
            return []
        upsert, rows = self._delivery_rows(run_id, records, deliveries)
        with self._writing() as conn:
            self._require_run(conn, run_id)
            conn.execute(upsert, rows)
        return deliveries

    def _delivery_rows(self, run_id: str, records: Sequence[Mapping[str, Any]],
                       deliveries: Sequence[AuditDelivery] | None = None) -> tuple[Any, list[dict[str, Any]]]:
        """The upsert keeping ``records`` as deliveries, and its rows."""
        if deliveries is None:
            now = self._clock()
            deliveries = [delivery_from(run_id, record, now) for record in records]
        rows = [{"message_id": d.message_id, "run_id": run_id, "to_address": d.to, "lead_id": d.lead_id,
                 "campaign_id": d.campaign_id, "step": d.step, "status": d.status, "created_at": d.saved_at,
                 "provenance_json": None if d.provenance is None else dumps(d.provenance)} for d in deliveries]
        return self._keep_delivery, rows

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
            # A row's record is in its envelope (older rows carry their own JSON).
            wanted = {r["envelope_id"] for r in rows if r["record_json"] is None}
            bodies = dict(conn.execute(select(_ENVELOPES.c.id, _ENVELOPES.c.envelope_json)
                                       .where(_ENVELOPES.c.id.in_(wanted))).all()) if wanted else {}
        envelopes = {key: json.loads(body)["records"] for key, body in bodies.items()}
        found = []
        for r in rows:
            if r["record_json"] is not None:
                found.append(found_record(r["run_id"], r["node"], r))
            elif r["envelope_id"] in envelopes:  # else pruned between the two reads (PostgreSQL)
                found.append(found_record(r["run_id"], r["node"], r, envelopes[r["envelope_id"]][r["position"]]))
        return found

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
                    read_time(row["created_at"]), read_time(row["updated_at"]), read_time(row["started_at"]),
                    read_time(row["finished_at"]))


def _run_row(row: Sequence[Any]) -> AuditRun:
    """A run from a driver's row of every ``audit_runs`` column, in table order."""
    return _run(dict(zip(_RUN_COLUMNS, row)))
