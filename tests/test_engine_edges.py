"""Edge cases of the engine found in review: timeouts and slots, racing resumes, keys, loops, errors."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import unittest
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from agent.agents.base import BaseAgent
from agent.builtins import register_builtins
from agent.context import RunContext
from agent.dispatch import BreakerPolicy, CircuitBreaker, Dispatcher
from agent.engine import Engine, Flow, MemoryCheckpointStore, SqlCheckpointStore
from agent.envelope import make_envelope
from agent.errors import AgentCallError, CheckpointError, FlowError, InvalidInput, NodeTimeout, StorageError
from agent.high_level_agents.orchestrators import DeliveryOrchestrator
from agent.registry import Registry
from tests.support import TempHome

GUARD = 10.0


class Blocking(BaseAgent):
    """An agent that blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        self.calls += 1
        self.release.wait(GUARD)
        return make_envelope([{"done": True}], source="blocking", run_id=context.run_id)


class TimedAgentCallTest(unittest.TestCase):
    def test_an_abandoned_call_keeps_its_slot_until_it_returns_and_counts_as_a_failure_at_once(self) -> None:
        # Given an agent limited to one call at a time, whose breaker opens after one failure
        agent, registry = Blocking(), Registry()
        registry.register("slow", agent)
        released = threading.Event()
        dispatcher = Dispatcher({"slow": {"concurrency": 1, "breaker": {"failures": 1}}},
                                observer=lambda event, agent, **_: event == "released" and released.set())
        engine = Engine(registry, dispatcher=dispatcher)
        self.addCleanup(agent.release.set)
        # When the node times out
        with self.assertRaises(NodeTimeout):
            engine.run(Flow("t").node("n", agent="slow", timeout=0.05).build())
        # Then the breaker has counted it, while the call still holds its slot
        self.assertEqual((dispatcher.stats("slow").in_use, dispatcher.breaker("slow").state), (1, "open"))
        # And the slot comes back when the abandoned call really returns
        agent.release.set()
        self.assertTrue(released.wait(GUARD))
        self.assertEqual((dispatcher.stats("slow").in_use, agent.calls), (0, 1))


class BreakerAndTokensTest(unittest.TestCase):
    def test_a_late_success_does_not_close_an_open_breaker(self) -> None:
        # Given a breaker opened by failures
        now = [0.0]
        breaker = CircuitBreaker("x", BreakerPolicy(failures=1, reset_after=10), lambda: now[0])
        breaker.record(False, probe=False)
        # When a call admitted before it opened succeeds
        breaker.record(True, probe=False)
        # Then it stays open: only a probe closes it
        self.assertEqual(breaker.state, "open")

    def test_a_caller_queued_for_a_slot_takes_no_rate_token_until_it_has_the_slot(self) -> None:
        # Given one slot and a one-token bucket, and a holder of the slot
        events: list[str] = []
        waiting = threading.Event()

        def observe(event: str, agent: str, **info: Any) -> None:
            events.append(event)
            if event == "wait":
                waiting.set()

        clock = [0.0]
        dispatcher = Dispatcher({"x": {"concurrency": 1, "rates": [{"rate": 1, "burst": 1}]}},
                                clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s),
                                observer=observe)
        holder = dispatcher.acquire("x")
        tickets: list[Any] = []
        second = threading.Thread(target=lambda: tickets.append(dispatcher.acquire("x")))
        second.start()
        self.assertTrue(waiting.wait(GUARD))
        # When the holder lets go
        holder.settle(None)
        holder.free()
        second.join(GUARD)
        # Then the second caller waited for the slot first, and only then for a token
        self.assertEqual(events, ["acquired", "wait", "released", "acquired", "rate_wait"])


class ResumeTest(unittest.TestCase):
    def test_a_second_claim_of_a_paused_run_is_refused(self) -> None:
        # Given a paused run in each store
        for store in (MemoryCheckpointStore(), SqlCheckpointStore(f"sqlite:///{tempfile.mkdtemp()}/cp.db")):
            with self.subTest(store=type(store).__name__):
                store.begin("r1", "f", input_hash="h", input_json=None)
                store.set_status("r1", "paused", waiting_for="review")
                # When two callers claim it / Then only the first gets it
                self.assertEqual([store.claim("r1", status="paused", waiting_for="review") for _ in range(2)],
                                 [True, False])

    def test_a_resume_after_a_saved_join_does_not_rerun_a_branch_that_failed(self) -> None:
        # Given a fan-out whose branch c failed (partial allowed) and a later node that crashed once
        calls = {"c": 0, "d": 0}

        def c(state: Any) -> list[dict[str, Any]]:
            calls["c"] += 1
            raise ConnectionError("down")

        def d(state: Any) -> list[dict[str, Any]]:
            calls["d"] += 1
            if calls["d"] == 1:
                raise RuntimeError("crash")
            return state.records("m")

        flow = (Flow("f").node("a", lambda s: [{"x": 1}]).node("b", lambda s: [{"k": "b"}]).node("c", c)
                .merge("m", key="k", allow_partial=True).node("d", d)
                .fan_out("a", ["b", "c"], join="m").then("m", "d").build())
        engine = Engine(Registry(), checkpoints=MemoryCheckpointStore())
        with self.assertRaises(AgentCallError):
            engine.run(flow, {}, run_id="r1")
        # When it resumes
        result = engine.run(flow, {}, run_id="r1")
        # Then c was not tried again and the result agrees with the saved merge
        self.assertEqual((calls["c"], [r["k"] for r in result.envelope["records"]]), (1, ["b"]))

    def test_equal_items_without_a_key_get_a_step_each(self) -> None:
        # Given a map over two identical items
        flow = Flow("m").node("each", lambda item, s: [dict(item)], each=lambda s: [{"d": "a"}, {"d": "a"}]).build()
        # When
        result = Engine(Registry(), checkpoints=MemoryCheckpointStore()).run(flow, {})
        # Then both ran, under distinct step keys
        self.assertEqual(len(result.envelope["records"]), 2)
        self.assertEqual(len([s for s in result.executed if s.startswith("each[")]), 2)

    def test_resuming_from_the_stored_input_rebuilds_the_flows_input_model(self) -> None:
        # Given a delivery run that crashed after prepare, with delivery off
        home = TempHome()
        self.addCleanup(home.cleanup)
        store = MemoryCheckpointStore()
        orch = DeliveryOrchestrator(register_builtins(Registry()), settings=home.settings, checkpoints=store)
        payload = {"records": [{"to": "ada@example.com", "subject": "Hi", "body": "Hello", "lead_id": "1"}],
                   "campaign_id": "c1"}
        flow = orch.build_flow("outbox")
        model = orch.validate_payload(payload)
        store.begin("r1", flow.name, input_hash="x", input_json=model.model_dump_json())
        # When the engine takes it over from the stored JSON alone (its process is gone)
        result = orch.engine.resume(flow, "r1", force=True)
        # Then the routers read the model's attributes and the run ends skipped
        self.assertEqual(result.envelope["records"][0]["reason"], "delivery_disabled")

    def test_an_orchestrator_with_checkpoints_gives_an_upstream_envelope_a_run_of_its_own(self) -> None:
        # Given an upstream envelope from another run, and a checkpointed delivery orchestrator
        home = TempHome()
        self.addCleanup(home.cleanup)
        orch = DeliveryOrchestrator(register_builtins(Registry()), settings=home.settings,
                                    checkpoints=MemoryCheckpointStore())
        upstream = make_envelope([{"to": "ada@example.com", "subject": "Hi", "body": "Hello", "lead_id": "1",
                                   "campaign_id": "c1"}], source="drafts", run_id="upstream1")
        # When it runs twice on records of that run
        first = orch.run(upstream)
        second = orch.run(upstream)
        # Then each run is its own, not a clash with the upstream run_id
        self.assertNotIn("upstream1", (first["metadata"]["run_id"], second["metadata"]["run_id"]))

    def test_an_approval_for_a_run_that_never_started_is_refused(self) -> None:
        class Review(BaseModel):
            ok: bool

        flow = Flow("f").node("a", lambda s: None).approval("r", Review).then("a", "r").build()
        with self.assertRaises(InvalidInput) as caught:
            Engine(Registry(), checkpoints=MemoryCheckpointStore()).run(flow, {}, run_id="new", approval={"ok": True})
        self.assertEqual(caught.exception.field, "approval")

    def test_a_checkpoint_that_cannot_be_saved_stops_the_run_instead_of_dropping_an_item(self) -> None:
        # Given a store that cannot save
        class Broken(MemoryCheckpointStore):
            def save(self, run_id: str, step: str, envelope: dict[str, Any]) -> None:
                raise StorageError("disk full")

        flow = Flow("m").node("each", lambda item, s: [dict(item)], each=lambda s: [{"i": 1}],
                              allow_partial=True).build()
        # When / Then
        with self.assertRaises(CheckpointError):
            Engine(Registry(), checkpoints=Broken()).run(flow, {})

    def test_a_run_id_that_cannot_be_stored_is_refused(self) -> None:
        with self.assertRaises(InvalidInput) as caught:
            Engine(Registry()).run(Flow("f").node("a", lambda s: None).build(), {}, run_id="x" * 65)
        self.assertEqual(caught.exception.field, "run_id")


class MoreResumeTest(unittest.TestCase):
    def test_a_run_still_marked_running_is_refused_unless_taken_over(self) -> None:
        # Given a run whose process died mid-run (its row says running)
        store = MemoryCheckpointStore()
        flow = Flow("f").node("a", lambda s: [{"x": 1}]).build()
        store.begin("r1", "f", input_hash="h", input_json="{}")
        engine = Engine(Registry(), checkpoints=store)
        # When / Then a plain resume is refused, naming run_id; force takes it over
        with self.assertRaises(InvalidInput) as caught:
            engine.resume(flow, "r1")
        self.assertEqual(caught.exception.field, "run_id")
        self.assertEqual(engine.resume(flow, "r1", force=True).status, "succeeded")

    def test_an_edited_record_is_keyed_by_its_content_not_its_stale_hash(self) -> None:
        # Given records edited from one upstream record (same stale provenance hash)
        base = make_envelope([{"lang": "en"}], source="t")["records"][0]
        items = [{**base, "lang": lang} for lang in ("fr", "en", "de")]
        flow = Flow("m").node("t", lambda item, s: [{"lang": item["lang"]}], each=lambda s: items).build()
        # When
        result = Engine(Registry(), checkpoints=MemoryCheckpointStore()).run(flow, {})
        # Then each got a step of its own, and none was mistaken for another
        self.assertEqual([r["lang"] for r in result.envelope["records"]], ["fr", "en", "de"])
        self.assertNotIn("#", " ".join(result.executed))

    def test_a_step_whose_run_row_is_gone_is_a_checkpoint_error_not_a_silent_drop(self) -> None:
        # Given a SQLite store whose run was deleted under a running flow
        store = SqlCheckpointStore(f"sqlite:///{tempfile.mkdtemp()}/cp.db")
        flow = Flow("f").node("a", lambda s: store.delete(s.run_id) or [{"x": 1}]).build()
        # When / Then
        with self.assertRaises(CheckpointError):
            Engine(Registry(), checkpoints=store).run(flow, {}, run_id="r1")

    def test_a_context_run_id_is_checked_too(self) -> None:
        with self.assertRaises(InvalidInput):
            Engine(Registry()).run(Flow("f").node("a", lambda s: None).build(), {},
                                   context=RunContext(run_id="x" * 80))


class AsyncLimitsTest(unittest.TestCase):
    def test_more_runs_than_worker_threads_all_get_their_turn_at_a_limited_agent(self) -> None:
        # Given an agent allowed two calls at a time, and more runs than asyncio's default pool
        class Quick(BaseAgent):
            def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
                return make_envelope([{"ok": True}], source="quick", run_id=context.run_id)

        registry = Registry()
        registry.register("quick", Quick())
        engine = Engine(registry, dispatcher=Dispatcher({"quick": {"concurrency": 2, "acquire_timeout": 5}}))
        flow = Flow("f").node("a", agent="quick").build()

        async def many() -> list[Any]:
            return await asyncio.gather(*(engine.arun(flow, {}) for _ in range(40)))

        # When / Then every run succeeds (none starves waiting for a thread)
        results = asyncio.run(asyncio.wait_for(many(), GUARD * 3))
        self.assertEqual({r.status for r in results}, {"succeeded"})

    def test_a_cancelled_arun_gives_its_slot_back(self) -> None:
        # Given a limited agent that blocks, and an arun cancelled while the call is in flight
        agent, registry = Blocking(), Registry()
        registry.register("slow", agent)
        released = threading.Event()
        dispatcher = Dispatcher({"slow": {"concurrency": 1}},
                                observer=lambda event, agent, **_: event == "released" and released.set())
        engine = Engine(registry, dispatcher=dispatcher)
        flow = Flow("f").node("a", agent="slow").build()

        async def cancel_it() -> None:
            task = asyncio.ensure_future(engine.arun(flow, {}))
            while dispatcher.stats("slow").in_use == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task
            # When the abandoned call returns
            agent.release.set()
            self.assertTrue(await asyncio.to_thread(released.wait, GUARD))

        asyncio.run(cancel_it())
        # Then the slot is free again, and the breaker holds no verdict against the agent
        self.assertEqual((dispatcher.stats("slow").in_use, dispatcher.breaker("slow").state), (0, "closed"))


class BuildTest(unittest.TestCase):
    def test_a_flow_cannot_start_at_a_fan_out_branch(self) -> None:
        flow = (Flow("f").node("s", lambda s: None).node("b", lambda s: None).merge("m")
                .fan_out("s", ["b"], join="m").start("b"))
        with self.assertRaises(FlowError) as caught:
            flow.build()
        self.assertEqual(caught.exception.field, "b")

    def test_a_cycle_inside_a_bounded_loop_still_needs_a_bound(self) -> None:
        # Given a -> b -> c -> b with only a bounded
        flow = (Flow("f").node("a", lambda s: None, max_visits=3).node("b", lambda s: None)
                .node("c", lambda s: None).then("a", "b", "c")
                .route("c", lambda s: "x", {"x": "b", "y": "a"}))
        # When / Then
        with self.assertRaises(FlowError) as caught:
            flow.build()
        self.assertIn("b -> c", str(caught.exception))

    def test_a_branch_reachable_outside_its_fan_out_is_refused(self) -> None:
        flow = (Flow("f").node("s", lambda s: None).node("b", lambda s: None).node("c", lambda s: None)
                .merge("m").fan_out("s", ["b", "c"], join="m").node("z", lambda s: None).then("m", "z"))
        flow.route("z", lambda s: "x", {"x": "b"})
        with self.assertRaises(FlowError) as caught:
            flow.build()
        self.assertEqual(caught.exception.field, "b")


class UserCodeAndLogsTest(unittest.TestCase):
    def test_a_router_that_raises_becomes_an_agent_call_error_with_its_cause(self) -> None:
        flow = (Flow("f").node("a", lambda s: None).node("b", lambda s: None)
                .route("a", lambda s: {}["missing"], {"x": "b"}).build())
        with self.assertRaises(AgentCallError) as caught:
            Engine(Registry()).run(flow, {})
        self.assertIsInstance(caught.exception.__cause__, KeyError)

    def test_an_item_key_never_reaches_the_logs(self) -> None:
        def fail(item: Any, state: Any) -> None:
            raise ConnectionError("down")

        flow = Flow("f").node("send", fail, each=lambda s: [{"email": "ada@example.com"}], key="email",
                              allow_partial=True).build()
        with self.assertLogs("agent.engine", level="WARNING") as logs:
            Engine(Registry()).run(flow, {})
        self.assertNotIn("ada@example.com", "\n".join(logs.output))
        self.assertIn("step=send[#", "\n".join(logs.output))

    def test_arun_runs_sync_branches_off_the_event_loop(self) -> None:
        # Given two sync branches that each wait for the other: sequential on the loop, they would hang
        first, second = threading.Event(), threading.Event()

        def left(state: Any) -> list[dict[str, Any]]:
            first.set()
            return [{"side": "left", "ok": second.wait(GUARD)}]

        def right(state: Any) -> list[dict[str, Any]]:
            second.set()
            return [{"side": "right", "ok": first.wait(GUARD)}]

        flow = (Flow("f").node("s", lambda s: None).node("l", left).node("r", right).merge("m")
                .fan_out("s", ["l", "r"], join="m").build())
        # When
        result = asyncio.run(asyncio.wait_for(Engine(Registry()).arun(flow, {}), GUARD * 2))
        # Then both saw the other
        self.assertEqual([r["ok"] for r in result.envelope["records"]], [True, True])


if __name__ == "__main__":
    unittest.main()
