"""The audit store contract: runs and their state machine, envelopes, failures, deliveries.

A run moves through these states (any other move raises ``InvalidInput``)::

    queued ──> running ──> succeeded
      ^          │  │
      └──────────┘  ├──> dead
      (retry)       └──> failed ──> queued | running (retry), dead

Every saved envelope's records are indexed by their provenance hash, their
parents, ``lead_id`` and ``message_id``, so a delivered message can be walked
back to the lead row it was written for (``lineage``).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from agent.envelope import canonical_json, validate_envelope
from agent.errors import InvalidInput

__all__ = ["AuditStore", "AuditRun", "AuditEnvelope", "AuditFailure", "AuditDelivery", "RunState",
           "RUN_STATES", "FINISHED_STATES", "TRANSITIONS"]

RunState = Literal["queued", "running", "succeeded", "failed", "dead"]
RUN_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "dead")
FINISHED_STATES: tuple[str, ...] = ("succeeded", "failed", "dead")
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running"}),
    "running": frozenset({"succeeded", "failed", "dead", "queued"}),
    "failed": frozenset({"queued", "running", "dead"}),
    "succeeded": frozenset(),
    "dead": frozenset(),
}
MAX_RUN_ID = 64
LOST_ATTEMPT = "the previous attempt was lost with its worker"


@dataclass(frozen=True)
class AuditRun:
    """A run as the audit store knows it.  ``started_at`` is when the latest attempt
    started; ``finished_at`` is set in a finished state and cleared by a retry."""

    run_id: str
    orchestrator: str
    state: RunState
    job_id: str | None = None
    campaign_id: str | None = None
    tenant: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class AuditEnvelope:
    """One saved envelope; ``hash`` identifies its content (``envelope_hash``)."""

    run_id: str
    node: str | None
    flow: str | None
    hash: str
    envelope: dict[str, Any]
    saved_at: datetime | None = None


@dataclass(frozen=True)
class AuditFailure:
    """A failure of a run: the error's type name (None for a plain message), text and code."""

    run_id: str
    error_type: str | None
    message: str
    code: str | None = None
    node: str | None = None
    envelope: Any = None
    saved_at: datetime | None = None


@dataclass(frozen=True)
class AuditDelivery:
    """A message handed to a channel; saving the same ``message_id`` again updates it."""

    message_id: str
    run_id: str
    to: str | None = None
    lead_id: str | None = None
    campaign_id: str | None = None
    step: int | None = None
    status: str = "sent"
    provenance: dict[str, Any] | None = None
    saved_at: datetime | None = None


class AuditStore:
    """Where runs leave their trail.  Thread-safe.  Writes to a run need ``start_run`` first."""

    def start_run(self, run_id: str, *, orchestrator: str, job_id: str | None = None,
                  campaign_id: str | None = None, tenant: str = "default",
                  meta: Mapping[str, Any] | None = None) -> AuditRun:
        """The run, created as ``queued`` if unknown; a known run comes back unchanged."""
        raise NotImplementedError

    def set_state(self, run_id: str, state: RunState, *, error: str | BaseException | None = None) -> AuditRun:
        """Move the run to ``state`` (see the module's diagram) and return it.  Going to
        ``running`` counts an attempt; ``failed``/``dead`` keep the last error unless given one."""
        raise NotImplementedError

    def save_envelope(self, run_id: str, envelope: Mapping[str, Any]) -> bool:
        """Validate and keep ``envelope`` with its records indexed; False if it was saved already."""
        raise NotImplementedError

    def save_failure(self, run_id: str, error: str | BaseException,
                     envelope: Any = None) -> AuditFailure:
        raise NotImplementedError

    def save_delivery(self, run_id: str, record: Mapping[str, Any]) -> AuditDelivery:
        """Keep a delivery record (``message_id``, ``to``, ``lead_id``, ``campaign_id``,
        ``step``, ``status``, ``provenance``), replacing an earlier one of the same message."""
        raise NotImplementedError

    def save_envelopes(self, run_id: str, envelopes: Sequence[Mapping[str, Any]], *,
                       validated: bool = False) -> int:
        """``save_envelope`` for each, in order (a store may do it in one transaction); how many were new.
        Every envelope is checked before any is saved, unless the caller says they were
        (``validated``: the engine checks every node's envelope)."""
        if not validated:
            for envelope in envelopes:
                validate_envelope(envelope)
        return sum(self.save_envelope(run_id, envelope) for envelope in envelopes)

    def save_deliveries(self, run_id: str, records: Sequence[Mapping[str, Any]]) -> list[AuditDelivery]:
        """``save_delivery`` for each record (a store may do it in one transaction)."""
        return [self.save_delivery(run_id, record) for record in records]

    # -- a job's attempt: two calls (a store may make each one transaction) ---------------------
    def begin_attempt(self, run_id: str, *, orchestrator: str, job_id: str | None = None,
                      campaign_id: str | None = None, tenant: str = "default",
                      meta: Mapping[str, Any] | None = None) -> AuditRun:
        """Start an attempt of a job's run: the run is created if unknown, then moved to ``running``.

        A run found ``running`` lost its previous attempt with its worker: that
        is saved as a failure (and the run as ``failed``) first.  A finished run
        (``succeeded`` or ``dead``) comes back unchanged: the caller runs nothing.
        A run another attempt moved meanwhile comes back as it now is.
        """
        run = self.start_run(run_id, orchestrator=orchestrator, job_id=job_id, campaign_id=campaign_id,
                             tenant=tenant, meta=meta)
        if run.state in ("succeeded", "dead"):
            return run
        try:
            if run.state == "running":
                self.save_failure(run_id, LOST_ATTEMPT)
                self.set_state(run_id, "failed")
            return self.set_state(run_id, "running")
        except InvalidInput:
            return self.get_run(run_id) or run

    def end_attempt(self, run_id: str, state: RunState, *, envelopes: Sequence[Mapping[str, Any]] = (),
                    error: str | BaseException | None = None, runs: Sequence[Mapping[str, Any]] = (),
                    deliveries: Sequence[Mapping[str, Any]] = ()) -> AuditRun:
        """End an attempt: keep its node ``envelopes`` (checked already, by the engine or the
        caller), its ``error`` as a failure, the follow-up ``runs`` it starts (each
        ``start_run``'s keyword arguments, with ``run_id``) and its ``deliveries``; then
        move the run to ``state`` (``set_state``'s refusal if the move is not allowed)."""
        check_states(state)
        if envelopes:
            self.save_envelopes(run_id, envelopes, validated=True)
        if error is not None:
            self.save_failure(run_id, error)
        for start in runs:
            self.start_run(**start)
        if deliveries:
            self.save_deliveries(run_id, deliveries)
        return self.set_state(run_id, state, error=error)

    def get_run(self, run_id: str) -> AuditRun | None:
        raise NotImplementedError

    def list_runs(self, *, state: str | Sequence[str] | None = None, campaign_id: str | None = None,
                  limit: int = 50, offset: int = 0) -> list[AuditRun]:
        """Runs, newest first, optionally in ``state`` (one or several) and of ``campaign_id``."""
        raise NotImplementedError

    def envelopes(self, run_id: str, node: str | None = None) -> list[AuditEnvelope]:
        """The run's envelopes (of ``node`` only, when given) in the order they were saved."""
        raise NotImplementedError

    def last_envelope(self, run_id: str) -> AuditEnvelope | None:
        """The envelope the run saved last (a finished run's answer), or None."""
        found = self.envelopes(run_id)
        return found[-1] if found else None

    def failures(self, run_id: str) -> list[AuditFailure]:
        raise NotImplementedError

    def records_for_lead(self, lead_id: str) -> list[dict[str, Any]]:
        """Every saved record carrying ``lead_id``, as ``find_record`` gives them, oldest first."""
        raise NotImplementedError

    def find_record(self, record_hash: str) -> dict[str, Any] | None:
        """The first saved record with this provenance hash: ``{"hash", "run_id", "node",
        "lead_id", "message_id", "parents", "record"}``, or None."""
        raise NotImplementedError

    def message(self, message_id: str) -> AuditDelivery | None:
        raise NotImplementedError

    def lineage(self, message_id: str) -> list[dict[str, Any]]:
        """The records behind a delivered message, nearest first (breadth-first through
        ``provenance.parents``), each as ``find_record`` gives it plus its ``depth``.

        Depth 0 is the message's own record; when it was never saved, the walk starts
        from the parents its delivery carries.  An unknown hash ends its branch.
        """
        delivery = self.message(message_id)
        if delivery is None:
            return []
        provenance = delivery.provenance or {}
        parents = [(h, 1) for h in provenance.get("parents") or () if isinstance(h, str)]
        own = provenance.get("hash")
        queue: deque[tuple[str, int]] = deque([(own, 0)] if isinstance(own, str) else parents)
        seen: set[str] = set()
        chain: list[dict[str, Any]] = []
        while queue:
            record_hash, depth = queue.popleft()
            if record_hash in seen:
                continue
            seen.add(record_hash)
            found = self.find_record(record_hash)
            if found is None:
                if depth == 0:
                    queue.extend(parents)
                continue
            chain.append({**found, "depth": depth})
            queue.extend((p, depth + 1) for p in found["parents"] if isinstance(p, str))
        return chain

    def prune(self, *, older_than: timedelta, now: datetime | None = None,
              states: Sequence[str] = FINISHED_STATES) -> int:
        """Delete runs in ``states`` whose state has not changed for ``older_than``, and
        everything saved under them; returns how many runs."""
        raise NotImplementedError


# -- helpers shared by the stores ------------------------------------------------------------
def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def envelope_json(envelope: Mapping[str, Any], indexed: Sequence[Mapping[str, Any]]) -> str:
    """The envelope's JSON, reusing the records' JSON that ``index_records`` already made."""
    if list(envelope) != ["metadata", "records"]:
        return dumps(envelope)
    return '{"metadata":' + dumps(envelope["metadata"]) + ',"records":[' + ",".join(
        r["record_json"] for r in indexed) + "]}"


def envelope_hash(envelope: Mapping[str, Any], indexed: Sequence[Mapping[str, Any]] | None = None) -> str:
    """sha256 of the envelope's canonical JSON, metadata then each record (``index_records``'
    canonical record texts, when given, are not made again): what makes a save idempotent."""
    texts = [r["record_json"] for r in indexed] if indexed is not None else [
        canonical_json(r) for r in envelope["records"]]
    digest = hashlib.sha256(canonical_json(envelope["metadata"]).encode("utf-8"))
    for text in texts:
        digest.update(b"\n")
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not run_id or len(run_id) > MAX_RUN_ID:
        raise InvalidInput("run_id", f"must be a non-empty string of at most {MAX_RUN_ID} characters")
    return run_id


def check_text(name: str, value: Any, limit: int, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInput(name, f"must be a non-empty string of at most {limit} characters")
    return value


def check_start(run_id: Any, orchestrator: Any, job_id: Any, campaign_id: Any, tenant: Any,
                meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check what ``start_run`` was given (so no column refuses it later); a copy of ``meta``."""
    check_run_id(run_id)
    check_text("orchestrator", orchestrator, 128, optional=False)
    check_text("job_id", job_id, 128)
    check_text("campaign_id", campaign_id, 128)
    check_text("tenant", tenant, 64, optional=False)
    return json_copy(dict(meta or {}), "meta")


def check_states(states: str | Sequence[str] | None, name: str = "state") -> tuple[str, ...] | None:
    if states is None:
        return None
    chosen = (states,) if isinstance(states, str) else tuple(states)
    for state in chosen:
        if state not in RUN_STATES:
            raise InvalidInput(name, f"unknown state {state!r}; states are {', '.join(RUN_STATES)}")
    return chosen


def check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput("limit", "must be a positive integer")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInput("offset", "must be an integer of at least 0")


def unknown_run(run_id: str) -> InvalidInput:
    return InvalidInput("run_id", f"unknown run {run_id!r}; start it with start_run first")


def describe_error(error: Any) -> tuple[str | None, str, str | None]:
    """``(type name, message, code)`` of an exception; a string is a message of no type."""
    if isinstance(error, BaseException):
        code = getattr(error, "code", None)
        return type(error).__name__, str(error), None if code is None else str(code)
    return None, str(error), None


def error_text(error: Any) -> str | None:
    if error is None:
        return None
    kind, message, _code = describe_error(error)
    return f"{kind}: {message}" if kind else message


def advance(run: AuditRun, state: str, *, error: str | None, now: datetime) -> AuditRun:
    """``run`` moved to ``state`` at ``now``, or ``InvalidInput`` if the move is not allowed."""
    check_states(state)
    if state not in TRANSITIONS[run.state]:
        raise InvalidInput("state", f"cannot go from {run.state} to {state}")
    if error is None and state in ("failed", "dead"):
        error = run.error  # failed -> dead keeps why it failed
    running = state == "running"
    return replace(run, state=state, error=error, updated_at=now, attempts=run.attempts + running,
                   started_at=now if running else run.started_at,
                   finished_at=now if state in FINISHED_STATES else None)


def _index_id(value: Any) -> str | None:
    # Ids are matched as text: a lead id of 7 is found by "7" too.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def index_records(envelope: Mapping[str, Any], memo: dict[int, tuple[Any, dict[str, Any]]] | None = None,
                  ) -> list[dict[str, Any]]:
    """What to index of each record of a valid envelope (its JSON text included).  With ``memo``
    (kept by the caller across the envelopes of one save) a record object met before is not
    serialised again: a record carried through several nodes is one object."""
    out = []
    for record in envelope["records"]:
        if memo is not None:
            known = memo.get(id(record))
            if known is not None and known[0] is record:
                out.append(known[1])
                continue
        provenance = record["provenance"]
        row = {"hash": provenance["hash"], "parents_json": dumps(list(provenance["parents"])),
               "lead_id": _index_id(record.get("lead_id")),
               "message_id": _index_id(record.get("message_id")), "record_json": canonical_json(record)}
        if memo is not None:
            memo[id(record)] = (record, row)  # the record is held: its id is not reused meanwhile
        out.append(row)
    return out


def found_record(run_id: str, node: str | None, row: Mapping[str, Any], record: Any = None) -> dict[str, Any]:
    """An indexed record as the queries return it (``record``: given, or the row's own JSON)."""
    return {"hash": row["hash"], "run_id": run_id, "node": node, "lead_id": row["lead_id"],
            "message_id": row["message_id"], "parents": json.loads(row["parents_json"]),
            "record": json.loads(row["record_json"]) if record is None else record}


def json_copy(value: Any, name: str) -> Any:
    try:
        return json.loads(dumps(value))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(name, f"is not JSON-serialisable ({exc})") from None


def delivery_from(run_id: str, record: Any, now: datetime) -> AuditDelivery:
    """A checked delivery from a caller's record."""
    if not isinstance(record, Mapping):
        raise InvalidInput("record", f"must be a dict, not {type(record).__name__}")
    message_id = record.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise InvalidInput("record.message_id", "must be a non-empty string")
    step = record.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise InvalidInput("record.step", "must be an integer")
    provenance = record.get("provenance")
    if provenance is not None and not isinstance(provenance, Mapping):
        raise InvalidInput("record.provenance", "must be a dict")
    texts = {}
    for key in ("to", "lead_id", "campaign_id", "status"):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise InvalidInput(f"record.{key}", "must be a string")
        texts[key] = None if value is None else str(value)
    return AuditDelivery(message_id, run_id, texts["to"], texts["lead_id"], texts["campaign_id"], step,
                         texts["status"] or "sent", json_copy(provenance, "record.provenance"), now)


def failure_from(run_id: str, error: Any, envelope: Any, now: datetime) -> AuditFailure:
    kind, message, code = describe_error(error)
    node = None
    if isinstance(envelope, Mapping) and isinstance(envelope.get("metadata"), Mapping):
        node = envelope["metadata"].get("node")
    # A failure is kept whatever its envelope holds: what JSON cannot say is kept as repr.
    try:
        body = None if envelope is None else json.loads(json.dumps(envelope, ensure_ascii=False, default=repr))
    except ValueError:  # a circular reference
        body = repr(envelope)
    return AuditFailure(run_id, kind, message, code, node if isinstance(node, str) else None, body, now)
