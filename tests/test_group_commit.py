"""Group commit on the Celery path: a succeeded job's finish is committed with the next job's claim,
or by the group's thread, or when the worker process ends; a process that dies with one kept
loses nothing (the job runs again once its lease is out)."""

from __future__ import annotations

import unittest
import uuid
from pathlib import Path

from agent.audit.base import LOST_ATTEMPT
from agent.envelope import make_envelope
from agent.errors import StorageError
from agent.queues import Job
from agent.queues.ledger import SqlJobLedger
from agent.settings import get_settings
from agent.workers.group_commit import GroupCommit
from tests.celery_support import REDIS_BROKER, CeleryWorker, drop_queues, wait_for, worker_env
from tests.support import TempHome, requires_real_services
from tests.test_job_ledger import Clock


class Counting:
    """An orchestrator that counts its runs."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def run(self, payload: object, *, run_id: str) -> dict:
        self.runs.append(run_id)
        return make_envelope([{"n": len(self.runs)}], source="t", run_id=run_id, flow="f", node="n", agent="a")


class GroupCase(unittest.TestCase):
    """``run_job`` in this process, on jobs put in the ledger directly."""

    def setUp(self) -> None:
        self.home = TempHome(broker_url=REDIS_BROKER, queue_commit_delay=30)
        self.addCleanup(self.home.cleanup)
        self.clock = Clock()
        self.counting = Counting()
        self.app, self.rt = self.runtime()
        self.topic = "group"

    def runtime(self, **overrides: object) -> tuple[object, object]:
        from agent.workers.celery_worker import WorkerRuntime, worker_app

        settings = get_settings(**{**self.home.settings.model_dump(), **overrides})
        rt = WorkerRuntime(settings)
        rt.ledger = SqlJobLedger(rt.db, clock=self.clock)
        rt.resolved["counting"] = self.counting
        return worker_app(settings), rt

    def add(self, run_id: str) -> str:
        return self.rt.ledger.add(self.topic, Job(orchestrator="counting", run_id=run_id))[0]

    def run_job(self, job_id: str, rt: object = None) -> str:
        from agent.workers.celery_worker import run_job

        return run_job(self.app, self.topic, job_id, rt=rt or self.rt, group=True)

    def state(self, job_id: str, run_id: str) -> tuple[str, str]:
        return self.rt.ledger.state(job_id)["state"], self.rt.audit.get_run(run_id).state


class RunJobGroupCommitTest(GroupCase):
    """Nothing is published here."""

    def test_a_finish_is_committed_with_the_next_claim_and_the_last_by_flush(self) -> None:
        # Given two queued jobs
        first, second = self.add("r-1"), self.add("r-2")
        # When the first runs
        self.assertEqual(self.run_job(first), "done")
        # Then it ran, and its finish is kept: still running in the ledger and the audit trail
        self.assertEqual(self.counting.runs, ["r-1"])
        self.assertEqual(self.state(first, "r-1"), ("running", "running"))
        # When the second runs, its claim commits the first's finish
        self.assertEqual(self.run_job(second), "done")
        self.assertEqual(self.state(first, "r-1"), ("done", "succeeded"))
        self.assertEqual(len(self.rt.audit.envelopes("r-1")), 1)
        self.assertEqual(self.state(second, "r-2"), ("running", "running"))
        # And a flush (the process ending) commits the last one
        self.rt.group.flush()
        self.assertEqual(self.state(second, "r-2"), ("done", "succeeded"))
        self.assertEqual(self.counting.runs, ["r-1", "r-2"])

    def test_a_copy_of_the_message_of_a_kept_job_finds_it_done_not_busy(self) -> None:
        # Given a job that ran, its finish kept
        job_id = self.add("r-1")
        self.assertEqual(self.run_job(job_id), "done")
        # When a copy of its message comes
        again = self.run_job(job_id)
        # Then the kept finish is committed first: the copy is skipped, not published again as busy
        self.assertEqual(again, "skipped")
        self.assertEqual(self.counting.runs, ["r-1"])
        self.assertEqual(self.state(job_id, "r-1"), ("done", "succeeded"))

    def test_the_groups_thread_commits_a_kept_finish_when_no_job_comes(self) -> None:
        # Given a runtime that keeps a finish 10 ms
        self.app, self.rt = self.runtime(queue_commit_delay=0.01)
        job_id = self.add("r-1")
        # When a job runs and no other comes
        self.assertEqual(self.run_job(job_id), "done")
        # Then the group's thread commits it on its own
        self.assertTrue(self.rt.group.wait_committed(1, timeout=30))
        self.assertEqual(self.state(job_id, "r-1"), ("done", "succeeded"))

    def test_a_process_that_dies_with_a_kept_finish_loses_nothing(self) -> None:
        # Given a job that ran in a worker process which then died, its finish never committed
        job_id = self.add("r-1")
        self.assertEqual(self.run_job(job_id), "done")
        self.rt.group.take()  # what dies with the process
        # When its lease runs out and its message comes again, to another process
        _, other = self.runtime()
        self.clock.advance(self.rt.lease + 1)
        self.assertEqual(self.run_job(job_id, other), "done")
        other.group.flush()
        # Then it ran again (at least once) and is done, the lost attempt on its audit trail
        self.assertEqual(self.counting.runs, ["r-1", "r-1"])
        self.assertEqual(self.state(job_id, "r-1"), ("done", "succeeded"))
        self.assertEqual([f.message for f in self.rt.audit.failures("r-1")], [LOST_ATTEMPT])
        self.assertEqual(self.rt.ledger.state(job_id)["attempts"], 2)

    def test_a_kept_finish_whose_lease_lapsed_leaves_the_new_attempt_alone(self) -> None:
        # Given a job that ran, its finish kept, then its lease lapsed and another process ran it again
        job_id = self.add("r-1")
        self.assertEqual(self.run_job(job_id), "done")
        _, other = self.runtime()
        self.clock.advance(self.rt.lease + 1)
        self.assertEqual(self.run_job(job_id, other), "done")
        # When the first process commits its stale finish, then the second its own
        self.rt.group.flush()
        other.group.flush()
        # Then only the attempt in hand finished the job and wrote the end of its run
        self.assertEqual(self.state(job_id, "r-1"), ("done", "succeeded"))
        self.assertEqual(self.rt.ledger.state(job_id)["attempts"], 2)
        [envelope] = self.rt.audit.envelopes("r-1")
        self.assertEqual(envelope.envelope["records"][0]["n"], 2)  # the second run's
        self.assertEqual([f.message for f in self.rt.audit.failures("r-1")], [LOST_ATTEMPT])

    def test_a_failed_claim_transaction_still_commits_the_kept_finish_and_claims(self) -> None:
        # Given a kept finish, and a store whose next claim with the audit fails once
        first, second = self.add("r-1"), self.add("r-2")
        self.assertEqual(self.run_job(first), "done")
        real_begin, calls = self.rt.audit.begin_attempt, []

        def flaky(*args: object, **kwargs: object) -> object:
            calls.append(1)
            if len(calls) == 1:
                raise StorageError("database error: OperationalError: disk I/O error")
            return real_begin(*args, **kwargs)

        self.rt.audit.begin_attempt = flaky  # type: ignore[method-assign]
        # When the next job comes
        result = self.run_job(second)
        self.rt.group.flush()
        # Then the first is done all the same, and the second ran and is done
        self.assertEqual(result, "done")
        self.assertEqual(self.state(first, "r-1"), ("done", "succeeded"))
        self.assertEqual(self.state(second, "r-2"), ("done", "succeeded"))
        self.assertEqual(self.counting.runs, ["r-1", "r-2"])

    def test_a_job_that_fails_is_settled_at_once_not_kept(self) -> None:
        class Failing:
            def run(self, payload: object, *, run_id: str) -> dict:
                raise RuntimeError("no")

        self.rt.resolved["failing"] = Failing()
        job_id = self.rt.ledger.add(self.topic, Job(orchestrator="failing", run_id="r-f", max_attempts=1))[0]
        self.assertEqual(self.run_job(job_id), "dead")
        self.assertIsNone(self.rt.group.take())
        self.assertEqual(self.state(job_id, "r-f"), ("dead", "dead"))

    def test_without_a_delay_the_finish_is_committed_at_once(self) -> None:
        self.app, self.rt = self.runtime(queue_commit_delay=0)
        job_id = self.add("r-1")
        self.assertEqual(self.run_job(job_id), "done")
        self.assertIsNone(self.rt.group)
        self.assertEqual(self.state(job_id, "r-1"), ("done", "succeeded"))

    def test_a_message_that_names_no_job_is_dropped(self) -> None:
        from agent.workers.celery_worker import run_job

        for data in (None, "", "x" * 65, 12):
            self.assertEqual(run_job(self.app, self.topic, data, rt=self.rt, group=True), "skipped")
        self.assertEqual(self.counting.runs, [])

    def test_a_finish_is_kept_at_most_a_third_of_the_lease(self) -> None:
        _, rt = self.runtime(queue_commit_delay=30, queue_lease=6)
        self.assertEqual(rt.group.delay, 2)

    def test_a_bad_delay_is_refused_naming_the_setting(self) -> None:
        from agent.errors import ConfigurationError

        for bad in (-1, 61, "soon"):
            with self.assertRaises(ConfigurationError) as caught:
                get_settings(**{**self.home.settings.model_dump(), "queue_commit_delay": bad})
            self.assertIn("setting queue_commit_delay", str(caught.exception))


class GroupCommitTest(unittest.TestCase):
    def test_keeping_a_second_finish_commits_the_first(self) -> None:
        committed: list[str] = []
        group: GroupCommit[str] = GroupCommit(committed.append, delay=60)
        group.keep("a")
        group.keep("b")
        self.assertEqual(committed, ["a"])
        group.flush()
        self.assertEqual(committed, ["a", "b"])
        group.flush()
        self.assertEqual(committed, ["a", "b"])

    def test_a_commit_that_raises_is_logged_not_raised(self) -> None:
        def broken(item: str) -> None:
            raise StorageError("database error: gone")

        group: GroupCommit[str] = GroupCommit(broken, delay=60)
        group.keep("a")
        with self.assertLogs("agent.worker", "WARNING"):
            group.flush()
        self.assertEqual(group.committed, 1)

    def test_a_delay_must_be_above_zero(self) -> None:
        with self.assertRaises(ValueError):
            GroupCommit(print, delay=0)


@requires_real_services()
class KeptFinishThatCannotBeWrittenTest(GroupCase):
    def test_it_is_settled_as_a_failure_around_the_job_not_left_running(self) -> None:
        from agent.queues.celery_queue import CeleryQueue

        # Given a job whose run succeeded, and an audit store that refuses every end from then on
        self.topic = f"group-{uuid.uuid4().hex[:8]}"
        self.addCleanup(drop_queues, REDIS_BROKER, [self.topic])
        job_id = self.add("r-1")
        self.assertEqual(self.run_job(job_id), "done")

        def refused(*args: object, **kwargs: object) -> None:
            raise StorageError("database error: OperationalError: disk I/O error")

        self.rt.audit.end_attempt = refused  # type: ignore[method-assign]
        # When the kept finish is committed
        self.rt.group.flush()
        # Then the job is not left running under a lease nobody renews: it waits for a retry, with why
        state = self.rt.ledger.state(job_id)
        self.assertEqual(state["state"], "delayed")
        self.assertIn("disk I/O error", state["last_error"])
        self.assertEqual(CeleryQueue(self.app, settings=self.rt.settings, ledger=self.rt.ledger).stats(
            self.topic).delayed, 1)


@requires_real_services()
class WarmShutdownTest(unittest.TestCase):
    def test_a_worker_stopped_with_a_kept_finish_commits_it_before_it_exits(self) -> None:
        from agent.queues.celery_queue import CeleryQueue

        # Given a Celery worker that keeps a finish a minute, and a job it ran
        home = TempHome(broker_url=REDIS_BROKER)
        self.addCleanup(home.cleanup)
        topic = f"group-{uuid.uuid4().hex[:8]}"
        self.addCleanup(drop_queues, REDIS_BROKER, [topic])
        env = worker_env(home.settings, REDIS_BROKER, AGENT_QUEUE_COMMIT_DELAY="60", AGENT_QUEUE_LEASE="600")
        worker = CeleryWorker(env, [topic], concurrency=1, log=home.path / "worker.log")
        self.addCleanup(worker.kill)
        queue = CeleryQueue(settings=home.settings)
        self.addCleanup(queue.close)
        job_id = queue.enqueue(topic, Job(orchestrator="test_echo", run_id="r-echo", payload={"x": 1}))
        runs = Path(home.settings.home) / "runs.log"
        wait_for(lambda: runs.exists() and "r-echo" in runs.read_text(), 60, "the job to run")
        ledger = queue.ledger
        # When it is stopped (warm shutdown) before the finish is due
        worker.stop(timeout=60)
        # Then the finish was committed as the pool process ended
        self.assertEqual(worker.process.returncode, 0, (home.path / "worker.log").read_text()[-2000:])
        self.assertEqual(ledger.state(job_id)["state"], "done")
        from agent.audit import SqlAuditStore

        self.assertEqual(SqlAuditStore(home.database()).get_run("r-echo").state, "succeeded")


if __name__ == "__main__":
    unittest.main()
