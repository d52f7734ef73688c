"""One job-queue contract, run against every backend: the in-memory queue with Worker threads,
and Celery on Redis and on RabbitMQ with real worker processes.

What a producer can count on whatever runs the jobs: every job runs, a key
queues its work once, a job that always fails is dead-lettered after
``max_attempts`` with its failure audited and blocks nobody, a job whose
consumer died is delivered again under its id, bad input is refused naming
the field, ``join`` tells a drained topic from a busy one, a stopped queue
takes nothing.
"""

from __future__ import annotations

import os
import signal
import unittest
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from agent.audit import SqlAuditStore
from agent.errors import ConfigurationError, InvalidInput, PayloadError
from agent.queues import InMemoryQueue, Job
from agent.registry import Registry
from agent.workers import Worker
from tests import celery_jobs
from tests.celery_support import RABBIT_BROKER, REDIS_BROKER, CeleryWorker, drop_queues, wait_for, worker_env
from tests.support import TempHome, requires_real_services

GUARD = 60.0


class JobQueueContract:
    """Backends provide ``make_queue``, ``start_consumers``, ``die_holding`` and ``deliveries``."""

    def make_queue(self) -> Any:
        raise NotImplementedError

    def start_consumers(self) -> None:
        raise NotImplementedError

    def die_holding(self, job_id: str, run_id: str) -> None:
        """A consumer takes ``job_id`` and dies with it in hand."""
        raise NotImplementedError

    def deliveries(self, job_id: str) -> int:
        raise NotImplementedError

    def setUp(self) -> None:
        self.home = TempHome(plugins="tests.celery_jobs", retry_base=0.05)
        self.addCleanup(self.home.cleanup)
        self.topic = f"contract-{uuid.uuid4().hex[:10]}"
        self.audit = SqlAuditStore(self.home.database())
        self.queue = self.make_queue()

    def runs(self, name: str | None = None) -> list[str]:
        log = Path(self.home.settings.home, "runs.log")
        lines = log.read_text().split("\n") if log.exists() else []
        return [line.split()[1] for line in lines if line and (name is None or line.startswith(name + " "))]

    def drained(self) -> None:
        self.assertTrue(self.queue.join(self.topic, timeout=GUARD), "the topic did not drain")

    # -- the contract ---------------------------------------------------------------------------
    def test_every_job_runs_and_join_reports_the_topic_drained(self) -> None:
        # Given twenty jobs
        ids = self.queue.enqueue_many(self.topic, [Job(orchestrator="test_echo", run_id=f"echo-{i}",
                                                       payload={"i": i}) for i in range(20)])
        # When consumers work the topic
        self.start_consumers()
        self.drained()
        # Then each ran, each run succeeded in the audit trail, and nothing is left
        self.assertEqual(sorted(set(self.runs("echo"))), sorted(f"echo-{i}" for i in range(20)))
        self.assertEqual(len(set(ids)), 20)
        self.assertTrue(all(self.audit.get_run(f"echo-{i}").state == "succeeded" for i in range(20)))
        stats = self.queue.stats(self.topic)
        self.assertEqual((stats.ready, stats.in_flight, stats.delayed, stats.dead), (0, 0, 0, 0))

    def test_the_same_idempotency_key_queues_the_work_once(self) -> None:
        # Given the same trigger twice
        first = self.queue.enqueue(self.topic, Job(orchestrator="test_echo", run_id="once", idempotency_key="k-1"))
        second = self.queue.enqueue(self.topic, Job(orchestrator="test_echo", run_id="twice", idempotency_key="k-1"))
        # When it has run, and the trigger comes a third time
        self.start_consumers()
        self.drained()
        third = self.queue.enqueue(self.topic, Job(orchestrator="test_echo", run_id="thrice", idempotency_key="k-1"))
        self.drained()
        # Then one job, one run
        self.assertEqual({first, second, third}, {first})
        self.assertEqual(self.runs(), ["once"])

    def test_a_job_that_always_fails_is_dead_lettered_after_max_attempts_and_blocks_nobody(self) -> None:
        # Given a job that always fails, allowed three attempts, queued before ten good ones
        bad = self.queue.enqueue(self.topic, Job(orchestrator="test_fail", run_id="bad", max_attempts=3))
        self.queue.enqueue_many(self.topic, [Job(orchestrator="test_echo", run_id=f"good-{i}") for i in range(10)])
        # When
        self.start_consumers()
        self.drained()
        # Then it ran three times and lies dead with its last error; the others all ran
        self.assertEqual(self.runs("fail"), ["bad"] * 3)
        self.assertEqual(len(set(self.runs("echo"))), 10)
        dead = self.queue.dead_letters(self.topic)
        self.assertEqual([(j.job_id, j.attempts) for j in dead], [(bad, 3)])
        self.assertIn("always fails", dead[0].meta["last_error"])
        # And the audit trail says so
        run = self.audit.get_run("bad")
        self.assertEqual((run.state, len(self.audit.failures("bad"))), ("dead", 3))
        self.assertEqual(self.queue.stats(self.topic).dead, 1)

    def test_a_job_whose_consumer_died_is_delivered_again_under_the_same_id(self) -> None:
        # Given a job taken by a consumer that dies with it in hand
        job_id = self.queue.enqueue(self.topic, Job(orchestrator="test_hold", run_id="held"))
        self.die_holding(job_id, "held")
        # When the consumers carry on
        self.start_consumers()
        self.drained()
        # Then the same job was delivered again and finished
        self.assertGreaterEqual(self.deliveries(job_id), 2)
        run = self.audit.get_run("held")
        self.assertEqual((run.state, run.job_id), ("succeeded", job_id))

    def test_bad_input_is_refused_naming_the_field_and_nothing_is_queued(self) -> None:
        with self.assertRaises(InvalidInput) as bad_topic:
            self.queue.enqueue("no spaces allowed", Job(orchestrator="test_echo"))
        with self.assertRaises(PayloadError) as bad_job:
            self.queue.enqueue(self.topic, {"orchestrator": "test_echo", "max_attempts": 0})
        with self.assertRaises(PayloadError) as bad_batch:
            self.queue.enqueue_many(self.topic, [Job(orchestrator="test_echo"), {"orchestrator": ""}])
        self.assertEqual((bad_topic.exception.field, bad_job.exception.field, bad_batch.exception.field),
                         ("topic", "job.max_attempts", "jobs[1].orchestrator"))
        stats = self.queue.stats(self.topic)
        self.assertEqual((stats.ready, stats.in_flight, stats.delayed, stats.dead), (0, 0, 0, 0))

    def test_join_says_false_while_work_is_left(self) -> None:
        self.queue.enqueue(self.topic, Job(orchestrator="test_echo"))
        self.assertFalse(self.queue.join(self.topic, timeout=0.2))
        self.assertEqual(self.queue.stats(self.topic).ready, 1)

    def test_a_stopped_queue_takes_no_new_job(self) -> None:
        self.queue.stop()
        with self.assertRaises(ConfigurationError):
            self.queue.enqueue(self.topic, Job(orchestrator="test_echo"))
        self.assertEqual(self.queue.stats(self.topic).ready, 0)


class InMemoryBackendTest(JobQueueContract, unittest.TestCase):
    def make_queue(self) -> InMemoryQueue:
        queue = InMemoryQueue(visibility_timeout=0.5, requeue_check_interval=0.05)
        self.addCleanup(queue.stop)
        self.counts: Counter[str] = Counter()
        dequeue = queue.dequeue

        def counting(topic: str, timeout: float | None = None) -> Job | None:
            job = dequeue(topic, timeout)
            if job is not None:
                self.counts[job.job_id] += 1
            return job

        queue.dequeue = counting  # type: ignore[method-assign]
        self.registry = Registry()
        celery_jobs.register(self.registry, self.home.settings.home)
        return queue

    def start_consumers(self) -> None:
        Path(self.home.settings.home, "release").touch()
        worker = Worker(self.queue, self.registry, topic=self.topic, audit_store=self.audit, poll=0.05,
                        retry_base=0.05)
        worker.start(2)
        self.addCleanup(worker.join, GUARD)
        self.addCleanup(worker.stop)

    def die_holding(self, job_id: str, run_id: str) -> None:
        job = self.queue.dequeue(self.topic, timeout=GUARD)  # taken, then never settled
        self.assertEqual(job.job_id, job_id)

    def deliveries(self, job_id: str) -> int:
        return self.counts[job_id]


class CeleryBackend(JobQueueContract):
    broker = ""

    def make_queue(self) -> Any:
        from agent.queues.celery_queue import CeleryQueue
        from agent.settings import get_settings

        self.settings = get_settings(**{**self.home.settings.model_dump(), "broker_url": self.broker})
        queue = CeleryQueue(settings=self.settings, poll=0.05)
        self.addCleanup(queue.close)
        self.addCleanup(drop_queues, self.broker, [self.topic])
        self.worker: CeleryWorker | None = None
        return queue

    def start_consumers(self) -> None:
        if self.worker is None:
            self.worker = CeleryWorker(worker_env(self.settings, self.broker, AGENT_RETRY_BASE="0.05"), [self.topic],
                                       log=Path(self.home.settings.home, "worker.log"))
            self.addCleanup(self.worker.stop)

    def die_holding(self, job_id: str, run_id: str) -> None:
        self.start_consumers()
        held = Path(self.home.settings.home, "held", run_id)
        pid = int(wait_for(lambda: held.exists() and held.read_text(), GUARD, "a worker to hold the job"))
        os.kill(pid, signal.SIGKILL)  # the pool process dies mid-job; Celery's main process lives on
        held.unlink()
        Path(self.home.settings.home, "release").touch()

    def deliveries(self, job_id: str) -> int:
        return self.queue.ledger.state(job_id)["attempts"]


@requires_real_services()
class CeleryRedisBackendTest(CeleryBackend, unittest.TestCase):
    broker = REDIS_BROKER


@requires_real_services()
class CeleryRabbitBackendTest(CeleryBackend, unittest.TestCase):
    broker = RABBIT_BROKER
