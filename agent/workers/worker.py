"""Worker: takes jobs from a queue and runs them with ``execute_job``.

``run_once(timeout)`` handles at most one job (tests and scripts drive it
step by step); ``start(threads)`` runs that in N threads until ``stop()``;
``run()`` does the same in the foreground and stops gracefully on SIGTERM or
SIGINT: the job in hand is finished and acked, no new one is taken.  Each
thread beats a heartbeat (``heartbeats``) whenever it polls or finishes a
job, so a supervisor can tell a stuck worker from an idle one.

With ``execute`` (e.g. ``ProcessPool.execute``) a thread hands each job it
took to that function instead of running ``execute_job`` itself: the queue,
its acks and leases stay here, the work goes to other processes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.errors import InvalidInput
from agent.logs import get_logger
from agent.registry import Registry
from agent.workers.execute import JobOutcome, execute_job, queue_follow_ups

__all__ = ["Worker"]

log = get_logger("agent.worker")


class Worker:
    """Runs jobs from ``queue`` on ``topic``; audits to ``audit_store`` when given."""

    def __init__(self, queue: Any, registry: Registry | None = None, *, topic: str = "orchestrate",
                 audit_store: Any = None, poll: float = 1.0, retry_base: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 execute: Callable[[Any], JobOutcome] | None = None) -> None:
        if registry is None:
            from agent.builtins import default_registry

            registry = default_registry()
        self.queue = queue
        self.registry = registry
        self.topic = topic
        self.audit_store = audit_store
        self.poll = poll
        self.retry_base = retry_base
        self.clock = clock
        self.execute = execute
        self.heartbeats: dict[str, float] = {}
        self.processed = 0
        self._resolved: dict[str, Any] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._in_hand: dict[str, int] = {}

    # -- one step ----------------------------------------------------------------------------
    def run_once(self, timeout: float | None = None) -> JobOutcome | None:
        """Take one job (waiting up to ``timeout``), run it, and ack, retry or dead-letter it."""
        self._beat()
        job = self.queue.dequeue(self.topic, timeout=timeout)
        if job is None:
            return None
        # Plain dict writes are atomic under the GIL; the lease keeper copies the dict in one step.
        self._in_hand[job.job_id] = job.attempts
        try:
            if self.execute is not None:
                outcome = self.execute(job)
            else:
                outcome = execute_job(job, registry=self.registry, audit=self.audit_store, resolved=self._resolved,
                                      retry_base=self.retry_base)
        finally:
            self._in_hand.pop(job.job_id, None)
        try:
            if outcome.verdict == "ack":
                # Queued before the ack: if this process dies in between, the job comes back and
                # queues them again, which adds nothing (their idempotency keys).
                queue_follow_ups(self.queue, outcome)
                self.queue.ack(job.job_id, attempt=job.attempts)
            elif outcome.verdict == "retry":
                self.queue.nack(job.job_id, delay=outcome.delay, error=_describe(outcome.error), attempt=job.attempts)
            else:
                self.queue.dead(job.job_id, error=_describe(outcome.error), attempt=job.attempts)
        except InvalidInput as exc:
            # Redelivered meanwhile (this hand outlived its visibility timeout): the newer
            # delivery settles the job; side effects are idempotent, so nothing is done twice.
            log.warning("job %s: %s", job.job_id, exc.reason)
        with self._lock:
            self.processed += 1
        self._beat()
        return outcome

    # -- loops ---------------------------------------------------------------------------------
    def extend_leases(self) -> int:
        """Push back the visibility deadline of every job in hand (called by the lease keeper)."""
        in_hand = dict(self._in_hand)
        extended = 0
        for job_id, attempt in in_hand.items():
            try:
                self.queue.extend(job_id, attempt=attempt)
                extended += 1
            except (InvalidInput, NotImplementedError):
                pass  # settled meanwhile, or a queue without leases
        return extended

    def start(self, threads: int = 1) -> None:
        """Run ``threads`` loops in the background until ``stop()``, and a lease keeper."""
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidInput("threads", "must be an integer of at least 1")
        self._stopping.clear()
        every = getattr(self.queue, "visibility_timeout", None)
        if every:
            keeper = threading.Thread(target=self._keep_leases, args=(every / 3,), name="agent-lease-keeper",
                                      daemon=True)
            self._threads.append(keeper)
            keeper.start()
        for index in range(threads):
            thread = threading.Thread(target=self._loop, name=f"agent-worker-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def run(self, threads: int = 1) -> None:
        """Run in the foreground until SIGTERM / SIGINT (graceful: jobs in hand are finished)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start(threads)
            while not self._stopping.wait(self.poll):
                pass
            self.join()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Take no new job; loops end after the job in hand."""
        self._stopping.set()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else self.clock() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - self.clock()))
        alive = any(t.is_alive() for t in self._threads)
        if not alive:
            self._threads.clear()
        return not alive

    # -- helpers ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            if getattr(self.queue, "stopped", False):
                self.stop()  # a stopped queue hands out nothing more: the worker (and its keeper) ends
                return
            try:
                self.run_once(timeout=self.poll)
            except Exception:
                # A broken queue or audit store must not kill the thread silently; it is logged and
                # the loop carries on (the job, unacked, comes back after its visibility timeout).
                log.exception("worker loop error on topic %s", self.topic)
                self._stopping.wait(self.poll)

    def _keep_leases(self, every: float) -> None:
        # A job longer than the visibility timeout must not be handed to a second worker.
        while not self._stopping.wait(every):
            self.extend_leases()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop()  # first: from the moment this is said, no new job is taken
        log.warning("signal %d: finishing the jobs in hand, taking no new one", signum)

    def _beat(self) -> None:
        self.heartbeats[threading.current_thread().name] = self.clock()


def _describe(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"
