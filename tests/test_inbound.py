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
    """``poll_imap`` against a local IMAP server: a read cursor per folder, the user's flags left alone."""

    def setUp(self) -> None:
        from tests.imap_server import ImapServer

        self.server = self.enterContext(ImapServer("inbox", "s3cret"))
        self.use_database(None)

    def use_database(self, url: str | None) -> None:
        """A fresh home (SQLite, or the database at ``url``) pointed at the test server."""
        extra = {"database_url": url} if url else {}
        self.home = TempHome(imap_host="127.0.0.1", imap_port=self.server.port, imap_ssl=False,
                             imap_username="inbox", imap_password="s3cret", **extra)
        self.addCleanup(self.home.cleanup)
        self.store = InboundStore(self.home.database())

    def poll(self, store: InboundStore | None = None, **options: Any) -> dict[str, Any]:
        from agent.inbound.intake import poll_imap

        return poll_imap(store or self.store, self.home.settings, **options).to_dict()

    def cursor(self) -> tuple[int, int] | None:
        from agent.storage.models import ImapCursorRow

        with self.store.db.connect() as conn:
            row = conn.execute(select(ImapCursorRow.uidvalidity, ImapCursorRow.last_uid)).first()
        return None if row is None else (row.uidvalidity, row.last_uid)

    def kept(self) -> list[bytes]:
        return [m.raw for m in self.store.pending(limit=1000)]

    def test_a_crash_after_a_fetch_loses_nothing_and_stores_nothing_twice(self) -> None:
        import imaplib

        # Given two messages, and a connection that drops right after the first is fetched
        one, two = _message("a@acme.example", "One", "First."), _message("b@acme.example", "Two", "Second.")
        self.server.add(one)
        self.server.add(two)
        self.server.box.fail_after_fetch = True
        with self.assertRaises((imaplib.IMAP4.error, OSError)):
            self.poll()
        self.assertEqual((self.kept(), self.cursor()), ([one], (1, 1)))
        # When the next poll runs on a working connection
        self.server.box.fail_after_fetch = False
        report = self.poll()
        # Then it reads on from the message that failed: both kept, once each
        self.assertEqual(report, {"stored": 1, "duplicates": 0, "refused": []})
        self.assertEqual(self.kept(), [one, two])

    def test_a_message_already_seen_before_the_first_poll_is_stored(self) -> None:
        # Given a message someone opened in their mail client before we polled
        opened = _message("a@acme.example", "Unsubscribe", "Please remove me.")
        self.server.add(opened, seen=True)
        # When we poll
        report = self.poll()
        # Then it is stored all the same
        self.assertEqual(report["stored"], 1)
        self.assertEqual(self.kept(), [opened])

    def test_a_second_poll_fetches_nothing(self) -> None:
        # Given a folder already read
        self.server.add(_message("a@acme.example", "One", "First."))
        self.server.add(_message("b@acme.example", "Two", "Second."), seen=True)
        self.assertEqual(self.poll()["stored"], 2)
        # When we poll again
        report = self.poll()
        # Then nothing is fetched again (not even as a duplicate)
        self.assertEqual(report, {"stored": 0, "duplicates": 0, "refused": []})
        self.assertEqual(self.cursor(), (1, 2))

    def test_a_message_added_after_a_poll_is_stored_by_the_next_even_if_already_seen(self) -> None:
        # Given a folder already read
        first = _message("a@acme.example", "One", "First.")
        self.server.add(first)
        self.poll()
        # When a message arrives and is opened by someone before the next poll
        later = _message("b@acme.example", "Two", "Second.")
        self.server.add(later, seen=True)
        report = self.poll()
        # Then the next poll stores it, and only it
        self.assertEqual(report, {"stored": 1, "duplicates": 0, "refused": []})
        self.assertEqual(self.kept(), [first, later])
        self.assertEqual(self.cursor(), (1, 2))

    def test_a_changed_uidvalidity_reads_the_folder_again_without_storing_twice(self) -> None:
        # Given a folder read up to UID 2 under UIDVALIDITY 1
        self.server.add(_message("a@acme.example", "One", "First."))
        self.server.add(_message("b@acme.example", "Two", "Second."))
        self.poll()
        self.assertEqual(self.cursor(), (1, 2))
        # When the server renumbers the folder (UIDVALIDITY 7, UIDs from 1 again)
        self.server.renumber(uidvalidity=7)
        report = self.poll()
        # Then every message is read again, none stored twice, and the cursor starts over under 7
        self.assertEqual(report, {"stored": 0, "duplicates": 2, "refused": []})
        self.assertEqual(len(self.kept()), 2)
        self.assertEqual(self.cursor(), (7, 2))

    def test_a_limit_reads_that_many_per_poll_and_the_next_poll_goes_on_from_there(self) -> None:
        # Given three messages
        mails = [_message(f"{n}@acme.example", f"N{n}", f"Body {n}.") for n in range(3)]
        for raw in mails:
            self.server.add(raw)
        # When we poll one at a time
        reports = [self.poll(limit=1)["stored"], self.poll(limit=1)["stored"]]
        # Then each poll stores the next one, in UID order
        self.assertEqual(reports, [1, 1])
        self.assertEqual((self.kept(), self.cursor()), (mails[:2], (1, 2)))
        self.assertEqual(self.poll(limit=1)["stored"], 1)
        self.assertEqual(self.kept(), mails)

    def test_a_poll_leaves_the_users_flags_alone(self) -> None:
        # Given one unread message and one read
        self.server.add(_message("a@acme.example", "One", "First."))
        self.server.add(_message("b@acme.example", "Two", "Second."), seen=True)
        # When we poll
        self.assertEqual(self.poll()["stored"], 2)
        # Then the unread one is still unread in the user's mailbox
        self.assertEqual(self.server.seen(), [False, True])

    def test_a_message_gone_before_its_fetch_is_refused_once_and_does_not_hold_the_cursor_back(self) -> None:
        # Given a message expunged between the search and its fetch, and one after it
        self.server.add(_message("a@acme.example", "One", "First."))
        self.server.add(_message("b@acme.example", "Two", "Second."))
        self.server.box.fetch_nothing = {1}
        # When we poll twice
        first, second = self.poll(), self.poll()
        # Then the first poll names it and stores the next; the second does not try it again
        self.assertEqual(first, {"stored": 1, "duplicates": 0,
                                 "refused": [{"where": "imap uid 1", "why": "the server sent no body"}]})
        self.assertEqual(second, {"stored": 0, "duplicates": 0, "refused": []})
        self.assertEqual(self.cursor(), (1, 2))

    def test_a_storage_failure_stops_the_poll_and_the_next_poll_retries_that_message(self) -> None:
        from agent.errors import StorageError

        class Failing(InboundStore):
            def store(self, raw: bytes, *, source: str):  # type: ignore[no-untyped-def]
                if b"Second." in raw:
                    raise StorageError("database error: disk I/O error")
                return super().store(raw, source=source)

        # Given three messages, and a database that fails on the second
        mails = [_message("a@acme.example", "One", "First."), _message("b@acme.example", "Two", "Second."),
                 _message("c@acme.example", "Three", "Third.")]
        for raw in mails:
            self.server.add(raw)
        # When a poll meets the failure
        with self.assertRaises(StorageError):
            self.poll(Failing(self.store.db))
        # Then the cursor stays short of the message that failed, and the next poll reads on from it
        self.assertEqual((self.kept(), self.cursor()), (mails[:1], (1, 1)))
        self.assertEqual(self.poll(), {"stored": 2, "duplicates": 0, "refused": []})
        self.assertEqual(self.kept(), mails)

    def test_the_read_cursor_works_the_same_in_postgresql(self) -> None:
        from tests.support import USE_REAL_TESTS, PostgresSchema

        if not USE_REAL_TESTS:
            self.skipTest("set USE_REAL_TESTS=1 to run tests against real services")
        # Given a home on PostgreSQL, and a folder read once
        schema = PostgresSchema()
        self.addCleanup(schema.drop)
        self.use_database(schema.url)
        self.server.add(_message("a@acme.example", "One", "First."), seen=True)
        self.assertEqual(self.poll()["stored"], 1)
        # When a message arrives, then the folder is renumbered
        self.server.add(_message("b@acme.example", "Two", "Second."))
        after_new = self.poll()
        self.server.renumber(uidvalidity=9)
        after_renumber = self.poll()
        # Then the cursor is created, moved and reset there as in SQLite
        self.assertEqual(after_new, {"stored": 1, "duplicates": 0, "refused": []})
        self.assertEqual(after_renumber, {"stored": 0, "duplicates": 2, "refused": []})
        self.assertEqual(self.cursor(), (9, 2))
