"""The Celery task's body (``run_job``) in this process, against a real broker and ledger: how it
settles a claimed job when everything around it goes wrong."""

from __future__ import annotations

import unittest
import uuid

from agent.builtins import bound_registry
from agent.campaigns import Campaign, CampaignManager
from agent.leads.sample import load_sample_data
from agent.queues.ledger import SqlJobLedger
from agent.settings import get_settings
from agent.workers import execute_job
from tests.celery_support import REDIS_BROKER, drop_queues
from tests.support import TempHome, requires_real_services
from tests.test_job_ledger import Clock


@requires_real_services()
class RunJobTest(unittest.TestCase):
    def setUp(self) -> None:
        from agent.queues.celery_queue import CeleryQueue
        from agent.workers.celery_worker import WorkerRuntime, worker_app

        home = TempHome()
        self.addCleanup(home.cleanup)
        load_sample_data(home.database(), size=300, tenant="default")
        self.settings = get_settings(**{**home.settings.model_dump(), "broker_url": REDIS_BROKER})
        self.topic = f"task-{uuid.uuid4().hex[:8]}"
        self.addCleanup(drop_queues, REDIS_BROKER, [self.topic])
        self.app = worker_app(self.settings)
        self.rt = WorkerRuntime(self.settings)
        self.clock = Clock()
        self.rt.ledger = SqlJobLedger(home.database(), clock=self.clock)
        self.queue = CeleryQueue(self.app, settings=self.settings, ledger=self.rt.ledger)
        self.addCleanup(self.queue.close)

    def test_a_plan_whose_worker_died_after_it_succeeded_still_queues_its_batches_and_is_done(self) -> None:
        from agent.workers.celery_worker import run_job

        # Given a triggered campaign whose planning job ran to success, then its worker died before
        # it queued the batches or settled the job, on its only attempt
        manager = CampaignManager(self.queue, bound_registry(self.settings), topic=self.topic)
        manager.add(Campaign.parse({"id": "c", "lead_query": {"industry": "Fintech"}, "allow_delivery": True,
                                    "template": {"subject": "Hi {{ lead.company }}", "body": "Hello"},
                                    "limits": {"per_run": 12, "batch_size": 5, "max_attempts": 1}}))
        manager.activate("c")
        job_id = manager.trigger("c", key="k")["job_id"]
        claim = self.rt.ledger.claim(job_id, lease=5, holder="dead:1")
        outcome = execute_job(claim.job, registry=self.rt.registry, audit=self.rt.audit)
        batches = len(outcome.follow_ups)
        self.assertEqual(outcome.verdict, "ack")
        self.assertGreaterEqual(batches, 2)
        self.clock.advance(6)
        # When a copy of its message is run
        result = run_job(self.app, self.topic, claim.job.model_dump(mode="json"), rt=self.rt)
        # Then it does not run again and is not dead-lettered: its batches are queued, the job done
        self.assertEqual(result, "done")
        self.assertEqual(self.rt.ledger.state(job_id)["state"], "done")
        self.assertEqual(self.queue.stats(self.topic).ready, batches)
        self.assertEqual(self.queue.stats(self.topic).dead, 0)

    def test_a_finish_that_fails_with_its_audited_end_never_runs_the_job_again(self) -> None:
        from agent.envelope import make_envelope
        from agent.errors import StorageError
        from agent.queues import Job
        from agent.workers.celery_worker import run_job

        # Given a job whose orchestrator counts its runs, and a ledger whose first finish fails
        runs: list[str] = []

        class Counting:
            def run(self, payload: object, *, run_id: str) -> dict:
                runs.append(run_id)
                return make_envelope([{"x": 1}], source="t", run_id=run_id, flow="f", node="n", agent="a")

        self.rt.resolved["counting"] = Counting()
        job_id = self.queue.enqueue(self.topic, Job(orchestrator="counting", run_id="r-once"))
        real_finish, calls = self.rt.ledger.finish, []

        def flaky(claim: object) -> bool:
            calls.append(1)
            if len(calls) == 1:
                raise StorageError("database error: OperationalError: server closed the connection")
            return real_finish(claim)

        self.rt.ledger.finish = flaky  # type: ignore[method-assign]
        data = Job(orchestrator="counting", job_id=job_id, run_id="r-once").model_dump(mode="json")
        # When its message comes, and again later
        first = run_job(self.app, self.topic, data, rt=self.rt)
        self.clock.advance(3600)
        again = run_job(self.app, self.topic, data, rt=self.rt)
        # Then it ran once: the success was audited apart from the failed finish, and the job is done
        self.assertEqual((first, again, runs), ("done", "skipped", ["r-once"]))
        self.assertEqual(self.rt.audit.get_run("r-once").state, "succeeded")
        self.assertEqual(self.rt.audit.failures("r-once"), [])
        self.assertEqual(self.rt.ledger.state(job_id)["state"], "done")

    def test_a_job_whose_audit_write_fails_is_retried_then_dead_lettered_not_looped_forever(self) -> None:
        from agent.audit import AuditStore
        from agent.queues import Job
        from agent.workers.celery_worker import run_job

        # Given a job whose every run fails around the job itself (the audit store refuses it)
        class BrokenAudit(AuditStore):
            def start_run(self, *args: object, **kwargs: object) -> None:
                raise RuntimeError("audit store down")

        self.rt.audit = BrokenAudit()
        job_id = self.queue.enqueue(self.topic, Job(orchestrator="lead_orchestrator", max_attempts=2))
        data = Job(orchestrator="lead_orchestrator", job_id=job_id).model_dump(mode="json")
        # When its messages come, each after the retry is due
        results = []
        while not results or results[-1] == "retry":
            results.append(run_job(self.app, self.topic, data, rt=self.rt))
            self.clock.advance(3600)
            self.assertLess(len(results), 10, "it loops")
        # Then it was retried a few times past max_attempts (its run may have succeeded, and only what
        # came after failed), then dead-lettered with the error, and nothing is left open
        self.assertEqual(results, ["retry"] * 4 + ["dead"])
        [dead] = self.queue.dead_letters(self.topic)
        self.assertIn("audit store down", dead.meta["last_error"])
        self.assertEqual(self.rt.ledger.open_count(self.topic), 0)


class CeleryAppSettingsTest(unittest.TestCase):
    """The Celery app is configured so that work is not lost (no broker needed to check)."""

    def test_late_acks_reject_on_worker_lost_prefetch_one_and_a_long_visibility_timeout(self) -> None:
        from agent.queues.celery_queue import TASK
        from agent.workers.celery_worker import worker_app

        app = worker_app(get_settings(broker_url="redis://127.0.0.1:6379/0", broker_visibility_timeout=7200))
        conf = app.conf
        self.assertTrue(conf.task_acks_late)
        self.assertTrue(conf.task_reject_on_worker_lost)
        self.assertEqual(conf.worker_prefetch_multiplier, 1)
        self.assertEqual(conf.broker_transport_options["visibility_timeout"], 7200)
        self.assertTrue(conf.task_ignore_result)
        self.assertEqual(conf.accept_content, ["json"])
        task = app.tasks[TASK]
        self.assertTrue(task.acks_late and task.reject_on_worker_lost)

    def test_a_missing_or_foreign_broker_url_is_refused_naming_the_setting(self) -> None:
        from agent.errors import ConfigurationError
        from agent.queues.celery_queue import celery_app

        for url in (None, "http://127.0.0.1:6379"):
            with self.subTest(url=url), self.assertRaises(ConfigurationError) as caught:
                celery_app(get_settings(broker_url=url))
            self.assertIn("broker_url", str(caught.exception))


class SupervisorTest(unittest.TestCase):
    def test_the_worker_child_gets_every_setting_and_an_honest_exit_status(self) -> None:
        from pathlib import Path

        from agent.workers.celery_worker import _exit_status, _settings_env

        settings = get_settings(database_url="postgresql://app@db/agent", broker_url="redis://127.0.0.1:6379/3",
                                queue_lease=12.5, tenant="acme", home=Path("/tmp/x"))
        env = _settings_env(settings)
        self.assertEqual((env["AGENT_DATABASE_URL"], env["AGENT_BROKER_URL"], env["AGENT_QUEUE_LEASE"],
                          env["AGENT_TENANT"], env["AGENT_HOME"]),
                         ("postgresql://app@db/agent", "redis://127.0.0.1:6379/3", "12.5", "acme", "/tmp/x"))
        self.assertNotIn("AGENT_OUTBOX_DIR", env)  # unset: the child resolves it from its home as we do
        self.assertEqual(get_settings(**{k[6:].lower(): v for k, v in env.items()
                                         if k.startswith("AGENT_")}).resolved_database_url,
                         settings.resolved_database_url)
        self.assertEqual((_exit_status(-9), _exit_status(0), _exit_status(70)), (137, 0, 70))
