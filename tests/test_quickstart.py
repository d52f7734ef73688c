"""The DESIGN.md quick start runs verbatim on a fresh install: no services, no keys."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

QUICK_START = textwrap.dedent(
    """
    from agent.high_level_agents.orchestrators import LeadOrchestrator, Registry

    registry = Registry()
    registry.register("lead_orchestrator", LeadOrchestrator)
    orch = registry.get("lead_orchestrator")()
    envelope = orch.run(payload={"lead_query": {"name": "Acme"}})
    assert isinstance(envelope, dict)  # {"metadata": ..., "records": [...]}
    """
)
REPORT = 'import json; print(json.dumps([r["company"] for r in envelope["records"]]))'


class QuickStartTest(unittest.TestCase):
    def test_snippet_runs_verbatim_in_a_fresh_process_and_finds_acme(self) -> None:
        # Given: an empty data directory and no AGENT_* configuration at all
        with tempfile.TemporaryDirectory() as home:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
            env["XDG_DATA_HOME"] = home
            # When
            proc = subprocess.run([sys.executable, "-c", QUICK_START + REPORT], env=env, cwd=home,
                                  capture_output=True, text=True, timeout=120)
            # Then
            self.assertEqual(proc.returncode, 0, proc.stderr)
            companies = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
            self.assertTrue(companies)
            self.assertEqual(companies[0], "Acme Corp")
            self.assertTrue(all("acme" in c.lower() for c in companies))
            # the embedded default is a SQLite file in the per-user data directory
            self.assertTrue(os.path.isfile(os.path.join(home, "agent", "agent.db")))
