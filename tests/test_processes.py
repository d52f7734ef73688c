"""Worker processes: a campaign run on forked children, a child lost mid-job, errors that cross the
process boundary, a killed parent taking its children with it, and the ``processes`` setting."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import unittest
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import agent.errors
from agent.audit import InMemoryAuditStore, SqlAuditStore
from agent.builtins import register_builtins
from agent.campaigns.runner import CampaignReport, CampaignRunner
from agent.envelope import make_envelope
from agent.errors import AgentCallError, ConfigurationError, InvalidInput
from agent.leads.sample import load_sample_data
from agent.queues import InMemoryQueue, Job
from agent.registry import Registry
from agent.settings import get_settings
from agent.workers import Worker
from agent.workers import processes
from agent.workers.processes import ProcessPool
from tests.support import TempHome
from tests.test_campaign_run import CliHome, campaign

GUARD = 60.0
TOPIC = "orchestrate"


def gone(pid: int) -> bool:
    """No process ``pid`` any more, or only its zombie (reaping it is its new parent's business)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, deadline: float) -> None:
    """Until ``pid`` has ended (its pidfd becomes readable then), or the deadline."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        os.close(fd)


def children(pid: int) -> set[int]:
    """The children of every thread of ``pid`` (worker processes are forked by a thread of the pool's own)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return found


def cli_database(home: str) -> Any:
    from agent.storage.db import Database

    return Database(f"sqlite:///{home}/agent.db")


class Blocker:
    """Writes its pid to ``pids`` and blocks on ``hold`` until ``marker`` exists; then answers at once."""

    def __init__(self, pids: int, hold: int, marker: Path) -> None:
        self.pids, self.hold, self.marker = pids, hold, marker

    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        if not self.marker.exists():
            os.write(self.pids, f"{os.getpid()}\n".encode())
            os.read(self.hold, 1)  # until the test kills this process
        return make_envelope([{"ran_in": os.getpid()}], source="blocker", run_id=run_id)


class TwoArgs(Exception):
    """Cannot be unpickled through ``cls(*args)``: its one arg does not fit its two-argument init."""

    def __init__(self, left: str, right: str) -> None:
        super().__init__(f"{left}/{right}")


class HeldError(AgentCallError):
    """An AgentError whose state cannot be pickled at all (a lambda)."""

    def __init__(self, agent_name: str, message: str) -> None:
        super().__init__(agent_name, message)
        self.callback = lambda: None


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        raise self.error


class CampaignOnProcessesTest(unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome()
        self.addCleanup(self.home.cleanup)
        load_sample_data(self.home.database(), size=400, tenant="default")

    def test_a_run_on_worker_processes_sends_each_lead_once_and_keeps_the_whole_audit_trail(self) -> None:
        # Given a campaign of 24 leads in batches of 5, on the registry bound to the settings
        runner = CampaignRunner(self.home.settings)
        pids = Path(self.home.path, "pids")
        real = processes.execute_job

        def recording(job: Any, **kwargs: Any) -> Any:
            with open(pids, "a", encoding="utf-8") as out:
                out.write(f"{os.getpid()}\n")
            return real(job, **kwargs)

        # When it runs on two worker processes (forked while the recorder is in place)
        with mock.patch("agent.workers.processes.execute_job", recording):
            [report] = runner.work([runner.start(campaign())], processes=2)
        # Then every batch succeeded and each lead got one message in the outbox
        self.assertEqual((report.batches, report.leads, dict(report.states)), (5, 24, {"succeeded": 5}))
        self.assertEqual(dict(report.statuses), {"sent": 24})
        self.assertEqual(len(list(self.home.settings.outbox_dir.glob("*.eml"))), 24)
        # And each batch ran once, in the children (this process may have run some too)
        ran_in = [int(line) for line in pids.read_text().split()] if pids.exists() else []
        self.assertEqual(len(ran_in), 5)
        self.assertTrue(set(ran_in) - {os.getpid()}, "no batch ran in a worker process")
        # And every batch's node envelopes are in the audit trail; a message's lineage reaches its lead row
        runs = runner.audit.list_runs(campaign_id="acme", limit=100)
        for run in runs:
            nodes = {e.node for e in runner.audit.envelopes(run.run_id)}
            self.assertLessEqual({"load", "draft", "prepare", "suppression", "deliver"}, nodes, run.run_id)
        final = runner.audit.last_envelope(runs[0].run_id).envelope["records"][0]
        sources = [link["record"]["provenance"].get("source_id") or "" for link in
                   runner.audit.lineage(final["message_id"])]
        self.assertTrue(any(s.startswith("contacts/") for s in sources), sources)


class PoolCase(unittest.TestCase):
    """A queue, a SQL audit store, and a registry whose ``blocker`` a test can kill mid-job."""

    processes = 1
    local = False

    def setUp(self) -> None:
        self.home = TempHome()
        self.addCleanup(self.home.cleanup)
        self.audit = SqlAuditStore(self.home.database())
        self.queue = InMemoryQueue(visibility_timeout=GUARD, requeue_check_interval=0.02)
        self.addCleanup(self.queue.stop)
        self.pids_r, pids_w = os.pipe()
        hold_r, self.hold_w = os.pipe()
        for fd in (self.pids_r, pids_w, hold_r, self.hold_w):
            self.addCleanup(os.close, fd)
        self.marker = Path(self.home.path, "marker")
        self.registry = Registry()
        self.registry.register("blocker", Blocker(pids_w, hold_r, self.marker))
        self.registry.register("echo", Blocker(pids_w, hold_r, self.home.path))  # "marker": the home, which exists
        self.registry.register("down", Failing(ValueError("boom")))
        self.registry.register("odd", Failing(TwoArgs("left", "right")))
        self.registry.register("held", Failing(HeldError("held", "lock held")))
        self.pool = ProcessPool(self.processes, registry=self.registry, audit=self.audit, retry_base=0.01,
                                local=self.local)
        self.addCleanup(self.pool.close)
        self.addCleanup(os.write, self.hold_w, b"x" * 16)  # first: frees any child still blocked
        self.pool.start()
        self.worker = Worker(self.queue, self.registry, topic=TOPIC, audit_store=self.audit,
                             execute=self.pool.execute)

    def in_background(self) -> tuple[threading.Thread, list[Any]]:
        """``run_once`` on a thread of its own; its outcome lands in the list."""
        outcomes: list[Any] = []
        thread = threading.Thread(target=lambda: outcomes.append(self.worker.run_once(timeout=GUARD)), daemon=True)
        thread.start()
        return thread, outcomes

    def blocked_pid(self) -> int:
        """The pid of the child blocked in ``blocker`` (read from the pipe, with a deadline)."""
        readable, _, _ = select.select([self.pids_r], [], [], GUARD)
        self.assertTrue(readable, "no child reached the blocker")
        return int(os.read(self.pids_r, 64).split()[0])


class LostChildTest(PoolCase):
    def test_a_child_killed_mid_job_costs_one_attempt_and_the_job_then_succeeds(self) -> None:
        # Given a job whose first attempt blocks in a child
        self.queue.enqueue(TOPIC, Job(orchestrator="blocker", run_id="r1", max_attempts=3))
        thread, outcomes = self.in_background()
        pid = self.blocked_pid()
        # When that child is killed (later attempts answer at once)
        self.marker.touch()
        os.kill(pid, signal.SIGKILL)
        thread.join(GUARD)
        self.assertFalse(thread.is_alive())
        # Then the attempt is a retry naming the lost worker
        [first] = outcomes
        self.assertEqual(first.verdict, "retry")
        self.assertIsInstance(first.error, AgentCallError)
        self.assertEqual(first.error.agent, "blocker")
        self.assertIn("worker process died mid-job", str(first.error))
        # And the retry succeeds, on the worker's own thread: no child is forked from a busy parent
        second = self.worker.run_once(timeout=GUARD)
        self.assertEqual(second.verdict, "ack")
        self.assertEqual(second.envelope["records"][0]["ran_in"], os.getpid())
        run = self.audit.get_run("r1")
        self.assertEqual((run.state, run.attempts), ("succeeded", 2))
        self.assertEqual(len(self.audit.failures("r1")), 1)  # the lost attempt
        self.assertTrue(self.pool.broken)


class LostChildLastAttemptTest(PoolCase):
    processes = 2

    def test_a_child_killed_on_the_last_attempt_dead_letters_its_job_and_the_others_go_on(self) -> None:
        # Given a job of one attempt blocked in a child, and another job behind it
        self.queue.enqueue(TOPIC, Job(orchestrator="blocker", run_id="last", max_attempts=1))
        self.queue.enqueue(TOPIC, Job(orchestrator="echo", run_id="beside"))
        thread, outcomes = self.in_background()
        pid = self.blocked_pid()
        # When the other job runs meanwhile, then the blocked child is killed
        beside = self.worker.run_once(timeout=GUARD)
        os.kill(pid, signal.SIGKILL)
        thread.join(GUARD)
        self.assertFalse(thread.is_alive())
        # Then the other job succeeded in the other child while the first was held
        self.assertEqual(beside.verdict, "ack")
        self.assertEqual(self.audit.get_run("beside").state, "succeeded")
        # And the killed job is dead-lettered, its run audited dead with the reason
        [outcome] = outcomes
        self.assertEqual(outcome.verdict, "dead")
        self.assertEqual([j.run_id for j in self.queue.dead_letters(TOPIC)], ["last"])
        run = self.audit.get_run("last")
        self.assertEqual(run.state, "dead")
        self.assertIn("worker process died mid-job", run.error or "")
        self.assertTrue(any("died mid-job" in f.message for f in self.audit.failures("last")))
        # And the other child serves on: the next job runs there, not on this process's thread
        self.assertFalse(self.pool.broken)
        self.assertEqual(self.pool.alive, 1)
        self.queue.enqueue(TOPIC, Job(orchestrator="echo", run_id="after"))
        after = self.worker.run_once(timeout=GUARD)
        self.assertEqual(after.verdict, "ack")
        self.assertNotIn(after.envelope["records"][0]["ran_in"], (os.getpid(), pid))


class UnpicklableJobTest(PoolCase):
    def test_a_job_that_cannot_be_sent_is_refused_and_the_child_serves_on(self) -> None:
        # Given a job whose payload cannot cross to a child
        odd = Job.model_construct(**{**Job(orchestrator="echo", run_id="odd").__dict__,
                                     "payload": {"f": lambda: None}})
        # When it is handed to the pool
        with self.assertRaises(Exception):
            self.pool.execute(odd)
        # Then the child was not charged or lost: the next job runs in it
        self.assertEqual((self.pool.alive, self.pool.broken), (1, False))
        self.queue.enqueue(TOPIC, Job(orchestrator="echo", run_id="next"))
        after = self.worker.run_once(timeout=GUARD)
        self.assertEqual(after.verdict, "ack")
        self.assertNotEqual(after.envelope["records"][0]["ran_in"], os.getpid())


class LocalSeatTest(PoolCase):
    local = True

    def test_this_process_runs_a_job_while_every_child_is_busy(self) -> None:
        # Given a job blocked in the only child
        self.queue.enqueue(TOPIC, Job(orchestrator="blocker", run_id="held"))
        thread, outcomes = self.in_background()
        child = self.blocked_pid()
        self.assertNotEqual(child, os.getpid())
        # When another job comes
        self.queue.enqueue(TOPIC, Job(orchestrator="echo", run_id="here"))
        here = self.worker.run_once(timeout=GUARD)
        # Then it ran in this process, audited as any other
        self.assertEqual(here.verdict, "ack")
        self.assertEqual(here.envelope["records"][0]["ran_in"], os.getpid())
        self.assertEqual(self.audit.get_run("here").state, "succeeded")
        # And the held one finishes in its child once let go
        self.marker.touch()
        os.write(self.hold_w, b"x")
        thread.join(GUARD)
        self.assertFalse(thread.is_alive())
        [held] = outcomes
        self.assertEqual((held.verdict, held.envelope["records"][0]["ran_in"]), ("ack", child))


class LostSiblingTest(PoolCase):
    processes = 2

    def test_a_child_killed_mid_job_costs_its_siblings_job_nothing(self) -> None:
        # Given two jobs, each blocked in a child of its own
        self.queue.enqueue(TOPIC, Job(orchestrator="blocker", run_id="killed", max_attempts=3))
        self.queue.enqueue(TOPIC, Job(orchestrator="blocker", run_id="sibling", max_attempts=3))
        (first, first_out), (second, second_out) = self.in_background(), self.in_background()
        pids = {self.blocked_pid(), self.blocked_pid()}
        self.assertEqual(len(pids), 2)
        runs = {run.run_id: run for run in (self.audit.get_run("killed"), self.audit.get_run("sibling"))}
        self.assertEqual({run.state for run in runs.values()}, {"running"})
        # When one child is killed, then the other is let go
        killed_pid = min(pids)
        os.kill(killed_pid, signal.SIGKILL)
        self.marker.touch()
        os.write(self.hold_w, b"x")
        for thread in (first, second):
            thread.join(GUARD)
            self.assertFalse(thread.is_alive())
        # Then exactly one job lost an attempt, and the sibling's finished on its first, uncharged
        verdicts = sorted(outcome.verdict for outcome in first_out + second_out)
        self.assertEqual(verdicts, ["ack", "retry"])
        [acked] = [o for o in first_out + second_out if o.verdict == "ack"]
        sibling = acked.envelope["metadata"]["run_id"]
        self.assertEqual((self.audit.get_run(sibling).state, self.audit.get_run(sibling).attempts),
                         ("succeeded", 1))
        self.assertEqual(self.audit.failures(sibling), [])
        self.assertNotEqual(acked.envelope["records"][0]["ran_in"], killed_pid)
        self.assertEqual((self.pool.alive, self.pool.broken), (1, False))


class FailingInChildTest(PoolCase):
    def test_an_orchestrator_that_always_raises_is_dead_lettered_with_a_readable_error(self) -> None:
        cases = {"down": "ValueError: boom", "odd": "TwoArgs: left/right", "held": "HeldError: "}
        for name, text in cases.items():
            with self.subTest(orchestrator=name):
                # Given a job of two attempts whose orchestrator raises in the child
                self.queue.enqueue(TOPIC, Job(orchestrator=name, run_id=f"run-{name}", max_attempts=2))
                # When both attempts run
                first = self.worker.run_once(timeout=GUARD)
                second = self.worker.run_once(timeout=GUARD)
                # Then the parent got each failure whole (no pickling crash), then gave up
                self.assertEqual((first.verdict, second.verdict), ("retry", "dead"))
                for outcome in (first, second):
                    self.assertIsInstance(outcome.error, AgentCallError)
                    self.assertIn(text, str(outcome.error))
                self.assertIn(f"run-{name}", [j.run_id for j in self.queue.dead_letters(TOPIC)])
                run = self.audit.get_run(f"run-{name}")
                self.assertEqual((run.state, run.attempts), ("dead", 2))
                self.assertIn(text, run.error or "")
                failures = [f"{f.error_type}: {f.message}" for f in self.audit.failures(f"run-{name}")]
                self.assertEqual(len(failures), 2)
                self.assertTrue(all(text in f for f in failures), failures)
        self.assertFalse(self.pool.broken)


class KilledParentTest(CliHome):
    def test_killing_the_parent_kills_its_worker_processes_and_resume_finishes_the_run(self) -> None:
        # Given `agent campaign run` on two worker processes, some batches done
        log = open(Path(self.home, "run.log"), "w", encoding="utf-8")
        self.addCleanup(log.close)
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "campaign", "run", str(self.file),
                                 "--processes", "2", "--json"], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=log)
        self.addCleanup(proc.kill)
        self.wait_for_a_batch(proc)
        kids = children(proc.pid)
        # When the parent is killed
        proc.send_signal(signal.SIGKILL)
        proc.wait(GUARD)
        self.assertLess(self.succeeded(), -(-self.expected_leads() // 3), "the run finished before it was killed")
        self.assertGreaterEqual(len(kids), 2, "no worker processes were found")
        # Then every worker process is gone soon after
        deadline = time.monotonic() + GUARD
        for pid in kids:
            wait_gone(pid, deadline)
        self.assertEqual([pid for pid in kids if not gone(pid)], [])
        # And a resume finishes every batch, with one message per lead
        result = self.agent("campaign", "resume", "cli", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        [summary] = json.loads(result.stdout)
        self.assert_finished_whole(summary)


class BadProcessesTest(CliHome):
    def test_a_bad_count_is_refused_by_the_runner_the_pool_and_the_settings(self) -> None:
        home = TempHome(processes="auto")
        self.addCleanup(home.cleanup)
        runner = CampaignRunner(home.settings, registry=register_builtins(Registry()))
        for bad in ("x", -1, 65, True, 2.0):
            with self.subTest(value=bad), self.assertRaises(InvalidInput) as caught:
                runner.processes_for([], bad)
            self.assertEqual(caught.exception.field, "processes")
        with self.assertRaises(InvalidInput) as caught:
            ProcessPool(0, registry=Registry())
        self.assertEqual(caught.exception.field, "processes")
        for bad in ("abc", "65", "-1"):
            with self.subTest(env=bad), mock.patch.dict(os.environ, {"AGENT_PROCESSES": bad}), \
                    self.assertRaises(ConfigurationError) as refused:
                get_settings()
            self.assertIn("processes", str(refused.exception))

    def test_the_cli_refuses_a_bad_count_before_anything_is_written(self) -> None:
        # When a run is asked for with a bad --processes
        result = self.agent("campaign", "run", str(self.file), "--processes", "x")
        # Then it is refused, naming the option, and nothing was queued or sent
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("processes", result.stderr)
        db = Path(self.home, "agent.db")
        runs = SqlAuditStore(cli_database(self.home)).list_runs(limit=10) if db.exists() else []
        self.assertEqual(runs, [])
        self.assertEqual(list(Path(self.home, "outbox").glob("*.eml")), [])


class AutoProcessesTest(unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome(processes="auto")
        self.addCleanup(self.home.cleanup)

    @staticmethod
    def report(batches: int, done: int = 0) -> CampaignReport:
        report = CampaignReport("acme", "k", batches, batches * 5)
        report.states["succeeded"] = done
        return report

    def test_auto_uses_processes_only_for_several_batches_on_the_settings_registry(self) -> None:
        in_code = CampaignRunner(self.home.settings, registry=register_builtins(Registry()))
        default = CampaignRunner(self.home.settings)
        self.assertTrue(1 <= processes.default_processes() <= 4)
        with mock.patch("agent.workers.processes.default_processes", return_value=4):
            # A registry or an audit store built in code, or a single batch, stays on threads (found in
            # review: children writing to their copies of an in-memory audit left the parent's empty)
            self.assertEqual(in_code.processes_for([self.report(8)]), 0)
            memory_audit = CampaignRunner(self.home.settings, audit=InMemoryAuditStore())
            self.assertEqual(memory_audit.processes_for([self.report(8)]), 0)
            self.assertEqual(default.processes_for([self.report(1)], "auto"), 0)
            # Several batches: one process per core in all (at most 4), this one included, and at most
            # one per batch left
            self.assertEqual(default.processes_for([self.report(8)]), 3)
            self.assertEqual(default.processes_for([self.report(3)], "auto"), 2)
            self.assertEqual(default.processes_for([self.report(8, done=6)], "auto"), 1)
            self.assertEqual(default.processes_for([self.report(8, done=7)], "auto"), 0)
            # A number is taken as asked, whatever the registry
            self.assertEqual((in_code.processes_for([self.report(1)], 3), default.processes_for([], 0)), (3, 0))
        with mock.patch("agent.workers.processes.default_processes", return_value=2):
            self.assertEqual(default.processes_for([self.report(8)]), 1)
        with mock.patch("agent.workers.processes.default_processes", return_value=4):
            # Fewer threads asked for cap auto: as many jobs at once, this process included
            self.assertEqual(default.processes_for([self.report(8)], threads=1), 0)
            self.assertEqual(default.processes_for([self.report(8)], "auto", threads=2), 1)
            self.assertEqual(default.processes_for([self.report(8)], threads=4), 3)
            # A number asked for is taken as it is
            self.assertEqual(default.processes_for([self.report(8)], 2, threads=1), 2)


class ErrorPicklingTest(unittest.TestCase):
    SAMPLES = {"field": "records[3].to", "reason": "is not an address", "name": "echo",
               "suggestions": ["echoes", "ekko"], "agent": "crm", "message": "down for maintenance"}

    def test_every_agent_error_round_trips_through_pickle_whole(self) -> None:
        for name in agent.errors.__all__:
            cls = getattr(agent.errors, name)
            with self.subTest(error=name):
                params = [p for p in inspect.signature(cls.__init__).parameters.values()
                          if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
                error = cls(*[self.SAMPLES[p.name] for p in params]) if params else cls("something broke")
                copy = pickle.loads(pickle.dumps(error))
                self.assertIs(type(copy), cls)
                self.assertEqual((str(copy), copy.args, vars(copy)), (str(error), error.args, vars(error)))
                self.assertEqual(copy.to_dict(), error.to_dict())


if __name__ == "__main__":
    unittest.main()
