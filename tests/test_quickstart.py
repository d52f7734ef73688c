"""The quick start on a fresh install, no services, no keys: the DESIGN.md snippet runs verbatim, and
`agent demo` (what `make demo` runs) delivers its sample campaign into the local outbox once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

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
            companies = json.loads(proc.stdout.strip().splitlines()[-1])
            self.assertTrue(companies)
            self.assertEqual(companies[0], "Acme Corp")
            self.assertTrue(all("acme" in c.lower() for c in companies))
            # the embedded default is a SQLite file in the per-user data directory
            self.assertTrue(os.path.isfile(os.path.join(home, "agent", "agent.db")))


class DemoTest(unittest.TestCase):
    """`agent demo` (what `make demo` runs): the sample campaign through the queue into the local outbox."""

    @classmethod
    def setUpClass(cls) -> None:
        # Given: a fresh data directory, no AGENT_* configuration, and the demo run twice, then once as JSON
        cls.home = tempfile.mkdtemp(prefix="agent-demo-")
        cls.outbox = Path(cls.home, "outbox")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(AGENT_HOME=cls.home, COLUMNS="200")

        def demo(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "agent.cli", "demo", *args], env=env, cwd=cls.home,
                                  capture_output=True, text=True, timeout=120)

        cls.first = demo()
        cls.files_after_first = sorted(cls.outbox.glob("*.eml"))
        cls.second = demo()
        cls.files_after_second = sorted(cls.outbox.glob("*.eml"))
        cls.as_json = demo("--json")

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.home, ignore_errors=True)

    def test_the_first_run_delivers_the_sample_campaign_into_the_outbox_only_and_says_so(self) -> None:
        # When: the first run (setUpClass)
        out = self.first.stdout
        # Then: it succeeded, the sample campaign's 40 leads got one .eml file each, in 4 batches
        self.assertEqual(self.first.returncode, 0, self.first.stderr)
        self.assertEqual(len(self.files_after_first), 40)
        self.assertIn("demo-fintech", out)
        self.assertIn("succeeded 4", out)
        self.assertIn("sent 40", out)
        # And the output names the embedded defaults and says nothing leaves the machine
        self.assertIn(f"sqlite:///{self.home}/agent.db", out)
        self.assertIn(f"Delivery writes .eml files into {self.outbox}; nothing leaves this machine.", out)
        # And the gate: one batch with allow_delivery off wrote nothing
        self.assertIn("allow_delivery off (the default)", out)
        self.assertIn("skipped 10", out)
        self.assertIn("delivery_disabled", out)
        self.assertIn(".eml files written: 0", out)

    def test_the_first_run_traces_its_first_message_back_to_a_lead_row(self) -> None:
        # Given: the first message as the JSON run reports it
        first = json.loads(self.as_json.stdout)["first_message"]
        message_id = first["message"]["message_id"]
        # Then: the text output traces that message through its draft to a contacts row
        out = self.first.stdout
        self.assertIn(f"message {message_id}", out)
        self.assertIn("← channel", out)
        self.assertIn("← draft", out)
        self.assertRegex(out, r"← load [0-9a-f]{12}…  lead row contacts/\d+: ")
        self.assertIn(f"agent trace '{message_id}'", out)
        # And that message is a file in the outbox
        eml = Path(first["location"])
        self.assertEqual(eml.parent, self.outbox)
        self.assertIn(f"Message-ID: {message_id}", eml.read_text(encoding="utf-8"))

    def test_a_second_run_sends_nothing_twice_and_says_why(self) -> None:
        # When: the second run (setUpClass) of the same campaign run
        out = self.second.stdout
        # Then: it succeeded quietly, and not one file was added to the outbox
        self.assertEqual(self.second.returncode, 0, self.second.stderr)
        self.assertEqual(self.second.stderr, "")
        self.assertEqual(self.files_after_second, self.files_after_first)
        # And it says the messages were already delivered, with the same report as the first run
        self.assertIn("Already delivered in an earlier run: nothing sent twice, 0 new .eml files.", out)
        self.assertIn("stopped a second copy", out)
        self.assertIn("succeeded 4", out)
        self.assertIn("sent 40", out)

    def test_json_prints_the_report_and_the_lineage_for_scripts(self) -> None:
        # When: `agent demo --json` runs after the two text runs
        self.assertEqual(self.as_json.returncode, 0, self.as_json.stderr)
        data = json.loads(self.as_json.stdout)
        # Then: the defaults, the gate, the campaign report and the outbox counts are there
        self.assertEqual(data["defaults"]["outbox"], str(self.outbox))
        self.assertEqual(data["campaign"]["id"], "demo-fintech")
        self.assertEqual((data["gate"]["messages"], data["gate"]["reasons"], data["gate"]["eml_written"]),
                         ({"skipped": 10}, {"delivery_disabled": 10}, 0))
        report = data["report"]
        self.assertEqual((report["run"], report["batches"], report["leads"]), ("demo", 4, 40))
        self.assertEqual((report["batch_states"], report["messages"]), ({"succeeded": 4}, {"sent": 40}))
        self.assertTrue(report["finished_before"])
        self.assertEqual(data["outbox_files"], {"before": 40, "after": 40, "new": 0})
        # And the first message's lineage runs channel → draft → load, ending at a contacts row
        lineage = data["first_message"]["lineage"]
        self.assertEqual([link["node"] for link in lineage], ["channel", "draft", "load"])
        self.assertRegex(lineage[-1]["record"]["provenance"]["source_id"], r"^contacts/\d+$")
