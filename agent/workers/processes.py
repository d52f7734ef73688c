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

Faults: a child that dies mid-job (killed, out of memory) costs the job in
its hands one attempt (or dead-letters it, audited, after its last); the
other children go on with theirs, uncharged: each child has a pipe of its
own, and the thread that handed it a job watches that pipe and the child's
life.  The dead child is not replaced: a fork while other threads of this
process are busy could copy a lock one of them holds (SQLite's, the C
library's) into a child that would then wait for it forever.  When no child
is left, or none could be started, the jobs run on the worker threads.
Sends are idempotent per outbox key, so a batch run again sends nothing twice.
Children ignore SIGINT: a Ctrl-C reaches the whole process group, and the
parent decides (it finishes the jobs in hand).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from multiprocessing.connection import Connection, wait
from typing import Any

from agent.errors import AgentCallError, InvalidInput
from agent.logs import get_logger
from agent.queues.base import Job
from agent.registry import Registry
from agent.workers.execute import JobOutcome, execute_job, give_up, retry_delay

__all__ = ["ProcessPool", "default_processes"]

log = get_logger("agent.worker")

MAX_PROCESSES = 64
READY_TIMEOUT = 60.0  # seconds a child may take to say it is ready


def default_processes() -> int:
    """One worker process per core, at most 4 (the ``processes`` setting's ``auto``)."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      4))


_LOCAL = object()  # the seat of a job run in this process


class _Child:
    """A worker process and this side of its pipe."""

    __slots__ = ("process", "conn")

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process, self.conn = process, conn


class ProcessPool:
    """Runs jobs in ``processes`` forked children; ``execute(job)`` blocks until its outcome.

    The children run jobs with ``registry`` and ``audit`` (as they were at the
    fork); ``audit`` also records, here, a job given up after its last child
    died, and the jobs run here once no child is left (``broken``).  With
    ``local``, one job at a time also runs here while every child is busy.
    """

    def __init__(self, processes: int, *, registry: Registry, audit: Any = None, retry_base: float = 1.0,
                 local: bool = False) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= MAX_PROCESSES:
            raise InvalidInput("processes", f"must be an integer from 1 to {MAX_PROCESSES}")
        self.processes = processes
        # One job at a time may also run here, on the calling thread, while every child is busy: this
        # process works too (on two cores, one child and this process use both, in less memory).
        self.local = local
        self._local_busy = False
        self.registry, self.audit, self.retry_base = registry, audit, retry_base
        self.broken = False  # no child left (or none started): the jobs run on the calling threads
        self._resolved: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._children: list[_Child] = []  # alive, as far as this side knows
        self._idle: list[_Child] = []
        self._busy = 0
        self._started = False
        self._closed = False
        self._forker: threading.Thread | None = None

    @property
    def alive(self) -> int:
        """How many children are left."""
        with self._cond:
            return len(self._children)

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Fork the children now (otherwise on the first job), and wait until they are ready."""
        with self._cond:
            if self._closed:
                raise InvalidInput("processes", "the process pool is closed")
            if self._forker is None:
                self._forker = threading.Thread(target=self._fork_and_wait, name="agent-process-forker",
                                                daemon=True)
                self._forker.start()
            while not self._started:
                self._cond.wait()

    def execute(self, job: Job) -> JobOutcome:
        """Run ``job`` in a child (on this thread once no child is left); a child lost mid-job is the
        job's failed attempt, and only that job's."""
        self.start()
        while True:
            child = self._checkout()
            if child is None or child is _LOCAL:
                try:
                    return execute_job(job, registry=self.registry, audit=self.audit, resolved=self._resolved,
                                       retry_base=self.retry_base)
                finally:
                    if child is _LOCAL:
                        self._checkin(child)
            assert isinstance(child, _Child)
            try:
                payload = pickle.dumps(job)
            except BaseException:
                self._checkin(child)  # nothing was sent: the child is fine
                raise
            try:
                child.conn.send_bytes(payload)
            except OSError:  # it died idle: the job never reached it, not an attempt lost
                self._lose(child)
                continue
            except BaseException:
                self._lose(child)  # cut short mid-message: the pipe cannot be trusted again
                raise
            try:
                outcome = _answer(child)
            except BaseException:
                self._lose(child)
                raise
            if outcome is None:
                self._lose(child)
                return self._lost(job, child.process.exitcode)
            self._checkin(child)
            return outcome

    def close(self) -> None:
        """Stop the children once their jobs are done; ``execute`` is refused afterwards."""
        with self._cond:
            self._closed = True
            self._started = True  # a start() still waiting gives up
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
    def _checkout(self) -> _Child | object | None:
        """An idle child (or ``_LOCAL``: this process's seat), waiting for one; None once no child is
        left (the jobs then run on the calling threads)."""
        with self._cond:
            while True:
                if self._closed:
                    raise InvalidInput("processes", "the process pool is closed")
                if self._idle:
                    self._busy += 1
                    return self._idle.pop()
                if not self._children:
                    return None
                if self.local and not self._local_busy:
                    self._local_busy = True
                    return _LOCAL
                self._cond.wait()

    def _checkin(self, child: _Child | object) -> None:
        with self._cond:
            if child is _LOCAL:
                self._local_busy = False
            else:
                self._busy -= 1
                self._idle.append(child)
            self._cond.notify_all()

    def _lose(self, child: _Child) -> None:
        """A child found dead while checked out: never used again."""
        with self._cond:
            self._busy -= 1
            if child in self._children:
                self._children.remove(child)
            if not self._children and not self.broken:
                self.broken = True
                log.warning("no worker process is left: the jobs run on threads")
            self._cond.notify_all()
        child.conn.close()
        if child.process.is_alive():  # an answer that could not be read: it is of no use any more
            child.process.kill()
        child.process.join(timeout=5)

    def _fork_and_wait(self) -> None:
        # Children are forked from this thread and die with it (PR_SET_PDEATHSIG is per thread):
        # it lives exactly as long as the pool.
        children: list[_Child] = []
        ready: list[_Child] = []
        try:
            context = multiprocessing.get_context("fork")
            for _ in range(self.processes):
                mine, theirs = context.Pipe()
                # The child closes the parent's ends it inherits (its own and its elder siblings'), so
                # that it sees the end of its pipe when the parent closes it.
                inherited = [child.conn for child in children] + [mine]
                process = context.Process(target=_child_main, name="agent-worker", daemon=True,
                                          args=(theirs, inherited, self.registry, self.audit, self.retry_base,
                                                os.getpid()))
                process.start()
                theirs.close()
                children.append(_Child(process, mine))
        except Exception:  # fork refused (no memory, no processes left): those forked still serve
            log.exception("worker processes could not all be started")
        try:
            ready = [child for child in children if _ready(child)]
            if len(ready) < len(children):
                log.warning("%d worker process(es) died as they started", len(children) - len(ready))
        finally:  # whatever happened, start() stops waiting
            with self._cond:
                self._children, self._idle = list(ready), list(ready)
                self.broken = not ready
                if not ready:
                    log.warning("no worker process started: the jobs run on threads")
                self._started = True
                self._cond.notify_all()
        with self._cond:
            while not (self._closed and self._busy == 0):
                self._cond.wait()
            left, self._children, self._idle = self._children, [], []
        for child in left:
            try:
                child.conn.send(None)  # stop when done
            except (OSError, ValueError):
                pass
        for child in children:
            child.process.join(timeout=10)
            if child.process.is_alive():
                child.process.kill()
                child.process.join()
            child.conn.close()

    def _lost(self, job: Job, exitcode: int | None) -> JobOutcome:
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit {exitcode}"
        error = AgentCallError(job.orchestrator, f"its worker process died mid-job ({how})")
        if job.attempts >= job.max_attempts:
            return give_up(job, error, audit=self.audit)
        log.warning("job %s run %s: worker process lost (attempt %d of %d); will retry", job.job_id, job.run_id,
                    job.attempts, job.max_attempts)
        return JobOutcome("retry", error=error, delay=retry_delay(job.attempts, base=self.retry_base))


def _ready(child: _Child) -> bool:
    """The child said it is ready (its pid); False if it died first (or never said it)."""
    if isinstance(_receive(child, READY_TIMEOUT), int):
        return True
    child.process.kill()
    return False


def _answer(child: _Child) -> JobOutcome | None:
    """The outcome the child sends back; None if it died first."""
    return _receive(child)


def _receive(child: _Child, timeout: float | None = None) -> Any:
    """What the child sends next; None if it dies (or ``timeout`` passes) first."""
    wait([child.conn, child.process.sentinel], timeout)  # whichever comes first
    if child.conn.poll():  # a message sent just before it died still counts
        try:
            return child.conn.recv()
        except Exception:  # cut short by its death
            pass
    return None


# -- the child's side --------------------------------------------------------------------------------
def _child_main(conn: Connection, inherited: list[Connection], registry: Registry, audit: Any, retry_base: float,
                parent: int) -> None:
    for end in inherited:
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C, and finishes the jobs in hand
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above: nothing will collect our work
        os._exit(1)
    resolved: dict[str, Any] = {}
    conn.send(os.getpid())
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return  # the parent is gone
        if job is None:
            return
        outcome = _portable(execute_job(job, registry=registry, audit=audit, resolved=resolved,
                                        retry_base=retry_base), job)
        try:
            conn.send(outcome)
        except Exception as exc:  # nothing was sent: pickling comes first
            # Its next attempt finds what this one audited (a success is not run again).
            conn.send(JobOutcome("retry", delay=retry_delay(job.attempts, base=retry_base), error=AgentCallError(
                job.orchestrator, f"its outcome could not reach the parent ({type(exc).__name__})")))


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
