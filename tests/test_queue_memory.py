"""The queue contract (``QueueContract``, reusable by every backend) run against ``InMemoryQueue``."""

from __future__ import annotations

import threading
import unittest
from typing import Any

from agent.errors import ConfigurationError, InvalidInput, PayloadError
from agent.queues import InMemoryQueue, Job, Queue, QueueStats

TOPIC = "orchestrate"


class FakeClock:
    """The queue's clock: time moves only when a test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def job(**fields: Any) -> dict[str, Any]:
    return {"orchestrator": "campaign", **fields}


def start_workers(queue: Queue, count: int) -> tuple[list[threading.Thread], list[str]]:
    """Threads that take jobs of TOPIC and ack them until the queue is stopped; the ids they acked."""
    acked: list[str] = []  # list.append is atomic: no lock needed

    def loop() -> None:
        while (taken := queue.dequeue(TOPIC)) is not None:
            queue.ack(taken.job_id)
            acked.append(taken.job_id)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, acked


def dequeue_in_thread(queue: Queue) -> tuple[threading.Thread, list[Job | None]]:
    """A thread that calls ``dequeue(TOPIC)`` with no timeout; returns once it is about to."""
    got: list[Job | None] = []
    calling = threading.Event()
    thread = threading.Thread(target=lambda: (calling.set(), got.append(queue.dequeue(TOPIC))), daemon=True)
    thread.start()
    calling.wait(10)
    return thread, got


class QueueContract:
    """What every queue backend does.  A backend's test case provides ``make_queue(**kw)``
    (``visibility_timeout`` and the like as keywords) and may override ``advance``."""

    clock: FakeClock

    def make_queue(self, **kw: Any) -> Queue:
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.clock = FakeClock()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for the queue's timeouts and delays."""
        self.clock.advance(seconds)

    # -- enqueue, dequeue, ack ------------------------------------------------------------
    def test_a_dequeued_job_is_the_enqueued_one_counting_one_attempt(self):
        # Given a queue with one job
        queue = self.make_queue()
        job_id = queue.enqueue(TOPIC, job(payload={"lead": 7}))

        # When it is dequeued
        taken = queue.dequeue(TOPIC, timeout=0)

        # Then it is that job, on its first attempt
        self.assertEqual((taken.job_id, taken.payload, taken.attempts), (job_id, {"lead": 7}, 1))

    def test_an_acked_job_is_gone(self):
        # Given a job taken from the queue
        queue = self.make_queue()
        queue.enqueue(TOPIC, job())
        taken = queue.dequeue(TOPIC, timeout=0)

        # When it is acked
        queue.ack(taken.job_id)

        # Then nothing is left, not even after its visibility timeout
        self.advance(3600)
        self.assertIsNone(queue.dequeue(TOPIC, timeout=0))
        self.assertEqual(queue.stats(TOPIC), QueueStats(ready=0, in_flight=0, delayed=0, dead=0))

    def test_jobs_of_a_topic_come_out_in_the_order_they_went_in(self):
        # Given five jobs enqueued one after the other
        queue = self.make_queue()
        ids = [queue.enqueue(TOPIC, job(payload={"n": n})) for n in range(5)]

        # When they are dequeued
        taken = [queue.dequeue(TOPIC, timeout=0).job_id for _ in ids]

        # Then they come in the same order
        self.assertEqual(taken, ids)

    def test_topics_do_not_share_jobs(self):
        # Given one job on each of two topics
        queue = self.make_queue()
        first = queue.enqueue("first", job())
        second = queue.enqueue("second", job())

        # When each topic is drained
        from_first = [queue.dequeue("first", timeout=0), queue.dequeue("first", timeout=0)]
        from_second = queue.dequeue("second", timeout=0)

        # Then each gave only its own job
        self.assertEqual(from_first[0].job_id, first)
        self.assertIsNone(from_first[1])
        self.assertEqual(from_second.job_id, second)

    def test_enqueue_many_returns_the_ids_in_the_order_the_jobs_come_out(self):
        # Given / When three jobs enqueued at once
        queue = self.make_queue()
        ids = queue.enqueue_many(TOPIC, [job(payload={"n": n}) for n in range(3)])

        # Then they come out in that order
        self.assertEqual([queue.dequeue(TOPIC, timeout=0).job_id for _ in range(3)], ids)

    # -- idempotency -----------------------------------------------------------------------
    def test_a_known_idempotency_key_returns_the_first_job_id_and_adds_nothing(self):
        # Given a job enqueued with a key
        queue = self.make_queue()
        first = queue.enqueue(TOPIC, job(idempotency_key="lead-7:step-1"))

        # When a second job with the same key is enqueued
        second = queue.enqueue(TOPIC, job(idempotency_key="lead-7:step-1", payload={"other": True}))

        # Then it is the first job's id and only one job is queued
        self.assertEqual(second, first)
        self.assertEqual(queue.stats(TOPIC).ready, 1)

    def test_an_idempotency_key_is_still_known_after_its_job_was_acked(self):
        # Given a keyed job that was done and acked
        queue = self.make_queue()
        first = queue.enqueue(TOPIC, job(idempotency_key="k"))
        queue.ack(queue.dequeue(TOPIC, timeout=0).job_id)

        # When the same key is enqueued again
        again = queue.enqueue(TOPIC, job(idempotency_key="k"))

        # Then the first id comes back and there is no work to do
        self.assertEqual(again, first)
        self.assertIsNone(queue.dequeue(TOPIC, timeout=0))

    def test_the_same_idempotency_key_on_another_topic_is_another_job(self):
        # Given a keyed job on one topic
        queue = self.make_queue()
        first = queue.enqueue("first", job(idempotency_key="k"))

        # When the key is used on another topic
        other = queue.enqueue("second", job(idempotency_key="k"))

        # Then that is a job of its own
        self.assertNotEqual(other, first)
        self.assertEqual(queue.dequeue("second", timeout=0).job_id, other)

    def test_a_dead_lettered_job_releases_its_idempotency_key(self):
        # Given a keyed job that failed its only attempt
        queue = self.make_queue()
        first = queue.enqueue(TOPIC, job(idempotency_key="k", max_attempts=1))
        queue.nack(queue.dequeue(TOPIC, timeout=0).job_id, error="smtp down")

        # When the same work is enqueued again
        again = queue.enqueue(TOPIC, job(idempotency_key="k"))

        # Then it is a new job, ready to run
        self.assertNotEqual(again, first)
        self.assertEqual(queue.dequeue(TOPIC, timeout=0).job_id, again)

    # -- visibility timeout, nack, dead letters -------------------------------------------
    def test_a_job_not_acked_within_the_visibility_timeout_is_redelivered_with_the_same_id(self):
        # Given a job taken and never acked
        queue = self.make_queue(visibility_timeout=30)
        job_id = queue.enqueue(TOPIC, job())
        queue.dequeue(TOPIC, timeout=0)

        # When its visibility timeout passes
        self.advance(31)
        again = queue.dequeue(TOPIC, timeout=0)

        # Then it is delivered again under the same id, as its second attempt
        self.assertEqual((again.job_id, again.attempts), (job_id, 2))

    def test_a_job_in_flight_is_not_redelivered_before_its_visibility_timeout(self):
        # Given a job taken and not yet acked
        queue = self.make_queue(visibility_timeout=30)
        queue.enqueue(TOPIC, job())
        queue.dequeue(TOPIC, timeout=0)

        # When less than the visibility timeout has passed
        self.advance(29)

        # Then nobody else gets it
        self.assertIsNone(queue.dequeue(TOPIC, timeout=0))
        self.assertEqual(queue.stats(TOPIC).in_flight, 1)

    def test_a_job_nacked_without_delay_is_ready_again_at_once(self):
        # Given a job taken from the queue
        queue = self.make_queue()
        job_id = queue.enqueue(TOPIC, job())
        queue.nack(queue.dequeue(TOPIC, timeout=0).job_id)

        # When it is dequeued again
        again = queue.dequeue(TOPIC, timeout=0)

        # Then it is the same job, second attempt
        self.assertEqual((again.job_id, again.attempts), (job_id, 2))

    def test_a_job_nacked_with_a_delay_is_hidden_until_the_delay_has_passed(self):
        # Given a job nacked with a 60 s delay
        queue = self.make_queue()
        job_id = queue.enqueue(TOPIC, job())
        queue.nack(queue.dequeue(TOPIC, timeout=0).job_id, delay=60, error="rate limited")

        # When 59 s pass, then 2 more
        self.advance(59)
        early = queue.dequeue(TOPIC, timeout=0)
        self.advance(2)
        late = queue.dequeue(TOPIC, timeout=0)

        # Then it was hidden at first and comes back after the delay
        self.assertIsNone(early)
        self.assertEqual((late.job_id, late.attempts), (job_id, 2))

    def test_a_job_nacked_on_its_last_attempt_is_dead_lettered_with_its_last_error(self):
        # Given a job allowed two attempts, failing on both
        queue = self.make_queue()
        job_id = queue.enqueue(TOPIC, job(max_attempts=2))
        queue.nack(queue.dequeue(TOPIC, timeout=0).job_id, error="first failure")

        # When the second attempt fails too
        queue.nack(queue.dequeue(TOPIC, timeout=0).job_id, error=ValueError("bad address"))

        # Then it is dead-lettered with the last error, and not queued any more
        dead = queue.dead_letters(TOPIC)
        self.assertEqual([(d.job_id, d.attempts) for d in dead], [(job_id, 2)])
        self.assertEqual(dead[0].meta["last_error"], "ValueError: bad address")
        self.assertIsNone(queue.dequeue(TOPIC, timeout=0))
        self.assertTrue(queue.join(TOPIC, timeout=0))

    def test_a_job_whose_last_attempt_times_out_is_dead_lettered(self):
        # Given a job allowed one attempt, taken and never acked
        queue = self.make_queue(visibility_timeout=30)
        job_id = queue.enqueue(TOPIC, job(max_attempts=1))
        queue.dequeue(TOPIC, timeout=0)

        # When its visibility timeout passes
        self.advance(31)

        # Then it is not redelivered but dead-lettered, saying why
        self.assertIsNone(queue.dequeue(TOPIC, timeout=0))
        dead = queue.dead_letters(TOPIC)
        self.assertEqual([d.job_id for d in dead], [job_id])
        self.assertIn("visibility timeout", dead[0].meta["last_error"])

    def test_a_job_declared_dead_is_dead_lettered_at_once_with_its_error(self):
        # Given a job on its first of five attempts
        queue = self.make_queue()
        job_id = queue.enqueue(TOPIC, job(max_attempts=5))
        taken = queue.dequeue(TOPIC, timeout=0)

        # When it is declared dead
        queue.dead(taken.job_id, error="unknown orchestrator")

        # Then it is dead-lettered without further attempts, and the topic is drained
        self.assertEqual([(d.job_id, d.meta["last_error"]) for d in queue.dead_letters(TOPIC)],
                         [(job_id, "unknown orchestrator")])
        self.assertTrue(queue.join(TOPIC, timeout=0))

    # -- errors -----------------------------------------------------------------------------
    def test_acking_an_unknown_job_id_raises_invalid_input_naming_job_id(self):
        # Given an empty queue
        queue = self.make_queue()

        # When an id it never gave out is acked
        with self.assertRaises(InvalidInput) as caught:
            queue.ack("f" * 32)

        # Then the error names job_id
        self.assertEqual(caught.exception.field, "job_id")

    def test_acking_a_job_twice_raises_invalid_input(self):
        # Given a job taken and acked
        queue = self.make_queue()
        queue.enqueue(TOPIC, job())
        taken = queue.dequeue(TOPIC, timeout=0)
        queue.ack(taken.job_id)

        # When / Then acking it again is refused, and so are nack and dead
        with self.assertRaises(InvalidInput):
            queue.ack(taken.job_id)
        with self.assertRaises(InvalidInput):
            queue.nack(taken.job_id)
        with self.assertRaises(InvalidInput):
            queue.dead(taken.job_id)

    def test_a_negative_nack_delay_raises_invalid_input_and_leaves_the_job_in_flight(self):
        # Given a job in flight
        queue = self.make_queue()
        queue.enqueue(TOPIC, job())
        taken = queue.dequeue(TOPIC, timeout=0)

        # When it is nacked with a negative delay
        with self.assertRaises(InvalidInput) as caught:
            queue.nack(taken.job_id, delay=-1)

        # Then the error names delay and the job can still be acked
        self.assertEqual(caught.exception.field, "delay")
        queue.ack(taken.job_id)

    def test_a_bad_topic_raises_invalid_input_naming_topic_and_enqueues_nothing(self):
        queue = self.make_queue()
        for topic in ["", "has space", "x" * 65, "slash/topic", None, 7]:
            with self.subTest(topic=topic):
                # Given / When a job is enqueued on a bad topic
                with self.assertRaises(InvalidInput) as caught:
                    queue.enqueue(topic, job())

                # Then the error names the topic and nothing was queued anywhere
                self.assertEqual(caught.exception.field, "topic")
                self.assertTrue(queue.join(timeout=0))

    def test_a_bad_job_raises_payload_error_naming_the_field_and_enqueues_nothing(self):
        queue = self.make_queue()
        cases = [
            ({"payload": {}}, "job.orchestrator"),
            (job(max_attempts=0), "job.max_attempts"),
            (job(attempts="1"), "job.attempts"),
            (job(idempotency_key="k" * 201), "job.idempotency_key"),
            (job(enqueued_at="yesterday"), "job.enqueued_at"),
            (job(surprise=1), "job.surprise"),
            (["not", "a", "job"], "job"),
        ]
        for bad, field in cases:
            with self.subTest(field=field):
                # Given / When a bad job is enqueued
                with self.assertRaises(PayloadError) as caught:
                    queue.enqueue(TOPIC, bad)

                # Then the error names the field and nothing was queued
                self.assertEqual(caught.exception.field, field)
                self.assertEqual(queue.stats(TOPIC).ready, 0)

    def test_enqueue_many_with_one_bad_job_enqueues_none_of_them(self):
        # Given a batch whose second job is bad
        queue = self.make_queue()
        batch = [job(), job(max_attempts=0), job()]

        # When it is enqueued
        with self.assertRaises(PayloadError) as caught:
            queue.enqueue_many(TOPIC, batch)

        # Then the error names that job's field and the queue is still empty
        self.assertEqual(caught.exception.field, "jobs[1].max_attempts")
        self.assertEqual(queue.stats(TOPIC).ready, 0)

    def test_a_job_id_already_queued_is_refused(self):
        # Given a queued job
        queue = self.make_queue()
        job_id = queue.enqueue(TOPIC, job())

        # When another job with its id is enqueued
        with self.assertRaises(InvalidInput) as caught:
            queue.enqueue(TOPIC, job(job_id=job_id))

        # Then it is refused, naming job_id, and only the first is queued
        self.assertEqual(caught.exception.field, "job.job_id")
        self.assertEqual(queue.stats(TOPIC).ready, 1)

    # -- join, stop, stats -----------------------------------------------------------------------
    def test_join_returns_true_once_worker_threads_have_acked_every_job(self):
        # Given 200 jobs and three worker threads
        queue = self.make_queue()
        ids = queue.enqueue_many(TOPIC, [job(payload={"n": n}) for n in range(200)])
        threads, acked = start_workers(queue, 3)

        # When the queue is joined
        drained = queue.join(TOPIC, timeout=10)
        queue.stop()
        for thread in threads:
            thread.join(10)

        # Then it drained, with every job acked exactly once, and the workers ended
        self.assertTrue(drained)
        self.assertEqual(sorted(acked), sorted(ids))
        self.assertFalse(any(thread.is_alive() for thread in threads))

    def test_join_returns_false_on_timeout_while_work_is_left(self):
        # Given one job in flight and one ready
        queue = self.make_queue()
        queue.enqueue_many(TOPIC, [job(), job()])
        queue.dequeue(TOPIC, timeout=0)

        # When joined with a short timeout and no workers
        drained = queue.join(TOPIC, timeout=0.01)

        # Then it says the work is not done
        self.assertFalse(drained)

    def test_join_of_one_topic_ignores_the_others(self):
        # Given work left on another topic only
        queue = self.make_queue()
        queue.enqueue("other", job())

        # When / Then this topic counts as drained, the whole queue does not
        self.assertTrue(queue.join(TOPIC, timeout=0))
        self.assertFalse(queue.join(timeout=0))

    def test_a_dequeue_blocked_waiting_gets_a_job_enqueued_later(self):
        # Given a thread waiting in dequeue with no timeout
        queue = self.make_queue()
        thread, got = dequeue_in_thread(queue)

        # When a job is enqueued
        job_id = queue.enqueue(TOPIC, job())
        thread.join(10)

        # Then the waiting thread got it
        self.assertFalse(thread.is_alive())
        self.assertEqual(got[0].job_id, job_id)

    def test_stop_wakes_a_blocked_dequeue_which_returns_none(self):
        # Given a thread waiting in dequeue with no timeout on an empty queue
        queue = self.make_queue()
        thread, got = dequeue_in_thread(queue)

        # When the queue is stopped
        queue.stop()
        thread.join(10)

        # Then the thread returned with nothing
        self.assertFalse(thread.is_alive())
        self.assertEqual(got, [None])

    def test_a_stopped_queue_refuses_new_jobs_and_hands_out_none(self):
        # Given a stopped queue that still holds a job
        queue = self.make_queue()
        queue.enqueue(TOPIC, job())
        queue.stop()

        # When / Then enqueueing fails and dequeue gives nothing
        with self.assertRaises(ConfigurationError):
            queue.enqueue(TOPIC, job())
        self.assertIsNone(queue.dequeue(TOPIC, timeout=0))

    def test_stats_count_jobs_by_state(self):
        # Given four jobs: one dead, one delayed, one in flight, one ready
        queue = self.make_queue()
        queue.enqueue_many(TOPIC, [job(max_attempts=1), job(), job(), job()])
        queue.nack(queue.dequeue(TOPIC, timeout=0).job_id, error="boom")
        queue.nack(queue.dequeue(TOPIC, timeout=0).job_id, delay=60)
        queue.dequeue(TOPIC, timeout=0)

        # When the topic's stats are read
        stats = queue.stats(TOPIC)

        # Then each state is counted
        self.assertEqual(stats, QueueStats(ready=1, in_flight=1, delayed=1, dead=1))


class InMemoryQueueTests(QueueContract, unittest.TestCase):
    def make_queue(self, **kw: Any) -> InMemoryQueue:
        kw.setdefault("clock", self.clock.now)
        return InMemoryQueue(**kw)

    def test_enqueue_leaves_the_callers_job_unchanged(self):
        # Given a Job object built by the caller
        queue = self.make_queue()
        mine = Job(orchestrator="campaign")

        # When it is enqueued, taken and nacked with an error
        queue.enqueue(TOPIC, mine)
        queue.nack(queue.dequeue(TOPIC, timeout=0).job_id, error="boom")

        # Then the caller's object still says no attempt and no error
        self.assertEqual((mine.attempts, mine.meta), (0, {}))

    def test_only_the_most_recent_acked_idempotency_keys_are_remembered(self):
        # Given a queue remembering one acked key, and two keyed jobs done
        queue = self.make_queue(remember=1)
        first = queue.enqueue(TOPIC, job(idempotency_key="a"))
        second = queue.enqueue(TOPIC, job(idempotency_key="b"))
        for _ in range(2):
            queue.ack(queue.dequeue(TOPIC, timeout=0).job_id)

        # When both keys are enqueued again
        again_a = queue.enqueue(TOPIC, job(idempotency_key="a"))
        again_b = queue.enqueue(TOPIC, job(idempotency_key="b"))

        # Then the oldest was forgotten (new job), the newest still known
        self.assertNotEqual(again_a, first)
        self.assertEqual(again_b, second)

    def test_bad_settings_raise_invalid_input_naming_the_setting(self):
        for kw, field in [({"visibility_timeout": 0}, "visibility_timeout"),
                          ({"requeue_check_interval": -1}, "requeue_check_interval"),
                          ({"remember": -5}, "remember")]:
            with self.subTest(field=field):
                # Given / When a queue is built with a bad setting
                with self.assertRaises(InvalidInput) as caught:
                    InMemoryQueue(**kw)

                # Then the error names it
                self.assertEqual(caught.exception.field, field)


if __name__ == "__main__":
    unittest.main()


class DeliveryTokenTest(unittest.TestCase):
    """Found in review: a worker that outlived its visibility timeout must not settle the newer delivery."""

    def test_a_stale_hand_cannot_ack_the_redelivered_job_and_a_lease_can_be_extended(self) -> None:
        # Given a job handed out, then redelivered after its visibility timeout
        now = [0.0]
        queue = InMemoryQueue(visibility_timeout=10, clock=lambda: now[0])
        queue.enqueue("t", Job(orchestrator="o"))
        first = queue.dequeue("t", timeout=0)
        now[0] = 11.0
        second = queue.dequeue("t", timeout=0)
        # When the first hand acks / Then it is refused and the second still holds the job
        with self.assertRaises(InvalidInput):
            queue.ack(first.job_id, attempt=first.attempts)
        self.assertEqual((first.attempts, second.attempts), (1, 2))
        # And the second hand can extend its lease past the old deadline, then ack
        queue.extend(second.job_id, attempt=second.attempts, seconds=30)
        now[0] = 25.0
        self.assertIsNone(queue.dequeue("t", timeout=0))
        queue.ack(second.job_id, attempt=second.attempts)
        self.assertTrue(queue.join("t", timeout=0))
