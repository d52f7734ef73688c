"""The one job-execution function, shared by the Worker and (later) the Celery task.

``execute_job(job, registry=..., audit=...)`` resolves the job's orchestrator
through the Registry, runs it with the job's ``run_id``, validates the
envelope, audits the run, and says what the queue should do with the job:
``ack`` (done), ``retry`` (with a backoff delay) or ``dead`` (give up).  It
never raises for a job's own failure: that is its answer.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from agent.engine.policy import compute_backoff
from agent.envelope import validate_envelope
from agent.errors import AgentCallError, AgentError, InvalidInput, RegistryError
from agent.high_level_agents.orchestrators.base import BaseOrchestrator
from agent.logs import get_logger
from agent.queues.base import Job, check_topic
from agent.registry import Registry

__all__ = ["JobOutcome", "FollowUp", "follow_ups", "queue_follow_ups", "execute_job", "Attempt", "give_up",
           "retry_delay", "AuditHook"]

log = get_logger("agent.worker")

Verdict = Literal["ack", "retry", "dead"]


@dataclass(frozen=True)
class JobOutcome:
    verdict: Verdict
    envelope: dict[str, Any] | None = None
    error: BaseException | None = None
    delay: float = 0.0
    # Jobs the run asks to be queued next: the caller queues them before it acks.
    follow_ups: tuple[FollowUp, ...] = ()


@dataclass(frozen=True)
class FollowUp:
    """A job a run asks to be queued next, on ``topic``; ``audit_meta`` is what its audit run keeps."""

    topic: str
    job: Job
    audit_meta: dict[str, Any]
    tenant: str


def retry_delay(attempt: int, *, base: float = 1.0, max_delay: float = 300.0,
                draw: Callable[[], float] = random.random) -> float:
    """Backoff before a job's next attempt: exponential from ``base``, half of it jittered."""
    return compute_backoff(max(1, attempt), base=base, multiplier=2.0, max_delay=max_delay, jitter=0.5,
                           draw=draw())


def execute_job(job: Any, *, registry: Registry, audit: Any = None, resolved: dict[str, Any] | None = None,
                retry_base: float = 1.0) -> JobOutcome:
    """Run one job; the outcome tells the caller whether to ack, retry or dead-letter it."""
    attempt = Attempt(job, registry=registry, audit=audit, resolved=resolved, retry_base=retry_base)
    early = attempt.begin()
    if early is not None:
        return early
    attempt.run()
    return attempt.end()


class Attempt:
    """One attempt of a job in three steps, which ``execute_job`` takes in a row.

    ``begin`` audits the attempt's start (``begin_attempt``), ``run`` runs the
    orchestrator and decides the outcome, ``end`` audits everything the run
    produced (node envelopes, failure, follow-up runs, deliveries) with its
    final state (``end_attempt``) and returns the outcome.  So an attempt's
    audit trail is two writes, and a caller with writes of its own (the Celery
    task's claim and settle in the job ledger) can put each in one transaction
    with them.
    """

    def __init__(self, job: Any, *, registry: Registry, audit: Any = None,
                 resolved: dict[str, Any] | None = None, retry_base: float = 1.0) -> None:
        self.job, self.registry, self.audit = job, registry, audit
        self.resolved, self.retry_base = resolved, retry_base
        self._outcome: JobOutcome | None = None
        self._ending: tuple[str, dict[str, Any]] | None = None  # end_attempt's state and arguments

    def begin(self) -> JobOutcome | None:
        """Audit the start; an outcome if there is nothing to run (the run finished already)."""
        job, audit = self.job, self.audit
        if audit is None:
            return None
        run = audit.begin_attempt(job.run_id, orchestrator=job.orchestrator, job_id=job.job_id,
                                  campaign_id=job.meta.get("campaign_id"), meta={"attempt": job.attempts})
        if run.state in ("succeeded", "dead"):
            log.warning("job %s: run %s is already %s; acked without running it", job.job_id, job.run_id,
                        run.state)
            return _finished(audit, job.run_id, run.state)
        return None

    def run(self) -> None:
        """Run the orchestrator and decide the outcome (a job's own failure is an outcome too)."""
        job, audit = self.job, self.audit
        hook = None
        nodes: list[dict[str, Any]] = []
        try:
            orchestrator = _resolve(self.registry, job.orchestrator, self.resolved, audit)
            hook = _hook(orchestrator, audit) if audit is not None else None
            if hook is not None:
                hook.begin(job.run_id)
            try:
                envelope = orchestrator.run(job.payload, run_id=job.run_id)
                if getattr(type(orchestrator), "run", None) is not BaseOrchestrator.run:
                    validate_envelope(envelope)  # BaseOrchestrator.run answers with a checked one
            finally:
                if hook is not None:
                    nodes = hook.take(job.run_id)  # what the nodes did, also when the run failed half-way
        except Exception as exc:
            error = exc if isinstance(exc, AgentError) else AgentCallError(
                job.orchestrator, f"{type(exc).__name__}: {exc}")
            # Bad input and unknown names never get better on a retry.
            permanent = isinstance(error, (InvalidInput, RegistryError))
            verdict: Verdict = "dead" if permanent or job.attempts >= job.max_attempts else "retry"
            log.warning("job %s run %s %s (attempt %d of %d): %s: %s", job.job_id, job.run_id,
                        "dead" if verdict == "dead" else "will retry", job.attempts, job.max_attempts,
                        type(error).__name__, error)
            delay = retry_delay(job.attempts, base=self.retry_base) if verdict == "retry" else 0.0
            self._decide(JobOutcome(verdict, error=error, delay=delay), "dead" if verdict == "dead" else "failed",
                         envelopes=nodes, error=error)
            return
        try:
            follow = follow_ups(envelope)
        except InvalidInput as exc:
            log.warning("job %s run %s dead: a follow-up job is malformed: %s", job.job_id, job.run_id, exc)
            self._decide(JobOutcome("dead", error=exc), "dead", envelopes=nodes, error=exc)
            return
        # The follow-up runs are recorded with this run's success (before they are queued): a crash in
        # between loses no batch, and a resume finds it.
        runs = [{"run_id": item.job.run_id, "orchestrator": item.job.orchestrator, "tenant": item.tenant,
                 "campaign_id": item.job.meta.get("campaign_id"), "meta": item.audit_meta} for item in follow]
        deliveries = _deliveries(envelope["records"], audit) if audit is not None else []
        # The run's answer is most often its last node's envelope: kept once (an equal one is a no-op
        # to the store, but costs it the work of finding that out).
        kept = nodes if nodes and nodes[-1] == envelope else [*nodes, envelope]
        self._decide(JobOutcome("ack", envelope=envelope, follow_ups=follow), "succeeded",
                     envelopes=kept, runs=runs, deliveries=deliveries)

    def _decide(self, outcome: JobOutcome, state: str, **ending: Any) -> None:
        self._outcome, self._ending = outcome, (state, ending)

    @property
    def outcome(self) -> JobOutcome:
        """What ``run`` decided (before ``end`` audits it)."""
        if self._outcome is None:
            raise RuntimeError("the attempt has not run")
        return self._outcome

    def end(self) -> JobOutcome:
        """Audit what the run produced and its final state; the outcome."""
        outcome = self.outcome
        if self.audit is not None and self._ending is not None:
            # Written again if called again (the caller's transaction around the first call may
            # have rolled back): the envelopes are kept once, and a repeated move is refused, logged.
            state, ending = self._ending
            _end(self.audit, self.job.run_id, state, **ending)
        return outcome


def queue_follow_ups(queue: Any, outcome: JobOutcome) -> None:
    """Queue an outcome's follow-up jobs, topic by topic."""
    by_topic: dict[str, list[Job]] = {}
    for item in outcome.follow_ups:
        by_topic.setdefault(item.topic, []).append(item.job)
    for topic, jobs in by_topic.items():
        queue.enqueue_many(topic, jobs)


def follow_ups(envelope: dict[str, Any]) -> tuple[FollowUp, ...]:
    """The jobs an envelope's records ask to be queued next: ``record["follow_up"]`` is
    ``{"topic", "job", "audit"?: {...}, "tenant"?: str}``."""
    found = []
    for index, record in enumerate(envelope["records"]):
        follow = record.get("follow_up")
        if follow is None:
            continue
        field = f"records[{index}].follow_up"
        if not isinstance(follow, dict):
            raise InvalidInput(field, "must be an object with topic and job")
        audit_meta, tenant = follow.get("audit", {}), follow.get("tenant", "default")
        if not isinstance(audit_meta, dict):
            raise InvalidInput(f"{field}.audit", "must be an object")
        if not isinstance(tenant, str) or not 1 <= len(tenant) <= 64:
            raise InvalidInput(f"{field}.tenant", "must be a string of 1 to 64 characters")
        try:
            topic = check_topic(follow.get("topic"))
        except InvalidInput:
            raise InvalidInput(f"{field}.topic", "must be 1 to 64 letters, digits or _ . : -") from None
        found.append(FollowUp(topic, Job.parse(follow.get("job"), f"{field}.job"), audit_meta, tenant))
    return tuple(found)


def _finished(audit: Any, run_id: str, state: str) -> JobOutcome:
    """A job whose run already finished (its worker died before the ack): nothing to run again, but
    its follow-ups may not have been queued yet, and queueing them twice adds nothing."""
    if state == "dead":
        run = audit.get_run(run_id)
        return JobOutcome("dead", error=AgentCallError("job", (run.error if run else None) or "its run is dead"))
    final = audit.last_envelope(run_id)
    return JobOutcome("ack", follow_ups=follow_ups(final.envelope) if final else ())


def _deliveries(records: list[dict[str, Any]], audit: Any) -> list[dict[str, Any]]:
    """The records to keep as deliveries, one per message: a "duplicate" never overwrites the "sent"
    of the run (or the earlier record of this run) that really sent it."""
    chosen: dict[str, dict[str, Any]] = {}
    for record in records:
        message_id, status = record.get("message_id"), record.get("status")
        if not message_id or status not in ("sent", "duplicate"):
            continue
        if status == "sent":
            chosen[message_id] = record
        elif message_id not in chosen and audit.message(message_id) is None:
            chosen[message_id] = record
    return list(chosen.values())


def give_up(job: Any, error: BaseException | str, *, audit: Any = None) -> JobOutcome:
    """Dead-letter a job without running it (its attempts died with their workers), audited."""
    log.warning("job %s run %s dead after %d attempts: %s", job.job_id, job.run_id, job.attempts, error)
    if audit is not None:
        run = audit.start_run(job.run_id, orchestrator=job.orchestrator, job_id=job.job_id,
                              campaign_id=job.meta.get("campaign_id"), meta={"attempt": job.attempts})
        if run.state in ("succeeded", "dead"):
            return _finished(audit, job.run_id, run.state)
        if run.state == "queued":
            _set_state(audit, job.run_id, "running")  # the state machine reaches "dead" through "running"
        _end(audit, job.run_id, "dead", error=error)
    return JobOutcome("dead", error=error if isinstance(error, BaseException) else AgentCallError(
        job.orchestrator, error))


class AuditHook:
    """An engine hook that keeps every node's envelope of a job's run in the audit store, so
    lineage can be walked from a sent message back through the draft to the lead row.

    Only runs opened with ``begin`` are kept (a planning search on the same
    engine is not a job), and their envelopes are buffered until ``take`` hands
    them to the attempt's ``end_attempt``: a map
    node's items make one envelope each, and a transaction apiece cost more
    than the work they record.
    """

    def __init__(self, audit: Any) -> None:
        self.audit = audit
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        # Per run, how many pending envelopes are a map item's ("draft[#1f]"): only a node's end (not
        # an item's) looks through them, and only when there are some; a scan per item was quadratic.
        self._items: dict[str, int] = {}

    def begin(self, run_id: str) -> None:
        with self._lock:
            self._pending.setdefault(run_id, [])
            self._items.setdefault(run_id, 0)

    def take(self, run_id: str) -> list[dict[str, Any]]:
        """What the run's nodes produced, in the order they ended (the engine checked each one);
        the hook stops listening to the run."""
        with self._lock:
            self._items.pop(run_id, None)
            return [envelope for _step, envelope in self._pending.pop(run_id, [])]

    def after_node(self, *, event: str, run_id: str, step: str = "", envelope: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
        if event != "node_end" or envelope is None:
            return
        with self._lock:
            pending = self._pending.get(run_id)
            if pending is None:
                return
            # A map node's own envelope holds what its items' did: it replaces them (an item's
            # envelope is kept only while its node has not ended, e.g. when a later item failed).
            item = step.endswith("]")
            if not item and self._items[run_id]:
                items = f"{step}["
                kept = [(s, e) for s, e in pending if not s.startswith(items)]
                self._items[run_id] -= len(pending) - len(kept)
                pending[:] = kept
            self._items[run_id] += item
            pending.append((step, envelope))


def _resolve(registry: Registry, name: str, cache: dict[str, Any] | None, audit: Any = None) -> Any:
    instance = cache.get(name) if cache is not None else None
    if instance is None:
        instance = registry.resolve(name)
        engine = getattr(instance, "engine", None)
        if audit is not None and engine is not None and _hook(instance, audit) is None:
            engine.hooks = (*engine.hooks, AuditHook(audit))
        if cache is not None:
            instance = cache.setdefault(name, instance)
    return instance


def _hook(instance: Any, audit: Any) -> AuditHook | None:
    engine = getattr(instance, "engine", None)
    for hook in getattr(engine, "hooks", ()):
        if isinstance(hook, AuditHook) and hook.audit is audit:
            return hook
    return None


def _end(audit: Any, run_id: str, state: str, **kwargs: Any) -> None:
    try:
        audit.end_attempt(run_id, state, **kwargs)
    except InvalidInput as exc:
        if exc.field != "state":
            raise
        # A redelivered job finds its run in a later state (e.g. already succeeded elsewhere).
        log.warning("run %s: %s", run_id, exc)


def _set_state(audit: Any, run_id: str, state: str) -> None:
    try:
        audit.set_state(run_id, state)
    except InvalidInput as exc:
        # A redelivered job finds its run in a later state (e.g. already succeeded elsewhere).
        log.warning("run %s: %s", run_id, exc)
