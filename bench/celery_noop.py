"""The no-op orchestrator ``bench/celery_path.py`` runs through ``agent worker``, loaded by the
``plugins`` setting (``AGENT_PLUGINS=bench.celery_noop``).

``bench_noop`` returns an envelope built once, so a job's cost is the queue's
and the worker's own: ledger claim and finish, audit, envelope validation.

Profiling: with ``AGENT_BENCH_PROFILE=<dir>`` each worker process that loads
this module (after Celery forked it: on its first job) runs under cProfile
from then on, and every ``AGENT_BENCH_PROFILE_EVERY`` jobs (default 250)
writes its stats to ``<dir>/worker-<pid>.prof`` with the number of jobs it ran
so far in ``<dir>/worker-<pid>.jobs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.envelope import make_envelope
from agent.registry import Registry

NAME = "bench_noop"

class NoOp:
    """An orchestrator that does nothing: its envelope is built once."""

    def __init__(self) -> None:
        self.envelope = make_envelope([], source="noop", run_id="bench")
        self.runs = 0
        self._profile: Any = None
        self._every = int(os.environ.get("AGENT_BENCH_PROFILE_EVERY", "250"))
        self._out: Path | None = None
        where = os.environ.get("AGENT_BENCH_PROFILE")
        if where:
            import cProfile

            self._out = Path(where)
            self._out.mkdir(parents=True, exist_ok=True)
            self._profile = cProfile.Profile()
            self._profile.enable()

    def run(self, payload: dict, *, run_id: str) -> dict:
        self.runs += 1
        if self._profile is not None and self.runs % self._every == 0:
            self._dump()
        return self.envelope

    def _dump(self) -> None:
        assert self._out is not None
        self._profile.disable()
        stem = self._out / f"worker-{os.getpid()}"
        self._profile.dump_stats(f"{stem}.prof")
        Path(f"{stem}.jobs").write_text(str(self.runs))
        self._profile.enable()


def register(registry: Registry) -> None:
    registry.register(NAME, NoOp(), kind="orchestrator", replace=True)
