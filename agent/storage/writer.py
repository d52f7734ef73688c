"""A background thread that runs database writes in order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Runs database writes on one background thread, in order.

    SQLite steps statements without holding the GIL, so while the thread
    executes one chunk the caller prepares the next.  The caller must not use
    the connection until ``join()`` returns; the first error is re-raised there.
    """

    def __init__(self) -> None:
        self._pending: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="agent-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (task := self._pending.get()) is not None:
            if self._error is None:
                try:
                    task()
                except BaseException as exc:  # handed to the caller in join()
                    self._error = exc

    def submit(self, task: Callable[[], None]) -> None:
        if self._error is not None:  # stop preparing work that can no longer be written
            raise self._error
        self._pending.put(task)

    def join(self) -> None:
        self._pending.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
