"""The Celery path against raw Celery on the same broker, in one process run.

Requirement: our jobs/s divided by a raw Celery no-op task's jobs/s on the same
broker, measured in the same run, is at least 0.8.

For each broker (default: local Redis and local RabbitMQ):

- ours: a throwaway ``AGENT_HOME`` whose database is a SQLite file (the
  embedded default), or a fresh schema of the PostgreSQL ``--database-url``,
  dropped afterwards.  ``agent worker --concurrency 2 -Q <topic>`` runs as a
  subprocess with ``AGENT_PLUGINS=bench.celery_noop`` (a no-op orchestrator
  returning an envelope built once).  The producer is a ``CeleryQueue``: it
  ``enqueue_many``s N jobs (a ledger row each, then a message) and ``join``s,
  which polls the ledger until no job is open.  Each job in the worker is
  claimed in the ledger, run by ``execute_job`` with the SQL audit store
  (run started, running, envelope kept, succeeded) and finished.
- peer (``bench/celery_peer.py``): a raw Celery app on the same broker with
  the same reliability settings (late acks, reject on worker lost, prefetch 1,
  no results, JSON) and the same worker (``celery worker``, prefork,
  concurrency 2, ``--without-gossip --without-mingle --without-heartbeat``);
  its task only ``INCR``s a Redis counter, and the producer ``send_task``s N
  tasks, then polls the counter until it reads N.
- beside it, for information (the target is against the peer above): the same
  raw app keeping each task's state (started, then its result) in Celery's
  own SQLAlchemy result backend on a SQLite file: what raw Celery costs when
  it, too, writes down what happened to every task.

First, for the reading of the figures, our task's body alone (``run_job``
in this process on a fresh SQLite store: claim with the audited start, the
no-op run, finish with the audited end; no broker, no other writer), with
group commit and with a commit per write: the least CPU a job costs us.

Both producers poll at the same interval (``--poll``, default ``CeleryQueue``'s
0.2 s); the clock runs from the first enqueue / send to the poll that sees all
N done; the jobs (ours) and task arguments (peer) are built before it starts.
Each side first runs a warm-up batch, not timed, so the pool processes are
forked, connected and warm.  Rounds of ours and the peer's alternate, so the
machine's changes of speed fall on both; each figure is the best round.
Prints jobs/s of both, ours/peer, PASS/FAIL against >= 0.8 per broker, the
CPU time per job of each side's worker processes (main and pool, read from
/proc) and producer over the timed rounds, and last ``celery_ratio_<broker>=``
for each broker, with the CPU per job the target leaves ours on top of raw
Celery's and what ours adds.  The bench runs on its own settings: ``AGENT_*`` variables of
the calling environment are ignored.

``--profile DIR`` runs our workers under cProfile (see ``bench/celery_noop.py``)
and the producer's timed rounds too, then prints where a job's time goes; the
figures of such a run are slowed by the profiler and not for the target.

    python bench/celery_path.py [--jobs N] [--rounds R] [--brokers URL ...]
                                [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
                                [--profile DIR]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import cpu_reference  # noqa: E402
from tests.celery_support import drop_queues  # noqa: E402  (the benchmark's queues go as a test's do)
from tests.support import PostgresSchema  # noqa: E402

TARGET = 0.8
REDIS = "redis://127.0.0.1:6379/11"
RABBIT = "amqp://guest:guest@127.0.0.1:5672//"
COUNTER = "redis://127.0.0.1:6379/11"


def broker_kind(url: str) -> str:
    return "redis" if url.startswith(("redis://", "rediss://")) else "amqp"


def safe(url: str) -> str:
    """``url`` with its password hidden."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", url)


class Process:
    """A worker command in a process group of its own, its output in ``log``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(args, env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the processes of its session, living ones: main and pool."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[3]) == self.process.pid:  # field 6 of stat: the session id
                total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
        return total / ticks

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def check(self) -> None:
        """SystemExit, with the tail of its log, if the process has ended."""
        if self.process.poll() is not None:
            raise SystemExit(f"worker exited with {self.process.returncode}:\n{self.tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it if it lingers."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                try:  # the pool's children may outlive the main process for a moment
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "BENCH_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def wait_until(done: Callable[[], bool], poll: float, timeout: float, worker: Process, what: str) -> None:
    """Poll ``done`` every ``poll`` seconds (first look at once) until it is true."""
    deadline = time.monotonic() + timeout
    while not done():
        worker.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not done within {timeout:.0f} s; worker log:\n{worker.tail()}")
        time.sleep(poll)


class Ours:
    """``CeleryQueue`` producing to ``agent worker`` on ``broker``; the ledger and audit in a fresh store."""

    def __init__(self, broker: str, *, database_url: str | None, concurrency: int, poll: float, timeout: float,
                 profile: Path | None, tmp: Path) -> None:
        self.broker, self.poll, self.timeout, self.profile = broker, poll, timeout, profile
        self.home = tmp / f"ours-{broker_kind(broker)}"
        self.home.mkdir()
        self.topic = f"bench-ours-{uuid.uuid4().hex[:8]}"
        self.producer_stats: Any = None
        self.timed_jobs = 0
        self.queue: Any = None
        self.worker: Process | None = None
        self.schema = PostgresSchema(database_url, prefix="bench") if database_url else None
        try:
            self._start(broker, concurrency, profile)
        except BaseException:
            self.close()
            raise

    def _start(self, broker: str, concurrency: int, profile: Path | None) -> None:
        from agent.queues.celery_queue import CeleryQueue
        from agent.settings import get_settings

        url = self.schema.url if self.schema else f"sqlite:///{self.home / 'agent.db'}"
        self.settings = get_settings(home=self.home, database_url=url, sample_data="off", tenant="default",
                                     outbox_dir=self.home / "outbox", broker_url=broker, plugins="bench.celery_noop")
        self.queue = CeleryQueue(settings=self.settings, poll=self.poll)  # migrates the store before the worker
        env = base_env()
        env.update(AGENT_HOME=str(self.home), AGENT_DATABASE_URL=url, AGENT_SAMPLE_DATA="off",
                   AGENT_TENANT="default", AGENT_OUTBOX_DIR=str(self.home / "outbox"), AGENT_BROKER_URL=broker,
                   AGENT_PLUGINS="bench.celery_noop")
        if profile is not None:
            env["AGENT_BENCH_PROFILE"] = str(profile / f"ours-{broker_kind(broker)}")
        self.worker = Process([sys.executable, "-m", "agent.cli", "worker", "--backend", "celery",
                               "--concurrency", str(concurrency), "-Q", self.topic, "--loglevel", "WARNING",
                               "--hostname", f"bench-ours-{uuid.uuid4().hex[:6]}@%h"], env, self.home / "worker.log")

    def round(self, count: int, *, timed: bool = True) -> float:
        """Seconds from the first enqueue of ``count`` no-op jobs to ``join`` seeing them all done."""
        from agent.queues import Job
        from bench.celery_noop import NAME

        jobs = [Job(orchestrator=NAME) for _ in range(count)]
        profiler = None
        if timed and self.profile is not None:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.perf_counter()
        self.queue.enqueue_many(self.topic, jobs)
        deadline = time.monotonic() + self.timeout
        # join() in short waits, so a dead worker is noticed; each wait polls the ledger every `poll` s.
        while not self.queue.join(self.topic, timeout=1.0):
            self.worker.check()
            if time.monotonic() > deadline:
                raise SystemExit(f"ours on {safe(self.broker)}: {count} jobs not done within {self.timeout:.0f} s; "
                                 f"worker log:\n{self.worker.tail()}")
        elapsed = time.perf_counter() - started
        if profiler is not None:
            import pstats

            profiler.disable()
            self.producer_stats = pstats.Stats(profiler) if self.producer_stats is None else \
                self.producer_stats.add(profiler)
            self.timed_jobs += count
        return elapsed

    def close(self) -> None:
        from agent.storage.db import Database

        if self.worker is not None:
            self.worker.stop()
        if self.queue is not None:
            self.queue.close()
        try:
            drop_queues(self.broker, [self.topic])
        finally:
            Database.forget_all()
            if self.schema is not None:
                self.schema.drop()


class Peer:
    """A raw Celery app's no-op task on ``broker``, counted in Redis."""

    def __init__(self, broker: str, *, concurrency: int, poll: float, timeout: float, counter: str,
                 tmp: Path, backend: str | None = None) -> None:
        import redis

        from bench.celery_peer import make_app

        self.broker, self.poll, self.timeout = broker, poll, timeout
        self.app = make_app(broker, backend)
        self.counter = redis.Redis.from_url(counter)
        self.topic = f"bench-peer-{uuid.uuid4().hex[:8]}"
        self.keys: list[str] = []
        env = base_env()
        env.update(BENCH_PEER_BROKER=broker, BENCH_PEER_COUNTER=counter, BENCH_PEER_BACKEND=backend or "")
        self.worker = Process([sys.executable, "-m", "celery", "-A", "bench.celery_peer", "worker", "-Q", self.topic,
                               "-c", str(concurrency), "-P", "prefork", "-l", "WARNING", "--without-gossip",
                               "--without-mingle", "--without-heartbeat",
                               "-n", f"bench-peer-{uuid.uuid4().hex[:6]}@%h"], env,
                              tmp / f"peer-{broker_kind(broker)}{'-results' if backend else ''}.log")

    def round(self, count: int, *, timed: bool = True) -> float:
        """Seconds from the first of ``count`` ``send_task``s to the counter reading ``count``."""
        from bench.celery_peer import TASK

        key = f"bench:celery_peer:{self.topic}:{len(self.keys)}"
        self.keys.append(key)
        args = [[key] for _ in range(count)]
        send, topic, get = self.app.send_task, self.topic, self.counter.get
        started = time.perf_counter()
        for arg in args:
            send(TASK, args=arg, queue=topic)
        wait_until(lambda: int(get(key) or 0) >= count, self.poll, self.timeout, self.worker,
                   f"peer on {safe(self.broker)}: {count} tasks")
        return time.perf_counter() - started

    def close(self) -> None:
        self.worker.stop()
        self.app.close()
        try:
            drop_queues(self.broker, [self.topic])
        finally:
            if self.keys:
                self.counter.delete(*self.keys)
            self.counter.close()


def bench_broker(broker: str, args: argparse.Namespace, tmp: Path) -> float:
    """Rounds of ours and the peer's on ``broker``; prints them, returns best ours / best peer."""
    store = "PostgreSQL (fresh schema)" if args.database_url else "SQLite file"
    print(f"broker {safe(broker)}, our store: {store}")
    ours = peer = kept = None
    try:
        ours = Ours(broker, database_url=args.database_url, concurrency=args.concurrency, poll=args.poll,
                    timeout=args.timeout, profile=args.profile, tmp=tmp)
        peer = Peer(broker, concurrency=args.concurrency, poll=args.poll, timeout=args.timeout,
                    counter=args.counter_url, tmp=tmp)
        # Beside it (for information, not the target): raw Celery keeping each task's state in its
        # SQLAlchemy result backend on a SQLite file, as ours keeps its ledger and audit trail.
        kept = Peer(broker, concurrency=args.concurrency, poll=args.poll, timeout=args.timeout,
                    counter=args.counter_url, tmp=tmp,
                    backend=f"db+sqlite:///{tmp}/peer-results-{broker_kind(broker)}.db")
        sides = (("ours", ours), ("peer", peer), ("kept", kept))
        for _name, side in sides:
            side.round(args.warmup, timed=False)
        rates: dict[str, list[float]] = {name: [] for name, _ in sides}
        cpu: dict[str, list[float]] = {name: [0.0, 0.0] for name, _ in sides}  # worker, producer CPU seconds
        for index in range(args.rounds):
            for name, side in sides:
                worker_cpu, producer_cpu = side.worker.cpu_seconds(), time.process_time()
                rates[name].append(args.jobs / side.round(args.jobs))
                cpu[name][0] += side.worker.cpu_seconds() - worker_cpu
                cpu[name][1] += time.process_time() - producer_cpu
            mine, theirs, kept_rate = rates["ours"][-1], rates["peer"][-1], rates["kept"][-1]
            print(f"  round {index + 1}: ours {mine:>8,.0f} jobs/s   raw Celery {theirs:>8,.0f} jobs/s   "
                  f"ours/peer {mine / theirs:.2f}   (raw Celery + result backend {kept_rate:,.0f} jobs/s)")
        best_ours, best_peer, best_kept = max(rates["ours"]), max(rates["peer"]), max(rates["kept"])
        ratio = best_ours / best_peer
        print(f"  best: ours {best_ours:,.0f} jobs/s   raw Celery {best_peer:,.0f} jobs/s   ours/peer {ratio:.2f}")
        print(f"  beside it: raw Celery keeping task state in its SQLAlchemy result backend (SQLite) "
              f"{best_kept:,.0f} jobs/s   ours/that {best_ours / best_kept:.2f}")
        done = args.jobs * args.rounds
        for name, label in (("ours", "ours"), ("peer", "raw Celery"), ("kept", "raw Celery + result backend")):
            print(f"  CPU per job, {label}: worker processes {cpu[name][0] / done * 1000:.2f} ms, "
                  f"producer {cpu[name][1] / done * 1000:.2f} ms")
        # On a machine whose cores are all busy, jobs/s follows CPU per job: the target leaves ours
        # this much CPU per job on top of what raw Celery spends.
        raw = sum(cpu["peer"]) / done * 1000
        print(f"  the target leaves ours {raw / TARGET - raw:.2f} ms of CPU a job on top of raw Celery's "
              f"{raw:.2f} ms; ours adds {sum(cpu['ours']) / done * 1000 - raw:.2f} ms")
        print(f"  {'PASS' if ratio >= TARGET else 'FAIL'}: ours/raw Celery on {broker_kind(broker)} {ratio:.2f} "
              f"(target >= {TARGET})")
        if args.profile is not None and ours.producer_stats is not None:
            print_profile("producer (CeleryQueue.enqueue_many + join)", ours.producer_stats, ours.timed_jobs)
            worker_profiles(args.profile / f"ours-{broker_kind(broker)}")
        return ratio
    finally:
        for side in (ours, peer, kept):
            if side is not None:
                side.close()


# -- our job body alone --------------------------------------------------------------------------
def job_body(jobs: int, tmp: Path) -> dict[str, float]:
    """CPU ms per job of our task's body (``run_job``: claim with the audited start, the no-op run,
    finish with the audited end) in this process, on a fresh SQLite store, with no broker and no
    other writer: the least a job can cost us.  With group commit, and with a commit per write."""
    from agent.queues import Job
    from agent.settings import get_settings
    from agent.storage.db import Database
    from agent.workers.celery_worker import WorkerRuntime, run_job, worker_app
    from bench.celery_noop import NAME

    out = {}
    for label, delay in (("group commit", 0.02), ("a commit per write", 0.0)):
        home = tmp / f"body-{delay}"
        settings = get_settings(home=home, database_url=f"sqlite:///{home / 'agent.db'}", sample_data="off",
                                tenant="default", outbox_dir=home / "outbox", broker_url=REDIS,
                                plugins="bench.celery_noop", queue_commit_delay=delay)
        rt, app = WorkerRuntime(settings), worker_app(settings)
        try:
            for count, timed in ((200, False), (jobs, True)):
                batch = [Job(orchestrator=NAME) for _ in range(count)]
                rt.ledger.add_many("body", batch)
                started = time.process_time()
                for job in batch:
                    run_job(app, "body", job.job_id, rt=rt, group=True)
                if rt.group is not None:
                    rt.group.flush()
                if timed:
                    out[label] = (time.process_time() - started) / count * 1000
        finally:
            app.close()
            Database.forget_all()
    return out


# -- profile summaries -------------------------------------------------------------------------
_WATCH = re.compile(r"agent/(queues|workers|audit|storage|envelope)|sqlite3|psycopg|'execute'|'commit'|"
                    r"send_task|kombu/messaging|threading.py.*(start|join)")


def print_profile(title: str, stats: Any, jobs: int, top: int = 30) -> None:
    """The functions of ``stats`` that matter here, by cumulative time, per job."""
    print(f"  profile of {title}: {jobs:,} jobs")
    print(f"    {'ms/job':>8} {'calls/job':>9}  function (cumulative)")
    rows = []
    for (path, line, name), (cc, nc, tt, ct, _callers) in stats.stats.items():
        label = f"{Path(path).name}:{line}:{name}" if path != "~" else name
        if "agent/" in path:
            label = f"{path[path.rindex('agent/'):]}:{line}:{name}"
        if _WATCH.search(f"{path}:{name}") or _WATCH.search(label):
            rows.append((ct, nc, label))
    for ct, nc, label in sorted(rows, reverse=True)[:top]:
        print(f"    {ct / jobs * 1000:>8.3f} {nc / jobs:>9.2f}  {label}")


def worker_profiles(where: Path) -> None:
    import pstats

    files = sorted(where.glob("worker-*.prof"))
    if not files:
        print(f"  no worker profiles in {where}")
        return
    jobs = sum(int(Path(str(f)[:-5] + ".jobs").read_text()) for f in files)
    print_profile(f"{len(files)} worker process(es) (from their first job on, warm-up included)",
                  pstats.Stats(*[str(f) for f in files]), jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", nargs="+", default=[REDIS, RABBIT])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per timed round")
    parser.add_argument("--warmup", type=int, default=200, help="jobs of the untimed first batch of each side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes of each side")
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between looks for 'all done', both sides")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL for ours (a fresh schema in it), e.g. "
                             "postgresql+psycopg://postgres@127.0.0.1:5432/test; default: a SQLite file")
    parser.add_argument("--counter-url", default=COUNTER, help="Redis the peer's completion counter lives in")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take")
    parser.add_argument("--profile", type=Path, default=None, help="directory for cProfile output (slows ours)")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("AGENT_")]:
        del os.environ[name]  # the bench's own settings, never the caller's store or broker
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)

    print(f"cpu_ref={cpu_reference()} s (start)")
    print(f"{args.jobs:,} no-op jobs per round, warm-up {args.warmup}, best of {args.rounds} rounds, "
          f"concurrency {args.concurrency} each side, poll {args.poll} s"
          + ("  [PROFILED: figures not for the target]" if args.profile else ""))
    tmp = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    ratios: dict[str, float] = {}
    try:
        body = job_body(args.jobs, tmp)
        print("our job body alone (run_job in one process, SQLite, no broker, no other writer): "
              + ", ".join(f"{ms:.2f} ms CPU a job with {label}" for label, ms in body.items()))
        for broker in args.brokers:
            ratios[broker_kind(broker)] = bench_broker(broker, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cpu_ref={cpu_reference()} s (end)")
    print(" ".join(f"celery_ratio_{kind}={ratio:.2f}" for kind, ratio in ratios.items()))


if __name__ == "__main__":
    main()
