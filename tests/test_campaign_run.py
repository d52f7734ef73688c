"""The main job, embedded: a campaign run in batches, its resume after a crash, and its audit trail."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

from agent.audit import SqlAuditStore
from agent.builtins import bound_registry, register_builtins
from agent.campaigns import Campaign, CampaignManager
from agent.campaigns.runner import CampaignRunner
from agent.errors import InvalidInput
from agent.leads.sample import load_sample_data
from agent.queues import InMemoryQueue
from agent.workers import Worker, execute_job
from agent.registry import Registry
from agent.storage.db import Database
from tests.support import TempHome

GUARD = 120.0


def campaign(**changes: object) -> Campaign:
    data = {"id": "acme", "lead_query": {"industry": "Fintech"},
            "template": {"subject": "{{ lead.company }} and pipeline quality",
                         "body": "Hi {{ lead.first_name }}, a short note about {{ lead.company }}."},
            "limits": {"per_run": 24, "batch_size": 5}, "allow_delivery": True}
    data.update(changes)
    return Campaign.parse(data)


class CampaignRunnerTest(unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome()
        self.addCleanup(self.home.cleanup)
        db = self.home.database()
        load_sample_data(db, size=400, tenant="default")
        self.registry = register_builtins(Registry())
        self.audit = SqlAuditStore(db)

    def runner(self) -> CampaignRunner:
        return CampaignRunner(self.home.settings, registry=self.registry, audit=self.audit)

    def outbox(self) -> list[Path]:
        folder = self.home.settings.outbox_dir
        return sorted(folder.glob("*.eml")) if folder.exists() else []

    def test_a_run_delivers_every_lead_once_in_batches(self) -> None:
        # Given a campaign of 24 leads in batches of 5
        runner = self.runner()
        # When it runs
        [report] = runner.work([runner.start(campaign())], threads=3)
        # Then five batches succeeded and each lead got one message in the outbox
        self.assertEqual((report.batches, report.leads, report.states["succeeded"]), (5, 24, 5))
        self.assertEqual(report.statuses["sent"], 24)
        self.assertEqual(len(self.outbox()), 24)

    def test_resume_after_a_lost_queue_finishes_the_rest_and_sends_nothing_twice(self) -> None:
        # Given a run whose first process finished two batches, then lost its queue (a crash)
        first = self.runner()
        report = first.start(campaign())
        for _ in range(2):
            first_job = first.queue.dequeue("campaigns", timeout=0)
            from agent.workers import execute_job

            outcome = execute_job(first_job, registry=first.registry, audit=self.audit)
            first.queue.ack(first_job.job_id)
            self.assertEqual(outcome.verdict, "ack")
        # When a new process resumes the campaign
        second = self.runner()
        [resumed] = second.work(second.resume("acme"), threads=2)
        # Then every batch is done and every lead has exactly one message
        self.assertEqual((resumed.run_key, resumed.states["succeeded"]), (report.run_key, 5))
        self.assertEqual(len(self.outbox()), 24)
        # And a second resume finds nothing left
        self.assertEqual(self.runner().resume("acme"), [])

    def test_running_the_same_campaign_again_sends_nothing_new(self) -> None:
        runner = self.runner()
        runner.work([runner.start(campaign(), run_key="one")], threads=2)
        [again] = runner.work([runner.start(campaign(), run_key="two")], threads=2)
        self.assertEqual(again.statuses["duplicate"], 24)
        self.assertEqual(len(self.outbox()), 24)

    def test_delivery_off_writes_nothing(self) -> None:
        runner = self.runner()
        [report] = runner.work([runner.start(campaign(allow_delivery=False))], threads=2)
        self.assertEqual(report.statuses["skipped"], 24)
        self.assertEqual(self.outbox(), [])

    def test_the_audit_trail_leads_from_a_message_back_to_the_lead_row(self) -> None:
        # Given a finished run
        runner = self.runner()
        runner.work([runner.start(campaign(limits={"per_run": 3, "batch_size": 3}))], threads=1)
        message = next(r for r in self.audit.list_runs(campaign_id="acme") if r.state == "succeeded")
        final = self.audit.envelopes(message.run_id)[-1].envelope["records"][0]
        # When its lineage is walked
        chain = self.audit.lineage(final["message_id"])
        # Then it reaches a contacts row
        sources = [link["record"]["provenance"].get("source_id") or "" for link in chain]
        self.assertTrue(any(s.startswith("contacts/") for s in sources), sources)


    def test_a_lead_query_that_names_its_own_paging_is_planned_whole(self) -> None:
        # Given a campaign whose lead query carries paging of its own
        runner = self.runner()
        paged = campaign(lead_query={"industry": "Fintech", "offset": 3, "limit": 2})
        # When it runs, then planning pages on its own: every lead of the run is found
        [report] = runner.work([runner.start(paged)], threads=2)
        self.assertEqual((report.leads, report.statuses["sent"]), (24, 24))

    def test_a_batch_keeps_its_draft_map_node_as_one_envelope_with_every_draft(self) -> None:
        # Given a finished batch of five leads
        runner = self.runner()
        runner.work([runner.start(campaign(limits={"per_run": 5, "batch_size": 5}))], threads=1)
        run = next(r for r in self.audit.list_runs(campaign_id="acme") if r.state == "succeeded")
        # Then the draft node is one envelope (its items' five are folded into it), one record per lead
        [draft] = self.audit.envelopes(run.run_id, node="draft")
        self.assertEqual((draft.envelope["metadata"]["items"], len(draft.envelope["records"])), (5, 5))
        self.assertEqual(len({r["lead_id"] for r in draft.envelope["records"]}), 5)

    def test_each_suppression_verdict_derives_from_the_message_to_its_address_alone(self) -> None:
        # Given a finished batch of five leads
        runner = self.runner()
        runner.work([runner.start(campaign(limits={"per_run": 5, "batch_size": 5}))], threads=1)
        run = next(r for r in self.audit.list_runs(campaign_id="acme") if r.state == "succeeded")
        [prepared] = [e.envelope["records"] for e in self.audit.envelopes(run.run_id, node="prepare")]
        [verdicts] = [e.envelope["records"] for e in self.audit.envelopes(run.run_id, node="suppression")]
        # Then each verdict's one parent is the message to that address, not the whole batch
        by_address = {m["to"]: m["provenance"]["hash"] for m in prepared}
        self.assertEqual(len(verdicts), 5)
        for verdict in verdicts:
            self.assertEqual(verdict["provenance"]["parents"], [by_address[verdict["address"]]])

class CampaignRunnerEdgesTest(CampaignRunnerTest):
    """Found in review: a bad lead fails alone, plans are recorded whole, foreign runs are left alone."""

    def test_a_lead_whose_name_breaks_a_header_fails_alone(self) -> None:
        # Given a lead whose first name holds a Unicode line separator, in a subject
        from sqlalchemy import text

        runner = self.runner()
        ids = runner.find_leads(campaign())[:3]
        with self.home.database().connect() as conn:
            conn.execute(text("UPDATE contacts SET first_name = :n WHERE id = :i"), {"n": "Bob\u2028Smith", "i": ids[0]})
        bad = campaign(template={"subject": "Hi {{ lead.first_name }}", "body": "Hello"})
        # When its batch runs
        [report] = runner.work([runner.start(bad, lead_ids=ids)], threads=1)
        # Then the batch succeeded: that lead failed, the others were sent
        self.assertEqual(report.states["succeeded"], 1)
        self.assertEqual((report.statuses["failed"], report.statuses["sent"]), (1, 2))

    def test_resume_leaves_other_runs_of_the_campaign_alone(self) -> None:
        # Given an open run of the campaign that is not one of the runner's batches
        self.audit.start_run("foreign", orchestrator="lead_orchestrator", campaign_id="acme")
        # When / Then resume finds nothing of its own to do
        self.assertEqual(self.runner().resume("acme"), [])

    def test_a_campaign_of_another_tenant_is_refused_before_anything_is_recorded(self) -> None:
        from agent.errors import PayloadError

        with self.assertRaises(PayloadError) as caught:
            self.runner().start(campaign(tenant="other"))
        self.assertEqual(caught.exception.field, "campaign.tenant")
        self.assertEqual(self.audit.list_runs(campaign_id="acme"), [])

    # The inherited scenarios already ran once; here only the edge cases matter.
    test_a_run_delivers_every_lead_once_in_batches = None  # type: ignore[assignment]
    test_resume_after_a_lost_queue_finishes_the_rest_and_sends_nothing_twice = None  # type: ignore[assignment]
    test_running_the_same_campaign_again_sends_nothing_new = None  # type: ignore[assignment]
    test_delivery_off_writes_nothing = None  # type: ignore[assignment]
    test_the_audit_trail_leads_from_a_message_back_to_the_lead_row = None  # type: ignore[assignment]


class TriggeredCampaignTest(unittest.TestCase):
    """CampaignManager trigger -> a planning job -> batch jobs, all through the queue and a Worker."""

    def setUp(self) -> None:
        self.home = TempHome()
        self.addCleanup(self.home.cleanup)
        db = self.home.database()
        load_sample_data(db, size=400, tenant="default")
        self.audit = SqlAuditStore(db)
        self.queue = InMemoryQueue()
        self.addCleanup(self.queue.stop)
        self.registry = bound_registry(self.home.settings)
        self.manager = CampaignManager(self.queue, self.registry, topic="campaigns")

    def drain(self) -> None:
        worker = Worker(self.queue, self.registry, topic="campaigns", audit_store=self.audit, poll=0.05)
        worker.start(2)
        try:
            self.assertTrue(self.queue.join("campaigns", timeout=GUARD))
        finally:
            worker.stop()
            worker.join()

    def test_a_trigger_plans_its_batches_on_a_worker_and_each_lead_gets_one_message(self) -> None:
        # Given an active campaign of 24 leads in batches of 5
        self.manager.add(campaign())
        self.manager.activate("acme")
        # When it is triggered, and the same trigger comes again after the run
        queued = self.manager.trigger("acme", key="launch")
        self.drain()
        again = self.manager.trigger("acme", key="launch")
        self.drain()
        # Then the planning run queued five batches, recorded before they ran, and all succeeded
        self.assertEqual(queued, again)
        plan = self.audit.get_run(queued["run_id"])
        self.assertEqual((plan.orchestrator, plan.state), ("campaign_orchestrator", "succeeded"))
        batches = [r for r in self.audit.list_runs(campaign_id="acme", limit=100)
                   if r.orchestrator == "outreach_orchestrator"]
        self.assertEqual([r.state for r in batches], ["succeeded"] * 5)
        self.assertEqual({r.meta["campaign_run"] for r in batches}, {queued["run_id"]})
        # And every lead got one message, once
        outbox = sorted(Path(self.home.settings.outbox_dir).glob("*.eml"))
        self.assertEqual(len(outbox), 24)

    def test_a_redelivered_planning_job_queues_no_batch_twice(self) -> None:
        # Given a planning job whose worker died after it queued its batches, before the ack
        self.manager.add(campaign())
        self.manager.activate("acme")
        self.manager.trigger("acme", key="launch")
        job = self.queue.dequeue("campaigns", timeout=0)
        outcome = execute_job(job, registry=self.registry, audit=self.audit)
        self.queue.enqueue_many("campaigns", [f.job for f in outcome.follow_ups])
        # When the same job runs again (as after a visibility timeout)
        again = execute_job(job, registry=self.registry, audit=self.audit)
        self.queue.enqueue_many("campaigns", [f.job for f in again.follow_ups])
        # Then it runs nothing again and its batches are the same five, queued once
        self.assertEqual(again.verdict, "ack")
        self.assertEqual([f.job.run_id for f in again.follow_ups], [f.job.run_id for f in outcome.follow_ups])
        self.assertEqual(self.queue.stats("campaigns").ready, 5)


class ResumeTopicsTest(TriggeredCampaignTest):
    def test_batches_planned_on_another_topic_are_resumed_there_and_run(self) -> None:
        # Given a trigger whose plan queued its batches on "orchestrate", and a process that died then
        manager = CampaignManager(self.queue, self.registry, topic="orchestrate")
        manager.add(campaign())
        manager.activate("acme")
        manager.trigger("acme", key="launch")
        plan = self.queue.dequeue("orchestrate", timeout=0)
        execute_job(plan, registry=self.registry, audit=self.audit)  # its batches recorded, never queued
        # When a runner on its default topic resumes the campaign with a fresh queue
        runner = CampaignRunner(self.home.settings, registry=register_builtins(Registry()), audit=self.audit)
        [report] = runner.work(runner.resume("acme"), threads=2, timeout=GUARD)
        # Then every batch ran, on the topic it was planned for
        self.assertEqual((report.batches, dict(report.states)), (5, {"succeeded": 5}))
        self.assertEqual(len(list(Path(self.home.settings.outbox_dir).glob("*.eml"))), 24)


class PlanningInPartsTest(unittest.TestCase):
    """``start(part_size=...)``: the search queued in parts, each planning whole batches and the next part."""

    setUp = CampaignRunnerTest.setUp
    runner = CampaignRunnerTest.runner
    outbox = CampaignRunnerTest.outbox

    def setUp_pages(self) -> None:
        # Pages of 4 leads, parts of about 7: each part plans one batch of 5 and carries the rest on.
        patcher = mock.patch("agent.campaigns.planning._PAGE", 4)
        patcher.start()
        self.addCleanup(patcher.stop)

    def batches(self) -> list:
        return sorted((r for r in self.audit.list_runs(campaign_id="acme", limit=1000)
                       if r.orchestrator == "outreach_orchestrator"), key=lambda r: r.meta["batch"])

    def test_parts_plan_the_same_batches_as_a_whole_search_and_run_them_while_it_reads_on(self) -> None:
        # Given a campaign of 24 leads in batches of 5, its search read 4 leads a page
        self.setUp_pages()
        whole = self.runner().find_leads(campaign())
        runner = self.runner()
        # When it is started in parts of 7 leads and run
        report = runner.start(campaign(), run_key="parts", part_size=7)
        self.assertEqual((report.batches, report.planning), (0, 1))  # nothing planned yet: the search is a job
        [report] = runner.work([report], threads=2)
        # Then its batches hold every lead once, in the search's order, numbered 0..4, all sent
        batches = self.batches()
        self.assertEqual([r.meta["batch"] for r in batches], [0, 1, 2, 3, 4])
        self.assertEqual([i for r in batches for i in r.meta["lead_ids"]], whole)
        self.assertEqual([len(r.meta["lead_ids"]) for r in batches], [5, 5, 5, 5, 4])
        self.assertEqual((report.batches, report.leads, report.states["succeeded"], report.planning), (5, 24, 5, 0))
        self.assertTrue(report.finished)
        self.assertEqual(len(self.outbox()), 24)
        # And each part is a run of its own, succeeded
        parts = [r for r in self.audit.list_runs(campaign_id="acme", limit=100) if r.orchestrator == "campaign_orchestrator"]
        self.assertGreater(len(parts), 2)
        self.assertEqual({r.state for r in parts}, {"succeeded"})

    def test_a_run_killed_during_its_search_resumes_it_where_it_stopped(self) -> None:
        # Given a run in parts whose process planned the first part, recorded what it queued, and died
        self.setUp_pages()
        first = self.runner()
        report = first.start(campaign(), run_key="parts", part_size=7)
        job = first.queue.dequeue("campaigns", timeout=0)
        self.assertEqual(execute_job(job, registry=first.registry, audit=self.audit).verdict, "ack")
        self.assertEqual(len(self.batches()), 1)  # one batch planned, the rest of the search not read yet
        # When a new process resumes the campaign
        second = self.runner()
        [resumed] = second.work(second.resume("acme"), threads=2)
        # Then the search went on from its cursor: every lead planned once, every batch done, one message each
        self.assertEqual(resumed.run_key, report.run_key)
        self.assertEqual((resumed.batches, resumed.leads, resumed.states["succeeded"], resumed.planning), (5, 24, 5, 0))
        self.assertEqual(sorted(i for r in self.batches() for i in r.meta["lead_ids"]),
                         sorted(self.runner().find_leads(campaign())))
        self.assertEqual(len(self.outbox()), 24)
        self.assertEqual(self.runner().resume("acme"), [])

    def test_a_bad_part_size_is_refused_and_nothing_is_queued(self) -> None:
        runner = self.runner()
        for bad in (0, -3, True, 1.5, 100_001):
            with self.assertRaises(InvalidInput) as caught:
                runner.start(campaign(), run_key="bad", part_size=bad)  # type: ignore[arg-type]
            self.assertEqual(caught.exception.field, "part_size")
        self.assertEqual(self.audit.list_runs(campaign_id="acme"), [])
        self.assertEqual(runner.queue.stats("campaigns").ready, 0)


class CliHome(unittest.TestCase):
    """A fresh AGENT_HOME (sample data loads on first use) and a campaign file in it."""

    def setUp(self) -> None:
        self.home = tempfile.mkdtemp(prefix="agent-campaign-cli-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        self.env.update(AGENT_HOME=self.home, COLUMNS="160")
        self.file = Path(self.home, "campaign.json")
        self.file.write_text(json.dumps({
            "id": "cli", "lead_query": {"industry": "Fintech"},
            "template": {"subject": "Hello {{ lead.company }}", "body": "Hi {{ lead.first_name }}"},
            "limits": {"per_run": 120, "batch_size": 3}, "allow_delivery": True}), encoding="utf-8")

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=GUARD)

    def batch_runs(self) -> list:
        """The campaign's batch runs (not its planning parts)."""
        store = SqlAuditStore(Database(f"sqlite:///{self.home}/agent.db"))
        return [r for r in store.list_runs(campaign_id="cli", limit=10_000) if r.orchestrator == "outreach_orchestrator"]

    def succeeded(self) -> int:
        return sum(1 for r in self.batch_runs() if r.state == "succeeded")

    def wait_for_a_batch(self, proc: subprocess.Popen) -> None:
        """Until the run in ``proc`` has finished a batch (or ended): another process's database
        offers no event to wait on, so it is read every 50 ms, within a deadline."""
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline and proc.poll() is None:
            if Path(self.home, "agent.db").exists() and self.succeeded() >= 1:
                return
            time.sleep(0.05)

    def expected_leads(self) -> int:
        """How many leads the campaign's search finds (its run must have planned every one)."""
        from agent.campaigns.model import load_campaign
        from agent.settings import get_settings

        return len(CampaignRunner(get_settings(home=Path(self.home))).find_leads(load_campaign(self.file)))

    def assert_finished_whole(self, summary: dict) -> None:
        """Every lead of the search planned, each batch succeeded, one message per lead."""
        self.assertEqual(summary["leads"], self.expected_leads())
        self.assertEqual(summary["batches"], -(-summary["leads"] // 3))  # batches of 3
        self.assertEqual(summary["batch_states"], {"succeeded": summary["batches"]})
        self.assertEqual(len(list(Path(self.home, "outbox").glob("*.eml"))), summary["leads"])
        self.assertEqual(summary["messages"].get("sent", 0) + summary["messages"].get("duplicate", 0),
                         summary["leads"])


class CampaignCliTest(CliHome):
    """``agent campaign run`` killed mid-way, then ``agent campaign resume``: nothing lost, nothing twice."""

    def test_a_killed_run_resumes_to_the_end_with_each_lead_sent_once(self) -> None:
        # Given a campaign run killed once some batches are done
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "campaign", "run", str(self.file),
                                 "--threads", "1", "--processes", "0", "--json"], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.kill)
        self.wait_for_a_batch(proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(GUARD)
        self.assertLess(self.succeeded(), -(-self.expected_leads() // 3), "the run finished before it was killed")
        # When it is resumed
        result = self.agent("campaign", "resume", "cli", "--json")
        # Then every lead was planned, every batch succeeded and the outbox holds one message per lead
        self.assertEqual(result.returncode, 0, result.stderr)
        [summary] = json.loads(result.stdout)
        self.assert_finished_whole(summary)


class AuditCliTest(CliHome):
    def test_runs_list_show_and_trace_follow_a_message_to_its_lead_row(self) -> None:
        # Given a small finished campaign
        self.file.write_text(self.file.read_text().replace('"per_run": 120', '"per_run": 2'), encoding="utf-8")
        self.assertEqual(self.agent("campaign", "run", str(self.file), "--json").returncode, 0)
        # When the runs are listed and one is shown
        listed = json.loads(self.agent("runs", "list", "--campaign", "cli", "--json").stdout)
        # (the run's search is a run of its own: one planning part, then the batch it planned)
        self.assertEqual(sorted(r["orchestrator"] for r in listed), ["campaign_orchestrator", "outreach_orchestrator"])
        runs = [r for r in listed if r["orchestrator"] == "outreach_orchestrator"]
        shown = json.loads(self.agent("runs", "show", runs[0]["run_id"], "--json").stdout)
        message_id = shown["envelopes"][-1]["records"][0]["message_id"]
        traced = json.loads(self.agent("trace", message_id, "--json").stdout)
        # Then the trail goes from the message through the draft to a contacts row
        self.assertEqual([r["state"] for r in runs], ["succeeded"])
        self.assertEqual(shown["envelopes"][0]["metadata"]["node"], "load")
        sources = [link["record"]["provenance"].get("source_id") or "" for link in traced["lineage"]]
        self.assertTrue(any(s.startswith("contacts/") for s in sources), sources)

    def test_trace_of_an_unknown_message_names_the_field(self) -> None:
        result = self.agent("trace", "<nope@example>")
        self.assertEqual(result.returncode, 2)
        self.assertIn("message_id:", result.stderr)


if __name__ == "__main__":
    unittest.main()
