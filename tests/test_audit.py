"""Audit store: the contract (memory, SQLite, PostgreSQL): runs, envelopes, deliveries, lineage, retention."""

from __future__ import annotations

import shutil
import tempfile
import threading
import unittest
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from agent.audit import AuditEnvelope, InMemoryAuditStore, SqlAuditStore
from agent.envelope import canonical_json, make_envelope, make_provenance
from agent.errors import ConfigurationError, EnvelopeError, InvalidInput, StorageError
from tests.support import PostgresSchema, requires_real_services

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
AT = "2024-01-01T12:00:00.000000Z"
MID = "<m1@mail.example>"


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def record(body: dict[str, Any], node: str, parents: tuple[str, ...] = ()) -> dict[str, Any]:
    return {**body, "provenance": make_provenance(body, source="test", run_id="r1", node=node, parents=parents,
                                                  retrieved_at=AT)}


def envelope(node: str, *records: dict[str, Any], run_id: str = "r1") -> dict[str, Any]:
    return make_envelope(records, source="test", run_id=run_id, flow="outreach", node=node)


def phash(rec: dict[str, Any]) -> str:
    return rec["provenance"]["hash"]


def race(call: Callable[[], Any], threads: int = 6) -> list[Any]:
    """What ``call`` returned (or raised) in each of ``threads`` threads released at once."""
    barrier, outcomes = threading.Barrier(threads), []

    def run() -> None:
        barrier.wait()
        try:
            outcomes.append(call())
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcomes.append(exc)
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


class Chain:
    """A lead row, its enrichment, and the drafted message: each derived from the one before."""

    def __init__(self) -> None:
        self.lead = record({"lead_id": "lead-1", "email": "jane@acme.example", "city": "Düsseldorf"}, "fetch")
        self.enriched = record({"lead_id": "lead-1", "title": "CTO"}, "enrich", (phash(self.lead),))
        # The draft also names a template that was never audited: its branch just ends.
        self.draft = record({"lead_id": "lead-1", "message_id": MID, "subject": "Hi Jane"}, "draft",
                            (phash(self.enriched), "ff" * 32))

    def delivery(self) -> dict[str, Any]:
        return {"message_id": MID, "to": "jane@acme.example", "lead_id": "lead-1", "campaign_id": "c1",
                "step": 1, "status": "sent", "provenance": self.draft["provenance"]}


class AuditStoreContract:
    """What every audit store must do; a backend gives ``make_store(clock)``."""

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = self.make_store(self.clock)

    def started(self, run_id: str = "r1", *states: str, **options: Any) -> Any:
        """A run started (as ``lead``), then moved through ``states``."""
        self.store.start_run(run_id, orchestrator="lead", **options)
        for state in states:
            self.store.set_state(run_id, state)
        return self.store.get_run(run_id)

    def saved_chain(self) -> Chain:
        chain = Chain()
        self.started("r1")
        for node, rec in (("fetch", chain.lead), ("enrich", chain.enriched), ("draft", chain.draft)):
            self.store.save_envelope("r1", envelope(node, rec))
        self.store.save_delivery("r1", chain.delivery())
        return chain

    # -- runs and their state machine --------------------------------------------------------
    def test_start_run_creates_a_queued_run_with_what_it_was_given(self) -> None:
        # When
        run = self.store.start_run("r1", orchestrator="lead", job_id="j1", campaign_id="c1", tenant="acme",
                                   meta={"by": "cli"})
        # Then
        self.assertEqual(self.store.get_run("r1"), run)
        self.assertEqual((run.state, run.orchestrator, run.job_id, run.campaign_id, run.tenant, run.meta),
                         ("queued", "lead", "j1", "c1", "acme", {"by": "cli"}))
        self.assertEqual((run.attempts, run.created_at, run.started_at, run.finished_at), (0, T0, None, None))

    def test_starting_a_known_run_again_returns_it_unchanged(self) -> None:
        # Given
        first = self.started("r1", "running")
        self.clock.advance(minutes=1)
        # When
        again = self.store.start_run("r1", orchestrator="other", campaign_id="c9")
        # Then
        self.assertEqual(again, first)
        self.assertEqual((again.state, again.orchestrator, again.campaign_id), ("running", "lead", None))

    # -- a job's attempt in two writes -------------------------------------------------------
    def test_begin_attempt_creates_the_run_and_starts_its_first_attempt(self) -> None:
        # When
        run = self.store.begin_attempt("r1", orchestrator="lead", job_id="j1", campaign_id="c1", meta={"attempt": 1})
        # Then
        self.assertEqual((run.state, run.attempts, run.job_id, run.campaign_id, run.meta, run.started_at),
                         ("running", 1, "j1", "c1", {"attempt": 1}, T0))
        self.assertEqual(self.store.get_run("r1"), run)
        self.assertEqual(self.store.failures("r1"), [])

    def test_begin_attempt_on_a_run_left_running_records_the_lost_attempt_first(self) -> None:
        # Given a run whose attempt died with its worker
        self.store.begin_attempt("r1", orchestrator="lead")
        self.clock.advance(minutes=5)
        # When the job is run again
        run = self.store.begin_attempt("r1", orchestrator="lead")
        # Then the lost attempt is on the record, and a second attempt is running
        self.assertEqual((run.state, run.attempts, run.started_at), ("running", 2, T0 + timedelta(minutes=5)))
        [lost] = self.store.failures("r1")
        self.assertIn("lost with its worker", lost.message)

    def test_begin_attempt_on_a_finished_run_changes_nothing(self) -> None:
        for final in ("succeeded", "dead"):
            with self.subTest(final=final):
                # Given
                done = self.started(f"r-{final}", "running", final)
                # When
                run = self.store.begin_attempt(f"r-{final}", orchestrator="lead")
                # Then
                self.assertEqual(run, done)
                self.assertEqual(self.store.get_run(f"r-{final}"), done)

    def test_end_attempt_keeps_everything_the_attempt_produced_and_moves_the_run(self) -> None:
        # Given
        chain = Chain()
        self.store.begin_attempt("r1", orchestrator="lead")
        self.clock.advance(minutes=1)
        # When
        run = self.store.end_attempt(
            "r1", "succeeded",
            envelopes=[envelope("fetch", chain.lead), envelope("enrich", chain.enriched),
                       envelope("draft", chain.draft)],
            runs=[{"run_id": "next-1", "orchestrator": "outreach", "campaign_id": "c1", "meta": {"batch": 0}}],
            deliveries=[chain.delivery()])
        # Then the run is done, its trail is whole, and the follow-up run waits
        self.assertEqual((run.state, run.finished_at), ("succeeded", T0 + timedelta(minutes=1)))
        self.assertEqual([e.node for e in self.store.envelopes("r1")], ["fetch", "enrich", "draft"])
        self.assertEqual(self.store.message(MID).status, "sent")
        self.assertEqual([r["node"] for r in self.store.lineage(MID)], ["draft", "enrich", "fetch"])
        follow = self.store.get_run("next-1")
        self.assertEqual((follow.state, follow.orchestrator, follow.campaign_id, follow.meta),
                         ("queued", "outreach", "c1", {"batch": 0}))

    def test_a_record_carried_unchanged_through_nodes_is_indexed_once_per_save(self) -> None:
        # Given a record that a later node passes on as it is
        chain = Chain()
        self.store.begin_attempt("r1", orchestrator="lead")
        # When both nodes' envelopes are kept
        self.store.end_attempt("r1", "succeeded", envelopes=[envelope("fetch", chain.lead),
                                                             envelope("deliver", chain.lead, chain.enriched)])
        # Then both envelopes are whole, and the record is indexed once, under the node that made it
        self.assertEqual([len(e.envelope["records"]) for e in self.store.envelopes("r1")], [1, 2])
        found = self.store.records_for_lead("lead-1")
        self.assertEqual(sorted((r["node"], r["hash"]) for r in found),
                         sorted([("fetch", phash(chain.lead)), ("deliver", phash(chain.enriched))]))

    def test_end_attempt_with_an_error_records_the_failure(self) -> None:
        # Given
        self.store.begin_attempt("r1", orchestrator="lead")
        # When
        run = self.store.end_attempt("r1", "failed", error=ValueError("the API said no"))
        # Then
        self.assertEqual((run.state, run.error), ("failed", "ValueError: the API said no"))
        [failure] = self.store.failures("r1")
        self.assertEqual((failure.error_type, failure.message), ("ValueError", "the API said no"))

    def test_end_attempt_refuses_a_move_the_state_machine_forbids(self) -> None:
        # Given a run that succeeded already
        self.started("r1", "running", "succeeded")
        # When / Then
        with self.assertRaises(InvalidInput) as caught:
            self.store.end_attempt("r1", "failed", error="late")
        self.assertEqual(caught.exception.field, "state")
        self.assertEqual(self.store.get_run("r1").state, "succeeded")

    def test_a_run_that_succeeds_records_its_start_finish_and_one_attempt(self) -> None:
        # Given
        self.started("r1")
        # When
        self.clock.advance(minutes=1)
        self.store.set_state("r1", "running")
        self.clock.advance(minutes=2)
        done = self.store.set_state("r1", "succeeded")
        # Then
        self.assertEqual(self.store.get_run("r1"), done)
        self.assertEqual((done.state, done.attempts, done.started_at, done.finished_at, done.updated_at),
                         ("succeeded", 1, T0 + timedelta(minutes=1), T0 + timedelta(minutes=3),
                          T0 + timedelta(minutes=3)))

    def test_a_retried_run_counts_its_attempts_and_is_unfinished_again(self) -> None:
        # Given
        self.started("r1", "running")
        self.store.set_state("r1", "failed", error=ValueError("smtp down"))
        failed = self.store.get_run("r1")
        # When
        self.clock.advance(minutes=5)
        self.store.set_state("r1", "queued")
        again = self.store.set_state("r1", "running")
        # Then
        self.assertEqual((failed.error, failed.finished_at), ("ValueError: smtp down", T0))
        self.assertEqual((again.attempts, again.started_at, again.finished_at, again.error),
                         (2, T0 + timedelta(minutes=5), None, None))

    def test_every_allowed_transition_is_accepted(self) -> None:
        paths = [("running", "queued"), ("running", "dead"), ("running", "failed", "running"),
                 ("running", "failed", "queued"), ("running", "failed", "dead")]
        for n, path in enumerate(paths):
            with self.subTest(path=path):
                # When
                run = self.started(f"r{n}", *path)
                # Then
                self.assertEqual(run.state, path[-1])

    def test_a_dead_run_keeps_the_error_it_failed_with(self) -> None:
        # Given
        self.started("r1", "running")
        self.store.set_state("r1", "failed", error="timeout")
        # When
        dead = self.store.set_state("r1", "dead")
        # Then
        self.assertEqual((dead.state, dead.error), ("dead", "timeout"))

    def test_a_transition_outside_the_state_machine_is_refused_and_changes_nothing(self) -> None:
        refused = [((), "succeeded"), ((), "failed"), ((), "dead"), ((), "queued"), (("running",), "running"),
                   (("running", "succeeded"), "queued"), (("running", "succeeded"), "running"),
                   (("running", "dead"), "queued"), (("running", "failed"), "succeeded")]
        for n, (path, target) in enumerate(refused):
            with self.subTest(path=path, target=target):
                # Given
                before = self.started(f"r{n}", *path)
                # When
                with self.assertRaises(InvalidInput) as caught:
                    self.store.set_state(f"r{n}", target)
                # Then
                self.assertEqual((caught.exception.field, caught.exception.reason),
                                 ("state", f"cannot go from {before.state} to {target}"))
                self.assertEqual(self.store.get_run(f"r{n}"), before)

    def test_concurrent_moves_to_running_let_exactly_one_through(self) -> None:
        # Given six workers claiming one queued run at once
        self.started("r1")
        # When
        outcomes = race(lambda: self.store.set_state("r1", "running").state)
        # Then the others are told the run is running already
        self.assertEqual(sorted(map(str, outcomes)), ["running"] + ["state: cannot go from running to running"] * 5)
        self.assertEqual(self.store.get_run("r1").attempts, 1)

    def test_an_unknown_run_or_state_is_refused_naming_the_field(self) -> None:
        # Given
        self.started("r1")
        for run_id, state, field in (("nope", "running", "run_id"), ("r1", "paused", "state")):
            with self.subTest(run_id=run_id, state=state):
                # When
                with self.assertRaises(InvalidInput) as caught:
                    self.store.set_state(run_id, state)
                # Then
                self.assertEqual(caught.exception.field, field)

    # -- envelopes ---------------------------------------------------------------------------
    def test_saved_envelopes_are_listed_by_run_and_by_node_in_saving_order(self) -> None:
        # Given
        self.started("r1")
        self.started("r2")
        first = envelope("fetch", record({"name": "Acme ✓", "score": 0.5}, "fetch"))
        second = envelope("score", record({"name": "Acme ✓", "score": 0.9}, "score"))
        # When
        saved = [self.store.save_envelope("r1", first), self.store.save_envelope("r1", second),
                 self.store.save_envelope("r2", envelope("fetch", run_id="r2"))]
        # Then
        self.assertEqual(saved, [True, True, True])
        everything = self.store.envelopes("r1")
        self.assertEqual([(e.run_id, e.node, e.flow, e.envelope) for e in everything],
                         [("r1", "fetch", "outreach", first), ("r1", "score", "outreach", second)])
        self.assertEqual([e.envelope for e in self.store.envelopes("r1", node="score")], [second])
        self.assertEqual(self.store.envelopes("r3"), [])

    def test_saving_the_same_envelope_twice_keeps_one_copy_and_one_index_entry(self) -> None:
        # Given
        self.started("r1")
        env = envelope("fetch", record({"lead_id": "lead-1"}, "fetch"))
        self.store.save_envelope("r1", env)
        # When
        again = self.store.save_envelope("r1", env)
        # Then
        self.assertFalse(again)
        self.assertEqual((len(self.store.envelopes("r1")), len(self.store.records_for_lead("lead-1"))), (1, 1))

    def test_concurrent_saves_of_one_envelope_keep_one_copy(self) -> None:
        # Given
        self.started("r1")
        env = envelope("fetch", record({"lead_id": "lead-1"}, "fetch"))
        # When
        results = race(lambda: self.store.save_envelope("r1", env))
        # Then
        self.assertEqual(sorted(results, key=repr), [False] * 5 + [True])
        self.assertEqual(len(self.store.records_for_lead("lead-1")), 1)

    def test_an_invalid_envelope_is_refused_and_writes_nothing(self) -> None:
        # Given a record whose content no longer matches its hash
        self.started("r1")
        env = envelope("fetch", record({"lead_id": "lead-1"}, "fetch"))
        env["records"][0]["lead_id"] = "lead-2"
        # When
        with self.assertRaises(EnvelopeError) as caught:
            self.store.save_envelope("r1", env)
        # Then
        self.assertEqual(caught.exception.field, "records[0].provenance.hash")
        self.assertEqual((self.store.envelopes("r1"), self.store.records_for_lead("lead-2")), ([], []))

    def test_an_envelope_for_an_unknown_run_is_refused(self) -> None:
        with self.assertRaises(InvalidInput) as caught:
            self.store.save_envelope("nope", envelope("fetch"))
        self.assertEqual(caught.exception.field, "run_id")

    def test_find_record_gives_the_record_with_its_run_and_node(self) -> None:
        # Given
        chain = self.saved_chain()
        # When
        found = self.store.find_record(phash(chain.enriched))
        # Then
        self.assertEqual(found, {"hash": phash(chain.enriched), "run_id": "r1", "node": "enrich",
                                 "lead_id": "lead-1", "message_id": None, "parents": [phash(chain.lead)],
                                 "record": chain.enriched})
        self.assertIsNone(self.store.find_record("00" * 32))

    def test_a_record_saved_again_later_is_found_where_it_first_appeared(self) -> None:
        # Given the lead row passed on unchanged by a later run
        chain = self.saved_chain()
        self.started("r2")
        self.store.save_envelope("r2", envelope("rescore", chain.lead, run_id="r2"))
        # When
        found = self.store.find_record(phash(chain.lead))
        # Then
        self.assertEqual((found["run_id"], found["node"]), ("r1", "fetch"))

    def test_records_for_lead_lists_every_record_of_the_lead_oldest_first(self) -> None:
        # Given
        chain = self.saved_chain()
        self.started("r2")
        self.store.save_envelope("r2", envelope("fetch", record({"lead_id": "lead-2"}, "fetch"), run_id="r2"))
        # When
        found = self.store.records_for_lead("lead-1")
        # Then
        self.assertEqual([(r["node"], r["record"]) for r in found],
                         [("fetch", chain.lead), ("enrich", chain.enriched), ("draft", chain.draft)])
        self.assertEqual(found[2]["message_id"], MID)

    # -- failures and deliveries -------------------------------------------------------------
    def test_failures_keep_the_error_type_message_code_and_envelope(self) -> None:
        # Given
        self.started("r1")
        env = envelope("send")
        # When
        self.store.save_failure("r1", StorageError("database error: locked"), env)
        self.store.save_failure("r1", "quota exceeded")
        # Then
        failures = self.store.failures("r1")
        self.assertEqual([(f.error_type, f.message, f.code, f.node, f.envelope) for f in failures],
                         [("StorageError", "database error: locked", "storage_error", "send", env),
                          (None, "quota exceeded", None, None, None)])
        self.assertEqual(self.store.failures("r2"), [])

    def test_a_delivery_is_found_by_its_message_id(self) -> None:
        # Given
        chain = self.saved_chain()
        # When
        found = self.store.message(MID)
        # Then
        self.assertEqual((found.run_id, found.to, found.lead_id, found.campaign_id, found.step, found.status),
                         ("r1", "jane@acme.example", "lead-1", "c1", 1, "sent"))
        self.assertEqual(found.provenance, chain.draft["provenance"])
        self.assertIsNone(self.store.message("<other@mail.example>"))

    def test_saving_a_delivery_again_updates_its_status(self) -> None:
        # Given
        chain = self.saved_chain()
        # When
        self.store.save_delivery("r1", {**chain.delivery(), "status": "bounced"})
        # Then
        self.assertEqual(self.store.message(MID).status, "bounced")

    def test_a_delivery_without_a_message_id_is_refused(self) -> None:
        self.started("r1")
        with self.assertRaises(InvalidInput) as caught:
            self.store.save_delivery("r1", {"to": "jane@acme.example"})
        self.assertEqual(caught.exception.field, "record.message_id")

    # -- lineage -----------------------------------------------------------------------------
    def test_lineage_walks_from_the_message_back_to_the_lead_row_nearest_first(self) -> None:
        # Given
        chain = self.saved_chain()
        # When
        trail = self.store.lineage(MID)
        # Then the unknown template hash ends its branch
        self.assertEqual([(r["depth"], r["node"], r["record"]) for r in trail],
                         [(0, "draft", chain.draft), (1, "enrich", chain.enriched), (2, "fetch", chain.lead)])

    def test_lineage_of_a_message_never_saved_as_a_record_starts_from_its_parents(self) -> None:
        # Given the lead and enrichment saved, but not the draft
        chain = Chain()
        self.started("r1")
        self.store.save_envelope("r1", envelope("fetch", chain.lead))
        self.store.save_envelope("r1", envelope("enrich", chain.enriched))
        self.store.save_delivery("r1", chain.delivery())
        # When
        trail = self.store.lineage(MID)
        # Then
        self.assertEqual([(r["depth"], r["node"]) for r in trail], [(1, "enrich"), (2, "fetch")])

    def test_lineage_of_an_unknown_message_is_empty(self) -> None:
        self.saved_chain()
        self.assertEqual(self.store.lineage("<unknown@mail.example>"), [])

    # -- listing and retention ---------------------------------------------------------------
    def listed(self, **filters: Any) -> list[str]:
        return [r.run_id for r in self.store.list_runs(**filters)]

    def test_list_runs_gives_the_newest_first_filtered_by_state_and_campaign(self) -> None:
        # Given
        for run_id, campaign, states in (("a", "c1", ("running", "succeeded")), ("b", "c2", ("running",)),
                                         ("c", "c1", ()), ("d", "c1", ("running", "failed"))):
            self.started(run_id, *states, campaign_id=campaign)
            self.clock.advance(seconds=1)
        # Then
        self.assertEqual(self.listed(), ["d", "c", "b", "a"])
        self.assertEqual(self.listed(campaign_id="c1"), ["d", "c", "a"])
        self.assertEqual(self.listed(state="running"), ["b"])
        self.assertEqual(self.listed(state=("succeeded", "failed"), campaign_id="c1"), ["d", "a"])
        self.assertEqual(self.listed(limit=2, offset=1), ["c", "b"])

    def old_and_new_runs(self) -> None:
        for run_id, states in (("old-ok", ("running", "succeeded")), ("old-failed", ("running", "failed")),
                               ("old-dead", ("running", "dead")), ("old-running", ("running",))):
            self.started(run_id, *states)
            self.store.save_envelope(run_id, envelope("fetch", record({"lead_id": run_id}, "fetch"), run_id=run_id))
            self.store.save_failure(run_id, "boom")
            self.store.save_delivery(run_id, {"message_id": f"<{run_id}@x>", "lead_id": run_id})
        self.clock.advance(days=2)
        self.started("new-ok", "running", "succeeded")

    def test_prune_removes_old_finished_runs_with_everything_saved_under_them(self) -> None:
        # Given
        self.old_and_new_runs()
        # When
        removed = self.store.prune(older_than=timedelta(days=1))
        # Then
        self.assertEqual(removed, 3)
        self.assertEqual(sorted(self.listed()), ["new-ok", "old-running"])
        for run_id in ("old-ok", "old-failed", "old-dead"):
            self.assertEqual((self.store.envelopes(run_id), self.store.failures(run_id),
                              self.store.records_for_lead(run_id), self.store.message(f"<{run_id}@x>")),
                             ([], [], [], None))
        self.assertEqual(len(self.store.records_for_lead("old-running")), 1)
        self.assertIsNotNone(self.store.message("<old-running@x>"))

    def test_prune_with_states_removes_only_old_runs_in_those_states(self) -> None:
        # Given
        self.old_and_new_runs()
        # When
        removed = self.store.prune(older_than=timedelta(days=1), states=("dead",))
        # Then
        self.assertEqual(removed, 1)
        self.assertIsNone(self.store.get_run("old-dead"))
        self.assertIsNotNone(self.store.get_run("old-failed"))

    def test_prune_compares_instants_whatever_the_time_zone_of_now(self) -> None:
        # Given a run finished two hours ago, and "now" given in UTC-5
        self.started("r1", "running", "succeeded")
        self.clock.advance(hours=2)
        now = self.clock().astimezone(timezone(timedelta(hours=-5)))
        # When
        removed = self.store.prune(older_than=timedelta(hours=1), now=now)
        # Then
        self.assertEqual(removed, 1)


def sql_store(test: unittest.TestCase, url: str, clock: Any = None) -> SqlAuditStore:
    store = SqlAuditStore(url, clock=clock)
    test.addCleanup(store.db.engine.dispose)
    return store


class InMemoryAuditStoreTests(AuditStoreContract, unittest.TestCase):
    def make_store(self, clock: FakeClock) -> Any:
        return InMemoryAuditStore(clock=clock)

    def test_envelopes_and_failures_are_also_lists_of_everything_saved(self) -> None:
        # Given
        self.started("r1")
        self.started("r2")
        # When
        self.store.save_envelope("r1", envelope("fetch"))
        self.store.save_envelope("r2", envelope("fetch", run_id="r2"))
        self.store.save_failure("r2", "boom")
        # Then
        self.assertEqual([e.run_id for e in self.store.envelopes], ["r1", "r2"])
        self.assertIsInstance(self.store.envelopes[0], AuditEnvelope)
        self.assertEqual([(f.run_id, f.message) for f in self.store.failures], [("r2", "boom")])


class SQLiteAuditStoreTests(AuditStoreContract, unittest.TestCase):
    def make_store(self, clock: FakeClock) -> Any:
        tmp = tempfile.mkdtemp(prefix="agent-audit-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.url = f"sqlite:///{tmp}/audit.db"
        return sql_store(self, self.url, clock)

    def test_another_store_on_the_same_file_sees_the_trail(self) -> None:
        # Given
        chain = self.saved_chain()
        # When
        other = sql_store(self, self.url)
        # Then
        self.assertEqual([r["record"] for r in other.lineage(MID)], [chain.draft, chain.enriched, chain.lead])

    def test_an_in_memory_sqlite_database_is_refused(self) -> None:
        with self.assertRaises(ConfigurationError):
            SqlAuditStore("sqlite://")


@requires_real_services()
class PostgresAuditStoreTests(AuditStoreContract, unittest.TestCase):
    def make_store(self, clock: FakeClock) -> Any:
        schema = PostgresSchema()
        self.addCleanup(schema.drop)
        return sql_store(self, schema.url, clock)


class RecordsMigrationTest(unittest.TestCase):
    """Migration 0006 keeps a record's JSON in its envelope only; going back down writes it back."""

    def test_downgrade_gives_each_index_row_its_record_and_upgrade_reads_them_again(self) -> None:
        from alembic import command
        from alembic.config import Config
        from sqlalchemy import text

        from agent.storage.db import MIGRATIONS_DIR

        # Given a run whose trail was kept under 0006
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        store = sql_store(self, f"sqlite:///{folder}/audit.db")
        chain = Chain()
        store.begin_attempt("r1", orchestrator="lead")
        store.end_attempt("r1", "succeeded", envelopes=[envelope("fetch", chain.lead),
                                                        envelope("enrich", chain.enriched)])
        before = store.records_for_lead("lead-1")
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        # When the schema goes down to 0005
        with store.db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        # Then every index row has its own record JSON again, the same record
        with store.db.engine.connect() as conn:
            bodies = dict(conn.execute(text("SELECT hash, record_json FROM audit_records")).all())
        self.assertEqual(bodies, {r["hash"]: canonical_json(r["record"]) for r in before})
        # And back up, the records read as before
        store.db.migrate()
        self.assertEqual(store.records_for_lead("lead-1"), before)
