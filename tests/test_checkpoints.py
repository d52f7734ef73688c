"""Checkpoints: the store contract (memory, SQLite, PostgreSQL), crash and resume, approvals."""

from __future__ import annotations

import shutil
import tempfile
import threading
import unittest
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel

from agent.engine import Engine, Flow, MemoryCheckpointStore, SqlCheckpointStore
from agent.errors import AgentCallError, ConfigurationError, InvalidInput, PayloadError
from agent.registry import Registry
from tests.support import PostgresSchema, requires_real_services

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
INPUT = {"query": "CTOs in Berlin", "campaign_id": "c1"}
PROV = {"source": "crm", "source_id": "7", "retrieved_at": "2024-01-01T12:00:00.000000Z", "agent": None,
        "run_id": "r1", "node": "fetch", "hash": "ab" * 32, "parents": []}


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def envelope(name: str) -> dict[str, Any]:
    """A JSON-native envelope with the awkward values: unicode, floats, None, nesting."""
    meta = {"run_id": "r1", "flow": "lead", "node": "fetch", "source": "crm", "total_count": 1, "partial": False,
            "created_at": "2024-01-01T12:00:00.000000Z", "errors": [], "duration_ms": 1.25}
    return {"metadata": meta, "records": [{"name": name, "city": "Düsseldorf ✓", "score": 0.1, "tags": ["a", None],
                                           "geo": {"lat": 51.22, "lon": [6.77]}, "provenance": PROV}]}


def sqlite_url(test: unittest.TestCase) -> str:
    tmp = tempfile.mkdtemp(prefix="agent-cp-")
    test.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
    return f"sqlite:///{tmp}/cp.db"


def sql_store(test: unittest.TestCase, url: str, clock: Any = None) -> SqlCheckpointStore:
    store = SqlCheckpointStore(url, clock=clock)
    test.addCleanup(store.db.engine.dispose)
    return store


class CheckpointStoreContract:
    """What every checkpoint store must do; a backend gives ``make_store(clock)``."""

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = self.make_store(self.clock)

    def begin(self, run_id: str, input_hash: str = "h1", input_json: str | None = '{"q": "cto"}') -> Any:
        return self.store.begin(run_id, "lead", input_hash=input_hash, input_json=input_json)

    def test_begin_creates_a_running_run_once_and_then_returns_the_stored_one(self) -> None:
        # When
        first, first_created = self.begin("r1")
        again, again_created = self.begin("r1", input_hash="h2", input_json='{"q": "ceo"}')
        # Then
        self.assertEqual((first_created, again_created), (True, False))
        self.assertEqual((first.run_id, first.flow, first.status, first.input, first.has_input),
                         ("r1", "lead", "running", {"q": "cto"}, True))
        self.assertEqual((again.status, again.input_hash, again.input), ("running", "h1", {"q": "cto"}))

    def test_saved_envelopes_load_back_exactly(self) -> None:
        # Given
        self.begin("r1")
        # When
        self.store.save("r1", "fetch", envelope("Jane"))
        self.store.save("r1", "enrich[42]", envelope("Bob"))
        # Then
        self.assertEqual(self.store.load("r1"), {"fetch": envelope("Jane"), "enrich[42]": envelope("Bob")})

    def test_saving_a_step_twice_keeps_the_first_envelope(self) -> None:
        # Given
        self.begin("r1")
        self.store.save("r1", "fetch", envelope("first"))
        # When
        self.store.save("r1", "fetch", envelope("second"))
        # Then
        self.assertEqual(self.store.load("r1"), {"fetch": envelope("first")})

    def test_set_status_is_seen_by_get_run_with_a_new_update_time(self) -> None:
        # Given
        self.begin("r1")
        self.clock.advance(minutes=5)
        # When
        self.store.set_status("r1", "paused", waiting_for="review")
        # Then
        run = self.store.get_run("r1")
        self.assertEqual((run.status, run.waiting_for, run.created_at, run.updated_at),
                         ("paused", "review", T0, T0 + timedelta(minutes=5)))

    def test_delete_removes_the_run_and_its_steps_only(self) -> None:
        # Given
        for run_id in ("r1", "r2"):
            self.begin(run_id)
            self.store.save(run_id, "fetch", envelope(run_id))
        # When
        self.store.delete("r1")
        # Then
        self.assertEqual((self.store.get_run("r1"), self.store.load("r1")), (None, {}))
        self.assertEqual(self.store.load("r2"), {"fetch": envelope("r2")})

    def old_and_new_runs(self) -> list[str]:
        ids = []
        for status in ("succeeded", "failed", "paused", "running"):
            ids.append(f"old-{status}")
            self.begin(ids[-1])
            self.store.save(ids[-1], "fetch", envelope(status))
            self.store.set_status(ids[-1], status)
        self.clock.advance(days=2)
        ids.append("new-succeeded")
        self.begin(ids[-1])
        self.store.set_status(ids[-1], "succeeded")
        return ids

    def test_prune_removes_only_old_finished_runs_with_their_steps(self) -> None:
        # Given
        ids = self.old_and_new_runs()
        # When
        removed = self.store.prune(older_than=timedelta(days=1), now=self.clock())
        # Then
        self.assertEqual(removed, 2)
        self.assertEqual({r for r in ids if self.store.get_run(r)}, {"old-paused", "old-running", "new-succeeded"})
        self.assertEqual([self.store.load(r) for r in ("old-succeeded", "old-failed", "old-paused")],
                         [{}, {}, {"fetch": envelope("paused")}])

    def test_prune_with_statuses_removes_old_runs_in_those_statuses(self) -> None:
        # Given
        ids = self.old_and_new_runs()
        # When
        removed = self.store.prune(older_than=timedelta(days=1), now=self.clock(), statuses=("paused",))
        # Then
        self.assertEqual(removed, 1)
        self.assertEqual([r for r in ids if not self.store.get_run(r)], ["old-paused"])

    def test_prune_compares_instants_whatever_the_time_zone_of_now(self) -> None:
        # Given a run finished two hours ago, and "now" given in UTC-5
        self.begin("r1")
        self.store.set_status("r1", "succeeded")
        self.clock.advance(hours=2)
        now = self.clock().astimezone(timezone(timedelta(hours=-5)))
        # When
        removed = self.store.prune(older_than=timedelta(hours=1), now=now)
        # Then
        self.assertEqual(removed, 1)


class MemoryCheckpointStoreTests(CheckpointStoreContract, unittest.TestCase):
    def make_store(self, clock: FakeClock) -> Any:
        return MemoryCheckpointStore(clock=clock)


class SQLiteCheckpointStoreTests(CheckpointStoreContract, unittest.TestCase):
    def make_store(self, clock: FakeClock) -> Any:
        return sql_store(self, sqlite_url(self), clock)


@requires_real_services()
class PostgresCheckpointStoreTests(CheckpointStoreContract, unittest.TestCase):
    def make_store(self, clock: FakeClock) -> Any:
        schema = PostgresSchema()
        self.addCleanup(schema.drop)
        return sql_store(self, schema.url, clock)


# -- the engine over a store ---------------------------------------------------------------
class Crash(RuntimeError):
    """A simulated crash."""


class Calls:
    """Counts calls by name (thread-safe); names in ``crash`` raise ``Crash`` the first time."""

    def __init__(self, *crash: str) -> None:
        self.lock, self.counts, self.crash = threading.Lock(), {}, set(crash)

    def hit(self, name: str) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            if name in self.crash:
                self.crash.discard(name)
                raise Crash(f"simulated crash in {name}")

    def of(self, *names: str) -> tuple[int, ...]:
        return tuple(self.counts.get(n, 0) for n in names)


def task(calls: Calls, name: str) -> Any:
    def fn(state: Any) -> list[dict[str, Any]]:
        calls.hit(name)
        return [{"node": name, "query": state.input["query"]}]
    return fn


def three_steps(calls: Calls) -> Any:
    return (Flow("three").node("fetch", task(calls, "fetch")).node("score", task(calls, "score"))
            .node("send", task(calls, "send")).then("fetch", "score", "send").build())


def mapped(calls: Calls, batches: list[list[dict[str, str]]]) -> Any:
    def enrich(item: dict[str, str], state: Any) -> list[dict[str, Any]]:
        calls.hit(f"enrich:{item['id']}")
        return [{"id": item["id"], "enriched": True}]
    return (Flow("mapped").node("leads", task(calls, "leads"))
            .node("enrich", enrich, each=lambda s: batches.pop(0), key="id").then("leads", "enrich").build())


def fanned(calls: Calls) -> Any:
    flow = Flow("fan").node("parse", task(calls, "parse"))
    for branch in ("crm", "web", "social"):
        flow.node(branch, task(calls, branch))
    return (flow.merge("merged").node("rank", task(calls, "rank"))
            .fan_out("parse", ["crm", "web", "social"], join="merged").then("merged", "rank").build())


class EngineResumeContract:
    """Crash and resume over any store; a backend gives ``make_store()``."""

    def setUp(self) -> None:
        self.store = self.make_store()
        self.engine = Engine(Registry(), checkpoints=self.store)
        self.addCleanup(self.engine.close)

    def crash_once(self, flow: Any) -> None:
        """Run ``flow`` as "r1": it must raise for the simulated crash and be stored as failed."""
        with self.assertRaises(AgentCallError) as caught:
            self.engine.run(flow, INPUT, run_id="r1")
        self.assertIsInstance(caught.exception.__cause__, Crash)
        self.assertEqual(self.store.get_run("r1").status, "failed")

    def crashed(self) -> Calls:
        """A three-step run that crashed in its last step."""
        calls = Calls("send")
        self.crash_once(three_steps(calls))
        return calls

    def test_rerunning_a_crashed_run_restores_the_completed_nodes_instead_of_running_them(self) -> None:
        # Given
        calls = self.crashed()
        # When
        result = self.engine.run(three_steps(calls), INPUT, run_id="r1")
        # Then the first two nodes ran exactly once, and the result says what was restored and executed
        self.assertEqual(calls.of("fetch", "score", "send"), (1, 1, 2))
        self.assertEqual((result.status, result.restored, result.executed),
                         ("succeeded", ("fetch", "score"), ("send",)))
        self.assertEqual(self.store.get_run("r1").status, "succeeded")

    def test_rerunning_a_finished_run_executes_nothing(self) -> None:
        # Given
        calls = Calls()
        self.engine.run(three_steps(calls), INPUT, run_id="r1")
        # When
        result = self.engine.run(three_steps(calls), INPUT, run_id="r1")
        # Then
        self.assertEqual((result.executed, result.restored), ((), ("fetch", "score", "send")))
        self.assertEqual(calls.of("fetch", "score", "send"), (1, 1, 1))

    def test_a_different_input_for_an_existing_run_id_is_refused(self) -> None:
        # Given
        self.crashed()
        # When
        with self.assertRaises(InvalidInput) as caught:
            self.engine.run(three_steps(Calls()), {**INPUT, "query": "CEOs"}, run_id="r1")
        # Then
        self.assertEqual(caught.exception.field, "run_id")

    def test_resume_continues_with_the_stored_input(self) -> None:
        # Given
        calls = self.crashed()
        # When
        result = self.engine.resume(three_steps(calls), "r1")
        # Then
        self.assertEqual(result.executed, ("send",))
        self.assertEqual(result.envelope["records"][0]["query"], INPUT["query"])

    def test_a_map_node_reruns_only_the_failed_item_whatever_the_order(self) -> None:
        # Given items that come back in another order on the second run, and "b" failing once
        items = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
        calls = Calls("enrich:b")
        self.crash_once(mapped(calls, [items]))
        # When
        result = self.engine.run(mapped(calls, [items[::-1]]), INPUT, run_id="r1")
        # Then
        self.assertEqual(calls.of("leads", "enrich:a", "enrich:b", "enrich:c"), (1, 1, 2, 1))
        self.assertEqual(set(result.executed), {"enrich[b]", "enrich"})
        self.assertEqual([r["id"] for r in result.envelope["records"]], ["c", "b", "a"])

    def test_a_fan_out_reruns_only_the_crashed_branch_and_what_follows(self) -> None:
        # Given
        calls = Calls("web")
        self.crash_once(fanned(calls))
        # When
        result = self.engine.run(fanned(calls), INPUT, run_id="r1")
        # Then
        self.assertEqual(calls.of("parse", "crm", "web", "social", "rank"), (1, 1, 2, 1, 1))
        self.assertEqual(set(result.restored), {"parse", "crm", "social"})
        self.assertEqual(set(result.executed), {"web", "merged", "rank"})


class MemoryResumeTests(EngineResumeContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryCheckpointStore()


class SQLiteResumeTests(EngineResumeContract, unittest.TestCase):
    def make_store(self) -> Any:
        return sql_store(self, sqlite_url(self))


# -- approvals -----------------------------------------------------------------------------
class Decision(BaseModel):
    approved: bool
    note: str = ""


def reviewed(calls: Calls) -> Any:
    return (Flow("reviewed").node("draft", task(calls, "draft")).approval("review", Decision)
            .node("send", task(calls, "send")).node("drop", task(calls, "drop")).then("draft", "review")
            .route("review", lambda s: "send" if s.records("review")[0]["approved"] else "drop",
                   {"send": "send", "drop": "drop"}).build())


class ApprovalContract:
    """Pause at an approval, resume with a decision; a backend gives ``make_store()`` and
    ``restarted_engine()`` (a new Engine, as after a restart)."""

    def setUp(self) -> None:
        self.store = self.make_store()
        self.calls = Calls()
        self.flow = reviewed(self.calls)

    def pause(self) -> Any:
        return Engine(Registry(), checkpoints=self.store).run(self.flow, INPUT, run_id="r1")

    def refuse(self) -> None:
        """Pause, then give an approval that breaks the model."""
        self.pause()
        with self.assertRaises(PayloadError):
            self.restarted_engine().resume(self.flow, "r1", approval={"approved": "maybe"})

    def test_a_run_pauses_at_its_approval_node_and_runs_nothing_after(self) -> None:
        # When
        result = self.pause()
        # Then the result and the store say so, and nothing after the approval ran
        run = self.store.get_run("r1")
        self.assertEqual((result.status, result.waiting_for, run.status, run.waiting_for),
                         ("paused", "review", "paused", "review"))
        self.assertEqual(self.calls.of("draft", "send", "drop"), (1, 0, 0))

    def test_a_paused_run_holds_no_thread(self) -> None:
        # Given
        before = threading.active_count()
        # When
        self.pause()
        # Then
        self.assertEqual(threading.active_count(), before)

    def test_an_approval_resumes_the_run_after_the_approval_node_and_is_kept_as_its_record(self) -> None:
        # Given
        self.pause()
        # When
        result = self.restarted_engine().resume(self.flow, "r1", approval={"approved": True, "note": "ok"})
        # Then
        self.assertEqual((result.status, result.restored), ("succeeded", ("draft",)))
        self.assertEqual(self.calls.of("draft", "send", "drop"), (1, 1, 0))
        expected = {"approval": "review", "approved": True, "note": "ok"}
        for records in (result.state.records("review"), self.store.load("r1")["review"]["records"]):
            self.assertEqual([{k: v for k, v in r.items() if k != "provenance"} for r in records], [expected])

    def test_a_rejection_takes_the_other_route(self) -> None:
        # Given
        self.pause()
        # When
        self.restarted_engine().resume(self.flow, "r1", approval=Decision(approved=False))
        # Then
        self.assertEqual(self.calls.of("send", "drop"), (0, 1))

    def test_an_approval_that_breaks_the_model_is_refused_naming_the_field(self) -> None:
        # Given
        self.pause()
        # When
        with self.assertRaises(PayloadError) as caught:
            self.restarted_engine().resume(self.flow, "r1", approval={"approved": "maybe"})
        # Then
        self.assertEqual(caught.exception.field, "approval.approved")

    def test_a_refused_approval_leaves_the_run_paused_for_a_valid_one(self) -> None:
        # Given
        self.refuse()
        status = self.store.get_run("r1").status
        # When
        result = self.restarted_engine().resume(self.flow, "r1", approval={"approved": True})
        # Then
        self.assertEqual((status, result.status), ("paused", "succeeded"))

    def test_an_approval_for_a_run_that_is_not_paused_is_refused(self) -> None:
        # Given
        self.pause()
        self.restarted_engine().resume(self.flow, "r1", approval={"approved": True})
        # When
        with self.assertRaises(InvalidInput) as caught:
            self.restarted_engine().resume(self.flow, "r1", approval={"approved": False})
        # Then
        self.assertEqual(caught.exception.field, "approval")


class MemoryApprovalTests(ApprovalContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryCheckpointStore()

    def restarted_engine(self) -> Engine:
        return Engine(Registry(), checkpoints=self.store)

    def test_an_engine_without_a_checkpoint_store_refuses_an_approval_flow(self) -> None:
        with self.assertRaises(ConfigurationError):
            Engine(Registry()).run(self.flow, INPUT)


class SQLiteApprovalTests(ApprovalContract, unittest.TestCase):
    def make_store(self) -> Any:
        self.url = sqlite_url(self)
        return sql_store(self, self.url)

    def restarted_engine(self) -> Engine:
        # A new store on the same file: nothing is shared with the engine that paused the run.
        return Engine(Registry(), checkpoints=sql_store(self, self.url))

