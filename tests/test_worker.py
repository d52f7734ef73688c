"""The Worker and the shared job-execution function, on the in-memory queue and audit store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import unittest
from collections.abc import Mapping
from typing import Any

from agent.audit import InMemoryAuditStore
from agent.envelope import make_envelope
from agent.errors import PayloadError
from agent.queues import InMemoryQueue, Job
from agent.registry import Registry
from agent.workers import Worker, execute_job

GUARD = 10.0


class Echo:
    """An orchestrator that answers with its payload."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        self.calls.append(run_id)
        return make_envelope([dict(payload)], source="echo", run_id=run_id)


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error, self.calls = error, 0

    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        self.calls += 1
        raise self.error


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class WorkerTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = InMemoryQueue(visibility_timeout=30, clock=self.clock)
        self.addCleanup(self.queue.stop)
        self.audit = InMemoryAuditStore()
        self.registry = Registry()

    def worker(self, **kwargs: Any) -> Worker:
        return Worker(self.queue, self.registry, audit_store=self.audit, retry_base=0.5, clock=self.clock, **kwargs)

    def test_a_job_runs_its_orchestrator_with_its_run_id_and_is_acked(self) -> None:
        # Given
        echo = Echo()
        self.registry.register("echo", echo)
        job_id = self.queue.enqueue("orchestrate", Job(orchestrator="echo", payload={"x": 1}, run_id="r1"))
        # When
        outcome = self.worker().run_once(timeout=0)
        # Then the run is done, audited, and the queue is empty
        self.assertEqual((outcome.verdict, echo.calls), ("ack", ["r1"]))
        self.assertEqual(self.audit.get_run("r1").state, "succeeded")
        self.assertEqual(self.queue.stats("orchestrate").ready + self.queue.stats("orchestrate").in_flight, 0)
        self.assertTrue(job_id)

    def test_a_failing_job_is_retried_after_its_backoff_then_dead_lettered_with_its_failure(self) -> None:
        # Given an orchestrator that always fails, and a job allowed two attempts
        self.registry.register("down", Failing(ConnectionError("crm down")))
        self.queue.enqueue("orchestrate", Job(orchestrator="down", run_id="r2", max_attempts=2))
        worker = self.worker()
        # When it fails once, the retry is not visible before its delay
        first = worker.run_once(timeout=0)
        self.assertEqual(first.verdict, "retry")
        self.assertIsNone(worker.run_once(timeout=0))
        # And after the delay it fails for good
        self.clock.now += first.delay + 0.001
        second = worker.run_once(timeout=0)
        # Then the job is dead-lettered and the run audited as dead with both failures
        self.assertEqual(second.verdict, "dead")
        self.assertEqual([j.run_id for j in self.queue.dead_letters("orchestrate")], ["r2"])
        self.assertEqual(self.audit.get_run("r2").state, "dead")
        self.assertEqual(len(self.audit.failures("r2")), 2)

    def test_bad_input_is_dead_at_once(self) -> None:
        # Given an orchestrator that refuses its payload
        self.registry.register("strict", Failing(PayloadError("payload.x", "is required")))
        self.queue.enqueue("orchestrate", Job(orchestrator="strict", run_id="r3", max_attempts=5))
        # When
        outcome = self.worker().run_once(timeout=0)
        # Then it is not retried
        self.assertEqual(outcome.verdict, "dead")
        self.assertEqual(len(self.queue.dead_letters("orchestrate")), 1)

    def test_an_unknown_orchestrator_is_dead_at_once(self) -> None:
        self.queue.enqueue("orchestrate", Job(orchestrator="nobody", run_id="r4"))
        self.assertEqual(self.worker().run_once(timeout=0).verdict, "dead")

    def test_a_job_that_always_fails_does_not_hold_up_the_others(self) -> None:
        # Given a failing job first and ten good ones after it, and threads working the queue
        echo = Echo()
        self.registry.register("echo", echo)
        self.registry.register("down", Failing(RuntimeError("bug")))
        self.queue.enqueue("orchestrate", Job(orchestrator="down", max_attempts=3))
        for i in range(10):
            self.queue.enqueue("orchestrate", Job(orchestrator="echo", run_id=f"ok{i}"))
        worker = Worker(self.queue, self.registry, audit_store=self.audit, retry_base=0.0, poll=0.01)
        # When
        worker.start(threads=3)
        drained = self.queue.join("orchestrate", timeout=GUARD)
        worker.stop()
        worker.join(GUARD)
        # Then every good job ran once and the bad one is dead-lettered
        self.assertTrue(drained)
        self.assertEqual(sorted(echo.calls), sorted(f"ok{i}" for i in range(10)))
        self.assertEqual(len(self.queue.dead_letters("orchestrate")), 1)

    def test_stop_lets_the_job_in_hand_finish_and_takes_no_new_one(self) -> None:
        # Given a job that waits for a signal, and one behind it
        started, release = threading.Event(), threading.Event()

        class Slow:
            def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
                started.set()
                release.wait(GUARD)
                return make_envelope([], source="slow", run_id=run_id)

        self.registry.register("slow", Slow())
        self.queue.enqueue("orchestrate", Job(orchestrator="slow", run_id="first"))
        self.queue.enqueue("orchestrate", Job(orchestrator="slow", run_id="second"))
        worker = Worker(self.queue, self.registry, audit_store=self.audit, poll=0.01)
        worker.start(threads=1)
        self.assertTrue(started.wait(GUARD))
        # When it is stopped mid-job
        worker.stop()
        release.set()
        self.assertTrue(worker.join(GUARD))
        # Then the first job was finished and acked; the second was never taken
        self.assertEqual(self.audit.get_run("first").state, "succeeded")
        self.assertIsNone(self.audit.get_run("second"))
        self.assertEqual(self.queue.stats("orchestrate").ready, 1)

    def test_a_job_redelivered_after_its_run_succeeded_is_acked_without_running_again(self) -> None:
        # Given a run that already succeeded (its worker died before the ack)
        echo = Echo()
        self.registry.register("echo", echo)
        self.audit.start_run("done", orchestrator="echo")
        self.audit.set_state("done", "running")
        self.audit.set_state("done", "succeeded")
        self.queue.enqueue("orchestrate", Job(orchestrator="echo", run_id="done"))
        # When the job comes again
        outcome = self.worker().run_once(timeout=0)
        # Then it is acked and the orchestrator is not called
        self.assertEqual((outcome.verdict, echo.calls), ("ack", []))

    def test_a_worker_on_a_stopped_queue_ends_its_loop(self) -> None:
        worker = Worker(self.queue, self.registry, poll=0.01)
        self.queue.stop()
        worker.start(threads=1)
        self.assertTrue(worker.join(GUARD))

    def test_each_thread_beats_its_heartbeat(self) -> None:
        # Given / When
        worker = self.worker()
        self.clock.now = 42.0
        worker.run_once(timeout=0)
        # Then
        self.assertEqual(worker.heartbeats[threading.current_thread().name], 42.0)

    def test_execute_job_translates_a_library_error_and_says_retry(self) -> None:
        # Given a job on its first attempt whose orchestrator raises a bare error
        self.registry.register("bare", Failing(KeyError("x")))
        job = Job(orchestrator="bare", attempts=1, max_attempts=3)
        # When
        outcome = execute_job(job, registry=self.registry)
        # Then
        self.assertEqual((outcome.verdict, type(outcome.error).__name__), ("retry", "AgentCallError"))


class SigtermTest(unittest.TestCase):
    def test_sigterm_finishes_the_job_in_hand_and_exits_cleanly(self) -> None:
        # Given a worker process in the middle of a job
        script = textwrap.dedent("""
            import sys, threading
            from agent.envelope import make_envelope
            from agent.queues import InMemoryQueue, Job
            from agent.registry import Registry
            from agent.workers import Worker
            done = []
            class Slow:
                def run(self, payload, *, run_id):
                    print("in job", flush=True)
                    sys.stdin.readline()          # the test's SIGTERM arrives while we wait here
                    done.append(run_id)
                    return make_envelope([], source="slow", run_id=run_id)
            registry = Registry(); registry.register("slow", Slow())
            queue = InMemoryQueue()
            queue.enqueue("orchestrate", Job(orchestrator="slow", run_id="a"))
            queue.enqueue("orchestrate", Job(orchestrator="slow", run_id="b"))
            Worker(queue, registry, poll=0.05).run(threads=1)
            print("finished", done, queue.stats("orchestrate").ready, flush=True)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ})
        self.addCleanup(proc.kill)
        self.assertEqual(proc.stdout.readline().strip(), "in job")
        # When it gets SIGTERM (and says so), then its job is let go
        proc.send_signal(signal.SIGTERM)
        self.assertIn("taking no new one", proc.stderr.readline())
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=GUARD * 3)
        # Then it finished the job in hand, took no other, and exited 0
        self.assertEqual(proc.returncode, 0)
        self.assertIn("finished ['a'] 1", out)


if __name__ == "__main__":
    unittest.main()
