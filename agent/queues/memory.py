"""``InMemoryQueue``: the queue contract in one process, for tests and the embedded setup.

One lock (inside one ``threading.Condition``) guards everything.  Per topic a
deque holds the ready jobs; nacked jobs waiting out a delay sit in one heap by
due time; jobs in flight sit in an insertion-ordered dict with their
deadlines.  The visibility timeout is the same for every delivery, so deadlines
grow in insertion order and the oldest entry is always the first to expire.
Expired and due jobs are moved back to ready lazily, whenever ``dequeue``,
``stats`` or ``join`` runs, and at least every ``requeue_check_interval``
seconds while one of them waits.

``clock`` times visibility timeouts and nack delays; it can be a fake that a
test advances.  The ``timeout`` of ``dequeue`` and ``join`` is real waiting
time, always measured with ``time.monotonic``.
"""

from __future__ import annotations

import copy

import heapq
import itertools
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.errors import ConfigurationError, InvalidInput
from agent.queues.base import Job, Queue, QueueStats, check_topic, error_text

__all__ = ["InMemoryQueue"]

_monotonic = time.monotonic


def _positive(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise InvalidInput(field, "must be a number of seconds > 0")
    return float(value)


class InMemoryQueue(Queue):
    """Thread-safe in-process queue.  ``remember``: how many acked idempotency keys are kept.

    ``dequeue`` returns the queue's own ``Job`` (no copy, to keep the hot path
    lean): read it, do not change it.  A job that runs out of attempts, by
    nack or by an expired visibility timeout, is dead-lettered with
    ``meta["last_error"]``; its idempotency key is released, so the same work
    can be enqueued again.  A nacked or expired job rejoins the back of the line.
    """

    def __init__(self, visibility_timeout: float = 30.0, requeue_check_interval: float = 0.5, *,
                 clock: Callable[[], float] = time.monotonic, remember: int = 100_000) -> None:
        self.visibility_timeout = _positive("visibility_timeout", visibility_timeout)
        self.requeue_check_interval = _positive("requeue_check_interval", requeue_check_interval)
        if isinstance(remember, bool) or not isinstance(remember, int) or remember < 0:
            raise InvalidInput("remember", "must be an integer >= 0")
        self.remember = remember
        self.clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ready: dict[str, deque[Job]] = {}
        self._delayed: list[tuple[float, int, str, Job]] = []
        self._seq = itertools.count()
        self._inflight: OrderedDict[str, tuple[float, str, Job]] = OrderedDict()
        self._live: dict[str, str] = {}  # job_id -> topic of every job not yet acked or dead
        self._pending: dict[str, int] = {}  # topic -> its live jobs
        self._keys: dict[tuple[str, str], str] = {}  # (topic, key) -> job_id of live jobs
        self._done_keys: OrderedDict[tuple[str, str], str] = OrderedDict()  # of acked jobs, oldest first
        self._dead: dict[str, list[Job]] = {}
        # Earliest moment an in-flight deadline or a delay may have passed; may be early, never late.
        self._next_due = math.inf
        self._getters = 0
        self._joiners = 0
        self._stopped = False

    # -- producing ---------------------------------------------------------------------
    def enqueue(self, topic: str, job: Job | Mapping[str, Any]) -> str:
        return self._put(topic, [self._own(job, "job")], "job")[0]

    def enqueue_many(self, topic: str, jobs: Iterable[Job | Mapping[str, Any]]) -> list[str]:
        """Enqueue all jobs under one lock; a bad one fails the call before any is added."""
        return self._put(topic, [self._own(job, f"jobs[{i}]") for i, job in enumerate(jobs)], "jobs")

    @staticmethod
    def _own(value: Job | Mapping[str, Any], prefix: str) -> Job:
        job = Job.parse(value, prefix)
        # The queue changes attempts and meta: never on the caller's object.
        return job.model_copy() if job is value else job

    def _put(self, topic: str, jobs: list[Job], prefix: str) -> list[str]:
        with self._lock:
            ready = self._topic(topic)
            if self._stopped:
                raise ConfigurationError("queue is stopped")
            self._check_new(topic, jobs, prefix)
            ids = []
            added = 0
            for job in jobs:
                key = job.idempotency_key
                if key is not None:
                    known = self._keys.get((topic, key)) or self._done_keys.get((topic, key))
                    if known is not None:
                        ids.append(known)
                        continue
                    self._keys[(topic, key)] = job.job_id
                ready.append(job)
                self._live[job.job_id] = topic
                ids.append(job.job_id)
                added += 1
            self._pending[topic] += added
            if added:
                self._wake(added)
            return ids

    def _check_new(self, topic: str, jobs: list[Job], prefix: str) -> None:
        """Refuse a job id that is already queued, before anything is added (lock held)."""
        new_ids: set[str] = set()
        new_keys: set[str] = set()
        for i, job in enumerate(jobs):
            key = job.idempotency_key
            if key is not None and (key in new_keys or (topic, key) in self._keys or (topic, key) in self._done_keys):
                continue  # a repeat of known work: added as nothing, whatever its id
            if job.job_id in self._live or job.job_id in new_ids:
                field = f"{prefix}[{i}].job_id" if prefix == "jobs" else f"{prefix}.job_id"
                raise InvalidInput(field, f"a job {job.job_id!r} is already queued")
            new_ids.add(job.job_id)
            if key is not None:
                new_keys.add(key)

    # -- consuming ---------------------------------------------------------------------
    def dequeue(self, topic: str, timeout: float | None = None) -> Job | None:
        with self._lock:
            try:
                ready = self._ready[topic]
            except (KeyError, TypeError):
                ready = self._topic(topic)
            end = None
            while True:
                if self._stopped:
                    return None
                now = self.clock()
                if now >= self._next_due:
                    self._requeue(now)
                if ready:
                    return self._deliver(topic, ready, now)
                if end is None:
                    if timeout is not None and timeout <= 0:
                        return None
                    end = math.inf if timeout is None else _monotonic() + timeout
                left = end - _monotonic()
                if left <= 0:
                    return None
                # Woken by an enqueue, or at the next check for expired and delayed jobs.
                self._getters += 1
                try:
                    self._cond.wait(min(self.requeue_check_interval, left))
                finally:
                    self._getters -= 1

    def _deliver(self, topic: str, ready: deque[Job], now: float) -> Job:
        job = ready.popleft()
        job.attempts += 1
        deadline = now + self.visibility_timeout
        self._inflight[job.job_id] = (deadline, topic, job)
        if deadline < self._next_due:
            self._next_due = deadline
        # The worker gets its own copy: a redelivery to another worker changes the queue's
        # job, never the one in hand, whose ``attempts`` names this delivery.
        return copy.copy(job)

    def extend(self, job_id: str, *, attempt: int | None = None, seconds: float | None = None) -> None:
        """Push the visibility deadline of a job still in hand (a long job's heartbeat)."""
        with self._lock:
            entry = self._inflight.get(job_id)
            if entry is None or (attempt is not None and entry[2].attempts != attempt):
                raise InvalidInput("job_id", f"{job_id!r} is not in hand any more (acked, or redelivered)")
            deadline = self.clock() + (self.visibility_timeout if seconds is None else seconds)
            self._inflight[job_id] = (deadline, entry[1], entry[2])
            self._inflight.move_to_end(job_id)
            self._next_due = min(self._next_due, self._inflight[next(iter(self._inflight))][0])

    def ack(self, job_id: str, *, attempt: int | None = None) -> None:
        with self._lock:
            _, topic, job = self._take(job_id, attempt)
            del self._live[job_id]
            left = self._pending[topic] = self._pending[topic] - 1
            key = job.idempotency_key
            if key is not None:
                self._remember((topic, key), job_id)
            if self._joiners and not left:
                self._cond.notify_all()

    def nack(self, job_id: str, *, delay: float = 0.0, error: BaseException | str | None = None,
             attempt: int | None = None) -> None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            raise InvalidInput("delay", "must be a number of seconds >= 0")
        text = error_text(error)
        with self._lock:
            _, topic, job = self._take(job_id, attempt)
            if text is not None:
                job.meta = {**job.meta, "last_error": text}
            if job.attempts >= job.max_attempts:
                self._bury(topic, job)
            elif delay > 0:
                due = self.clock() + delay
                heapq.heappush(self._delayed, (due, next(self._seq), topic, job))
                if due < self._next_due:
                    self._next_due = due
            else:
                self._ready[topic].append(job)
                self._wake(1)

    def dead(self, job_id: str, *, error: BaseException | str | None = None, attempt: int | None = None) -> None:
        text = error_text(error)
        with self._lock:
            _, topic, job = self._take(job_id, attempt)
            if text is not None:
                job.meta = {**job.meta, "last_error": text}
            self._bury(topic, job)

    def _take(self, job_id: str, attempt: int | None = None) -> tuple[float, str, Job]:
        try:
            entry = self._inflight.get(job_id)
        except TypeError:  # an unhashable id
            entry = None
        if entry is None:
            raise InvalidInput("job_id", f"{job_id!r} is not in flight (unknown, already acked or nacked, "
                                         "or its visibility timeout ran out)")
        if attempt is not None and entry[2].attempts != attempt:
            # A stale hand: the job was redelivered since, and the newer delivery is the live one.
            raise InvalidInput("job_id", f"{job_id!r} was redelivered (attempt {entry[2].attempts}); "
                                         f"attempt {attempt} no longer holds it")
        del self._inflight[job_id]
        return entry

    # -- lock-held bookkeeping -----------------------------------------------------------
    def _topic(self, topic: str) -> deque[Job]:
        ready = self._ready.get(topic) if isinstance(topic, str) else None
        if ready is None:
            check_topic(topic)
            ready = self._ready[topic] = deque()
            self._pending[topic] = 0
        return ready

    def _requeue(self, now: float) -> None:
        """Move expired in-flight jobs and due delayed jobs back to ready."""
        moved = 0
        inflight = self._inflight
        while inflight:
            job_id = next(iter(inflight))
            deadline, topic, job = inflight[job_id]
            if deadline > now:
                break
            del inflight[job_id]
            if job.attempts >= job.max_attempts:
                job.meta = {**job.meta, "last_error": f"visibility timeout ({self.visibility_timeout:g}s) ran out"}
                self._bury(topic, job)
            else:
                self._ready[topic].append(job)
                moved += 1
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, topic, job = heapq.heappop(delayed)
            self._ready[topic].append(job)
            moved += 1
        due = inflight[next(iter(inflight))][0] if inflight else math.inf
        self._next_due = min(due, delayed[0][0]) if delayed else due
        if moved:
            self._wake(moved)

    def _bury(self, topic: str, job: Job) -> None:
        """Dead-letter ``job`` (out of attempts) and release its idempotency key."""
        if "last_error" not in job.meta:
            job.meta = {**job.meta, "last_error": None}
        self._dead.setdefault(topic, []).append(job)
        del self._live[job.job_id]
        left = self._pending[topic] = self._pending[topic] - 1
        if job.idempotency_key is not None:
            self._keys.pop((topic, job.idempotency_key), None)
        if self._joiners and not left:
            self._cond.notify_all()

    def _remember(self, key: tuple[str, str], job_id: str) -> None:
        self._keys.pop(key, None)
        if self.remember:
            self._done_keys[key] = job_id
            if len(self._done_keys) > self.remember:
                self._done_keys.popitem(last=False)

    def _wake(self, count: int) -> None:
        """Tell waiting getters that ``count`` jobs became ready.  (Joiners are woken only
        when a topic drains: that is all they wait for.)"""
        # Joiners wait on the same condition, so a plain notify could wake one of them instead.
        if self._joiners:
            self._cond.notify_all()
        elif self._getters:
            self._cond.notify(count)

    # -- looking on ---------------------------------------------------------------------
    def dead_letters(self, topic: str) -> list[Job]:
        check_topic(topic)
        with self._lock:
            return list(self._dead.get(topic, ()))

    def stats(self, topic: str) -> QueueStats:
        with self._lock:
            ready = self._topic(topic)
            now = self.clock()
            if now >= self._next_due:
                self._requeue(now)
            delayed = sum(1 for entry in self._delayed if entry[2] == topic)
            return QueueStats(ready=len(ready), in_flight=self._pending[topic] - len(ready) - delayed,
                              delayed=delayed, dead=len(self._dead.get(topic, ())))

    def join(self, topic: str | None = None, timeout: float | None = None) -> bool:
        """Also returns (False) at once after ``stop()`` if work is left: nobody will take it."""
        end = None if timeout is None else _monotonic() + timeout
        with self._lock:
            if topic is not None:
                self._topic(topic)
            self._joiners += 1
            try:
                while True:
                    now = self.clock()
                    if now >= self._next_due:
                        self._requeue(now)
                    if not (self._pending[topic] if topic is not None else self._live):
                        return True
                    if self._stopped:
                        return False
                    wait = self.requeue_check_interval
                    if end is not None:
                        left = end - _monotonic()
                        if left <= 0:
                            return False
                        wait = min(wait, left)
                    self._cond.wait(wait)
            finally:
                self._joiners -= 1

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stopped
