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


def _home() -> Path:
    return Path(get_settings().home)


def _trace(name: str, run_id: str) -> None:
    with open(_home() / "runs.log", "a", encoding="utf-8") as log:
        log.write(f"{name} {run_id} {os.getpid()}\n")


class Echo:
    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        _trace("echo", run_id)
        return make_envelope([dict(payload)], source="echo", run_id=run_id)


class Fail:
    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        _trace("fail", run_id)
        raise AgentCallError("fail", "always fails")


class Hold:
    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        _trace("hold", run_id)
        held = _home() / "held"
        held.mkdir(exist_ok=True)
        (held / run_id).write_text(str(os.getpid()))
        release = _home() / "release"
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # the job's own work: waiting for the test to let it go
        return make_envelope([dict(payload)], source="hold", run_id=run_id)


def register(registry: Registry) -> None:
    registry.register("test_echo", Echo(), kind="orchestrator", replace=True)
    registry.register("test_fail", Fail(), kind="orchestrator", replace=True)
    registry.register("test_hold", Hold(), kind="orchestrator", replace=True)
