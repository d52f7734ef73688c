"""The ``agent`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.home = tempfile.mkdtemp(prefix="agent-cli-")
        cls.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        cls.env.update(AGENT_HOME=cls.home, COLUMNS="160")

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.home, ignore_errors=True)

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def test_run_lead_prints_a_readable_table(self) -> None:
        proc = self.agent("run", "lead", "--name", "Acme")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("Acme Corp", proc.stdout)
        self.assertIn("matches", proc.stdout)

    def test_run_lead_json_prints_the_raw_envelope(self) -> None:
        proc = self.agent("run", "lead", "--name", "Acme", "--json")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        envelope = json.loads(proc.stdout)
        self.assertEqual(set(envelope), {"metadata", "records"})
        self.assertEqual(envelope["records"][0]["company"], "Acme Corp")

    def test_leads_search_takes_free_text(self) -> None:
        proc = self.agent("leads", "search", "leads at Acme in Berlin", "--json")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(json.loads(proc.stdout)["metadata"]["query"]["location"], "Berlin")

    def test_bad_input_prints_one_line_naming_the_field_and_exits_2(self) -> None:
        proc = self.agent("run", "lead", "--domain", "not a domain")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("lead_query.domain", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_demo_delivers_into_the_outbox_once_and_explains_it(self) -> None:
        # When: the demo runs twice
        first = self.agent("demo")
        second = self.agent("demo")
        # Then
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn("allow_delivery off", first.stdout)
        self.assertIn("delivery_disabled", first.stdout)
        self.assertIn("sent", first.stdout)
        self.assertIn("stopped a second copy", second.stdout)
        self.assertEqual(len(list(Path(self.home, "outbox").glob("*.eml"))), 5)

    def test_schema_envelope_prints_json_schema(self) -> None:
        proc = self.agent("schema", "envelope")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("records", json.loads(proc.stdout)["properties"])
