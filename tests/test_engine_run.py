"""Running flows with Engine.run and Engine.arun: records, provenance, routing, fan-out, retries, hooks."""

from __future__ import annotations

import threading
import unittest
from collections.abc import Callable, Mapping
from typing import Any

from agent.agents.base import BaseAgent
from agent.context import RunContext
from agent.engine import END, Engine, Flow, FlowState, Retry
from agent.envelope import make_envelope, make_provenance, record_hash
from agent.errors import AgentCallError, EnvelopeError, FlowError, LoopLimit, NotFound
from agent.registry import Registry

GUARD = 10.0  # only ever reached when the behaviour under test is broken: a failure, never a hang


class EchoAgent(BaseAgent):
    def __init__(self) -> None:
        self.calls: list[tuple[Mapping[str, Any], RunContext]] = []

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        self.calls.append((request, context))
        return make_envelope([{"asked": dict(request)}], source="echo", run_id=context.run_id,
                             node=context.node, flow=context.flow)


class Flaky:
    def __init__(self, failures: int, error: Callable[[], Exception], records: list[dict[str, Any]]) -> None:
        self.failures, self.error, self.records, self.calls = failures, error, records, 0

    def __call__(self, state: FlowState) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return list(self.records)


class EventRecorder:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.fail = fail

    def before_node(self, *, event: str, step: str, attempt: int, **kwargs: Any) -> None:
        self.events.append((event, step, attempt))
        if self.fail:
            raise RuntimeError("hook exploded")

    def after_node(self, *, event: str, step: str, attempt: int, **kwargs: Any) -> None:
        self.events.append((event, step, attempt))


def rows(*ids: int, **extra: Any) -> Callable[[FlowState], list[dict[str, Any]]]:
    return lambda state: [{"id": i, **extra} for i in ids]


def plain(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "provenance"} for r in records]


class EngineTestCase(unittest.TestCase):
    def engine(self, **kwargs: Any) -> Engine:
        engine = Engine(kwargs.pop("registry", None) or Registry(), **kwargs)
        self.addCleanup(engine.close)
        return engine

    def blocker(self) -> threading.Event:
        release = threading.Event()
        self.addCleanup(release.set)  # lets an abandoned node thread end
        return release


class SequenceTest(EngineTestCase):
    def test_records_flow_from_node_to_node(self) -> None:
        # Given
        flow = (Flow("seq").node("a", rows(1, 2))
                .node("b", lambda s: [{"id": r["id"] * 10} for r in s.records()]).then("a", "b"))
        # When
        result = self.engine().run(flow)
        # Then
        self.assertEqual((result.status, plain(result.envelope["records"])), ("succeeded", [{"id": 10}, {"id": 20}]))

    def test_new_records_get_the_run_id_the_node_and_their_content_hash(self) -> None:
        # Given
        flow = Flow("seq").node("a", rows(1))
        # When
        [record] = self.engine().run(flow, run_id="run-1").envelope["records"]
        # Then
        prov = record["provenance"]
        self.assertEqual((prov["run_id"], prov["node"], prov["hash"]), ("run-1", "a", record_hash(record)))

    def test_parents_are_the_hashes_of_every_record_of_the_previous_node(self) -> None:
        # Given
        flow = Flow("seq").node("a", rows(1, 2)).node("b", lambda s: [{"total": 2}]).then("a", "b")
        # When
        result = self.engine().run(flow)
        # Then
        upstream = [r["provenance"]["hash"] for r in result.state.records("a")]
        self.assertEqual(result.envelope["records"][0]["provenance"]["parents"], upstream)

    def test_lineage_by_field_links_only_records_with_the_same_value(self) -> None:
        # Given
        flow = (Flow("seq").node("a", rows(1, 2))
                .node("b", lambda s: [{"id": 2, "note": "x"}], lineage="id").then("a", "b"))
        # When
        result = self.engine().run(flow)
        # Then
        [second] = [r["provenance"]["hash"] for r in result.state.records("a") if r["id"] == 2]
        self.assertEqual(result.envelope["records"][0]["provenance"]["parents"], [second])

    def test_lineage_none_gives_no_parents(self) -> None:
        # Given
        flow = Flow("seq").node("a", rows(1)).node("b", rows(5), lineage=None).then("a", "b")
        # When
        result = self.engine().run(flow)
        # Then
        self.assertEqual(result.envelope["records"][0]["provenance"]["parents"], [])

    def test_a_record_passed_through_unchanged_keeps_its_provenance(self) -> None:
        # Given
        flow = Flow("seq").node("a", rows(1)).node("b", lambda s: s.records()).then("a", "b")
        # When
        result = self.engine().run(flow)
        # Then
        self.assertEqual(result.envelope["records"][0]["provenance"], result.state.records("a")[0]["provenance"])

    def test_an_edited_record_gets_a_new_hash_this_node_and_its_old_hash_as_parent(self) -> None:
        # Given
        flow = (Flow("seq").node("a", rows(1))
                .node("b", lambda s: [{**r, "score": 9} for r in s.records()]).then("a", "b"))
        # When
        result = self.engine().run(flow)
        # Then
        [edited], [old] = result.envelope["records"], result.state.records("a")
        prov = edited["provenance"]
        self.assertEqual((prov["hash"], prov["node"], prov["parents"]),
                         (record_hash(edited), "b", [old["provenance"]["hash"]]))


class RoutingTest(EngineTestCase):
    def test_the_router_picks_the_next_node(self) -> None:
        # Given
        flow = (Flow("route").node("a", rows(50)).node("big", rows(1)).node("small", rows(2))
                .route("a", lambda s: "big" if s.records()[0]["id"] > 10 else "small",
                       {"big": "big", "small": "small"}))
        # When
        result = self.engine().run(flow)
        # Then
        self.assertEqual(result.executed, ("a", "big"))

    def test_a_bounded_loop_numbers_its_repeated_steps(self) -> None:
        # Given: b sends the run back to a twice, then ends it
        laps: list[int] = []
        flow = (Flow("loop").node("a", rows(1), max_visits=3).node("b", rows(2)).then("a", "b")
                .route("b", lambda s: "again" if laps.append(1) or len(laps) < 3 else "done",
                       {"again": "a", "done": END}))
        # When
        result = self.engine().run(flow)
        # Then
        self.assertEqual(result.executed, ("a", "b", "a@2", "b@2", "a@3", "b@3"))

    def test_visiting_a_node_past_max_visits_raises_loop_limit(self) -> None:
        # Given
        flow = (Flow("loop").node("a", rows(1), max_visits=2).node("b", rows(2)).then("a", "b")
                .route("b", lambda s: "again", {"again": "a"}))
        # When
        with self.assertRaises(LoopLimit) as caught:
            self.engine().run(flow)
        # Then
        self.assertIn("max_visits=2", str(caught.exception))


class FanOutTest(EngineTestCase):
    def partial_flow(self, allow_partial: bool) -> Flow:
        broken = Flaky(1, lambda: ValueError("index offline"), [])
        return (Flow("fan").node("src", rows(0)).node("good", rows(1)).node("bad", broken)
                .merge("merged", key="id", allow_partial=allow_partial).node("after", lambda s: s.records())
                .fan_out("src", ["good", "bad"], join="merged").then("merged", "after"))

    def test_merge_dedupes_by_key_in_declared_branch_order_not_completion_order(self) -> None:
        # Given: branch "first" waits until "second" has finished
        second_done, finished = threading.Event(), []

        def first(state: FlowState) -> list[dict[str, Any]]:
            if not second_done.wait(GUARD):
                raise RuntimeError("branch 'second' never ran alongside 'first'")
            finished.append("first")
            return [{"id": 1, "by": "first"}, {"id": 2, "by": "first"}]

        def second(state: FlowState) -> list[dict[str, Any]]:
            finished.append("second")
            second_done.set()
            return [{"id": 2, "by": "second"}, {"id": 3, "by": "second"}]

        flow = (Flow("fan").node("src", rows(0)).node("first", first).node("second", second)
                .merge("merged", key="id").fan_out("src", ["first", "second"], join="merged"))
        # When
        result = self.engine().run(flow)
        # Then: "first" finished last, yet its records come first and its id 2 wins
        self.assertEqual(finished, ["second", "first"])
        self.assertEqual(plain(result.envelope["records"]),
                         [{"id": 1, "by": "first"}, {"id": 2, "by": "first"}, {"id": 3, "by": "second"}])

    def test_a_failed_branch_with_allow_partial_is_reported_in_the_merge(self) -> None:
        # Given
        flow = self.partial_flow(allow_partial=True)
        # When
        result = self.engine().run(flow)
        # Then
        meta = result.state["merged"]["metadata"]
        self.assertTrue(meta["partial"])
        self.assertEqual([(e["node"], e["code"]) for e in meta["errors"]], [("bad", "agent_call_failed")])

    def test_a_failed_branch_without_allow_partial_fails_the_run(self) -> None:
        # Given
        flow = self.partial_flow(allow_partial=False)
        # When
        with self.assertRaises(AgentCallError) as caught:
            self.engine().run(flow)
        # Then
        self.assertIn("index offline", str(caught.exception))

    def test_the_final_envelope_of_a_later_node_inherits_partial(self) -> None:
        # Given
        flow = self.partial_flow(allow_partial=True)
        # When
        result = self.engine().run(flow)
        # Then
        meta = result.envelope["metadata"]
        self.assertEqual((meta["node"], meta["partial"], [e["node"] for e in meta["errors"]]), ("after", True, ["bad"]))


class MapNodeTest(EngineTestCase):
    def test_a_map_node_calls_once_per_item_and_keeps_the_item_order(self) -> None:
        # Given: item 0 finishes last, after item 3
        last_done, calls = threading.Event(), []

        def enrich(item: dict[str, Any], state: FlowState) -> list[dict[str, Any]]:
            calls.append(item["id"])
            if item["id"] == 0 and not last_done.wait(GUARD):
                raise RuntimeError("items did not run concurrently")
            if item["id"] == 3:
                last_done.set()
            return [{"id": item["id"], "seen": True}]

        flow = Flow("map").node("m", enrich, each=lambda s: [{"id": i} for i in range(4)], key="id", concurrency=4)
        # When
        result = self.engine().run(flow)
        # Then
        self.assertEqual(sorted(calls), [0, 1, 2, 3])
        self.assertEqual([r["id"] for r in result.envelope["records"]], [0, 1, 2, 3])

    def test_failed_items_with_allow_partial_are_reported_with_their_key(self) -> None:
        # Given
        def enrich(item: dict[str, Any], state: FlowState) -> list[dict[str, Any]]:
            if item["id"] == "b":
                raise ValueError("no such company")
            return [dict(item)]

        flow = Flow("map").node("m", enrich, each=lambda s: [{"id": "a"}, {"id": "b"}], key="id", allow_partial=True)
        # When
        meta = self.engine().run(flow).envelope["metadata"]
        # Then
        self.assertTrue(meta["partial"])
        self.assertEqual([(e["node"], e["item"]) for e in meta["errors"]], [("m", "b")])

    def test_two_items_with_the_same_key_raise_flow_error(self) -> None:
        # Given
        flow = Flow("map").node("m", lambda item, s: [item], each=lambda s: [{"id": 1}, {"id": 1}], key="id")
        # When
        with self.assertRaises(FlowError) as caught:
            self.engine().run(flow)
        # Then
        self.assertEqual(caught.exception.field, "m")


class MalformedOutputTest(EngineTestCase):
    def assertFailsWith(self, out: Any, field: str) -> None:
        with self.assertRaises(EnvelopeError) as caught:
            self.engine().run(Flow("bad").node("a", lambda s: out))
        self.assertEqual(caught.exception.field, field)

    def test_a_tampered_provenance_hash_names_the_hash(self) -> None:
        # Given
        envelope = make_envelope([{"id": 1}], source="test")
        envelope["records"][0]["provenance"]["hash"] = "0" * 64
        # When / Then
        self.assertFailsWith(envelope, "records[0].provenance.hash")

    def test_a_record_that_is_not_an_object_names_the_record(self) -> None:
        # Given / When / Then
        self.assertFailsWith([{"id": 1}, "oops"], "records[1]")

    def test_a_return_value_that_is_no_envelope_names_the_envelope(self) -> None:
        # Given / When / Then
        self.assertFailsWith(42, "envelope")


class AgentNodeTest(EngineTestCase):
    def test_an_agent_node_calls_the_registered_agent_with_the_built_request(self) -> None:
        # Given
        registry, agent = Registry(), EchoAgent()
        registry.register("echo", agent)
        flow = Flow("ask").node("lookup", agent="echo", request=lambda s: {"q": s.input["term"]})
        # When
        result = self.engine(registry=registry).run(flow, {"term": "acme"})
        # Then
        [(request, context)] = agent.calls
        self.assertEqual((request, context.node, context.run_id), ({"q": "acme"}, "lookup", result.run_id))
        self.assertEqual(result.envelope["records"][0]["asked"], {"q": "acme"})

    def test_an_agents_derived_records_get_parents_and_stored_rows_stay_origins(self) -> None:
        # Given an agent answering with one derived record and one stored row
        class Mixed(BaseAgent):
            def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
                row = {"id": 7}
                row["provenance"] = make_provenance(row, source="db", source_id="contacts/7")
                return make_envelope([{"summary": "x"}, row], source="mixed", run_id=context.run_id)

        registry = Registry()
        registry.register("mixed", Mixed())
        flow = Flow("mix").node("read", rows(1, 2)).node("ask", agent="mixed").then("read", "ask")
        # When
        result = self.engine(registry=registry).run(flow)
        # Then the derived record's parents are what the node read; the row names no parent
        read = [r["provenance"]["hash"] for r in result.state.records("read")]
        derived, stored = result.envelope["records"]
        self.assertEqual((derived["provenance"]["parents"], stored["provenance"]["parents"]), (read, []))

    def test_an_unknown_agent_raises_not_found_before_any_node_runs(self) -> None:
        # Given
        first = Flaky(0, ValueError, [{"id": 1}])
        flow = Flow("ask").node("first", first).node("lookup", agent="nobody").then("first", "lookup")
        # When
        with self.assertRaises(NotFound):
            self.engine().run(flow)
        # Then
        self.assertEqual(first.calls, 0)


class RetryTest(EngineTestCase):
    RETRY = Retry(max_attempts=3, base=1, multiplier=2, jitter=0)

    def run_flaky(self, node: Flaky, retry: Retry = RETRY) -> tuple[list[float], Any]:
        delays: list[float] = []
        engine = self.engine(sleep=delays.append, rng=lambda: 0.5)
        try:
            return delays, engine.run(Flow("retry").node("a", node, retry=retry))
        except Exception as exc:
            return delays, exc

    def test_a_node_failing_twice_then_succeeding_sleeps_the_backoff_schedule(self) -> None:
        for error in (lambda: AgentCallError("crm", "down"), ConnectionError):
            with self.subTest(error=error):
                # Given
                node = Flaky(2, error, [{"id": 1}])
                # When
                delays, result = self.run_flaky(node)
                # Then
                self.assertEqual((delays, plain(result.envelope["records"])), ([1.0, 2.0], [{"id": 1}]))

    def test_an_error_not_in_retry_on_is_not_retried(self) -> None:
        # Given
        node = Flaky(1, ValueError, [{"id": 1}])
        # When
        delays, error = self.run_flaky(node)
        # Then
        self.assertEqual((node.calls, delays, type(error)), (1, [], AgentCallError))

    def test_after_max_attempts_the_translated_error_is_raised_with_its_cause(self) -> None:
        # Given
        node = Flaky(5, lambda: ConnectionError("reset"), [])
        # When
        delays, error = self.run_flaky(node)
        # Then
        self.assertEqual((node.calls, len(delays)), (3, 2))
        self.assertIsInstance(error, AgentCallError)
        self.assertIsInstance(error.__cause__, ConnectionError)


if __name__ == "__main__":
    unittest.main()
