"""InMemoryQueue + Worker throughput against Python's ``queue.Queue``, in one process run.

A producer enqueues no-op jobs in batches while a ``Worker`` with N threads
runs them: ``dequeue``, the shared job-execution function (resolve the
orchestrator, run it, validate its envelope), ``ack``; the clock runs from the
first enqueue to the end of ``join()``.  The peer does the same with ``queue.Queue``
(``put`` -> ``get`` -> ``task_done``), which has no ids, acks, visibility
timeouts, retries or dead letters.  The ``Job`` objects are built before the
clock starts, for both.  Rounds of ours and the peer's alternate, and each
figure is the best round.  Prints jobs/s, PASS/FAIL against >= 20,000 jobs/s
and last ``inmemory_queue_jobs_per_s=``, the best figure of ours.

    python bench/job_queue.py [--jobs N] [--rounds R]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from agent.envelope import make_envelope  # noqa: E402
from agent.queues import InMemoryQueue, Job  # noqa: E402
from agent.registry import Registry  # noqa: E402
from agent.workers import Worker  # noqa: E402
from bench.common import cpu_reference  # noqa: E402

TARGET = 20_000
TOPIC = "bench"
BATCH = 1_000


class NoOp:
    """An orchestrator that does nothing: its envelope is built once."""

    def __init__(self) -> None:
        self.envelope = make_envelope([], source="noop", run_id="bench")

    def run(self, payload: dict, *, run_id: str) -> dict:
        return self.envelope


def run_ours(jobs: list[Job], threads: int) -> float:
    """Seconds to push ``jobs`` through enqueue -> Worker (dequeue, execute_job, ack)."""
    q = InMemoryQueue()
    registry = Registry()
    registry.register("noop", NoOp())
    worker = Worker(q, registry, topic=TOPIC, poll=0.05)

    worker.start(threads)
    started = time.perf_counter()
    for i in range(0, len(jobs), BATCH):
        q.enqueue_many(TOPIC, jobs[i:i + BATCH])
    drained = q.join(TOPIC, timeout=600)
    elapsed = time.perf_counter() - started
    worker.stop()
    q.stop()
    worker.join()
    if not drained:
        raise SystemExit("InMemoryQueue did not drain within 600 s")
    return elapsed


def run_peer(jobs: list[Job], threads: int) -> float:
    """Seconds for ``queue.Queue`` doing put -> get -> task_done on the same jobs."""
    q: queue.Queue[Job | None] = queue.Queue()

    def work() -> None:
        get, done = q.get, q.task_done
        while get() is not None:
            done()
        done()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    started = time.perf_counter()
    put = q.put
    for job in jobs:
        put(job)
    q.join()
    elapsed = time.perf_counter() - started
    for _ in workers:
        q.put(None)
    for worker in workers:
        worker.join()
    return elapsed


def best_rate(runner: Callable[[list[Job], int], float], count: int, threads: int, rounds: int) -> float:
    return max(count / runner([Job(orchestrator="noop") for _ in range(count)], threads) for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"cpu_ref={cpu_reference()} s (start)")
    print(f"{args.jobs:,} no-op jobs per round, best of {args.rounds} rounds")
    ours: dict[int, float] = {}
    for threads in (1, 4):
        rates = {"InMemoryQueue": [], "queue.Queue": []}
        for _ in range(args.rounds):
            rates["InMemoryQueue"].append(best_rate(run_ours, args.jobs, threads, 1))
            rates["queue.Queue"].append(best_rate(run_peer, args.jobs, threads, 1))
        ours[threads] = max(rates["InMemoryQueue"])
        peer = max(rates["queue.Queue"])
        print(f"  {threads} thread(s): InMemoryQueue {ours[threads]:>10,.0f} jobs/s   "
              f"queue.Queue {peer:>10,.0f} jobs/s   ours/peer {ours[threads] / peer:.2f}")
    best = max(ours.values())
    print(f"{'PASS' if best >= TARGET else 'FAIL'}: best InMemoryQueue {best:,.0f} jobs/s (target >= {TARGET:,})")
    print(f"cpu_ref={cpu_reference()} s (end)")
    print(f"inmemory_queue_jobs_per_s={best:.0f}")


if __name__ == "__main__":
    main()
