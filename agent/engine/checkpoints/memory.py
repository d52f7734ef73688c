"""In-memory checkpoints: for tests and single-process resume."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from typing import Any

from agent.engine.checkpoints.base import CheckpointRun, CheckpointStore, RunStatus, utc_clock, as_utc

__all__ = ["MemoryCheckpointStore"]


class MemoryCheckpointStore(CheckpointStore):
    """Keeps runs and steps in dicts; ``clock`` is injectable for prune tests."""

    def __init__(self, *, clock: Any = None) -> None:
        self._clock = utc_clock(clock)
        self._lock = threading.Lock()
        self._runs: dict[str, CheckpointRun] = {}
        self._steps: dict[str, dict[str, dict[str, Any]]] = {}

    def begin(self, run_id: str, flow: str, *, input_hash: str,
              input_json: str | None) -> tuple[CheckpointRun, bool]:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                return run, False
            if run is None:
                now = self._clock()
                run = CheckpointRun(run_id, flow, "running", input_hash,
                                    json.loads(input_json) if input_json is not None else None,
                                    input_json is not None, None, now, now)
                self._runs[run_id] = run
                self._steps[run_id] = {}
            return run, True

    def get_run(self, run_id: str) -> CheckpointRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def load(self, run_id: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._steps.get(run_id, {}))

    def save(self, run_id: str, step: str, envelope: dict[str, Any]) -> None:
        with self._lock:
            # A JSON copy: later edits to the caller's dict never reach the checkpoint, and what
            # comes back is what a SQL store would give back.
            self._steps.setdefault(run_id, {}).setdefault(step, json.loads(json.dumps(envelope)))

    def set_status(self, run_id: str, status: RunStatus, *, waiting_for: str | None = None) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                self._runs[run_id] = CheckpointRun(
                    run.run_id, run.flow, status, run.input_hash, run.input, run.has_input,
                    waiting_for, run.created_at, self._clock())

    def claim(self, run_id: str, *, status: RunStatus, waiting_for: str | None = None) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.status != status or (waiting_for is not None and run.waiting_for != waiting_for):
                return False
            self._runs[run_id] = CheckpointRun(run.run_id, run.flow, "running", run.input_hash, run.input,
                                               run.has_input, None, run.created_at, self._clock())
            return True

    def delete(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            self._steps.pop(run_id, None)

    def prune(self, *, older_than: timedelta, now: datetime | None = None,
              statuses: tuple[RunStatus, ...] = ("succeeded", "failed")) -> int:
        cutoff = as_utc(now or self._clock()) - older_than
        with self._lock:
            old = [r.run_id for r in self._runs.values()
                   if r.status in statuses and r.updated_at is not None and r.updated_at < cutoff]
            for run_id in old:
                del self._runs[run_id]
                self._steps.pop(run_id, None)
        return len(old)
