"""Faults on the production path that must lose nothing: a 1,000-lead campaign on Celery workers
(PostgreSQL store) whose pool processes are SIGKILLed mid-batch several times, and whose Redis
broker is restarted mid-campaign (empty: every queued message lost).

Each time: every batch reaches a terminal state, every lead gets exactly one message (one
outbox row and one .eml file per key), and the audit trail agrees.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import unittest
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from agent.audit import SqlAuditStore
from agent.campaigns import Campaign
from agent.campaigns.runner import CampaignRunner
from agent.leads.sample import load_sample_data
from agent.queues.celery_queue import CeleryQueue
from agent.settings import get_settings
from agent.storage.models import Contact, OutboxMessage
from tests.celery_support import RABBIT_BROKER, REDIS_BROKER, CeleryWorker, drop_queues, wait_for, worker_env
from tests.support import TempHome as TempHomeOnSqlite
from tests.support import postgres_home, requires_real_services

GUARD = 240.0
LEADS = 1000
BATCH = 50


def campaign() -> Campaign:
    return Campaign.parse({
        "id": "faults", "lead_query": {"industry": "Fintech"}, "allow_delivery": True,
        "template": {"subject": "{{ lead.company }} and pipeline quality",
                     "body": "Hi {{ lead.first_name }}, a short note about {{ lead.company }}."},
        "limits": {"per_run": LEADS, "batch_size": BATCH, "max_attempts": 10}})


class CampaignOnCelery:
    broker = ""

    def setUp(self) -> None:
        self.home = postgres_home(self)
        self.addCleanup(self.home.cleanup)
        db = self.home.database()
        load_sample_data(db, size=LEADS, tenant="default")
        with db.connect() as conn:
            self.lead_ids = sorted(conn.execute(select(Contact.id)).scalars())
        self.assertEqual(len(self.lead_ids), LEADS)
        self.topic = f"faults-{uuid.uuid4().hex[:8]}"
        self.db = db

    def start(self, broker: str) -> tuple[CampaignRunner, CeleryWorker]:
        self.settings = get_settings(**{**self.home.settings.model_dump(), "broker_url": broker})
        queue = CeleryQueue(settings=self.settings, poll=0.1, recover_after=3.0)
        self.addCleanup(queue.close)
        self.addCleanup(drop_queues, broker, [self.topic])
        worker = CeleryWorker(worker_env(self.settings, broker), [self.topic], concurrency=2,
                              log=Path(self.home.settings.home, "worker.log"))
        self.addCleanup(worker.stop)
        runner = CampaignRunner(self.settings, audit=SqlAuditStore(self.db), queue=queue, topic=self.topic)
        return runner, worker

    def held_pids(self) -> list[int]:
        with self.db.connect() as conn:
            holders = conn.execute(text("SELECT holder FROM queue_jobs WHERE state = 'running' "
                                        "AND holder IS NOT NULL")).scalars().all()
        return [int(h.rsplit(":", 1)[1]) for h in holders]

    def jobs_done(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM queue_jobs WHERE state = 'done'")).scalar_one())

    def assert_nothing_lost_nothing_twice(self, report: Any) -> None:
        batches = LEADS // BATCH
        self.assertEqual((report.batches, report.leads), (batches, LEADS))
        self.assertEqual(dict(report.states), {"succeeded": batches}, "every batch reaches a terminal state")
        # A batch run again finds its earlier attempt's sends: "duplicate", never a second message.
        self.assertEqual(report.statuses["sent"] + report.statuses["duplicate"], LEADS)
        with self.db.connect() as conn:
            rows = conn.execute(select(OutboxMessage.idempotency_key, OutboxMessage.state,
                                       OutboxMessage.lead_id)).all()
        self.assertEqual(len(rows), LEADS)
        self.assertEqual(Counter(state for _, state, _ in rows), Counter({"sent": LEADS}))
        self.assertEqual(len({lead for _, _, lead in rows}), LEADS, "no lead lost")
        files = list(Path(self.settings.resolved_outbox_dir).glob("*.eml"))
        self.assertEqual(len(files), LEADS, "one .eml per outbox key")


@requires_real_services()
class WorkerKilledMidBatchTest(CampaignOnCelery, unittest.TestCase):
    def run_with_kills(self, broker: str) -> None:
        # Given a 1,000-lead campaign in 20 batches on two Celery worker processes
        runner, worker = self.start(broker)
        report = runner.start(campaign(), lead_ids=self.lead_ids)
        # When a pool process is SIGKILLed while it holds a batch, three times over
        killed = []
        for _ in range(3):
            pid = wait_for(lambda: [p for p in self.held_pids() if p not in killed], GUARD, "a batch in hand")[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        [final] = runner.work([report], poll=0.1, timeout=GUARD)
        # Then nothing is lost and nothing is done twice, and the kills cost attempts
        self.assert_nothing_lost_nothing_twice(final)
        with self.db.connect() as conn:
            attempts = int(conn.execute(text("SELECT sum(attempts) FROM queue_jobs")).scalar_one())
        self.assertGreater(attempts, LEADS // BATCH, "a killed batch ran again")
        self.assertIsNone(worker.process.poll(), "Celery's main process lives on")

    def test_on_redis(self) -> None:
        self.run_with_kills(REDIS_BROKER)

    def test_on_rabbitmq(self) -> None:
        self.run_with_kills(RABBIT_BROKER)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on ``port``, keeping nothing on disk: a restart empties it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="agent-redis-")
        self.process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL)
        wait_for(self.ping, 20, f"redis-server on port {port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@requires_real_services()
class RedisRestartTest(CampaignOnCelery, unittest.TestCase):
    def test_a_broker_restarted_empty_mid_campaign_loses_no_lead(self) -> None:
        # Given a campaign under way on a Redis broker of the test's own
        port = free_port()
        redis_server = PrivateRedis(port)
        self.addCleanup(lambda: redis_server.kill())
        runner, worker = self.start(f"redis://127.0.0.1:{port}/0")
        report = runner.start(campaign(), lead_ids=self.lead_ids)
        wait_for(lambda: self.jobs_done() >= 3, GUARD, "three batches done")
        # When Redis dies and comes back empty: the queued messages are gone
        redis_server.kill()
        redis_server = PrivateRedis(port)
        import redis

        lost = redis.Redis(port=port).llen(self.topic) == 0 and runner.queue.ledger.open_count(self.topic) > 0
        # Then the jobs the ledger still holds open are published again, and the campaign completes
        [final] = runner.work([report], poll=0.1, timeout=GUARD)
        self.assertTrue(lost, "the restart emptied the broker while batches were still open")
        self.assert_nothing_lost_nothing_twice(final)


@requires_real_services()
class TriggeredOnCeleryTest(CampaignOnCelery, unittest.TestCase):
    def test_a_trigger_is_planned_and_delivered_by_celery_workers(self) -> None:
        # Given an active campaign on a CampaignManager whose queue is Celery
        from agent.builtins import bound_registry
        from agent.campaigns import CampaignManager

        runner, _ = self.start(REDIS_BROKER)
        manager = CampaignManager(runner.queue, bound_registry(self.settings), topic=self.topic)
        manager.add(campaign())
        manager.activate("faults")
        # When it is triggered twice with the same key, and the workers are done
        queued = manager.trigger("faults", key="launch")
        self.assertEqual(manager.trigger("faults", key="launch"), queued)
        self.assertTrue(runner.queue.join(self.topic, timeout=GUARD))
        # Then a worker planned the batches, the workers ran them, and each found lead got one message
        audit = runner.audit
        self.assertEqual(audit.get_run(queued["run_id"]).state, "succeeded")
        batches = [r for r in audit.list_runs(campaign_id="faults", limit=1000)
                   if r.orchestrator == "outreach_orchestrator"]
        leads = sum(len(r.meta["lead_ids"]) for r in batches)
        self.assertGreater(leads, 0)
        self.assertEqual({r.state for r in batches}, {"succeeded"})
        self.assertEqual(len(list(Path(self.settings.resolved_outbox_dir).glob("*.eml"))), leads)


def queue_and_worker(test: unittest.TestCase, home: Any, *, concurrency: int) -> tuple[CeleryQueue, str, CeleryWorker]:
    """A queue and an `agent worker` on Redis, on a topic of their own, for ``home``; all cleaned up.
    The queue's recover_after is far beyond any guard: a job lost would make join time out."""
    test.addCleanup(home.cleanup)
    settings = get_settings(**{**home.settings.model_dump(), "broker_url": REDIS_BROKER})
    topic = f"t-{uuid.uuid4().hex[:8]}"
    queue = CeleryQueue(settings=settings, poll=0.05, recover_after=3600)
    test.addCleanup(queue.close)
    test.addCleanup(drop_queues, REDIS_BROKER, [topic])
    worker = CeleryWorker(worker_env(settings, REDIS_BROKER), [topic], concurrency=concurrency,
                          log=Path(home.settings.home, "worker.log"))
    test.addCleanup(worker.stop)
    return queue, topic, worker


@requires_real_services()
class ForkedPoolOnPostgresTest(unittest.TestCase):
    """Celery's pool processes are forked from a parent that has used the database: each must use
    connections of its own (an inherited PostgreSQL connection fails its first query)."""

    def test_jobs_run_at_once_without_waiting_for_recovery(self) -> None:
        from agent.queues import Job

        home = postgres_home(self)
        queue, topic, worker = queue_and_worker(self, home, concurrency=2)
        queue.enqueue_many(topic, [Job(orchestrator="test_echo", run_id=f"fork-{i}") for i in range(6)])
        self.assertTrue(queue.join(topic, timeout=60), "jobs waited for recovery: a pool process failed them")
        self.assertEqual(queue.stats(topic).dead, 0)
        worker.stop()
        log = Path(home.settings.home, "worker.log").read_text()
        self.assertNotIn("raised unexpected", log, "a pool process failed on the database")


@requires_real_services()
class SupervisedWorkerTest(unittest.TestCase):
    """`agent worker` starts its Celery worker again when it dies on its own."""

    def test_a_celery_worker_killed_outright_is_started_again_and_the_jobs_finish(self) -> None:
        from agent.queues import Job

        home = TempHomeOnSqlite()
        queue, topic, worker = queue_and_worker(self, home, concurrency=1)
        # Given the Celery worker under `agent worker`, SIGKILLed with its pool
        celery = wait_for(worker.children, 30, "the Celery worker process")[0]
        pool = subprocess.run(["pgrep", "-P", str(celery)], capture_output=True, text=True).stdout.split()
        for pid in [celery, *map(int, pool)]:
            os.kill(pid, signal.SIGKILL)
        # When jobs come
        queue.enqueue_many(topic, [Job(orchestrator="test_echo", run_id=f"s-{i}") for i in range(4)])
        # Then a new Celery worker runs them, under the same supervisor
        self.assertTrue(queue.join(topic, timeout=60))
        self.assertIsNone(worker.process.poll())
        self.assertNotIn(celery, worker.children())
