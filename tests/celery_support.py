"""Real Celery workers for tests: ``agent worker --backend celery`` in a process group of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REDIS_BROKER = os.environ.get("AGENT_TEST_REDIS_BROKER", "redis://127.0.0.1:6379/7")
RABBIT_BROKER = os.environ.get("AGENT_TEST_RABBIT_BROKER", "amqp://guest:guest@127.0.0.1:5672//")


def worker_env(settings: Any, broker: str, **extra: str) -> dict[str, str]:
    """The environment of a worker process working on ``settings`` (a TempHome's) and ``broker``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(AGENT_HOME=str(settings.home), AGENT_DATABASE_URL=settings.resolved_database_url,
               AGENT_SAMPLE_DATA="off", AGENT_TENANT=settings.tenant, AGENT_OUTBOX_DIR=str(settings.resolved_outbox_dir),
               AGENT_BROKER_URL=broker, AGENT_PLUGINS="tests.celery_jobs", AGENT_QUEUE_LEASE="1.5",
               AGENT_BROKER_VISIBILITY_TIMEOUT="30", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


class CeleryWorker:
    """``agent worker`` serving ``topics`` with ``concurrency`` processes; ``stop()`` ends the group."""

    def __init__(self, env: dict[str, str], topics: list[str], *, concurrency: int = 2, log: Path | None = None) -> None:
        args = [sys.executable, "-m", "agent.cli", "worker", "--concurrency", str(concurrency), "--loglevel", "INFO",
                "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h"]
        for topic in topics:
            args += ["-Q", topic]
        self.log = log
        out = open(log, "ab") if log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(args, env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        if log is not None:
            out.close()

    def children(self) -> list[int]:
        """Pids of the pool's worker processes."""
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in found.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (warm shutdown: the job in hand is finished), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def drop_queues(broker: str, topics: list[str]) -> None:
    """Delete the broker queues a test or benchmark made: RabbitMQ keeps empty durable queues; on
    Redis, the queue lists and binding tables, which a fresh channel's ``queue_delete`` does not
    know of.  Topics must be unique (random): on Redis every key naming one goes."""
    if broker.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker)
        try:
            for topic in topics:
                keys = list(client.scan_iter(match=f"*{topic}*"))
                if keys:
                    client.delete(*keys)
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(broker, connect_timeout=5) as conn:
        channel = conn.default_channel
        for topic in topics:
            try:
                channel.queue_delete(topic)
            except Exception:
                channel = conn.channel()
