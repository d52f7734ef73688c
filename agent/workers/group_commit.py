"""Group commit for a Celery worker process: a job's finish rides on the next job's claim.

A job on the Celery path writes twice: its claim (with its audited start)
before it runs, and its finish (with its audited end) after.  Each is a
transaction, and on a busy worker the transaction, not the statements in it,
is most of the cost: taking the database's write lock, BEGIN, COMMIT.  So a
job that succeeded with nothing to queue after it does not commit its finish
at once: ``GroupCommit`` keeps it, and the worker's next claim commits it in
the same transaction.  If no job comes within ``delay`` seconds, a thread of
the group commits it on its own; when the process ends (Celery's
``worker_process_shutdown``, or ``atexit``), ``flush`` commits what is left.

Nothing is lost if the process dies with a finish kept: the job is still
``running`` in the ledger under its lease, which runs out; the job is then
published again and run again, as a job whose worker died mid-run is (its
audit trail records the lost attempt).  Side effects are guarded the same way
as there: an outbox key is sent once.  A job that fails, is retried, or has
follow-up jobs to queue is settled at once, never kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from agent.logs import get_logger

__all__ = ["GroupCommit"]

log = get_logger("agent.worker")

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """At most one kept finish (a worker process runs one job at a time); ``commit`` writes one in a
    transaction of its own, and must not raise for a failure it can settle itself."""

    def __init__(self, commit: Callable[[T], None], *, delay: float) -> None:
        if delay <= 0:
            raise ValueError("delay must be above 0")
        self.delay = delay
        self._commit = commit
        self._kept: T | None = None
        self._kept_at = 0.0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._committing = 0  # finishes being committed on their own right now
        self.committed = 0  # finishes the group's thread (or flush) handed to ``commit`` on their own

    def keep(self, item: T) -> None:
        """Keep ``item`` for the next claim, or for the group's thread after ``delay``; one kept
        before it is committed first (so there is never more than one)."""
        earlier = self.take()
        if earlier is not None:
            self._commit_alone(earlier)
        with self._changed:
            self._kept, self._kept_at = item, time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="agent-group-commit", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def take(self) -> T | None:
        """The kept finish, now the caller's to commit (with its claim); None if there is none."""
        with self._changed:
            item, self._kept = self._kept, None
            self._changed.notify_all()
            return item

    def flush(self) -> None:
        """Commit the kept finish, if any, now, in this thread; and wait for one the group's thread
        is committing (the process may end right after)."""
        with self._changed:
            item, self._kept = self._kept, None
            if item is not None:
                self._committing += 1
        if item is not None:
            self._commit_alone(item, counted=True)
        with self._changed:
            self._changed.wait_for(lambda: self._committing == 0, timeout=60)

    def _commit_alone(self, item: T, *, counted: bool = False) -> None:
        if not counted:
            with self._changed:
                self._committing += 1
        try:
            self._commit(item)
        except Exception as exc:  # its lease runs out, and it runs again: logged, not raised
            log.warning("a finished job was not committed: %s", type(exc).__name__)
        finally:
            with self._changed:
                self._committing -= 1
                self.committed += 1
                self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._kept is None:
                    self._changed.wait()
                left = self._kept_at + self.delay - time.monotonic()
                if left > 0:
                    self._changed.wait(left)  # the next claim may take it meanwhile
                    continue
                item, self._kept = self._kept, None
                self._committing += 1
            self._commit_alone(item, counted=True)

    def wait_committed(self, count: int, timeout: float) -> bool:
        """Until ``committed`` reaches ``count`` (tests); False after ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self.committed >= count, timeout)
