"""The outreach flow with approval: enrich, score, threshold, draft, the approval queue, release.

Runs on the embedded defaults (SQLite, in-process queue and worker threads),
through the ``CampaignRunner`` as ``agent campaign run`` does, and the
operator's side through ``DraftStore`` and the ``agent drafts`` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unittest
from pathlib import Path

from agent.audit import SqlAuditStore
from agent.builtins import register_builtins
from agent.campaigns import Campaign
from agent.campaigns.runner import CampaignRunner
from agent.copy import UnresolvedPlaceholder
from agent.drafts import DraftStore
from agent.errors import InvalidInput, PayloadError
from agent.leads.sample import load_sample_data
from agent.registry import Registry
from tests.support import TempHome

ICP = {"rules": [{"field": "title", "any_of": ["Head", "VP", "Director", "CEO", "CTO", "Founder"], "weight": 60},
                 {"field": "industry", "any_of": ["Fintech"], "weight": 40}],
       "threshold": 60}


def campaign(**changes: object) -> Campaign:
    data = {"id": "review", "lead_query": {"industry": "Fintech"},
            "template": {"subject": "{{ lead.company }} and pipeline quality",
                         "body": "Hi {{ lead.first_name }}, a short note about {{ lead.company }}."},
            "limits": {"per_run": 12, "batch_size": 4}, "allow_delivery": True, "approval": "required",
            "icp": ICP}
    data.update(changes)
    return Campaign.parse(data)


class ApprovalFlowTest(unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome(embedder="hashing")
        self.addCleanup(self.home.cleanup)
        self.db = self.home.database()
        load_sample_data(self.db, size=400, tenant="default")
        self.registry = register_builtins(Registry())
        self.audit = SqlAuditStore(self.db)
        self.drafts = DraftStore(self.db)

    def runner(self) -> CampaignRunner:
        return CampaignRunner(self.home.settings, registry=self.registry, audit=self.audit)

    def outbox(self) -> list[Path]:
        folder = self.home.settings.outbox_dir
        return sorted(folder.glob("*.eml")) if folder.exists() else []

    def held_run(self) -> tuple[CampaignRunner, list]:
        runner = self.runner()
        [report] = runner.work([runner.start(campaign())], threads=2)
        self.assertEqual(report.states["succeeded"], report.batches)
        return runner, self.drafts.list(campaign_id="review", limit=100)

    def test_leads_below_the_threshold_get_no_draft_and_the_rest_wait_unsent(self) -> None:
        runner, waiting = self.held_run()
        report = runner.report("review", next(iter(runner.audit.list_runs(campaign_id="review"))).meta["campaign_run"])
        # Then each lead is held for approval or skipped by the ICP, nothing is sent
        self.assertEqual(report.statuses["awaiting_approval"] + report.statuses["skipped"], 12)
        self.assertGreater(report.statuses["skipped"], 0)
        self.assertEqual(len(waiting), report.statuses["awaiting_approval"])
        self.assertTrue(all(d.score is not None and d.score >= 60 for d in waiting))
        self.assertEqual(self.outbox(), [])
        # And a skipped lead's outcome says why, with its score and reasons
        final = [self.audit.last_envelope(r.run_id) for r in self.audit.list_runs(campaign_id="review")]
        skipped = [rec for env in final for rec in env.envelope["records"] if rec["status"] == "skipped"]
        self.assertEqual(skipped[0]["reason"], "below_icp_threshold")
        self.assertLess(skipped[0]["icp_score"], 60)
        self.assertTrue(any("title" in reason for reason in skipped[0]["icp_reasons"]))

    def test_release_waits_for_every_draft_then_sends_only_the_approved_as_edited(self) -> None:
        runner, waiting = self.held_run()
        by_run: dict[str, list] = {}
        for draft in waiting:
            by_run.setdefault(draft.run_id, []).append(draft)
        run_id, batch = next((r, d) for r, d in by_run.items() if len(d) >= 3)
        first, second, third, *rest = batch
        # When one draft is approved, the batch is not released yet
        self.drafts.approve([first.id], by="ana")
        self.assertEqual(runner.release([run_id]), [])
        # And when one is edited and approved, one rejected, and the rest approved
        self.drafts.edit(second.id, by="ana", body="Hi there, a rewritten note.\n")
        self.drafts.approve([second.id, *(d.id for d in rest)], by="ana")
        self.drafts.reject([third.id], by="ben", reason="wrong person")
        reports = runner.work(runner.release([run_id]), threads=2)
        # Then the batch's approved drafts are sent, the edited one as edited, the rejected one never
        self.assertEqual(reports[0].statuses["sent"], len(batch) - 1)
        self.assertEqual(reports[0].statuses["rejected"], 1)
        files = {p.read_text(encoding="utf-8") for p in self.outbox()}
        self.assertEqual(len(files), len(batch) - 1)
        self.assertEqual(sum("a rewritten note" in f for f in files), 1)
        self.assertFalse(any(f"To: {third.to}" in f for f in files))
        # And releasing again queues nothing new and sends nothing twice
        runner.work(runner.release([run_id]), threads=2)
        self.assertEqual(len(self.outbox()), len(batch) - 1)

    def test_a_sent_edited_draft_traces_back_through_the_edit_to_the_lead_row(self) -> None:
        runner, waiting = self.held_run()
        run_id = waiting[0].run_id
        batch = [d for d in waiting if d.run_id == run_id]
        self.drafts.edit(batch[0].id, by="ana", subject="A better subject")
        self.drafts.approve([d.id for d in batch], by="ana")
        runner.work(runner.release([run_id]), threads=2)
        sent = [d for d in self.audit.list_runs(campaign_id="review") if d.meta.get("release")]
        final = self.audit.last_envelope(sent[0].run_id).envelope["records"]
        record = next(r for r in final if str(r["lead_id"]) == batch[0].lead_id)
        chain = self.audit.lineage(record["message_id"])
        nodes = [step["record"]["provenance"]["node"] for step in chain]
        # sent record, the edit, the draft, the scored lead, the enriched lead, the lead row
        self.assertEqual(nodes[1:], ["edit", "draft", "score", "enrich", "load"], nodes)
        self.assertEqual(chain[1]["record"]["provenance"]["edited_by"], "ana")
        self.assertEqual(chain[-1]["record"]["provenance"]["source_id"], f"contacts/{batch[0].lead_id}")

    def test_decisions_are_final_and_a_bad_edit_is_refused_with_nothing_written(self) -> None:
        _, waiting = self.held_run()
        draft = waiting[0]
        self.drafts.reject([draft.id], by="ana")
        with self.assertRaises(InvalidInput) as caught:
            self.drafts.approve([draft.id], by="ben")
        self.assertEqual(caught.exception.field, "draft_id")
        self.assertEqual(self.drafts.get(draft.id).status, "rejected")
        # An edit that leaves a placeholder is refused by the copy checks, and the draft is unchanged
        from agent.cli.drafts import _check_edit

        other = waiting[1]
        with self.assertRaises(UnresolvedPlaceholder):
            self.drafts.edit(other.id, by="ana", body="Hi {{ first_name }}",
                             check=lambda r: _check_edit(r, other.subject + "\n" + other.body))
        self.assertEqual(self.drafts.get(other.id).body, other.body)
        with self.assertRaises(PayloadError) as caught:
            self.drafts.edit(other.id, by="ana")
        self.assertEqual(caught.exception.field, "edit")

    def test_without_approval_the_scored_leads_are_sent_at_once(self) -> None:
        runner = self.runner()
        [report] = runner.work([runner.start(campaign(approval="none"))], threads=2)
        self.assertEqual(report.statuses["sent"] + report.statuses["skipped"], 12)
        self.assertEqual(len(self.outbox()), report.statuses["sent"])
        self.assertEqual(self.drafts.counts("review"), {})

    def test_the_outbox_row_of_a_draft_moves_drafted_approved_sending_sent_or_cancelled(self) -> None:
        from agent.delivery.keys import idempotency_key
        from agent.delivery.ledger import OutboxLedger
        from agent.high_level_agents.orchestrators import DeliveryOrchestrator

        runner, waiting = self.held_run()
        ledger = OutboxLedger(self.db)

        def row(draft):  # noqa: ANN001, ANN202
            return ledger.get(idempotency_key("default", "review", draft.lead_id, 1))

        by_run: dict[str, list] = {}
        for draft in waiting:
            by_run.setdefault(draft.run_id, []).append(draft)
        run_id, batch = next((r, d) for r, d in by_run.items() if len(d) >= 3)
        staged = {d.id: row(d) for d in batch}
        # Each waiting draft is an outbox row in "drafted", its Message-ID fixed already
        self.assertEqual({e.state for e in staged.values()}, {"drafted"})
        # A delivery that goes around the approval queue is refused at the claim: nothing is written
        direct = DeliveryOrchestrator(self.registry, settings=self.home.settings).run(
            {"records": [batch[0].record], "campaign_id": "review", "allow_delivery": True})
        self.assertEqual((direct["records"][0]["status"], direct["records"][0]["reason"]),
                         ("skipped", "awaiting_approval"))
        self.assertEqual(self.outbox(), [])
        # When one is approved, one rejected, and one approved and then withdrawn (the lead replied)
        approved, rejected, withdrawn, *rest = batch
        self.drafts.approve([approved.id, withdrawn.id, *(d.id for d in rest)], by="ana")
        self.drafts.reject([rejected.id], by="ben")
        self.assertEqual((row(approved).state, row(rejected).state), ("approved", "cancelled"))
        self.drafts.withdraw(address=withdrawn.to.upper(), by="inbound", reason="replied")
        self.assertEqual(row(withdrawn).state, "cancelled")
        [report] = runner.work(runner.release([run_id]), threads=2)
        # Then the approved ones are sent under the Message-IDs fixed when they were drafted
        self.assertEqual(row(approved).state, "sent")
        self.assertEqual(row(approved).message_id, staged[approved.id].message_id)
        self.assertIn(f"Message-ID: {staged[approved.id].message_id}",
                      "".join(p.read_text(encoding="utf-8") for p in self.outbox()))
        self.assertEqual(report.statuses["sent"], len(batch) - 2)
        self.assertEqual(report.statuses["cancelled"], 1)
        self.assertEqual(len(self.outbox()), len(batch) - 2)
        self.assertEqual((row(rejected).state, row(withdrawn).state), ("cancelled", "cancelled"))

    def test_a_row_staged_by_an_interrupted_run_takes_the_queued_draft_s_content(self) -> None:
        from sqlalchemy import update

        from agent.high_level_agents.orchestrators import OutreachOrchestrator
        from agent.storage.models import OutboxMessage

        runner, waiting = self.held_run()
        run_id = waiting[0].run_id
        batch = [d for d in waiting if d.run_id == run_id]
        # Given rows staged from another rendering than the drafts queued (a run that died in between)
        with self.db.connect(write=True) as conn:
            conn.execute(update(OutboxMessage).where(OutboxMessage.state == "drafted").values(record_hash="0" * 64))
        # When the batch runs again, and its drafts are approved and released
        run = runner.audit.get_run(run_id)
        OutreachOrchestrator(self.registry, settings=self.home.settings).run(
            {"campaign": run.meta["campaign"], "lead_ids": run.meta["lead_ids"]})
        self.drafts.approve([d.id for d in batch], by="ana")
        [report] = runner.work(runner.release([run_id]), threads=2)
        # Then every approved draft is sent: the rows carry what the operator approved
        self.assertEqual(report.statuses["sent"], len(batch))


class DraftsCliTest(unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome(embedder="hashing")
        self.addCleanup(self.home.cleanup)
        db = self.home.database()
        load_sample_data(db, size=200, tenant="default")
        self.file = Path(self.home.path, "campaign.json")
        self.file.write_text(json.dumps(campaign(limits={"per_run": 4, "batch_size": 4}).model_dump(mode="json")))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        self.env.update(AGENT_HOME=str(self.home.path), AGENT_DATABASE_URL=self.home.settings.database_url,
                        AGENT_OUTBOX_DIR=str(self.home.settings.outbox_dir), AGENT_SAMPLE_DATA="off",
                        AGENT_EMBEDDER="hashing", COLUMNS="160")

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def test_an_operator_lists_shows_and_approves_the_queue_from_the_command_line(self) -> None:
        self.assertEqual(self.agent("campaign", "run", str(self.file)).returncode, 0)
        listed = json.loads(self.agent("drafts", "list", "--json").stdout)
        ids = [d["id"] for d in listed["drafts"]]
        self.assertTrue(ids)
        shown = self.agent("drafts", "show", str(ids[0]))
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("Subject:", shown.stdout)
        approved = json.loads(self.agent("drafts", "approve", "--all", "--campaign", "review", "--by", "ana",
                                         "--json").stdout)
        self.assertEqual({d["status"] for d in approved["decided"]}, {"approved"})
        self.assertEqual(approved["released"][0]["statuses"].get("sent"), len(ids))
        self.assertEqual(len(list(self.home.settings.outbox_dir.glob("*.eml"))), len(ids))
        missing = self.agent("drafts", "approve")
        self.assertEqual(missing.returncode, 2, missing.stderr)
        self.assertIn("draft_ids", missing.stderr)
