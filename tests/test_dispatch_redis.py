"""RedisDispatcher: slots and token buckets shared by worker processes (needs USE_REAL_TESTS=1 and Redis).

Every test uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import unittest
import uuid
from pathlib import Path
from typing import Any

from agent.dispatch import RedisDispatcher
from agent.errors import LimitTimeout
from tests.support import requires_real_services
from tests.test_dispatch import Events, Holder, release_all

REDIS_URL = os.environ.get("AGENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]
AGENT = "crm"
ONE_SLOT = {AGENT: {"concurrency": 1}}


class Stop(Exception):
    """Raised by a recording sleep, so a rate-limit wait ends the call instead of sleeping."""


@requires_real_services()
class RedisDispatcherTests(unittest.TestCase):
    def setUp(self) -> None:
        import redis

        self.prefix = f"test:{uuid.uuid4().hex}"
        self.client = redis.Redis.from_url(REDIS_URL)
        self.addCleanup(self.client.close)
        self.client.ping()  # no Redis is a failure here, never a skip
        self.addCleanup(self.delete_keys)

    def delete_keys(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*"))
        if keys:
            self.client.delete(*keys)

    def worker(self, limits: Any = ONE_SLOT, **options: Any) -> RedisDispatcher:
        """A dispatcher as one worker process would have it, on this test's prefix."""
        dispatcher = RedisDispatcher(REDIS_URL, limits, prefix=self.prefix, **options)
        self.addCleanup(dispatcher.client.close)
        self.addCleanup(dispatcher.close)
        return dispatcher

    # -- shared concurrency ------------------------------------------------------------
    def test_a_second_worker_waits_while_the_first_holds_the_only_slot(self) -> None:
        # Given
        events = Events()
        first, second = self.worker(), self.worker(observer=events)
        with first.slot(AGENT):
            # When
            waiter = Holder(second).start()
            self.addCleanup(release_all, waiter)
            # Then
            self.assertTrue(events.wait_for("wait"))
            self.assertFalse(waiter.entered.is_set())

    def test_a_waiting_worker_proceeds_when_the_first_releases(self) -> None:
        # Given
        events = Events()
        first, second = self.worker(), self.worker(observer=events)
        with first.slot(AGENT):
            waiter = Holder(second).start()
            self.addCleanup(release_all, waiter)
            self.assertTrue(events.wait_for("wait"))
        # When the first worker's slot is released (leaving the block above)
        # Then
        self.assertTrue(waiter.entered.wait(10))
        waiter.finish()
        self.assertIsNone(waiter.error)

    # -- leases ------------------------------------------------------------------------
    def test_a_slot_held_by_a_killed_worker_is_freed_when_its_lease_expires(self) -> None:
        # Given a child process holding the only slot on a one-second lease
        code = textwrap.dedent(f"""
            import threading
            from agent.dispatch import RedisDispatcher
            dispatcher = RedisDispatcher({REDIS_URL!r}, {ONE_SLOT!r}, lease=1.0, prefix={self.prefix!r})
            with dispatcher.slot({AGENT!r}):
                print("held", flush=True)
                threading.Event().wait()
        """)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self.reap, child)
        self.assertEqual(child.stdout.readline().strip(), "held", child.stderr.read() if child.poll() else "")
        dispatcher = self.worker()
        held_before = dispatcher.in_use(AGENT)
        # When it dies without releasing
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        with dispatcher.slot(AGENT, timeout=10):
            acquired = True
        # Then
        self.assertEqual((held_before, acquired), (1, True))

    @staticmethod
    def reap(child: subprocess.Popen) -> None:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)

    def test_a_live_holder_keeps_its_slot_beyond_its_lease(self) -> None:
        # Given a holder whose lease (0.3s) is shorter than another worker's wait
        holder, other = self.worker(lease=0.3), self.worker()
        with holder.slot(AGENT):
            # When / Then the renewer keeps the lease alive for the whole wait
            with self.assertRaises(LimitTimeout):
                with other.slot(AGENT, timeout=0.8):
                    self.fail("took a slot that is still held")

    def test_a_worker_with_a_shorter_lease_does_not_cut_short_a_longer_lease(self) -> None:
        # Given a worker holding one of two slots on a 30s lease
        two_slots = {AGENT: {"concurrency": 2}}
        holder, brief, third = self.worker(two_slots, lease=30), self.worker(two_slots, lease=0.1), self.worker()
        with holder.slot(AGENT):
            # When a worker with a 0.1s lease takes and gives back the other slot
            with brief.slot(AGENT):
                pass
            # Then the 30s lease still counts against a limit of one
            with self.assertRaises(LimitTimeout):
                with third.slot(AGENT, timeout=1.0):
                    self.fail("took a slot while a live 30s lease holds it")

    # -- shared token bucket -----------------------------------------------------------
    def bucket_workers(self) -> tuple[list[float], RedisDispatcher, RedisDispatcher]:
        waits: list[float] = []

        def stop(seconds: float) -> None:
            waits.append(seconds)
            raise Stop(seconds)

        limits = {AGENT: {"rates": [{"rate": 1, "burst": 2}], "breaker": None}}
        return waits, self.worker(limits, sleep=stop), self.worker(limits, sleep=stop)

    def test_calls_within_the_burst_across_workers_do_not_wait(self) -> None:
        # Given
        waits, first, second = self.bucket_workers()
        # When
        for worker in (first, second):
            with worker.slot(AGENT):
                pass
        # Then
        self.assertEqual(waits, [])

    def test_workers_share_one_token_bucket(self) -> None:
        # Given a burst of two spent by one call on each worker
        waits, first, second = self.bucket_workers()
        for worker in (first, second):
            with worker.slot(AGENT):
                pass
        # When the first worker calls again
        with self.assertRaises(Stop):
            with first.slot(AGENT):
                self.fail("called without a token")
        # Then it had to wait for a token (at most 1/rate)
        self.assertEqual(len(waits), 1)
        self.assertTrue(0 < waits[0] <= 1.0, waits)
