"""Sequences end to end: a real SMTP server, the one-click app under uvicorn, inbound replies, a frozen clock.

A campaign of two steps runs on the embedded runner; days pass on a
``FrozenClock`` registered in the Registry; ``CampaignRunner.follow_ups``
queues what is due.  The assertions are on the bytes the SMTP server
received: the threading chain, and which follow-ups never arrived.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
import unittest
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx2 as httpx

from agent.builtins import register_builtins
from agent.campaigns.model import Campaign
from agent.campaigns.runner import CampaignRunner
from agent.clock import FrozenClock
from agent.high_level_agents.orchestrators import ReplyOrchestrator
from agent.inbound.intake import process_pending
from agent.inbound.store import InboundStore
from agent.leads.sample import load_sample_data
from agent.leads.search import LeadSearch
from agent.registry import Registry
from agent.sequences import EnrolmentStore
from agent.web import create_app
from tests.smtp_server import SmtpServer
from tests.support import PostgresSchema, TempHome, requires_real_services
from tests.test_unsubscribe import _Server

MONDAY = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def two_steps(**changes: Any) -> Campaign:
    data: dict[str, Any] = {
        "id": "seq", "lead_query": {"industry": "Software"}, "channel": "smtp", "allow_delivery": True,
        "template": {"subject": "{{ lead.company }} and your pipeline",
                     "body": "Hi {{ lead.first_name }},\n\nhow do you find new accounts today?",
                     "steps": [{"step": 2, "wait_days": 3,
                                "body": "Hi {{ lead.first_name }},\n\na short follow-up to my note."}]},
        "limits": {"batch_size": 2, "per_run": 10}}
    data.update(changes)
    return Campaign.parse(data)


def unfolded(raw: bytes) -> bytes:
    return raw.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")


def header(raw: bytes, name: str) -> str:
    found = re.search(rb"^" + name.encode() + rb": ([^\r\n]*)", unfolded(raw), re.MULTILINE | re.IGNORECASE)
    assert found is not None, name
    return found.group(1).decode()


class SequenceTest(unittest.TestCase):
    def setUp(self) -> None:
        self.smtp = SmtpServer()
        self.smtp.__enter__()
        self.addCleanup(self.smtp.__exit__, None, None, None)
        self.home = self.make_home(smtp_host="127.0.0.1", smtp_port=self.smtp.port, smtp_security="none",
                                   unsubscribe_base_url="https://mail.sender.example")
        self.addCleanup(self.home.cleanup)
        self.db = self.home.database()
        load_sample_data(self.db, size=60, tenant="default")
        with self.db.connect() as conn:
            self.leads = {str(row["lead_id"]): row["email"] for row in LeadSearch(self.db).load(conn, [1, 2, 3])}
        self.clock = FrozenClock(MONDAY)
        self.registry = register_builtins(Registry())
        self.registry.register("clock", self.clock, kind="tool")
        self.runner = CampaignRunner(self.home.settings, registry=self.registry)

    def make_home(self, **settings: Any) -> TempHome:
        return TempHome(**settings)

    def run_first_step(self, campaign: Campaign) -> None:
        report = self.runner.start(campaign, lead_ids=[1, 2, 3])
        [done] = self.runner.work([report], threads=2)
        self.assertTrue(done.finished)

    def tick(self, campaign: Campaign) -> list[Any]:
        reports = self.runner.follow_ups(campaign)
        return self.runner.work(reports, threads=2) if reports else []

    def received_by(self, address: str) -> list[bytes]:
        return [m.data for m in self.smtp.received if m.rcpt_tos == [address]]

    def enrolment(self, lead: int) -> Any:
        return EnrolmentStore(self.db).get("seq", str(lead))

    def reply(self, raw: bytes) -> None:
        store = InboundStore(self.db)
        store.store(raw, source="test")
        counts = process_pending(ReplyOrchestrator(self.registry, settings=self.home.settings), store)
        self.assertNotIn("error", counts)

    def test_a_follow_up_answers_its_thread_and_never_reaches_who_unsubscribed_or_replied(self) -> None:
        campaign = two_steps()
        self.run_first_step(campaign)
        self.assertEqual(len(self.smtp.received), 3)
        first = {lead: self.received_by(address)[0] for lead, address in self.leads.items()}
        # Lead 2 clicks one-click unsubscribe: the URL is the one in the message it received
        url = header(first["2"], "List-Unsubscribe").split(",")[0].strip(" <>")
        web = _Server(create_app(self.home.settings))
        web.start()
        self.addCleanup(web.stop)
        with httpx.Client(base_url=f"http://127.0.0.1:{web.port}") as http:
            answer = http.post(url.removeprefix("https://mail.sender.example"), content=b"List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(answer.status_code, 200)
        # Lead 3 replies to its message
        mid = header(first["3"], "Message-ID")
        self.reply(f"From: <{self.leads['3']}>\r\nTo: <outreach@sender.example>\r\nSubject: Re: hello\r\n"
                   f"Message-ID: <reply-3@lead.example>\r\nIn-Reply-To: {mid}\r\nReferences: {mid}\r\n"
                   "Date: Tue, 24 Nov 2026 09:00:00 +0000\r\n\r\nSounds interesting, call me.\r\n".encode())
        # Two days on nothing is due; three days on, the follow-ups go out
        self.clock.advance(days=2)
        self.assertEqual(self.tick(campaign), [])
        self.clock.advance(days=1, seconds=1)
        [report] = self.tick(campaign)
        self.assertEqual(report.statuses["sent"], 1)
        self.assertEqual(len(self.smtp.received), 4)
        # Only lead 1 got step 2, and it answers step 1 in the same thread
        self.assertEqual(len(self.received_by(self.leads["2"])), 1)
        self.assertEqual(len(self.received_by(self.leads["3"])), 1)
        [_, follow_up] = self.received_by(self.leads["1"])
        parent = header(first["1"], "Message-ID")
        self.assertEqual(header(follow_up, "In-Reply-To"), parent)
        self.assertEqual(header(follow_up, "References"), parent)
        self.assertEqual(header(follow_up, "Subject"), "Re: " + header(first["1"], "Subject"))
        self.assertNotEqual(header(follow_up, "Message-ID"), parent)
        self.assertIn(b"a short follow-up to my note", follow_up)
        # And the sequences say why
        one, two, three = self.enrolment(1), self.enrolment(2), self.enrolment(3)
        self.assertEqual((one.status, one.thread), ("completed", [parent, header(follow_up, "Message-ID")]))
        self.assertEqual((two.status, two.stop_reason), ("stopped", "unsubscribed"))
        self.assertEqual((three.status, three.stop_reason), ("stopped", "replied"))
        # A tick again sends nothing twice
        self.clock.advance(days=10)
        self.assertEqual(self.tick(campaign), [])
        self.assertEqual(len(self.smtp.received), 4)

    def test_an_out_of_office_holds_the_follow_up_until_the_return_date(self) -> None:
        campaign = two_steps()
        self.run_first_step(campaign)
        mid = header(self.received_by(self.leads["1"])[0], "Message-ID")
        self.reply(f"From: <{self.leads['1']}>\r\nTo: <outreach@sender.example>\r\nSubject: Out of Office\r\n"
                   f"Auto-Submitted: auto-replied\r\nMessage-ID: <ooo-1@lead.example>\r\nIn-Reply-To: {mid}\r\n"
                   "Date: Mon, 23 Nov 2026 10:05:00 +0000\r\n\r\n"
                   "I am out of the office and will be back on 7 December 2026.\r\n".encode())
        self.assertEqual(self.enrolment(1).status, "paused")
        self.clock.advance(days=4)  # the others' step 2 is due; lead 1 is away
        self.tick(campaign)
        self.assertEqual(len(self.received_by(self.leads["1"])), 1)
        self.assertEqual(len(self.received_by(self.leads["2"])), 2)
        self.clock.set(datetime(2026, 12, 7, 0, 0, 1, tzinfo=timezone.utc))
        self.tick(campaign)
        self.assertEqual(len(self.received_by(self.leads["1"])), 2)  # back: the sequence goes on
        self.assertEqual(self.enrolment(1).status, "completed")

    def test_pacing_defers_past_the_daily_cap_to_the_next_window_and_sends_then(self) -> None:
        campaign = two_steps(pacing={"daily_cap": 2, "window": {"start": "09:00", "end": "17:00"},
                                     "jitter_seconds": [30, 60]}, timezone="Europe/Berlin")
        self.run_first_step(campaign)
        self.assertEqual(len(self.smtp.received), 2)
        self.assertGreaterEqual(self.clock.slept, 30)  # the second send waited its jitter on the clock
        waiting = [e for e in EnrolmentStore(self.db).list(campaign_id="seq") if e.next_step == 1]
        self.assertEqual(len(waiting), 1)
        # Tuesday 09:00 in Berlin is 08:00 UTC
        self.assertEqual(waiting[0].due_at, datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc))
        self.assertEqual(self.tick(campaign), [])  # not yet
        self.clock.set(datetime(2026, 11, 24, 8, 0, 1, tzinfo=timezone.utc))
        [report] = self.tick(campaign)
        self.assertEqual(report.statuses["sent"], 1)
        self.assertEqual(len(self.smtp.received), 3)
        self.assertEqual(self.enrolment(int(waiting[0].lead_id)).next_step, 2)

    def test_a_paused_mailbox_sends_nothing_until_resumed(self) -> None:
        from agent.delivery.pacing import Pacer

        Pacer(self.db).pause("mailbox:outreach@sender.example", reason="manual")
        campaign = two_steps()
        self.run_first_step(campaign)
        self.assertEqual(self.smtp.received, [])
        self.assertEqual({e.next_step for e in EnrolmentStore(self.db).list(campaign_id="seq")}, {1})
        Pacer(self.db).resume("mailbox:outreach@sender.example")
        self.clock.advance(hours=1, seconds=1)
        self.tick(campaign)
        self.assertEqual(len(self.smtp.received), 3)

    def test_a_reply_while_its_batch_is_still_sending_still_stops_the_sequence(self) -> None:
        campaign = two_steps()
        arrived, release = threading.Event(), threading.Event()
        self.smtp.handler.hold_data[self.leads["2"]] = (arrived, release)
        self.addCleanup(release.set)

        def lead_one_replies() -> None:  # lead 1's message is out, the batch is held on lead 2's
            arrived.wait(60)
            mid = header(self.received_by(self.leads["1"])[0], "Message-ID")
            self.reply(f"From: <{self.leads['1']}>\r\nTo: <outreach@sender.example>\r\nSubject: Re: hi\r\n"
                       f"Message-ID: <r1@lead.example>\r\nIn-Reply-To: {mid}\r\n"
                       "Date: Mon, 23 Nov 2026 10:01:00 +0000\r\n\r\nYes, call me.\r\n".encode())
            release.set()

        replier = threading.Thread(target=lead_one_replies)
        replier.start()
        self.run_first_step(campaign)
        replier.join()
        self.assertEqual((self.enrolment(1).status, self.enrolment(1).stop_reason), ("stopped", "replied"))
        self.clock.advance(days=3, seconds=1)
        self.tick(campaign)
        self.assertEqual(len(self.received_by(self.leads["1"])), 1)
        self.assertEqual(len(self.received_by(self.leads["2"])), 2)

    def test_a_refused_follow_up_stops_the_sequence_and_is_never_handed_over_again(self) -> None:
        campaign = two_steps()
        self.run_first_step(campaign)
        self.smtp.handler.refuse_data[self.leads["1"]] = "554 5.6.0 content rejected"
        self.clock.advance(days=3, seconds=1)
        self.tick(campaign)
        one = self.enrolment(1)
        self.assertEqual((one.status, one.stop_reason), ("stopped", "bounced"))
        for _ in range(3):  # later ticks: nothing due, nothing sent
            self.clock.advance(hours=2)
            self.assertEqual(self.tick(campaign), [])
        self.assertEqual(len(self.received_by(self.leads["1"])), 1)

    def test_a_step_deferred_after_its_approval_goes_out_when_pacing_allows(self) -> None:
        from agent.drafts import DraftStore

        campaign = two_steps(approval="required", pacing={"daily_cap": 2, "window": {"start": "09:00", "end": "17:00"}},
                             timezone="Europe/Berlin")
        [held] = self.runner.work([self.runner.start(campaign, lead_ids=[1, 2, 3])], threads=2)
        drafts = DraftStore(self.db)
        waiting = drafts.list(campaign_id="seq", limit=100)
        drafts.approve([d.id for d in waiting], by="ana")
        self.runner.work(self.runner.release(sorted({d.run_id for d in waiting})), threads=2)
        self.assertEqual(len(self.smtp.received), 2)  # the cap
        self.clock.set(datetime(2026, 11, 24, 8, 0, 1, tzinfo=timezone.utc))  # Tuesday 09:00 in Berlin
        [report] = self.tick(campaign)
        self.assertEqual(report.statuses["sent"], 1)
        self.assertEqual(len(self.smtp.received), 3)

    def test_overlapping_ticks_queue_each_due_lead_once(self) -> None:
        campaign = two_steps()
        self.run_first_step(campaign)
        self.clock.advance(days=3, seconds=1)
        first = self.runner.follow_ups(campaign)
        second = self.runner.follow_ups(campaign)  # before the first tick's jobs ran
        self.assertEqual((sum(r.leads for r in first), second), (3, []))
        self.runner.work(first, threads=2)
        self.assertEqual(len(self.smtp.received), 6)

    def test_a_gate_that_stops_a_message_leaves_no_claim_behind(self) -> None:
        from agent.delivery.keys import idempotency_key
        from agent.delivery.ledger import OutboxLedger
        from agent.delivery.pacing import Pacer

        Pacer(self.db).pause("campaign:seq", reason="manual")
        self.run_first_step(two_steps())
        self.assertEqual(self.smtp.received, [])
        self.assertIsNone(OutboxLedger(self.db).get(idempotency_key("default", "seq", "1", 1)))

    def test_the_bounce_rate_guard_pauses_the_mailbox_mid_batch(self) -> None:
        from agent.delivery.pacing import Pacer

        for lead in ("1", "2"):
            self.smtp.handler.refuse[self.leads[lead]] = "550 5.1.1 no such user"
        campaign = two_steps(pacing={"auto_pause": {"bounce_rate": 0.5, "min_sample": 2}},
                             limits={"batch_size": 3, "per_run": 10})
        self.run_first_step(campaign)
        # Two sends, two bounces: past the rate with the sample met, so the third waits for a person
        self.assertEqual(self.smtp.received, [])
        pause = Pacer(self.db).paused("mailbox:outreach@sender.example")
        self.assertEqual(pause["reason"], "bounce_rate")
        third = self.enrolment(3)
        self.assertEqual((third.status, third.next_step), ("active", 1))
        self.assertEqual({self.enrolment(1).stop_reason, self.enrolment(2).stop_reason}, {"bounced"})

    def test_an_out_of_office_that_lands_while_the_batch_sends_holds_a_refused_step_too(self) -> None:
        campaign = two_steps()
        self.run_first_step(campaign)
        self.clock.advance(days=3, seconds=1)
        first_two = self.received_by(self.leads["2"])[0]
        self.smtp.handler.refuse[self.leads["2"]] = "451 4.3.0 try again later"  # lead 2's step 2: refused for now
        arrived, release = threading.Event(), threading.Event()
        self.smtp.handler.hold_data[self.leads["3"]] = (arrived, release)  # the batch is still sending
        self.addCleanup(release.set)

        def away() -> None:
            arrived.wait(60)
            mid = header(first_two, "Message-ID")
            self.reply(f"From: <{self.leads['2']}>\r\nTo: <outreach@sender.example>\r\nSubject: Out of Office\r\n"
                       f"Auto-Submitted: auto-replied\r\nMessage-ID: <ooo-2@lead.example>\r\nIn-Reply-To: {mid}\r\n"
                       "Date: Thu, 26 Nov 2026 10:05:00 +0000\r\n\r\n"
                       "I am out of the office and will be back on 21 December 2026.\r\n".encode())
            release.set()

        replier = threading.Thread(target=away)
        replier.start()
        self.tick(campaign)
        replier.join()
        del self.smtp.handler.refuse[self.leads["2"]]
        two = self.enrolment(2)
        self.assertEqual((two.status, two.due_at), ("paused", datetime(2026, 12, 21, tzinfo=timezone.utc)))
        self.clock.advance(hours=2)
        self.tick(campaign)
        self.assertEqual(len(self.received_by(self.leads["2"])), 1)  # not while away

    def test_a_refused_step_retried_with_changed_content_goes_out_under_its_message_id(self) -> None:
        from sqlalchemy import update

        from agent.storage.models import Contact

        campaign = two_steps()
        self.run_first_step(campaign)
        self.smtp.handler.refuse[self.leads["1"]] = "451 4.3.0 try again later"
        self.clock.advance(days=3, seconds=1)
        self.tick(campaign)
        self.assertEqual((self.enrolment(1).status, self.enrolment(1).next_step), ("active", 2))
        del self.smtp.handler.refuse[self.leads["1"]]
        with self.db.connect(write=True) as conn:  # the lead's name corrected meanwhile
            conn.execute(update(Contact).where(Contact.id == 1).values(first_name="Jo"))
        self.clock.advance(hours=1, seconds=1)
        self.tick(campaign)
        [_, follow_up] = self.received_by(self.leads["1"])
        self.assertIn(b"Hi Jo,", follow_up)
        self.assertEqual(self.enrolment(1).status, "completed")

    def test_a_batch_run_again_spends_no_cap_on_messages_already_sent(self) -> None:
        campaign = two_steps(pacing={"daily_cap": 3})
        [done] = self.runner.work([self.runner.start(campaign, lead_ids=[1, 2])], threads=1)
        self.assertEqual(len(self.smtp.received), 2)
        [again] = self.runner.work([self.runner.start(campaign, lead_ids=[1, 2, 3])], threads=1)
        self.assertEqual((again.statuses["duplicate"], again.statuses["sent"]), (2, 1))
        self.assertEqual(len(self.smtp.received), 3)

    def test_a_follow_up_waiting_for_approval_is_not_drafted_again_until_decided(self) -> None:
        from agent.drafts import DraftStore

        campaign = two_steps(approval="required")
        drafts = DraftStore(self.db)
        self.runner.work([self.runner.start(campaign, lead_ids=[1])], threads=1)
        [first] = drafts.list(campaign_id="seq")
        drafts.approve([first.id], by="ana")
        self.runner.work(self.runner.release([first.run_id]), threads=1)
        self.clock.advance(days=3, seconds=1)
        [held] = self.tick(campaign)
        self.assertEqual(held.statuses["awaiting_approval"], 1)
        for _ in range(3):  # hours pass, nobody decides: nothing is queued again
            self.clock.advance(hours=2)
            self.assertEqual(self.tick(campaign), [])
        [second] = drafts.list(campaign_id="seq")
        drafts.approve([second.id], by="ana")
        self.runner.work(self.runner.release([second.run_id]), threads=1)
        self.assertEqual(len(self.received_by(self.leads["1"])), 2)
        self.assertEqual(self.enrolment(1).status, "completed")

    def test_a_reply_on_a_new_thread_still_stops_the_sender_s_sequence(self) -> None:
        campaign = two_steps()
        self.run_first_step(campaign)
        self.reply(f"From: <{self.leads['1'].upper()}>\r\nTo: <outreach@sender.example>\r\n"
                   "Subject: A question about pricing\r\nMessage-ID: <new-thread@lead.example>\r\n"
                   "Date: Tue, 24 Nov 2026 09:00:00 +0000\r\n\r\nCan we talk next week?\r\n".encode())
        self.assertEqual((self.enrolment(1).status, self.enrolment(1).stop_reason), ("stopped", "replied"))
        self.clock.advance(days=3, seconds=1)
        self.tick(campaign)
        self.assertEqual(len(self.received_by(self.leads["1"])), 1)
        self.assertEqual(len(self.received_by(self.leads["2"])), 2)

    def test_an_operator_settles_an_unknown_delivery_and_the_sequence_goes_on(self) -> None:
        import subprocess
        import sys

        from agent.delivery.keys import idempotency_key
        from agent.delivery.ledger import OutboxLedger

        campaign = two_steps()
        self.run_first_step(campaign)
        self.smtp.handler.drop_data_for.add(self.leads["1"])  # step 2's DATA: the connection is lost
        self.clock.advance(days=3, seconds=1)
        self.tick(campaign)
        key = idempotency_key("default", "seq", "1", 2)
        unknown = OutboxLedger(self.db).get(key)
        self.assertEqual(unknown.state, "unknown")
        self.assertEqual((self.enrolment(1).status, self.enrolment(1).stop_reason), ("stopped", "delivery_unknown"))
        self.smtp.handler.drop_data_for.clear()
        self.clock.advance(hours=1)
        self.assertEqual(self.tick(campaign), [])  # never sent again on its own
        # When the operator finds it was not delivered and says so
        env = self.home.cli_env()
        done = subprocess.run([sys.executable, "-m", "agent.cli", "outbox", "settle", key[:20], "--not-delivered"],
                              env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("failed", done.stdout)
        # Then the next tick sends it, once, under the Message-ID it always had, and the sequence completes
        self.tick(campaign)
        [_, follow_up] = self.received_by(self.leads["1"])
        self.assertEqual(header(follow_up, "Message-ID"), unknown.message_id)
        self.assertEqual(self.enrolment(1).status, "completed")
        again = subprocess.run([sys.executable, "-m", "agent.cli", "outbox", "settle", key[:20], "--delivered"],
                               env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(again.returncode, 2)  # no longer unknown: nothing to settle
        self.assertIn("key", again.stderr)


@requires_real_services()
class PostgresSequenceTest(SequenceTest):
    """Every sequence test again with the store on PostgreSQL (a fresh schema each)."""

    def make_home(self, **settings: Any) -> TempHome:
        schema = PostgresSchema()
        self.addCleanup(schema.drop)
        return TempHome(database_url=schema.url, **settings)


class SendingCliTest(unittest.TestCase):
    def test_pause_list_and_resume_from_the_command_line(self) -> None:
        import json
        import subprocess
        import sys

        home = TempHome()
        self.addCleanup(home.cleanup)
        env = home.cli_env()

        def agent(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "agent.cli", *args], env=env, capture_output=True,
                                  text=True, timeout=120)

        self.assertEqual(agent("sending", "pause", "--mailbox", "Sales@Acme.example").returncode, 0)
        [pause] = json.loads(agent("sending", "pauses", "--json").stdout)
        self.assertEqual((pause["scope"], pause["reason"]), ("mailbox:sales@acme.example", "manual"))
        both = agent("sending", "pause", "--mailbox", "a@b.example", "--campaign", "c1")
        self.assertEqual(both.returncode, 2)
        self.assertIn("scope", both.stderr)
        self.assertIn("resumed", agent("sending", "resume", "--mailbox", "sales@acme.example").stdout)
        self.assertEqual(json.loads(agent("sending", "pauses", "--json").stdout), [])
        self.assertEqual(json.loads(agent("sequences", "list", "--json").stdout), [])
        bad = agent("sequences", "list", "--status", "sleeping")
        self.assertEqual(bad.returncode, 2)
        self.assertIn("status", bad.stderr)


class BadInputTest(unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome()
        self.addCleanup(self.home.cleanup)

    def deliver(self, **changes: Any) -> Any:
        from agent.high_level_agents.orchestrators import DeliveryOrchestrator

        record = {"to": "jo@acme.example", "subject": "Re: hi", "body": "Hello", "lead_id": "1", "step": 2}
        payload = {"records": [record], "campaign_id": "c1", "allow_delivery": True}
        for key, value in changes.items():
            (record if key in ("in_reply_to", "references") else payload)[key] = value
        return DeliveryOrchestrator(settings=self.home.settings).run(payload)

    def test_threading_headers_and_pacing_are_checked_before_anything_is_written(self) -> None:
        from agent.delivery.ledger import OutboxLedger
        from agent.errors import PayloadError

        for field, value, named in (
                ("in_reply_to", "<a@b>\r\nBcc: all@acme.example", "records[0].in_reply_to"),
                ("references", ["<ok@b>", "<bad id@b>"], "records[0].references[1]"),
                ("timezone", "Mars/Olympus", "timezone"),
                ("pacing", {"window": {"start": "17:00", "end": "09:00"}}, "pacing.window"),
                ("pacing", {"jitter_seconds": [90, 10]}, "pacing.jitter_seconds")):
            with self.subTest(field=field), self.assertRaises(PayloadError) as caught:
                self.deliver(**{field: value})
            self.assertTrue(caught.exception.field.startswith(named), caught.exception.field)
        self.assertFalse(self.home.settings.outbox_dir.exists() and any(self.home.settings.outbox_dir.iterdir()))
        self.assertIsNone(OutboxLedger(self.home.database()).get("anything"))

    def test_a_follow_up_step_the_campaign_does_not_have_is_refused_naming_step(self) -> None:
        from agent.errors import PayloadError
        from agent.high_level_agents.orchestrators import OutreachOrchestrator

        with self.assertRaises(PayloadError) as caught:
            OutreachOrchestrator(settings=self.home.settings).run(
                {"campaign": two_steps().model_dump(mode="json"), "lead_ids": [1], "step": 3})
        self.assertEqual(caught.exception.field, "step")


class ThreadHeadersTest(unittest.TestCase):
    def test_a_long_references_chain_is_folded_between_ids_never_inside_one(self) -> None:
        from agent.delivery.message import build_message

        ids = [f"<{i:04d}.{'x' * 40}@sender.example>" for i in range(30)]
        raw = build_message(sender="Sam <sam@sender.example>", to="jo@acme.example", subject="Re: hi", body="Hello",
                            message_id="<new@sender.example>", postal_address="1 Road", send_id="k",
                            in_reply_to=ids[-1], references=ids)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(parsed["In-Reply-To"], ids[-1])
        self.assertEqual(str(parsed["References"]).split(), ids)
        self.assertTrue(all(len(line) <= 998 for line in raw.split(b"\r\n")))


if __name__ == "__main__":
    unittest.main()
