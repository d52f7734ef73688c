"""``agent flow list|show``: the orchestrators' flows, as a user sees them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from agent.engine import Flow, FlowGraph
from agent.high_level_agents.orchestrators import LeadOrchestrator


class FlowCliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.home = tempfile.mkdtemp(prefix="agent-cli-flows-")
        cls.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        cls.env.update(AGENT_HOME=cls.home, COLUMNS="160")

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.home, ignore_errors=True)

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)

    def test_flow_list_names_every_orchestrator_with_its_nodes(self) -> None:
        # Given / When
        proc = self.agent("flow", "list")
        # Then
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("lead_orchestrator", proc.stdout)
        self.assertIn("parse search_lexical search_semantic merge rank", proc.stdout)

    def test_flow_show_json_describes_nodes_and_transitions(self) -> None:
        # Given / When
        proc = self.agent("flow", "show", "delivery_orchestrator", "--json")
        # Then the routes out of prepare are the delivery switch
        self.assertEqual(proc.returncode, 0, proc.stderr)
        nodes = {n["name"]: n for n in json.loads(proc.stdout)["nodes"]}
        self.assertEqual(nodes["prepare"]["routes"], {"on": "suppression", "off": "disabled"})
        self.assertEqual(nodes["channel"]["agent"], "outbox")

    def test_flow_show_of_an_unknown_orchestrator_names_the_field_and_exits_2(self) -> None:
        # Given / When
        proc = self.agent("flow", "show", "nope")
        # Then
        self.assertEqual(proc.returncode, 2)
        self.assertIn("name: no orchestrator 'nope'", proc.stderr)


class MermaidTest(unittest.TestCase):
    def test_mermaid_draws_every_node_and_edge(self) -> None:
        # Given the lead flow
        graph: FlowGraph = LeadOrchestrator().build_flow()
        # When
        text = graph.to_mermaid()
        # Then the fan-out edge is dotted and the merge feeds rank
        self.assertTrue(text.startswith("flowchart TD"))
        self.assertIn("n_parse -.-> n_search_lexical", text)
        self.assertIn("n_merge --> n_rank", text)

    def test_mermaid_labels_route_edges_and_ends(self) -> None:
        # Given a route to the end
        graph = (Flow("r").node("a", lambda s: None).node("b", lambda s: None)
                 .route("a", lambda s: "go", {"go": "b", "stop": "__end__"}).build())
        # When / Then
        self.assertIn("n_a -- stop --> END", graph.to_mermaid())


if __name__ == "__main__":
    unittest.main()
