"""Orchestrators for queue contract and fault tests, loaded into Celery workers by the
``plugins`` setting (``AGENT_PLUGINS=tests.celery_jobs``).

Each leaves a trace a test can read from outside the worker process: one line
per run appended to ``<home>/runs.log`` (``job run_id attempt pid``).  ``hold``
also writes ``<home>/held/<run_id>`` with its pid, then waits until the file
``<home>/release`` exists, so a test can kill the process holding it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.envelope import make_envelope
from agent.errors import AgentCallError
from agent.registry import Registry
from agent.settings import get_settings


class _Traced:
    name = ""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)

    def trace(self, run_id: str) -> None:
        with open(self.home / "runs.log", "a", encoding="utf-8") as log:
            log.write(f"{self.name} {run_id} {os.getpid()}\n")


class Echo(_Traced):
    name = "echo"

    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        self.trace(run_id)
        return make_envelope([dict(payload)], source="echo", run_id=run_id)


class Fail(_Traced):
    name = "fail"

    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        self.trace(run_id)
        raise AgentCallError("fail", "always fails")


class Hold(_Traced):
    name = "hold"

    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        self.trace(run_id)
        held = self.home / "held"
        held.mkdir(exist_ok=True)
        (held / run_id).write_text(str(os.getpid()))
        release = self.home / "release"
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # the job's own work: waiting for the test to let it go
        return make_envelope([dict(payload)], source="hold", run_id=run_id)


def register(registry: Registry, home: Path | None = None) -> None:
    home = Path(home or get_settings().home)
    registry.register("test_echo", Echo(home), kind="orchestrator", replace=True)
    registry.register("test_fail", Fail(home), kind="orchestrator", replace=True)
    registry.register("test_hold", Hold(home), kind="orchestrator", replace=True)
