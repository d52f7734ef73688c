"""In-memory audit store: for tests and single-process runs."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from agent.audit.base import (
    FINISHED_STATES,
    AuditDelivery,
    AuditEnvelope,
    AuditFailure,
    AuditRun,
    AuditStore,
    RunState,
    advance,
    check_page,
    check_start,
    check_states,
    delivery_from,
    envelope_hash,
    error_text,
    failure_from,
    found_record,
    index_records,
    unknown_run,
)
from agent.envelope import validate_envelope
from agent.storage.times import as_utc, utc_clock

__all__ = ["InMemoryAuditStore"]


class SavedLog(list):  # type: ignore[type-arg]
    """Everything saved, oldest first, that is also the store's query: ``store.envelopes``
    lists every envelope and ``store.envelopes("r1", node="fetch")`` those of one run."""

    def __init__(self, query: Callable[..., Any]) -> None:
        super().__init__()
        self._query = query

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._query(*args, **kwargs)


class InMemoryAuditStore(AuditStore):
    """Keeps the trail in lists and dicts.  ``.envelopes`` and ``.failures`` list every
    saved ``AuditEnvelope`` / ``AuditFailure``; ``clock`` is injectable for prune tests."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = utc_clock(clock)
        self._lock = threading.RLock()
        self._runs: dict[str, AuditRun] = {}
        self._order: dict[str, int] = {}  # creation order: ties of created_at list newest first too
        self._counter = itertools.count()
        self._records: list[dict[str, Any]] = []
        self._saved: set[tuple[str, str]] = set()
        self._deliveries: dict[str, AuditDelivery] = {}
        self.envelopes: SavedLog = SavedLog(self._envelopes)  # type: ignore[assignment]
        self.failures: SavedLog = SavedLog(self._failures)  # type: ignore[assignment]

    def start_run(self, run_id: str, *, orchestrator: str, job_id: str | None = None,
                  campaign_id: str | None = None, tenant: str = "default",
                  meta: Mapping[str, Any] | None = None) -> AuditRun:
        body = check_start(run_id, orchestrator, job_id, campaign_id, tenant, meta)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                now = self._clock()
                run = AuditRun(run_id, orchestrator, "queued", job_id, campaign_id, tenant, body, 0, None,
                               now, now)
                self._runs[run_id] = run
                self._order[run_id] = next(self._counter)
            return run

    def set_state(self, run_id: str, state: RunState, *, error: str | BaseException | None = None) -> AuditRun:
        check_states(state)
        with self._lock:
            run = self._run(run_id)
            self._runs[run_id] = run = advance(run, state, error=error_text(error), now=self._clock())
            return run

    def save_envelope(self, run_id: str, envelope: Mapping[str, Any]) -> bool:
        validate_envelope(envelope)
        return self._save_envelope(run_id, envelope)

    def save_envelopes(self, run_id: str, envelopes: Sequence[Mapping[str, Any]], *,
                       validated: bool = False) -> int:
        if not validated:
            for envelope in envelopes:  # all checked before any is kept
                validate_envelope(envelope)
        indexed_once: set[tuple[str, str]] = set()  # a record carried through nodes: indexed once a save
        return sum(self._save_envelope(run_id, envelope, indexed_once) for envelope in envelopes)

    def _save_envelope(self, run_id: str, envelope: Mapping[str, Any],
                       indexed_once: set[tuple[str, str]] | None = None) -> bool:
        digest = envelope_hash(envelope)
        meta = envelope["metadata"]
        indexed = index_records(envelope)
        with self._lock:
            self._run(run_id)
            if (run_id, digest) in self._saved:
                return False
            self._saved.add((run_id, digest))
            # A JSON copy: later edits to the caller's dict never reach the trail.
            copy = json.loads(json.dumps(envelope, ensure_ascii=False))
            self.envelopes.append(AuditEnvelope(run_id, meta["node"], meta["flow"], digest, copy, self._clock()))
            for row in indexed:
                key = (row["hash"], row["record_json"])
                if indexed_once is None or key not in indexed_once:
                    if indexed_once is not None:
                        indexed_once.add(key)
                    self._records.append({**row, "run_id": run_id, "node": meta["node"]})
            return True

    def save_failure(self, run_id: str, error: str | BaseException, envelope: Any = None) -> AuditFailure:
        with self._lock:
            self._run(run_id)
            failure = failure_from(run_id, error, envelope, self._clock())
            self.failures.append(failure)
            return failure

    def save_delivery(self, run_id: str, record: Mapping[str, Any]) -> AuditDelivery:
        with self._lock:
            self._run(run_id)
            delivery = delivery_from(run_id, record, self._clock())
            self._deliveries[delivery.message_id] = delivery
            return delivery

    def _run(self, run_id: str) -> AuditRun:
        run = self._runs.get(run_id)
        if run is None:
            raise unknown_run(run_id)
        return run

    # -- queries -----------------------------------------------------------------------------
    def get_run(self, run_id: str) -> AuditRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def list_runs(self, *, state: str | Sequence[str] | None = None, campaign_id: str | None = None,
                  limit: int = 50, offset: int = 0) -> list[AuditRun]:
        states = check_states(state)
        check_page(limit, offset)
        with self._lock:
            runs = [r for r in self._runs.values()
                    if (states is None or r.state in states) and (campaign_id is None or r.campaign_id == campaign_id)]
            runs.sort(key=lambda r: (r.created_at, self._order[r.run_id]), reverse=True)
        return runs[offset:offset + limit]

    def _envelopes(self, run_id: str, node: str | None = None) -> list[AuditEnvelope]:
        with self._lock:
            return [e for e in self.envelopes if e.run_id == run_id and (node is None or e.node == node)]

    def _failures(self, run_id: str) -> list[AuditFailure]:
        with self._lock:
            return [f for f in self.failures if f.run_id == run_id]

    def records_for_lead(self, lead_id: str) -> list[dict[str, Any]]:
        key = str(lead_id)
        with self._lock:
            return [found_record(r["run_id"], r["node"], r) for r in self._records if r["lead_id"] == key]

    def find_record(self, record_hash: str) -> dict[str, Any] | None:
        with self._lock:
            for row in self._records:
                if row["hash"] == record_hash:
                    return found_record(row["run_id"], row["node"], row)
        return None

    def message(self, message_id: str) -> AuditDelivery | None:
        with self._lock:
            return self._deliveries.get(message_id)

    def prune(self, *, older_than: timedelta, now: datetime | None = None,
              states: Sequence[str] = FINISHED_STATES) -> int:
        chosen = check_states(states, "states") or ()
        cutoff = as_utc(now or self._clock()) - older_than
        with self._lock:
            old = {r.run_id for r in self._runs.values()
                   if r.state in chosen and r.updated_at is not None and r.updated_at < cutoff}
            for run_id in old:
                del self._runs[run_id]
                del self._order[run_id]
            self.envelopes[:] = [e for e in self.envelopes if e.run_id not in old]
            self.failures[:] = [f for f in self.failures if f.run_id not in old]
            self._records[:] = [r for r in self._records if r["run_id"] not in old]
            self._saved = {key for key in self._saved if key[0] not in old}
            self._deliveries = {k: d for k, d in self._deliveries.items() if d.run_id not in old}
        return len(old)
