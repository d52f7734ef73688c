"""The checkpoint store contract: runs, their completed steps, and pruning.

A step is saved once its envelope is valid, under a stable key (the node's
name, plus ``[item]`` for a map item and ``@visit`` for a loop's later
visits), so a resumed run finds what is done whatever order it finished in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from agent.storage.times import as_utc, utc_clock

__all__ = ["CheckpointStore", "CheckpointRun", "RunStatus", "as_utc", "utc_clock"]

RunStatus = Literal["running", "paused", "succeeded", "failed"]


@dataclass(frozen=True)
class CheckpointRun:
    run_id: str
    flow: str
    status: RunStatus
    input_hash: str
    input: Any = None
    has_input: bool = False
    waiting_for: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class CheckpointStore:
    """Where the engine keeps each completed step's envelope.  Thread-safe."""

    def begin(self, run_id: str, flow: str, *, input_hash: str,
              input_json: str | None) -> tuple[CheckpointRun, bool]:
        """``(run, created)``: the run, created as ``running`` if new, else as stored."""
        raise NotImplementedError

    def get_run(self, run_id: str) -> CheckpointRun | None:
        raise NotImplementedError

    def load(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Every saved step of ``run_id``: step key -> envelope."""
        raise NotImplementedError

    def save(self, run_id: str, step: str, envelope: dict[str, Any]) -> None:
        """Keep ``envelope`` as step ``step`` of ``run_id``; saving a step again keeps the first."""
        raise NotImplementedError

    def set_status(self, run_id: str, status: RunStatus, *, waiting_for: str | None = None) -> None:
        raise NotImplementedError

    def claim(self, run_id: str, *, status: RunStatus, waiting_for: str | None = None) -> bool:
        """Atomically set the run ``running`` if it is in ``status`` (and waits at ``waiting_for``,
        when given); False if another caller got there first or the run is elsewhere."""
        raise NotImplementedError

    def delete(self, run_id: str) -> None:
        raise NotImplementedError

    def prune(self, *, older_than: timedelta, now: datetime | None = None,
              statuses: tuple[RunStatus, ...] = ("succeeded", "failed")) -> int:
        """Delete runs in ``statuses`` not updated for ``older_than``; returns how many."""
        raise NotImplementedError
