"""The domain orchestrators run as engine flows: their shape, fan-out, partial results and limits."""

from __future__ import annotations

import asyncio
import threading
import unittest
from collections.abc import Mapping
from typing import Any, ClassVar

from agent.agents.base import BaseAgent
from agent.builtins import register_builtins
from agent.context import RunContext
from agent.dispatch import Dispatcher
from agent.engine import NodeHooks
from agent.envelope import make_envelope, make_provenance
from agent.errors import AgentCallError
from agent.high_level_agents.orchestrators import DeliveryOrchestrator, LeadOrchestrator
from agent.high_level_agents.orchestrators.lead import reciprocal_rank_fusion
from agent.leads.sample import load_sample_data
from agent.registry import Registry
from tests.support import TempHome


class BrokenSearch(BaseAgent):
    """A search strategy whose backend is down."""

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        raise ConnectionError("vector index unreachable")


class FixedSearch(BaseAgent):
    """A search strategy that returns the given lead ids, in that order."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        records = []
        for lead_id in self.ids:
            record = {"lead_id": lead_id, "company": f"Company {lead_id}"}
            record["provenance"] = make_provenance(record, source="fixed", run_id=context.run_id, node=context.node)
            records.append(record)
        return make_envelope(records, source="fixed", run_id=context.run_id, node=context.node,
                             strategies=["fixed"])


class Recorder(NodeHooks):
    def __init__(self) -> None:
        self.ends: list[str] = []
        self.lock = threading.Lock()

    def after_node(self, *, node: str, event: str, **kwargs: Any) -> None:
        with self.lock:
            self.ends.append(f"{event}:{node}")


class Home(unittest.TestCase):
    home: TempHome

    @classmethod
    def setUpClass(cls) -> None:
        cls.home = TempHome()
        load_sample_data(cls.home.database(), size=300, tenant="default")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.home.cleanup()

    def registry(self, **agents: Any) -> Registry:
        registry = register_builtins(Registry())
        for name, agent in agents.items():
            registry.register(name, agent)
        return registry


class LeadFlowTest(Home):
    def test_the_lead_flow_parses_then_searches_then_merges_then_ranks(self) -> None:
        # Given a lead orchestrator whose engine reports every node
        hooks = Recorder()
        orch = LeadOrchestrator(self.registry(), settings=self.home.settings)
        orch.engine.hooks = (hooks,)
        # When it searches
        env = orch.run({"lead_query": {"company": "Acme Corp"}})
        # Then the nodes ran in the flow's order and the answer comes from the rank node
        self.assertEqual(hooks.ends, ["node_end:parse", "node_end:search_lexical", "node_end:merge",
                                      "node_end:rank"])
        self.assertEqual(env["metadata"]["node"], "rank")
        self.assertEqual(env["records"][0]["company"], "Acme Corp")

    def test_records_keep_the_provenance_of_the_row_they_came_from(self) -> None:
        # Given / When
        env = LeadOrchestrator(self.registry(), settings=self.home.settings).run(
            {"lead_query": {"text": "Acme", "search": "lexical"}})
        # Then each record still names its table row, the search node and the run
        prov = env["records"][0]["provenance"]
        self.assertTrue(prov["source_id"].startswith("contacts/"))
        self.assertEqual((prov["node"], prov["run_id"]), ("search_lexical", env["metadata"]["run_id"]))

    def test_a_failing_strategy_leaves_the_others_results_marked_partial(self) -> None:
        # Given a second strategy whose backend is down
        class TwoStrategies(LeadOrchestrator):
            strategies: ClassVar[Mapping[str, str]] = {"lexical": "lead_search", "semantic": "broken_search"}

        orch = TwoStrategies(self.registry(broken_search=BrokenSearch()), settings=self.home.settings)
        # When it searches
        env = orch.run({"lead_query": {"company": "Acme Corp"}})
        # Then the lexical results come back, flagged partial, with the failed branch named
        self.assertTrue(env["metadata"]["partial"])
        self.assertEqual([e["node"] for e in env["metadata"]["errors"]], ["search_semantic"])
        self.assertEqual(env["records"][0]["company"], "Acme Corp")

    def test_a_single_failing_strategy_fails_the_run(self) -> None:
        # Given the only strategy is down
        class OnlyBroken(LeadOrchestrator):
            strategies: ClassVar[Mapping[str, str]] = {"semantic": "broken_search"}

        orch = OnlyBroken(self.registry(broken_search=BrokenSearch()), settings=self.home.settings)
        # When / Then the run fails with the project's error, not a bare ConnectionError
        with self.assertRaises(AgentCallError):
            orch.run({"lead_query": {"company": "Acme"}})

    def test_two_strategies_are_fused_by_reciprocal_rank(self) -> None:
        # Given two strategies that agree on lead 2 and disagree on the rest
        class Fused(LeadOrchestrator):
            strategies: ClassVar[Mapping[str, str]] = {"a": "search_a", "b": "search_b"}

        registry = self.registry(search_a=FixedSearch([1, 2, 3]), search_b=FixedSearch([2, 4]))
        # When
        env = Fused(registry, settings=self.home.settings).run({"lead_query": {"company": "x"}})
        # Then the lead both found ranks first, each lead appears once, with its fused score
        self.assertEqual([r["lead_id"] for r in env["records"]], [2, 1, 4, 3])
        self.assertEqual(env["metadata"]["total_count"], 4)
        self.assertAlmostEqual(env["records"][0]["match"]["fused_score"], 1 / 62 + 1 / 61, places=6)
        self.assertEqual(env["records"][0]["match"]["strategies"], ["a", "b"])

    def test_a_fused_record_derives_from_the_strategy_record(self) -> None:
        # Given two strategies
        class Fused(LeadOrchestrator):
            strategies: ClassVar[Mapping[str, str]] = {"a": "search_a", "b": "search_b"}

        registry = self.registry(search_a=FixedSearch([7]), search_b=FixedSearch([8]))
        # When the rank node adds a fused score
        env = Fused(registry, settings=self.home.settings).run({"lead_query": {"company": "x"}})
        # Then the changed record names the rank node and has the strategy's record as parent
        record = env["records"][0]
        original = {"lead_id": 7, "company": "Company 7"}
        self.assertEqual(record["provenance"]["node"], "rank")
        self.assertEqual(record["provenance"]["parents"], [make_provenance(original, source="x")["hash"]])

    def test_reciprocal_rank_fusion_breaks_ties_by_first_appearance(self) -> None:
        # Given two rankings that are mirror images
        fused = reciprocal_rank_fusion({"a": [{"lead_id": 1}, {"lead_id": 2}], "b": [{"lead_id": 2}, {"lead_id": 1}]})
        # Then equal scores keep the order in which leads were first seen
        self.assertEqual([r["lead_id"] for _, r in fused], [1, 2])

    def test_arun_gives_the_same_leads_as_run(self) -> None:
        # Given
        orch = LeadOrchestrator(self.registry(), settings=self.home.settings)
        # When
        sync = orch.run({"lead_query": {"company": "Acme Corp"}})
        concurrent = asyncio.run(orch.arun({"lead_query": {"company": "Acme Corp"}}))
        # Then
        self.assertEqual([r["lead_id"] for r in sync["records"]], [r["lead_id"] for r in concurrent["records"]])


class DeliveryFlowTest(Home):
    def message(self, to: str = "ada@example.com") -> dict[str, Any]:
        return {"to": to, "subject": "Hello", "body": "Hi there", "lead_id": "1", "campaign_id": "c1"}

    def test_delivery_off_takes_the_disabled_branch_and_writes_nothing(self) -> None:
        # Given delivery left off
        orch = DeliveryOrchestrator(self.registry(), settings=self.home.settings)
        # When
        env = orch.run({"records": [self.message()]})
        # Then the flow ended in the disabled node, every message skipped
        self.assertEqual(env["metadata"]["node"], "disabled")
        self.assertEqual([r["reason"] for r in env["records"]], ["delivery_disabled"])
        self.assertFalse(self.home.settings.outbox_dir.exists() and any(self.home.settings.outbox_dir.iterdir()))

    def test_delivery_on_goes_through_the_gate_and_the_channel(self) -> None:
        # Given delivery on, and an engine that reports its nodes
        hooks = Recorder()
        orch = DeliveryOrchestrator(self.registry(), settings=self.home.settings)
        orch.engine.hooks = (hooks,)
        # When
        env = orch.run({"records": [self.message("grace@example.com")], "allow_delivery": True})
        # Then prepare, suppression, channel and deliver ran, and the message was written
        self.assertEqual(hooks.ends, ["node_end:prepare", "node_end:suppression", "node_end:channel",
                                      "node_end:deliver"])
        self.assertEqual(env["records"][0]["status"], "sent")

    def test_the_channel_is_called_under_the_dispatchers_limits(self) -> None:
        # Given a dispatcher that watches the outbox channel
        seen: list[str] = []
        dispatcher = Dispatcher({"outbox": {"concurrency": 1}},
                                observer=lambda event, agent, **_: seen.append(f"{event}:{agent}"))
        orch = DeliveryOrchestrator(self.registry(), settings=self.home.settings, dispatcher=dispatcher)
        # When a message is delivered
        orch.run({"records": [self.message("linus@example.com")], "allow_delivery": True})
        # Then the call took and gave back a slot
        self.assertEqual(seen, ["acquired:outbox", "released:outbox"])


if __name__ == "__main__":
    unittest.main()
