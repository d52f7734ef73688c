"""SqlJobLedger, the truth behind the Celery queue: claims under leases, retries that wait their turn,
dead letters, idempotency keys, and the recovery of jobs whose message a broker lost.  On a SQLite
file, and on PostgreSQL with USE_REAL_TESTS=1."""

from __future__ import annotations

import unittest
from datetime import datetime, timedelta, timezone

from agent.queues import Job
from agent.queues.ledger import Busy, Claim, SqlJobLedger
from tests.support import TempHome, postgres_home, requires_real_services


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class LedgerContract:
    def make_home(self) -> TempHome:
        raise NotImplementedError

    def setUp(self) -> None:
        home = self.make_home()
        self.addCleanup(home.cleanup)
        self.clock = Clock()
        self.ledger = SqlJobLedger(home.database(), clock=self.clock)

    def claim(self, job_id: str, lease: float = 30) -> Claim | Busy | None:
        return self.ledger.claim(job_id, lease=lease, holder="test:1")

    def test_a_claim_counts_an_attempt_and_a_live_lease_makes_copies_wait(self) -> None:
        job_id, created = self.ledger.add("t", Job(orchestrator="o"))
        first = self.claim(job_id)
        # A copy of the message while the lease is live: busy, for the rest of the lease
        self.clock.advance(10)
        copy = self.claim(job_id)
        self.assertTrue(created)
        self.assertEqual(first.job.attempts, 1)
        self.assertIsInstance(copy, Busy)
        self.assertAlmostEqual(copy.seconds, 20, delta=0.01)
        # Its worker died: once the lease runs out, the next claim is attempt 2
        self.clock.advance(21)
        self.assertEqual(self.claim(job_id).job.attempts, 2)

    def test_a_retry_is_not_taken_before_it_is_due(self) -> None:
        job_id, _ = self.ledger.add("t", Job(orchestrator="o"))
        self.ledger.retry(self.claim(job_id), delay=60, error="ValueError: boom")
        self.clock.advance(30)
        early = self.claim(job_id)
        self.clock.advance(31)
        due = self.claim(job_id)
        self.assertIsInstance(early, Busy)
        self.assertEqual((due.job.attempts, due.job.meta["last_error"]), (2, "ValueError: boom"))

    def test_a_settled_attempt_cannot_be_settled_by_an_older_hand(self) -> None:
        job_id, _ = self.ledger.add("t", Job(orchestrator="o"))
        stale = self.claim(job_id, lease=5)
        self.clock.advance(6)
        fresh = self.claim(job_id)
        self.assertFalse(self.ledger.finish(stale))
        self.assertTrue(self.ledger.finish(fresh))
        self.assertIsNone(self.claim(job_id))  # done: a late copy has nothing to do

    def test_a_dead_job_is_a_dead_letter_and_frees_its_key_but_not_its_id(self) -> None:
        job = Job(orchestrator="o", idempotency_key="k")
        job_id, _ = self.ledger.add("t", job)
        self.ledger.bury(self.claim(job_id), error="boom")
        again_id, again_created = self.ledger.add("t", job)                       # the same job: known
        other_id, other_created = self.ledger.add("t", Job(orchestrator="o", idempotency_key="k"))
        self.assertEqual((again_id, again_created), (job_id, False))
        self.assertTrue(other_created)
        self.assertNotEqual(other_id, job_id)
        self.assertEqual([(j.job_id, j.meta["last_error"]) for j in self.ledger.dead_letters("t")], [(job_id, "boom")])

    def test_an_idempotency_key_queues_its_work_once(self) -> None:
        results = self.ledger.add_many("t", [Job(orchestrator="o", idempotency_key="k"),
                                             Job(orchestrator="o", idempotency_key="k"),
                                             Job(orchestrator="o", idempotency_key="j")])
        self.assertEqual([created for _, created in results], [True, False, True])
        self.assertEqual(results[0][0], results[1][0])
        self.assertEqual(self.ledger.stats("t").ready, 2)

    def test_overdue_jobs_are_found_once_per_period_whatever_their_state(self) -> None:
        queued, _ = self.ledger.add("t", Job(orchestrator="o", run_id="queued"))
        delayed, _ = self.ledger.add("t", Job(orchestrator="o", run_id="delayed"))
        running, _ = self.ledger.add("t", Job(orchestrator="o", run_id="running"))
        self.ledger.retry(self.claim(delayed), delay=5, error=None)
        self.claim(running, lease=5)
        self.assertEqual(self.ledger.overdue("t", after=60), [])  # nothing is late yet
        self.clock.advance(61)
        found = sorted(job.run_id for _, job in self.ledger.overdue("t", after=60))
        again = self.ledger.overdue("t", after=60)
        self.assertEqual((found, again), (["delayed", "queued", "running"], []))
        self.clock.advance(61)
        self.assertEqual(len(self.ledger.overdue("t", after=60)), 3)

    def test_a_claimed_job_that_exhausted_its_attempts_says_so(self) -> None:
        job_id, _ = self.ledger.add("t", Job(orchestrator="o", max_attempts=2))
        for _ in range(2):
            self.claim(job_id, lease=1)
            self.clock.advance(2)
        self.assertTrue(self.claim(job_id).exhausted)


class SqliteLedgerTest(LedgerContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return TempHome()


@requires_real_services()
class PostgresLedgerTest(LedgerContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return postgres_home(self)


class LedgerEdgesTest(unittest.TestCase):
    def setUp(self) -> None:
        home = TempHome()
        self.addCleanup(home.cleanup)
        self.db = home.database()
        self.ledger = SqlJobLedger(self.db)

    def test_the_same_job_twice_in_one_call_is_one_job(self) -> None:
        job = Job(orchestrator="o")
        self.assertEqual(self.ledger.add_many("t", [job, job]), [(job.job_id, True), (job.job_id, False)])
        self.assertEqual(self.ledger.stats("t").ready, 1)

    def test_many_jobs_go_in_statements_of_bounded_size(self) -> None:
        results = self.ledger.add_many("t", [Job(orchestrator="o") for _ in range(1_200)])
        self.assertTrue(all(created for _, created in results))
        self.assertEqual(self.ledger.stats("t").ready, 1_200)

    def test_a_stored_job_this_version_cannot_read_is_dead_lettered_not_retried(self) -> None:
        from sqlalchemy import text

        job_id, _ = self.ledger.add("t", Job(orchestrator="o"))
        with self.db.connect() as conn:
            conn.execute(text("UPDATE queue_jobs SET job_json = :bad WHERE job_id = :j"),
                         {"bad": '{"orchestrator": 5}', "j": job_id})
        self.assertIsNone(self.ledger.claim(job_id, lease=30))
        self.assertEqual(self.ledger.state(job_id)["state"], "dead")
        self.assertEqual(self.ledger.overdue("t", after=0), [])


class JobsCliTest(unittest.TestCase):
    def test_jobs_stats_and_dead_show_the_ledger_with_errors_redacted(self) -> None:
        import json
        import os
        import subprocess
        import sys

        home = TempHome()
        self.addCleanup(home.cleanup)
        ledger = SqlJobLedger(home.database())
        job_id, _ = ledger.add("campaigns", Job(orchestrator="outreach_orchestrator", run_id="r1"))
        ledger.add("campaigns", Job(orchestrator="outreach_orchestrator", run_id="r2"))
        ledger.bury(ledger.claim(job_id, lease=30), error="SMTPError: 550 for jane@acme.example")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(AGENT_HOME=str(home.path), AGENT_DATABASE_URL=home.settings.resolved_database_url,
                   AGENT_SAMPLE_DATA="off")

        def agent(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "agent.cli", "jobs", *args, "--json"], env=env,
                                  capture_output=True, text=True, timeout=60)
            self.assertEqual(done.returncode, 0, done.stderr)
            return done.stdout

        stats, dead = json.loads(agent("stats")), json.loads(agent("dead"))
        self.assertEqual((stats["ready"], stats["dead"]), (1, 1))
        self.assertEqual([(d["job_id"], d["run_id"]) for d in dead], [(job_id, "r1")])
        self.assertEqual(dead[0]["last_error"], "SMTPError: 550 for ***@acme.example")
