"""A 10,000-lead campaign end to end: embedded defaults, and the same campaign on Celery.

Each run gets a fresh data directory whose SQLite store holds generated
sample leads (loaded before the clock starts).  The campaign's lead query
(``{"title": "Head"}``) matches about a quarter of them, so the store holds
enough for ``--leads`` matches.  The clock covers everything a user waits for:
the search for the leads (page by page), planning and queueing the batches,
drafting each message from the campaign's Jinja2 template, and delivery
through the gates into the outbox (one ``.eml`` per lead, ledger, audit trail).

- **embedded**: what ``agent campaign run`` does on the defaults, in a process
  of its own: ``CampaignRunner`` with ``InMemoryQueue``, the search queued in
  parts (``PLAN_PART`` leads each) and the batches run by that process and
  the worker processes it forks (the ``processes`` setting: ``auto``, one
  process per core in all, at most 4).
  Memory: a sampler reads every 100 ms the resident sizes (RSS) of that
  process and its workers, and their proportional set sizes (PSS, from
  ``/proc/*/smaps_rollup``).  The peak of the RSS sum is the figure held to
  the target: it counts a page the forked workers share with the parent once
  per process, so it is the stricter one.  The peak PSS sum (a shared page
  counted once, split between its holders) is printed beside it.
- **celery**: the same campaign on a fresh store, its batches run by ``agent
  worker --backend celery`` with 2 worker processes on a Redis broker; the
  producer plans and watches.  The peak RSS reported is the largest of the
  worker's processes (``VmHWM``).

Targets (issue 4): embedded >= 1,000 leads/s with peak RSS <= 300 MB; Celery
reported beside it.  Prints ``campaign_leads_per_s=`` last.

    python bench/campaign.py [--leads N] [--batch-size B] [--threads T] [--broker URL] [--no-celery]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import cpu_reference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_RATE = 1_000
TARGET_RSS_MB = 300
QUERY = {"title": "Head"}
MATCH_SHARE = 0.22  # the share of sample leads the query finds (about 0.24), with a margin


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(AGENT_HOME=str(home), AGENT_SAMPLE_DATA="off", PYTHONPATH=str(REPO), **extra)
    return env


def campaign_dict(leads: int, batch_size: int) -> dict:
    return {"id": "bench", "lead_query": QUERY, "allow_delivery": True,
            "template": {"subject": "{{ lead.company }} and pipeline quality",
                         "body": "Hi {{ lead.first_name }},\n\nA short note about {{ lead.company }} and how "
                                 "teams like yours find the right accounts.\n\nBest,\nThe Outreach Team"},
            "limits": {"per_run": leads, "batch_size": batch_size}}


def prepare(home: Path, leads: int) -> None:
    """A store with enough sample leads for ``leads`` matches (run in a child: its memory is not ours)."""
    code = ("import sys; from agent.settings import get_settings; from agent.storage.db import Database; "
            "from agent.leads.sample import load_sample_data; "
            "db = Database.for_settings(get_settings()); db.migrate(); "
            f"load_sample_data(db, size={int(leads / MATCH_SHARE) + 1000}, tenant='default')")
    subprocess.run([sys.executable, "-c", code], env=env_for(home), check=True)


def child(args: argparse.Namespace) -> None:
    """Run the campaign in this process; print its figures as JSON."""
    import resource

    from agent.campaigns import Campaign
    from agent.campaigns.runner import CampaignRunner

    from agent.campaigns.planning import PLAN_PART

    backend = args.child
    runner_kwargs = {}
    if backend == "celery":
        from agent.queues.celery_queue import CeleryQueue
        from agent.settings import get_settings

        settings = get_settings()
        runner_kwargs = {"queue": CeleryQueue(settings=settings, poll=0.05)}
    runner = CampaignRunner(**runner_kwargs)
    campaign = Campaign.parse(campaign_dict(args.leads, args.batch_size))
    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    report = runner.start(campaign, run_key="bench", part_size=PLAN_PART)
    processes = runner.processes_for([report], threads=args.threads) if backend == "embedded" else 0
    [report] = runner.work([report], threads=args.threads, poll=0.05)
    elapsed = time.perf_counter() - started
    sampler.stop()
    print(json.dumps({"leads": report.leads, "batches": report.batches, "states": dict(report.states),
                      "messages": dict(report.statuses), "seconds": elapsed, "processes": processes,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "pss_sum_mb": sampler.pss_peak, "rss_sum_mb": sampler.rss_peak,
                      "worker_rss_mb": sampler.worker_hwm}))


class MemorySampler:
    """Peaks of the PSS and RSS sums of this process and its children (worker processes are forked by a
    thread of the pool's own: every thread's children are read), sampled every 100 ms."""

    def __init__(self) -> None:
        import threading

        self.pss_peak = self.rss_peak = self.worker_hwm = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.1):
            pss = rss = 0.0
            for pid in [me, *_children(me)]:
                try:
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue  # ended meanwhile
                pss += _kib(rollup, "Pss:") / 1024
                rss += _kib(status, "VmRSS:") / 1024
                if pid != me:
                    self.worker_hwm = max(self.worker_hwm, _kib(status, "VmHWM:") / 1024)
            self.pss_peak, self.rss_peak = max(self.pss_peak, pss), max(self.rss_peak, rss)


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def _kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def run_child(home: Path, backend: str, args: argparse.Namespace, **env: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", backend, "--leads", str(args.leads),
                          "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
                         env=env_for(home, **env), check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb(pids: list[int]) -> float:
    peak = 0.0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def run_celery(home: Path, args: argparse.Namespace) -> dict:
    env = {"AGENT_BROKER_URL": args.broker}
    worker = subprocess.Popen([sys.executable, "-m", "agent.cli", "worker", "--concurrency", "2", "-Q", "campaigns"],
                              env=env_for(home, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        result = run_child(home, "celery", args, **env)
        pids = [worker.pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True,
                                                              text=True).stdout.split()]
        result["worker_rss_mb"] = peak_rss_mb(pids)
        return result
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--child", choices=["embedded", "celery"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(f"cpu_reference_s={cpu_reference()}  leads={args.leads} batch_size={args.batch_size} threads={args.threads}")
    homes = []
    try:
        home = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
        homes.append(home)
        prepare(home, args.leads)
        embedded = run_child(home, "embedded", args)
        rate = embedded["leads"] / embedded["seconds"]
        print(f"embedded  : {embedded['leads']} leads in {embedded['seconds']:.2f} s = {rate:,.0f} leads/s on "
              f"this process and {embedded['processes']} worker process(es); batches {embedded['states']}, messages "
              f"{embedded['messages']}")
        print(f"  memory  : peak RSS sum of the run's processes {embedded['rss_sum_mb']:.0f} MB (the target's "
              f"figure: a page shared with a forked worker counted once per process); peak PSS sum "
              f"{embedded['pss_sum_mb']:.0f} MB; "
              f"main process RSS {embedded['rss_mb']:.0f} MB, each worker's at most {embedded['worker_rss_mb']:.0f} MB")
        ok = rate >= TARGET_RATE and embedded["rss_sum_mb"] <= TARGET_RSS_MB
        print(f"{'PASS' if ok else 'FAIL'}: target >= {TARGET_RATE:,} leads/s and peak memory <= {TARGET_RSS_MB} MB")
        if not args.no_celery:
            home = Path(tempfile.mkdtemp(prefix="bench-campaign-celery-"))
            homes.append(home)
            prepare(home, args.leads)
            celery = run_celery(home, args)
            print(f"celery x2 : {celery['leads']} leads in {celery['seconds']:.2f} s = "
                  f"{celery['leads'] / celery['seconds']:,.0f} leads/s ({args.broker}); worker peak RSS "
                  f"{celery['worker_rss_mb']:.0f} MB per process; batches {celery['states']}, "
                  f"messages {celery['messages']}")
        print(f"campaign_leads_per_s={rate:.0f}")
    finally:
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
