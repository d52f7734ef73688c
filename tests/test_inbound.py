"""Inbound mail end to end: stored raw first, classified, matched to what we sent, acted on.

Messages are sent through the outbox first (so the ledger knows their
Message-IDs and send ids); the inbound ones answer them the way real servers
and people do, and come in through ``agent.inbound`` (files, the webhook).
"""

from __future__ import annotations

import email
import email.policy
import unittest

from pathlib import Path
from typing import Any

from sqlalchemy import select

from agent.delivery.suppression import SuppressionList
from agent.drafts import DraftStore
from agent.envelope import make_provenance
from agent.high_level_agents.orchestrators import DeliveryOrchestrator, ReplyOrchestrator
from agent.inbound.intake import import_paths, process_pending
from agent.inbound.store import MAX_BYTES, InboundStore
from agent.leads.search import LeadSearch
from agent.storage.models import Contact
from tests.support import TempHome


def _lead(home: TempHome, lead_id: int) -> dict[str, Any]:
    db = home.database()
    with db.connect() as conn:
        return LeadSearch(db).load(conn, [lead_id])[0]


class InboundTest(unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome(sample_data="on", sample_size=40, embedder="hashing")
        self.addCleanup(self.home.cleanup)
        self.db = self.home.database()
        self.store = InboundStore(self.db)
        self.replies = ReplyOrchestrator(settings=self.home.settings)

    def sent(self, lead_id: int) -> dict[str, Any]:
        """Send lead ``lead_id`` a message through the outbox; its record, with the bytes' headers."""
        lead = _lead(self.home, lead_id)
        record = {"to": lead["email"], "subject": "Pipeline quality at your company", "body": "Hello,\n\nA question.",
                  "lead_id": str(lead_id), "campaign_id": "c1", "step": 1}
        [result] = DeliveryOrchestrator(settings=self.home.settings).run(
            {"records": [record], "campaign_id": "c1", "allow_delivery": True})["records"]
        raw = Path(result["location"]).read_bytes()
        headers = email.message_from_bytes(raw, policy=email.policy.default)
        return {**result, "send_id": headers["X-Send-Id"], "raw": raw}

    def receive(self, raw: bytes) -> dict[str, Any]:
        stored, _ = self.store.store(raw, source="test")
        process_pending(self.replies, self.store)
        return self.store.result(stored.id)

    def status(self, lead_id: int) -> str:
        with self.db.connect() as conn:
            return conn.execute(select(Contact.status).where(Contact.id == lead_id)).scalar_one()

    def test_a_hard_bounce_suppresses_the_address_and_marks_the_lead(self) -> None:
        sent = self.sent(3)
        dsn = _dsn(sent["to"], "5.1.1", "failed", sent["message_id"], sent["send_id"])
        outcome = self.receive(dsn)
        self.assertEqual(outcome["kind"], "bounce")
        self.assertEqual((outcome["match"]["confidence"], outcome["match"]["lead_id"]), ("token", "3"))
        self.assertEqual(SuppressionList(self.db).suppressed([sent["to"]]), {sent["to"]: "hard_bounce"})
        self.assertEqual(self.status(3), "bounced")

    def test_a_policy_bounce_suppresses_nobody_and_pauses_the_mailbox(self) -> None:
        from agent.delivery.pacing import Pacer

        sent = self.sent(4)
        outcome = self.receive(_dsn(sent["to"], "5.7.1", "failed", sent["message_id"], sent["send_id"]))
        self.assertEqual([a["action"] for a in outcome["actions"]], ["mailbox_paused"])
        self.assertEqual(SuppressionList(self.db).suppressed([sent["to"]]), {})
        self.assertEqual(Pacer(self.db).paused("mailbox:outreach@sender.example")["reason"], "policy_refused")

    def test_a_reply_from_the_lead_marks_it_replied_and_withdraws_its_waiting_drafts(self) -> None:
        sent = self.sent(5)
        draft = {"to": sent["to"], "subject": "Follow-up", "body": "Hello again", "lead_id": "5", "campaign_id": "c2",
                 "step": 1}
        draft["provenance"] = make_provenance(draft, source="test")
        DraftStore(self.db).park([draft], run_id="r1")
        reply = _message(sent["to"], "Re: Pipeline quality at your company",
                         "Yes, sounds interesting. Can we talk on Tuesday?\n\n> Hello,\n> A question.",
                         in_reply_to=sent["message_id"])
        outcome = self.receive(reply)
        self.assertEqual((outcome["kind"], outcome["match"]["confidence"]), ("reply", "headers"))
        self.assertIn(outcome["sentiment"]["label"], ("interested", "not_interested", "neutral"))
        self.assertEqual(self.status(5), "replied")
        [withdrawn] = DraftStore(self.db).list(status="rejected")
        self.assertEqual(withdrawn.reason, "the lead replied")

    def test_a_reply_from_someone_else_does_not_count_as_the_leads(self) -> None:
        sent = self.sent(6)
        outcome = self.receive(_message("colleague@other.example", "Re: Pipeline quality at your company", "Who is this?",
                                        in_reply_to=sent["message_id"]))
        self.assertFalse(outcome["match"]["from_recipient"])
        self.assertEqual(self.status(6), "new")

    def test_out_of_office_waits_and_an_unsubscribe_request_suppresses(self) -> None:
        sent = self.sent(7)
        away = _message(sent["to"], "Automatic reply: Out of Office", "I am out of the office and will be back on "
                        "3 December 2026.", in_reply_to=sent["message_id"],
                        extra={"Auto-Submitted": "auto-replied"})
        outcome = self.receive(away)
        self.assertEqual((outcome["kind"], outcome["return_date"]), ("out_of_office", "2026-12-03"))
        self.assertEqual(self.status(7), "out_of_office")
        self.assertEqual(SuppressionList(self.db).suppressed([sent["to"]]), {})
        stop = self.receive(_message(sent["to"], "Re: Pipeline quality", "Please remove me from your list.",
                                     in_reply_to=sent["message_id"]))
        self.assertEqual(stop["kind"], "unsubscribe")
        self.assertEqual(SuppressionList(self.db).suppressed([sent["to"]]), {sent["to"]: "unsubscribe_reply"})

    def test_a_complaint_suppresses_the_person_who_complained_never_the_feedback_loop(self) -> None:
        raw = (Path(__file__).parent / "fixtures" / "inbound" / "arf_complaint.eml").read_bytes()
        outcome = self.receive(raw)
        self.assertEqual(outcome["kind"], "complaint")
        self.assertEqual(SuppressionList(self.db).suppressed(["e.kowalski@mailbox-provider.example",
                                                              "fbl@mailbox-provider.example"]),
                         {"e.kowalski@mailbox-provider.example": "complaint"})

    def test_a_reply_withdraws_drafts_whatever_the_case_of_the_address(self) -> None:
        sent = self.sent(8)
        draft = {"to": sent["to"].upper().replace("@", "@"), "subject": "F", "body": "Hi", "lead_id": "8",
                 "campaign_id": "c3", "step": 1}
        draft["provenance"] = make_provenance(draft, source="test")
        DraftStore(self.db).park([draft], run_id="r2")
        self.receive(_message(sent["to"], "Re: Pipeline quality at your company", "Not now, thanks.",
                              in_reply_to=sent["message_id"]))
        self.assertEqual([d.status for d in DraftStore(self.db).list(status=None)], ["rejected"])

    def test_a_message_whose_processing_fails_stays_pending_for_the_next_run(self) -> None:
        stored, _ = self.store.store(_message("x@acme.example", "Hello", "A human message."), source="test")

        class Failing(ReplyOrchestrator):
            def execute(self, payload, context):  # type: ignore[no-untyped-def]
                from agent.errors import StorageError

                raise StorageError("database is locked")

        counts = process_pending(Failing(settings=self.home.settings), self.store)
        self.assertEqual(counts, {"error": 1})
        self.assertEqual([m.id for m in self.store.pending()], [stored.id])
        self.assertEqual(process_pending(self.replies, self.store), {"reply": 1})
        self.assertEqual(self.store.pending(), [])

    def test_the_same_message_is_stored_once_and_bad_input_never_stops_the_loop(self) -> None:
        folder = Path(self.home.path, "mail")
        folder.mkdir()
        good = _message("x@acme.example", "Hello", "A human message.")
        (folder / "one.eml").write_bytes(good)
        (folder / "again.eml").write_bytes(good)
        (folder / "garbage.eml").write_bytes(b"\xff\xfe not a message \x00\x01 Subject: =?bad?=\r\n\r\n\xc3")
        (folder / "broken.eml").write_bytes(b"Content-Type: multipart/mixed; boundary=zzz\r\nSubject: x\r\n\r\n"
                                            b"--zzz\r\nContent-Type: text/plain\r\n\r\nno end boundary")
        (folder / "empty.eml").write_bytes(b"")
        report = import_paths(self.store, sorted(folder.iterdir()))
        self.assertEqual((report.stored, report.duplicates), (3, 1))
        self.assertEqual([why for _, why in report.refused], ["is empty"])
        counts = process_pending(self.replies, self.store)
        self.assertEqual(sum(counts.values()), 3)
        self.assertNotIn("error", counts)
        self.assertEqual(self.store.pending(), [])
        with self.assertRaises(Exception) as caught:
            self.store.store(b"x" * (MAX_BYTES + 1), source="test")
        self.assertIn("not stored", str(caught.exception))


class InboundWebhookTest(unittest.TestCase):
    def test_the_webhook_stores_and_processes_with_the_token_and_refuses_without(self) -> None:
        from tests.test_unsubscribe import _Server
        import httpx2 as httpx

        from agent.web import create_app

        home = TempHome(inbound_webhook_token="hook-secret-123")
        self.addCleanup(home.cleanup)
        server = _Server(create_app(home.settings))
        server.start()
        self.addCleanup(server.stop)
        url = f"http://127.0.0.1:{server.port}/inbound"
        raw = _message("x@acme.example", "Hello", "A human message.")
        refused = httpx.post(url, content=raw, headers={"X-Agent-Token": "wrong"})
        self.assertEqual(refused.status_code, 401)
        self.assertEqual(InboundStore(home.database()).pending(), [])
        # (the first reply loads the sentiment model: a generous timeout, not a test of speed)
        accepted = httpx.post(url, content=raw, headers={"X-Agent-Token": "hook-secret-123",
                                                         "Content-Type": "message/rfc822"}, timeout=120)
        self.assertEqual(accepted.status_code, 202)
        body = accepted.json()
        self.assertEqual((body["stored"], body["processed"]), (True, {"reply": 1}))
        again = httpx.post(url, content=raw, headers={"X-Agent-Token": "hook-secret-123"}, timeout=120)
        self.assertEqual((again.status_code, again.json()["stored"]), (202, False))


def _message(sender: str, subject: str, body: str, *, in_reply_to: str | None = None,
             extra: dict[str, str] | None = None) -> bytes:
    lines = [f"From: {sender}", "To: outreach@sender.example", f"Subject: {subject}",
             "Date: Tue, 24 Nov 2026 10:00:00 +0000", f"Message-ID: <{abs(hash((sender, subject, body)))}@mail.example>"]
    if in_reply_to:
        lines += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    lines += ["Content-Type: text/plain; charset=utf-8", "", body, ""]
    return "\r\n".join(lines).encode("utf-8")


def _dsn(recipient: str, status: str, action: str, message_id: str, send_id: str) -> bytes:
    return ("From: MAILER-DAEMON@mx.acme.example\r\nTo: outreach@sender.example\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <dsn-{status}-{abs(hash(recipient))}@mx.acme.example>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
            "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.acme.example\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
            f"Diagnostic-Code: smtp; 550 {status} refused\r\n\r\n"
            "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: outreach@sender.example\r\nTo: {recipient}\r\nMessage-ID: {message_id}\r\nX-Send-Id: {send_id}\r\n"
            "Subject: Pipeline quality at your company\r\n\r\n--b1--\r\n").encode("ascii")




class ImapPollTest(unittest.TestCase):
    def test_unseen_messages_are_stored_then_flagged_and_a_crash_in_between_loses_none(self) -> None:
        from agent.inbound.intake import poll_imap
        from tests.imap_server import ImapServer

        with ImapServer("inbox", "s3cret") as server:
            home = TempHome(imap_host="127.0.0.1", imap_port=server.port, imap_ssl=False, imap_username="inbox",
                            imap_password="s3cret")
            self.addCleanup(home.cleanup)
            store = InboundStore(home.database())
            server.add(_message("a@acme.example", "One", "First."))
            server.add(_message("b@acme.example", "Two", "Second."))
            # A poller that dies after fetching, before flagging: the message stays unseen on the server
            server.box.fail_after_fetch = True
            with self.assertRaises(Exception):
                poll_imap(store, home.settings)
            self.assertEqual(server.seen(), [False, False])
            # The next poll stores both (the first one already kept: once) and flags them seen
            server.box.fail_after_fetch = False
            report = poll_imap(store, home.settings)
            self.assertEqual((report.stored + report.duplicates, report.refused), (2, []))
            self.assertEqual(server.seen(), [True, True])
            self.assertEqual(len(store.pending()), 2)
            self.assertEqual(poll_imap(store, home.settings).to_dict()["stored"], 0)
