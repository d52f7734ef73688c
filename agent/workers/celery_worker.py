"""The Celery side of the queue: the task that runs a job, and ``agent worker --backend celery``.

The task does what the local ``Worker`` does, with the same ``Attempt`` (``execute_job``):
claim the job in the ``SqlJobLedger`` (attempt + 1, a lease that a keeper
thread renews while the job runs), run it, then finish it, retry it later
(a new message with a countdown) or bury it.  A finish is committed with the
process's next claim (``agent.workers.group_commit``).  A message for a job whose lease
is still held elsewhere is a copy: it comes back when the lease ends.  A job
whose workers keep dying (SIGKILL, out of memory) runs out of attempts on its
next claim and is dead-lettered, audited, without running again.

Each worker process builds what it needs (registry bound to the settings,
audit store, ledger) on its first job, after Celery has forked it.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from pydantic import SecretStr

from agent.errors import AgentError, InvalidInput
from agent.logs import get_logger, redact
from agent.queues.base import Job, parse_job_id
from agent.queues.celery_queue import TASK, celery_app, publish
from agent.queues.ledger import Busy, Claim, SqlJobLedger
from agent.settings import Settings, get_settings
from agent.workers.execute import Attempt, JobOutcome, give_up, queue_follow_ups, retry_delay
from agent.workers.group_commit import GroupCommit

__all__ = ["worker_app", "run_job", "WorkerRuntime", "run_celery_worker"]

log = get_logger("agent.worker")


class WorkerRuntime:
    """What one worker process runs jobs with; made on first use in that process."""

    def __init__(self, settings: Settings) -> None:
        from agent.audit import SqlAuditStore
        from agent.builtins import bound_registry
        from agent.storage.db import Database

        self.settings = settings
        db = Database.for_settings(settings)
        self.registry = bound_registry(settings)
        self.db = db
        self.audit = SqlAuditStore(db)
        self.ledger = SqlJobLedger(db)
        self.lease = settings.queue_lease
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.resolved: dict[str, Any] = {}
        self._queue: Any = None
        self._held: dict[str, Claim] = {}
        self._held_lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        # A kept finish's lease is no longer renewed: it is committed within a third of the lease.
        delay = min(settings.queue_commit_delay, self.lease / 3)
        # Finishes kept for the next claim's transaction (see agent.workers.group_commit); None: at once.
        self.group: GroupCommit[Kept] | None = None if delay <= 0 else GroupCommit(
            lambda kept: _commit_kept(self, kept), delay=delay)

    def attempt(self, job: Job) -> Attempt:
        """An attempt of ``job`` with this process's registry and audit store."""
        return Attempt(job, registry=self.registry, audit=self.audit, resolved=self.resolved,
                       retry_base=self.settings.retry_base)

    def queue(self, app: Any) -> Any:
        """The queue follow-up jobs go to: the same broker and ledger as the job in hand."""
        if self._queue is None:
            from agent.queues.celery_queue import CeleryQueue

            self._queue = CeleryQueue(app, settings=self.settings, ledger=self.ledger)
        return self._queue

    @contextmanager
    def leased(self, claim: Claim) -> Iterator[None]:
        """Keep the claim's lease renewed (every third of it) until the block ends."""
        with self._held_lock:
            self._held[claim.job.job_id] = claim
            if self._keeper is None or not self._keeper.is_alive():
                # One keeper per process, for every job it holds: a thread per job cost more than
                # a short job itself.
                self._keeper = threading.Thread(target=self._keep, name="agent-lease", daemon=True)
                self._keeper.start()
        try:
            yield
        finally:
            with self._held_lock:
                self._held.pop(claim.job.job_id, None)

    def _keep(self) -> None:
        while True:
            time.sleep(self.lease / 3)
            with self._held_lock:
                held = list(self._held.values())
            for claim in held:
                try:
                    renewed = self.ledger.renew(claim, lease=self.lease)
                except Exception as exc:  # the store is busy or down: the next round tries again
                    log.warning("job %s: lease not renewed: %s: %s", claim.job.job_id, type(exc).__name__, exc)
                    continue
                if not renewed:
                    with self._held_lock:
                        if self._held.get(claim.job.job_id) is claim:
                            # Settled meanwhile, or its lease lapsed and another worker took it over.
                            del self._held[claim.job.job_id]


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def _forget_runtime() -> None:
    global _runtime
    _runtime = None  # a forked child opens its own connections


os.register_at_fork(after_in_child=_forget_runtime)


def runtime(settings: Settings | None = None) -> WorkerRuntime:
    """This process's runtime, made on first use from ``settings`` (default: the environment's)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime(settings or get_settings())
        return _runtime


def run_job(app: Any, topic: str, data: Any, *, rt: WorkerRuntime | None = None, group: bool = False) -> str:
    """Run the job a message names; returns what happened: done, retry, dead, busy or skipped.

    A failure of our own store or of the broker before the job is claimed
    propagates: Celery logs it and acks the message, and the ledger, which
    still holds the job open, has it published again by recovery.  Once the
    job is claimed, every failure settles it: retried with backoff, or
    dead-lettered when it is bad input or out of attempts.

    ``group`` (the Celery task's way): a job that succeeds with nothing to
    queue after it leaves its finish to the runtime's ``GroupCommit``, which
    commits it with the next claim.
    """
    try:
        # A message names its job (older ones carried the whole job).
        job_id = Job.parse(data).job_id if isinstance(data, dict) else parse_job_id(data)
    except AgentError as exc:
        log.error("a message on %s is not a job and is dropped: %s", topic, exc)
        return "skipped"
    rt = rt or runtime(getattr(app, "agent_settings", None))
    kept = rt.group.take() if rt.group is not None else None
    began: tuple[Attempt, JobOutcome | None] | None = None
    try:
        # The claim and the attempt's audited start commit together, with the previous job's finish.
        # (On PostgreSQL, two workers whose finishes and claims cross may deadlock: the database
        # aborts one transaction, and the fallback below writes its parts one by one.)
        with rt.db.transaction():
            if kept is not None:
                _finish_in_transaction(rt, kept.claim, kept.attempt)
            claim = rt.ledger.claim(job_id, lease=rt.lease, holder=rt.holder)
            if isinstance(claim, Claim) and not claim.exhausted:
                attempt = rt.attempt(claim.job)
                began = (attempt, attempt.begin())
    except Exception as exc:
        # Nothing was written.  The previous finish and the claim on their own, then: the audit's
        # failure meets the claimed job again below and settles it (retried, or dead-lettered).
        log.warning("job %s: claimed without its audit: %s", job_id, redact(f"{type(exc).__name__}: {exc}"))
        if kept is not None:
            try:
                _commit_kept(rt, kept)
            except Exception as failed:  # the store is down: its lease runs out, and it runs again
                log.warning("job %s: not settled: %s", kept.claim.job.job_id, type(failed).__name__)
        began = None
        claim = rt.ledger.claim(job_id, lease=rt.lease, holder=rt.holder)
    if claim is None:
        return "skipped"  # done, dead, or unknown: a late copy of the message
    if isinstance(claim, Busy):
        publish(app, topic, job_id, countdown=claim.seconds + 1.0)
        return "busy"
    with rt.leased(claim):  # held through the run, its follow-ups and its settling
        try:
            return _settle(app, topic, claim, rt, began, group=group)
        except Exception as exc:
            return _failed_around(app, topic, claim, rt, exc)


class Kept(NamedTuple):
    """A succeeded job whose finish waits for the process's next claim (group commit)."""

    app: Any
    topic: str
    claim: Claim
    attempt: Attempt


def _finish_in_transaction(rt: WorkerRuntime, claim: Claim, attempt: Attempt) -> None:
    # The job's row first, as a claim takes it.  Only the attempt in hand is finished: if its lease
    # lapsed and another worker claimed the job meanwhile, that worker's attempt writes the end.
    if rt.ledger.finish(claim):
        attempt.end()


def _commit_finish(rt: WorkerRuntime, claim: Claim, attempt: Attempt) -> None:
    """A job's finish and its audited end, in one transaction; if that fails, each on its own (the run
    succeeded and must not run again: its end first, so a later claim finds it succeeded)."""
    try:
        with rt.db.transaction():
            _finish_in_transaction(rt, claim, attempt)
        return
    except Exception as exc:
        log.warning("job %s: finished apart from its audit: %s", claim.job.job_id,
                    redact(f"{type(exc).__name__}: {exc}"))
    attempt.end()
    rt.ledger.finish(claim)


def _commit_kept(rt: WorkerRuntime, kept: Kept) -> None:
    """A kept finish on its own; if it cannot be written, the job is settled as a failure around it
    would be (retried with backoff, or dead-lettered), never left running."""
    try:
        _commit_finish(rt, kept.claim, kept.attempt)
    except Exception as exc:
        _failed_around(kept.app, kept.topic, kept.claim, rt, exc)


def _settle(app: Any, topic: str, claim: Claim, rt: WorkerRuntime,
            began: tuple[Attempt, JobOutcome | None] | None = None, *, group: bool = False) -> str:
    if claim.exhausted:
        outcome = give_up(claim.job, f"its worker was lost on each of its {claim.job.max_attempts} attempts",
                          audit=rt.audit)
    else:
        attempt, outcome = began if began is not None else (rt.attempt(claim.job), None)
        if began is None:
            outcome = attempt.begin()
        if outcome is None:
            attempt.run()
            if attempt.outcome.verdict == "ack" and not attempt.outcome.follow_ups:
                if group and rt.group is not None:
                    rt.group.keep(Kept(app, topic, claim, attempt))  # with the next claim, or soon alone
                else:
                    _commit_finish(rt, claim, attempt)
                return "done"
            outcome = attempt.end()
    if outcome.verdict == "ack":
        queue_follow_ups(rt.queue(app), outcome)  # before the job is done: a crash here repeats, loses nothing
        rt.ledger.finish(claim)
        return "done"
    error = None if outcome.error is None else redact(f"{type(outcome.error).__name__}: {outcome.error}")
    if outcome.verdict == "retry":
        if rt.ledger.retry(claim, delay=outcome.delay, error=error):
            publish(app, topic, claim.job, countdown=outcome.delay)
        return "retry"
    rt.ledger.bury(claim, error=error)
    return "dead"


def _failed_around(app: Any, topic: str, claim: Claim, rt: WorkerRuntime, exc: Exception) -> str:
    """Our store or the broker failed around a claimed job (the job's own failures are execute_job's
    answer).  Bad input is dead at once.  Anything else is retried with backoff, a few times past
    ``max_attempts`` too: the run may have succeeded and only its follow-ups or its settling failed,
    which the next claim (the exhausted path) finishes without running it again."""
    error = redact(f"{type(exc).__name__}: {exc}")
    log.warning("job %s: %s", claim.job.job_id, error)
    if isinstance(exc, InvalidInput) or claim.job.attempts >= claim.job.max_attempts + _GRACE:
        _bury_audited(claim, rt, error)
        return "dead"
    delay = retry_delay(claim.job.attempts, base=rt.settings.retry_base)
    if rt.ledger.retry(claim, delay=delay, error=error):
        publish(app, topic, claim.job, countdown=delay)
    return "retry"


_GRACE = 3  # attempts past max_attempts for failures around a job, not of it


def _bury_audited(claim: Claim, rt: WorkerRuntime, error: str) -> None:
    rt.ledger.bury(claim, error=error)
    try:  # best effort: the audit run says dead too, not "running" for ever
        give_up(claim.job, error, audit=rt.audit)
    except Exception as exc:
        log.warning("job %s: its audit run was not marked dead: %s", claim.job.job_id, type(exc).__name__)


def worker_app(settings: Settings | None = None, *, broker: str | None = None) -> Any:
    """The Celery app with our task registered: what ``celery -A`` and ``agent worker`` run."""
    app = celery_app(settings, broker=broker)
    app.agent_settings = settings  # what this app's worker processes run jobs with (None: the environment)

    app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(_agent_run_job)
    from celery.signals import worker_process_shutdown

    worker_process_shutdown.connect(_flush_kept, weak=False)  # in each pool process, before it exits
    return app


def _agent_run_job(task: Any, topic: str, data: Any) -> str:
    """The Celery task: one callable, whichever app registers it."""
    return run_job(task.app, topic, data, group=True)


def _flush_kept(**_: Any) -> None:
    """When a worker process ends: the finish it kept is committed (Celery's warm shutdown, exit)."""
    rt = _runtime
    if rt is not None and rt.group is not None:
        rt.group.flush()


atexit.register(_flush_kept)


def run_celery_worker(settings: Settings, *, topics: list[str], concurrency: int, loglevel: str = "WARNING",
                      hostname: str | None = None, restart_delay: float = 2.0) -> int:
    """Run a Celery worker (prefork, ``concurrency`` processes) on ``topics`` until SIGTERM / SIGINT / SIGHUP.

    The Celery worker runs in a child process (``celery -A agent.workers.celery_app``)
    that this one supervises.  The child gets ``settings`` as ``AGENT_*``
    variables, runs in a process group of its own (a terminal's Ctrl-C reaches
    only this process, which passes one SIGTERM on: Celery's warm shutdown,
    the batches in hand are finished) and is told to stop if this process dies.
    If it dies on its own (an unrecoverable error, such as a client library
    failing while the broker restarts) it is started again, after
    ``restart_delay`` seconds doubling up to a minute while it keeps dying
    quickly; an exit that says its configuration is wrong (64 to 78) is final.
    A thread publishes again, now and then, jobs whose message the broker may
    have lost.  Returns the worker's exit status.
    """
    from agent.queues.celery_queue import CeleryQueue

    queue = CeleryQueue(celery_app(settings), settings=settings)  # publishes only: runs no task here
    stop = threading.Event()

    def recover() -> None:
        while not stop.wait(min(60.0, settings.queue_recover_after)):
            for topic in topics:
                try:
                    queue.recover(topic)
                except Exception as exc:  # a broker or database outage: try again next round
                    log.warning("recovery on %s failed: %s: %s", topic, type(exc).__name__, exc)

    threading.Thread(target=recover, name="agent-recover", daemon=True).start()
    argv = [sys.executable, "-m", "celery", "-A", "agent.workers.celery_app", "worker", "-Q", ",".join(topics),
            "-c", str(concurrency), "-P", "prefork", "-l", loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if hostname:
        argv += ["-n", hostname]
    env = _settings_env(settings)
    child: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: Any) -> None:
        stop.set()
        if child and child[0].poll() is None:
            child[0].send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    delay = restart_delay
    try:
        while not stop.is_set():
            started = time.monotonic()
            child[:] = [subprocess.Popen(argv, env=env, process_group=0, preexec_fn=_stop_with_parent)]
            if stop.is_set():  # a signal came while the child was being started
                child[0].send_signal(signal.SIGTERM)
            status = _exit_status(child[0].wait())
            if stop.is_set() or 64 <= status <= 78:
                return status
            delay = restart_delay if time.monotonic() - started > 60 else min(60.0, delay * 2)
            log.warning("the Celery worker exited on its own (status %s); starting it again in %.0f s", status, delay)
            stop.wait(delay)
        return 0
    finally:
        stop.set()
        queue.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` as ``AGENT_*`` variables (the worker's child reads them)."""
    env = {k: v for k, v in os.environ.items() if k != "AGENT_SETTINGS_FILE"}
    for name, value in settings.model_dump().items():
        key = f"AGENT_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            # A secret's own value (its str() is a mask), handed to the child only.
            env[key] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return env


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervising process dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the child outlives a killed supervisor


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128 + N
