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
        # The hashing embedder: each subprocess would otherwise load the semantic model.
        cls.env.update(AGENT_HOME=cls.home, COLUMNS="160", AGENT_EMBEDDER="hashing")

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.home, ignore_errors=True)

    def agent(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=120)

    def write_csv(self, name: str, text: str) -> Path:
        path = Path(self.home, name)
        path.write_text(text, encoding="utf-8")
        return path

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

    def test_schema_envelope_prints_json_schema(self) -> None:
        proc = self.agent("schema", "envelope")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("records", json.loads(proc.stdout)["properties"])

    def test_a_lead_whose_title_looks_like_markup_is_shown_as_typed_in_search(self) -> None:
        # Given: an imported lead whose title is a stray closing tag
        csv = self.write_csv("markup-title.csv", "email,first_name,last_name,title,company\n"
                                                 "zed@bracketworks.example,Zed,Bracket,[/b]CTO,Bracketworks\n")
        self.assertEqual(self.agent("leads", "import", str(csv)).returncode, 0)
        # When
        proc = self.agent("leads", "search", "--company", "Bracketworks")
        # Then
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("[/b]CTO", proc.stdout)

    def test_import_embeds_new_and_changed_leads_and_nothing_else(self) -> None:
        # Given two leads imported
        csv = self.write_csv("index.csv", "email,first_name,title,company\n"
                                          "ia@indexco.example,Ia,CTO,Indexco\nib@indexco.example,Ib,CFO,Indexco\n")
        first = json.loads(self.agent("leads", "import", "--json", str(csv)).stdout)
        # When one of them changes title and the file is imported again
        csv.write_text("email,first_name,title,company\nia@indexco.example,Ia,CEO,Indexco\n"
                       "ib@indexco.example,Ib,CFO,Indexco\n", encoding="utf-8")
        second = json.loads(self.agent("leads", "import", "--json", str(csv)).stdout)
        again = self.agent("leads", "import", str(csv))
        # Then the first import embedded its leads, the second only the changed one, the third nothing
        self.assertEqual(first["indexed"]["embedder"], "hashing-v1")
        self.assertGreaterEqual(first["indexed"]["embedded"], 2)
        self.assertEqual((second["indexed"]["embedded"], second["updated"]), (1, 1))
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertNotIn("semantic index", again.stdout)

    def test_import_prints_ignored_column_names_that_look_like_markup(self) -> None:
        # Given: a CSV with a column the importer does not know, named like a tag
        csv = self.write_csv("markup-column.csv", "email,[weird/]\nyan@bracketworks.example,x\n")
        # When
        proc = self.agent("leads", "import", str(csv))
        # Then
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("ignored columns: [weird/]", proc.stdout)

    def test_missing_file_whose_name_looks_like_markup_is_a_one_line_error_and_exits_2(self) -> None:
        # Given: a path with a closing tag in it that does not exist
        missing = str(Path(self.home, "[/bold].csv"))
        # When
        proc = self.agent("leads", "import", missing)
        # Then
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertEqual(proc.stderr.strip().splitlines(), [f"error: file: no such file: {missing}"])

    def test_bad_log_level_is_a_one_line_configuration_error_naming_it_and_exits_1(self) -> None:
        # When
        proc = self.agent("schema", "envelope", AGENT_LOG_LEVEL="verbose")
        # Then
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("error: setting log_level:"), lines[0])

    def test_lower_case_log_level_is_accepted(self) -> None:
        # When
        proc = self.agent("schema", "envelope", AGENT_LOG_LEVEL="info")
        # Then
        self.assertEqual(proc.returncode, 0, proc.stderr)
