"""Engine policies in action: timeouts, hooks and logging, asyncio runs, immutable state."""

from __future__ import annotations

import asyncio
import unittest
from typing import Any

from agent.context import RunContext
from agent.engine import Flow, FlowState, Retry
from agent.envelope import make_envelope
from agent.errors import AgentCallError, NodeTimeout
from tests.test_engine_run import GUARD, EngineTestCase, EventRecorder, Flaky, plain, rows


class TimeoutTest(EngineTestCase):
    def test_a_node_running_past_its_timeout_raises_node_timeout(self) -> None:
        # Given
        release = self.blocker()
        flow = Flow("slow").node("a", lambda s: release.wait(), timeout=0.05)
        # When
        with self.assertRaises(NodeTimeout) as caught:
            self.engine().run(flow)
        # Then
        self.assertIn("'a'", str(caught.exception))

    def test_a_timed_out_node_is_retried(self) -> None:
        # Given
        release, calls = self.blocker(), []

        def slow_once(state: FlowState) -> list[dict[str, Any]]:
            calls.append(1)
            if len(calls) == 1:
                release.wait()
            return [{"id": 1}]

        delays: list[float] = []
        # (a generous timeout: only the first attempt, which never returns, is meant to reach it)
        flow = Flow("slow").node("a", slow_once, timeout=0.5, retry=Retry(max_attempts=2, base=1, jitter=0))
        # When
        result = self.engine(sleep=delays.append).run(flow)
        # Then
        self.assertEqual((len(calls), delays, plain(result.envelope["records"])), (2, [1.0], [{"id": 1}]))


class HooksAndLoggingTest(EngineTestCase):
    def flow(self) -> Flow:
        return (Flow("hooked").node("a", Flaky(1, ConnectionError, [{"id": 1}]), retry=Retry(max_attempts=2, base=0))
                .node("b", rows(2)).then("a", "b"))

    def test_hooks_hear_each_attempt_of_each_step_in_order(self) -> None:
        # Given
        hook = EventRecorder()
        # When
        self.engine(hooks=[hook], sleep=lambda s: None).run(self.flow())
        # Then
        self.assertEqual(hook.events, [("node_start", "a", 1), ("node_error", "a", 1), ("node_start", "a", 2),
                                       ("node_end", "a", 2), ("node_start", "b", 1), ("node_end", "b", 1)])

    def test_a_map_node_ends_after_its_items_with_its_whole_envelope(self) -> None:
        # Given a map node over three items
        class Ends:
            def __init__(self) -> None:
                self.ends: list[tuple[str, int]] = []

            def after_node(self, *, event: str, step: str, envelope: Any = None, **kwargs: Any) -> None:
                if event == "node_end":
                    self.ends.append((step, len(envelope["records"])))

        flow = (Flow("mapped").node("ids", rows(1, 2, 3))
                .node("each", lambda item, state: [{"id": item["id"] * 10}], each=lambda s: s.records("ids"),
                      key="id", concurrency=1)
                .then("ids", "each"))
        hook = Ends()
        # When
        self.engine(hooks=[hook]).run(flow)
        # Then each item ended, then the node with every item's record
        self.assertEqual(hook.ends, [("ids", 3), ("each[1]", 1), ("each[2]", 1), ("each[3]", 1), ("each", 3)])

    def test_a_hook_that_raises_is_logged_and_the_run_goes_on(self) -> None:
        # Given
        hook = EventRecorder(fail=True)
        # When
        with self.assertLogs("agent.engine", level="ERROR") as captured:
            result = self.engine(hooks=[hook], sleep=lambda s: None).run(self.flow())
        # Then
        self.assertEqual(plain(result.envelope["records"]), [{"id": 2}])
        self.assertIn("hook EventRecorder.before_node failed", captured.output[0])

    def test_node_start_and_end_are_logged_at_debug(self) -> None:
        # Given
        flow = Flow("logged").node("a", rows(1))
        # When
        with self.assertLogs("agent.engine", level="DEBUG") as captured:
            self.engine().run(flow)
        # Then
        self.assertEqual([line.split()[-1] for line in captured.output], ["node_start", "node_end"])

    def test_node_error_is_logged_as_a_warning(self) -> None:
        # Given
        flow = Flow("logged").node("a", Flaky(1, ValueError, []))
        # When
        with self.assertLogs("agent.engine", level="WARNING") as captured:
            with self.assertRaises(AgentCallError):
                self.engine().run(flow)
        # Then
        self.assertTrue(captured.output[0].startswith("WARNING:agent.engine:"), captured.output)
        self.assertIn("step=a attempt=1 failed", captured.output[0])


class AsyncRunTest(EngineTestCase):
    def test_arun_gives_the_same_records_as_run(self) -> None:
        # Given
        flow = (Flow("same").node("src", rows(1, 2)).node("x", lambda s: [{"id": 1, "x": 1}])
                .node("y", lambda s: [{"id": 3, "y": 1}]).merge("merged", key="id")
                .fan_out("src", ["x", "y"], join="merged"))
        # When
        synced = self.engine().run(flow).envelope["records"]
        awaited = asyncio.run(self.engine().arun(flow)).envelope["records"]
        # Then
        def lineage(records: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
            return [(r["provenance"]["hash"], r["provenance"]["node"], r["provenance"]["parents"]) for r in records]

        self.assertEqual(plain(awaited), [{"id": 1, "x": 1}, {"id": 3, "y": 1}])
        self.assertEqual(lineage(awaited), lineage(synced))

    def test_async_nodes_are_awaited(self) -> None:
        # Given
        async def fetch(state: FlowState) -> list[dict[str, Any]]:
            await asyncio.sleep(0)
            return [{"id": 7}]

        # When
        result = asyncio.run(self.engine().arun(Flow("async").node("a", fetch)))
        # Then
        self.assertEqual(plain(result.envelope["records"]), [{"id": 7}])

    def test_an_async_node_past_its_timeout_raises_node_timeout(self) -> None:
        # Given
        async def hang(state: FlowState) -> None:
            await asyncio.Event().wait()

        flow = Flow("async").node("a", hang, timeout=0.05)
        # When / Then
        with self.assertRaises(NodeTimeout):
            asyncio.run(self.engine().arun(flow))

    def test_fan_out_branches_run_concurrently_under_arun(self) -> None:
        # Given: each branch waits for the other; run one after the other, they never finish
        async def scenario() -> Any:
            x_ready, y_ready = asyncio.Event(), asyncio.Event()

            async def x(state: FlowState) -> list[dict[str, Any]]:
                x_ready.set()
                await y_ready.wait()
                return [{"id": 1}]

            async def y(state: FlowState) -> list[dict[str, Any]]:
                y_ready.set()
                await x_ready.wait()
                return [{"id": 2}]

            flow = (Flow("together").node("src", rows(0)).node("x", x).node("y", y).merge("merged", key="id")
                    .fan_out("src", ["x", "y"], join="merged"))
            return await asyncio.wait_for(self.engine().arun(flow), GUARD)

        # When
        result = asyncio.run(scenario())
        # Then
        self.assertEqual(plain(result.envelope["records"]), [{"id": 1}, {"id": 2}])

    def test_arun_retries_with_the_injected_async_sleep(self) -> None:
        # Given
        delays: list[float] = []

        async def asleep(seconds: float) -> None:
            delays.append(seconds)

        flow = Flow("async").node("a", Flaky(2, ConnectionError, [{"id": 1}]), retry=Retry(max_attempts=3, base=1, multiplier=2, jitter=0))
        # When
        asyncio.run(self.engine(asleep=asleep).arun(flow))
        # Then
        self.assertEqual(delays, [1.0, 2.0])


class FlowStateTest(unittest.TestCase):
    def test_update_returns_a_new_state_and_leaves_the_old_one_unchanged(self) -> None:
        # Given
        old = FlowState({"q": 1}, RunContext(run_id="r1"))
        envelope = make_envelope([{"id": 1}], source="t")
        # When
        new = old.update("a", envelope)
        # Then
        self.assertEqual((dict(old), old.last, dict(new), new.last), ({}, None, {"a": envelope}, "a"))

    def test_results_cannot_be_assigned_to(self) -> None:
        # Given
        state = FlowState(None, RunContext(run_id="r1")).update("a", make_envelope([], source="t"))
        # When / Then
        with self.assertRaises(TypeError):
            state.results["b"] = make_envelope([], source="t")  # type: ignore[index]


if __name__ == "__main__":
    unittest.main()
