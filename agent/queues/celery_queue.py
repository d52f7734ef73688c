"""``CeleryQueue``: jobs published to Celery workers on Redis or RabbitMQ, their truth in our store.

The producer half of the queue contract on a broker.  ``enqueue`` records the
job in the ``SqlJobLedger`` first, then publishes one message to the topic's
Celery queue; Celery workers (``agent worker --backend celery``) run it with
the same ``execute_job`` as the local ``Worker``.  Attempts, dead letters and
"is the topic drained" are answered from the ledger, never from the broker,
and a job whose message the broker lost (a restart without persistence, a
publish that failed) is published again by ``recover``, which ``join`` runs
while it waits.  Copies of a message are harmless: the ledger lets one run at
a time and none after the job is done.

The Celery app is configured for work that must not be lost: late
acknowledgement, reject on worker lost, prefetch 1, a broker visibility
timeout (Redis) above the longest job, JSON only, no result backend (fan-in is
counted in our store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from agent.errors import ConfigurationError, StorageError
from agent.logs import get_logger
from agent.queues.base import Job, JobQueue, QueueStats, check_topic
from agent.queues.ledger import SqlJobLedger
from agent.settings import Settings, get_settings

__all__ = ["CeleryQueue", "celery_app", "reliable_conf", "publish", "TASK"]

log = get_logger("agent.queue")

TASK = "agent.run_job"


def celery_app(settings: Settings | None = None, *, broker: str | None = None) -> Any:
    """A Celery app on ``broker`` (default: the ``broker_url`` setting) configured for our jobs."""
    from celery import Celery

    settings = settings or get_settings()
    url = broker or settings.broker_url
    if not url:
        raise ConfigurationError("setting broker_url: the Celery backend needs a broker (AGENT_BROKER_URL), "
                                 "e.g. redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//")
    if not url.startswith(("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")):
        raise ConfigurationError("setting broker_url: must be a redis:// or amqp:// URL")
    app = Celery("agent", broker=url, set_as_current=False)
    app.conf.update(**reliable_conf(settings.broker_visibility_timeout), task_default_queue="orchestrate")
    return app


def reliable_conf(visibility_timeout: float) -> dict[str, Any]:
    """Celery settings under which work is not lost (also what the benchmark's raw peer runs with)."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_transport_options": {"visibility_timeout": visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


def publish(app: Any, topic: str, job: Job | str, *, countdown: float | None = None, producer: Any = None) -> None:
    """Send one message asking a worker to run ``job`` (or the job of that id) on ``topic``: it names
    the job, whose whole text the worker reads from the ledger when it claims it."""
    job_id = job if isinstance(job, str) else job.job_id
    app.send_task(TASK, args=[topic, job_id], task_id=job_id, queue=topic,
                  countdown=countdown, producer=producer)


class CeleryQueue(JobQueue):
    """Publishes jobs to Celery; ``ledger`` (default: the settings' database) keeps their state.

    ``poll``: seconds between looks at the ledger while ``join`` waits.
    ``recover_after`` (default: the ``queue_recover_after`` setting): how long
    an open job may go untouched before ``join`` / ``recover`` publish it again.
    """

    def __init__(self, app: Any = None, *, settings: Settings | None = None, ledger: SqlJobLedger | None = None,
                 poll: float = 0.2, recover_after: float | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app if app is not None else celery_app(self.settings)
        if ledger is None:
            from agent.storage.db import Database

            ledger = SqlJobLedger(Database.for_settings(self.settings))
        self.ledger = ledger
        self.poll = poll
        self.recover_after = self.settings.queue_recover_after if recover_after is None else recover_after
        self._stopped = threading.Event()
        self._last_recovery = time.monotonic()  # kept across join() calls: callers often join in short waits
        self._unpublished: dict[str, tuple[str, Job]] = {}  # recorded, but the broker was down
        self._unpublished_lock = threading.Lock()

    def enqueue(self, topic: str, job: Job | Mapping[str, Any]) -> str:
        check_topic(topic)
        parsed = Job.parse(job)
        if self._stopped.is_set():
            raise ConfigurationError("the queue is stopped; it takes no new jobs")
        job_id, created = self.ledger.add(topic, parsed)
        if created:
            self._publish(topic, parsed)
        return job_id

    def enqueue_many(self, topic: str, jobs: Iterable[Job | Mapping[str, Any]]) -> list[str]:
        """Every job checked, the new ones recorded in one statement, then published over one connection."""
        check_topic(topic)
        parsed = [Job.parse(job, f"jobs[{i}]") for i, job in enumerate(jobs)]
        if self._stopped.is_set():
            raise ConfigurationError("the queue is stopped; it takes no new jobs")
        added = self.ledger.add_many(topic, parsed)
        fresh = [job for job, (_, created) in zip(parsed, added) if created]
        if fresh:
            try:
                with self.app.producer_or_acquire() as producer:
                    for job in fresh:
                        publish(self.app, topic, job, producer=producer)
            except Exception as exc:  # recorded all the same: join() and recover() publish what did not go
                log.warning("%d job(s) not all published (%s: %s); they are kept and will be published again",
                            len(fresh), type(exc).__name__, exc)
                with self._unpublished_lock:
                    self._unpublished.update({job.job_id: (topic, job) for job in fresh})
        return [job_id for job_id, _ in added]

    def _publish(self, topic: str, job: Job, countdown: float | None = None) -> bool:
        try:
            publish(self.app, topic, job, countdown=countdown)
        except Exception as exc:  # the broker is down: the job is recorded; join() and recover() send it
            log.warning("job %s: not published (%s: %s); it is kept and will be published again",
                        job.job_id, type(exc).__name__, exc)
            with self._unpublished_lock:
                self._unpublished[job.job_id] = (topic, job)
            return False
        with self._unpublished_lock:
            self._unpublished.pop(job.job_id, None)
        return True

    def _publish_kept(self) -> None:
        """Try again the jobs this queue recorded while the broker was down."""
        with self._unpublished_lock:
            kept = list(self._unpublished.values())
        for topic, job in kept:
            if not self._publish(topic, job):
                return  # still down: the rest can wait for the next look

    def recover(self, topic: str | None = None, *, after: float | None = None) -> int:
        """Publish again the open jobs whose message may be lost; how many were sent."""
        sent = 0
        for job_topic, job in self.ledger.overdue(topic, after=self.recover_after if after is None else after):
            sent += self._publish(job_topic, job)
        if sent:
            log.warning("recovered %d job(s) whose message may have been lost", sent)
        return sent

    def dead_letters(self, topic: str) -> list[Job]:
        return self.ledger.dead_letters(check_topic(topic))

    def stats(self, topic: str) -> QueueStats:
        return self.ledger.stats(check_topic(topic))

    def join(self, topic: str | None = None, timeout: float | None = None) -> bool:
        if topic is not None:
            check_topic(topic)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.ledger.open_count(topic) > 0:
            now = time.monotonic()
            if self._unpublished:
                self._publish_kept()
            if now - self._last_recovery >= self.recover_after:
                self._last_recovery = now
                try:
                    self.recover(topic)
                except StorageError as exc:  # the store is busy or down: the next round tries again
                    log.warning("recovery on %s failed: %s", topic, exc)
            if deadline is not None and now >= deadline:
                return False
            wait = self.poll if deadline is None else min(self.poll, max(0.0, deadline - now))
            time.sleep(wait)  # a poll of the ledger, the only place that knows
        return True

    def stop(self) -> None:
        self._stopped.set()

    def close(self) -> None:
        """Release the app's broker connections."""
        self.stop()
        self.app.close()
