"""Worker processes for the embedded queue: the jobs of an ``InMemoryQueue`` run on every core.

A template-drafted campaign is pure Python: worker threads of one process
take turns on the GIL, so a second thread adds nothing.  ``ProcessPool``
keeps the queue, its acks and leases, and the worker threads in this
process, and runs each job's ``execute_job`` in a child process, whose
outcome comes back to the thread that took the job::

    InMemoryQueue ── Worker thread ──▶ ProcessPool ──▶ child: execute_job(job) ──▶ JobOutcome
         ▲                │                            (forked: this process's registry and
         └── ack / nack ──┘                             audit store, with its own connections)

Children are forked, so they start in milliseconds with everything this
process had loaded, share its memory pages, and run jobs with its registry
and audit store (each database handle forgets its pooled connections in the
child and opens its own; see ``agent.storage.db``).  A child sees the
registry as it was when it was forked.  The forks come from one thread of
the pool's own, made for nothing else, before the worker threads pick up
jobs; a child is killed when that thread ends (``close``) or this process
dies, so a killed ``agent campaign run`` leaves nothing running behind it.

Faults: a child that dies mid-job (killed, out of memory) breaks the pool
(the standard executor then ends the other children too); every job in hand
gets a retry (or is dead-lettered, audited, after its last attempt), and the
jobs after them run on the worker threads of this process.  No child is
forked again: a fork while other threads of this process are busy could
copy a lock one of them holds (SQLite's, the C library's) into a child that
would then wait for it forever.  Sends are idempotent per outbox key, so a
batch run again sends nothing twice.  If the children cannot be started at
all, the jobs run on the threads too.
Children ignore SIGINT: a Ctrl-C reaches the whole process group, and the
parent decides (it finishes the jobs in hand).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from agent.errors import AgentCallError, InvalidInput
from agent.logs import get_logger
from agent.queues.base import Job
from agent.registry import Registry
from agent.workers.execute import JobOutcome, execute_job, give_up, retry_delay

__all__ = ["ProcessPool", "default_processes"]

log = get_logger("agent.worker")

MAX_PROCESSES = 64


def default_processes() -> int:
    """One worker process per core, at most 4 (the ``processes`` setting's ``auto``)."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      4))


class ProcessPool:
    """Runs jobs in ``processes`` forked children; ``execute(job)`` blocks until its outcome.

    The children run jobs with ``registry`` and ``audit`` (as they were at the
    fork); ``audit`` also records, here, a job given up after its last child died,
    and the jobs run here once the pool broke (``broken``).
    """

    def __init__(self, processes: int, *, registry: Registry, audit: Any = None, retry_base: float = 1.0) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= MAX_PROCESSES:
            raise InvalidInput("processes", f"must be an integer from 1 to {MAX_PROCESSES}")
        self.processes = processes
        self.registry, self.audit, self.retry_base = registry, audit, retry_base
        self.broken = False  # a child died: the jobs run on the calling threads from then on
        self._resolved: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._pool: ProcessPoolExecutor | None = None
        self._wanted = False  # a (fresh) pool is asked of the forker
        self._closed = False
        self._forker: threading.Thread | None = None

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Fork the children now (otherwise on the first job), and wait until they are ready."""
        with self._cond:
            if self._closed:
                raise InvalidInput("processes", "the process pool is closed")
            if self._forker is None:
                self._forker = threading.Thread(target=self._fork_loop, name="agent-process-forker", daemon=True)
                self._wanted = True
                self._forker.start()
        self._live()

    def execute(self, job: Job) -> JobOutcome:
        """Run ``job`` in a child (on this thread once the pool broke); a child lost mid-job is the
        job's failed attempt."""
        self.start()
        pool = self._live()
        if pool is None:
            return execute_job(job, registry=self.registry, audit=self.audit, resolved=self._resolved,
                               retry_base=self.retry_base)
        try:
            future = pool.submit(_run, job)
        except BrokenProcessPool:
            self._discard(pool)
            return self.execute(job)  # it never reached a child: not an attempt lost
        try:
            return future.result()
        except BrokenProcessPool as exc:
            self._discard(pool)
            return self._lost(job, exc)

    def close(self) -> None:
        """Stop the children once their jobs are done; ``execute`` is refused afterwards."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            forker = self._forker
        if forker is not None:
            forker.join()

    def __enter__(self) -> ProcessPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------------
    def _live(self) -> ProcessPoolExecutor | None:
        """The pool; None once it broke or could not start (the jobs then run on this thread)."""
        with self._cond:
            while self._pool is None and not self._closed and not self.broken:
                self._cond.wait()
            if self.broken and not self._closed:
                return None
            if self._pool is None:
                raise InvalidInput("processes", "the process pool is closed")
            return self._pool

    def _fork_loop(self) -> None:
        # Children are forked from this thread and die with it (PR_SET_PDEATHSIG is per thread):
        # it lives exactly as long as the pool.
        pool = None
        try:
            while True:
                with self._cond:
                    while not self._wanted and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        break
                    self._wanted = False
                context = multiprocessing.get_context("fork")
                pool = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_init_child,
                                           initargs=(self.registry, self.audit, self.retry_base, os.getpid()))
                try:
                    # The first submit forks every child (at once, with a fork context); each answers.
                    for future in [pool.submit(_ready) for _ in range(self.processes)]:
                        future.result()
                except BrokenProcessPool:
                    log.warning("a worker process died as it started: the jobs run on threads")
                    pool.shutdown(wait=False, cancel_futures=True)
                    with self._cond:
                        self.broken = True
                        self._cond.notify_all()
                    continue
                with self._cond:
                    self._pool = pool
                    self._cond.notify_all()
        except Exception:  # pragma: no cover - fork refused (no memory, no processes left)
            log.exception("worker processes could not be started: the jobs run on threads")
            with self._cond:
                self.broken = True
                self._cond.notify_all()
        finally:
            with self._cond:
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._cond:
            if self._pool is not pool:
                return  # another thread saw it break first
            self._pool = None
            self.broken = True  # never forked again (see the module's doc)
            self._cond.notify_all()
        pool.shutdown(wait=False, cancel_futures=True)

    def _lost(self, job: Job, exc: BaseException) -> JobOutcome:
        error = AgentCallError(job.orchestrator, f"its worker process died mid-job ({exc})")
        if job.attempts >= job.max_attempts:
            return give_up(job, error, audit=self.audit)
        log.warning("job %s run %s: worker process lost (attempt %d of %d); will retry", job.job_id, job.run_id,
                    job.attempts, job.max_attempts)
        return JobOutcome("retry", error=error, delay=retry_delay(job.attempts, base=self.retry_base))


# -- the child's side --------------------------------------------------------------------------------
_child: dict[str, Any] = {}


def _init_child(registry: Registry, audit: Any, retry_base: float, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C, and finishes the jobs in hand
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above: nothing will collect our work
        os._exit(1)
    _child.update(registry=registry, audit=audit, retry_base=retry_base, resolved={})


def _ready() -> int:
    return os.getpid()


def _run(job: Job) -> JobOutcome:
    outcome = execute_job(job, registry=_child["registry"], audit=_child["audit"], resolved=_child["resolved"],
                          retry_base=_child["retry_base"])
    return _portable(outcome, job)


def _portable(outcome: JobOutcome, job: Job) -> JobOutcome:
    """The outcome, with an error that pickles (a library's exception may not): its text kept."""
    error = outcome.error
    if error is None:
        return outcome
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        error = AgentCallError(job.orchestrator, f"{type(error).__name__}: {error}")
        return JobOutcome(outcome.verdict, envelope=outcome.envelope, error=error, delay=outcome.delay,
                          follow_ups=outcome.follow_ups)
    return outcome


def _die_with_parent() -> None:
    """SIGKILL when the thread that forked us ends (the pool's forker) or our parent dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the child of a killed parent is left waiting for its next job
