"""The peer of ``bench/celery_path.py``: a raw Celery app whose task does nothing but count itself.

Configured for work that must not be lost exactly as ``agent.queues.celery_queue.celery_app``
is (late acks, reject on worker lost, prefetch 1, no results, JSON, the same
visibility timeout), so the two differ only in what a task does around the
job: ours keeps the ledger and the audit trail, this one ``INCR``s a Redis
counter (how the producer knows that all its tasks ran).

    BENCH_PEER_BROKER=redis://127.0.0.1:6379/11 python -m celery -A bench.celery_peer worker -Q TOPIC ...

``BENCH_PEER_BROKER``: the broker; ``BENCH_PEER_COUNTER``: the Redis the counter lives in
(default ``redis://127.0.0.1:6379/11``); ``BENCH_PEER_BACKEND``: a result backend URL, for the
peer that keeps each task's state (started, then its result) as ours keeps its trail.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from agent.queues.celery_queue import reliable_conf

TASK = "bench.noop"
DEFAULT_BROKER = "redis://127.0.0.1:6379/11"
COUNTER_URL = os.environ.get("BENCH_PEER_COUNTER", "redis://127.0.0.1:6379/11")

_counter: Any = None


def _forget_counter() -> None:
    global _counter
    _counter = None  # a forked child opens its own connection


os.register_at_fork(after_in_child=_forget_counter)


def counter() -> Any:
    """This process's Redis client for the counters."""
    global _counter
    if _counter is None:
        import redis

        _counter = redis.Redis.from_url(COUNTER_URL)
    return _counter


def make_app(broker: str, backend: str | None = None) -> Celery:
    """A Celery app on ``broker`` with our reliability settings and the no-op task; with ``backend``
    (e.g. ``db+sqlite:///results.db``, Celery's SQLAlchemy result backend) every task's outcome is
    kept there, as ours keeps its ledger and audit trail."""
    peer = Celery("bench_peer", broker=broker, backend=backend, set_as_current=False)
    peer.conf.update(**reliable_conf(3600.0))  # exactly what our app runs with
    if backend:
        peer.conf.update(task_ignore_result=False, task_track_started=True)

    @peer.task(name=TASK, acks_late=True, reject_on_worker_lost=True)
    def noop(key: str) -> None:
        counter().incr(key)

    return peer


app = make_app(os.environ.get("BENCH_PEER_BROKER", DEFAULT_BROKER), os.environ.get("BENCH_PEER_BACKEND") or None)
