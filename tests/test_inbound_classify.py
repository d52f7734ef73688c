"""The inbound rules: bounces, complaints, auto-replies, unsubscribe requests and replies, from raw messages.

Each fixture in ``tests/fixtures/inbound/`` is a whole RFC 5322 message as a
mail server would hand it over (some with CRLF line endings, some with LF);
the tests parse its bytes the way the pipeline does and classify the result.
"""

from __future__ import annotations

import email
import email.policy
import time
import unittest
from datetime import date
from email.message import EmailMessage
from pathlib import Path
from typing import cast

from agent.inbound.classify import Classification, classify
from agent.inbound.rules import return_date

FIXTURES = Path(__file__).parent / "fixtures" / "inbound"
TODAY = date(2026, 11, 25)


def parse(raw: bytes | str) -> EmailMessage:
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def classify_fixture(name: str, *, today: date | None = TODAY) -> Classification:
    return classify(parse((FIXTURES / name).read_bytes()), today=today)


class DsnBounceTest(unittest.TestCase):
    def test_a_postfix_550_5_1_1_is_a_hard_bounce_tied_to_the_returned_original(self) -> None:
        # Given a Postfix DSN (CRLF) that returns our whole message
        # When it is classified
        found = classify_fixture("dsn_hard_postfix.eml")
        # Then the one recipient bounced hard, and the original's ids come back
        self.assertEqual((found.kind, found.reason, found.machine), ("bounce", "dsn", True))
        self.assertEqual(len(found.bounces), 1)
        bounce = found.bounces[0]
        self.assertEqual(bounce.recipient, "dana.whitfield@northwind.example")
        self.assertEqual((bounce.action, bounce.status, bounce.severity), ("failed", "5.1.1", "hard"))
        self.assertIn("User unknown", bounce.diagnostic or "")
        self.assertEqual(found.original_message_ids, ("<176417243812.4411.9203318870511@outreach.example>",))
        self.assertEqual(found.send_id, "9f2c4e1a7b3d5f60819a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70")

    def test_a_delayed_4_2_2_mailbox_full_is_a_soft_bounce(self) -> None:
        # Given a "still being retried" DSN that returns only the original's headers
        found = classify_fixture("dsn_soft_delayed.eml")
        # Then it is soft, and the text/rfc822-headers part still correlates it
        bounce = found.bounces[0]
        self.assertEqual((found.kind, bounce.action, bounce.status, bounce.severity),
                         ("bounce", "delayed", "4.2.2", "soft"))
        self.assertEqual(bounce.recipient, "omar.haddad@fullbox.example")
        self.assertEqual(found.send_id, "0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9001a2b3c4d5e6")

    def test_a_5_7_1_rejection_is_a_policy_bounce_not_a_hard_one(self) -> None:
        # Given a DSN saying our sending host is on a block list
        found = classify_fixture("dsn_policy_571.eml")
        # Then the recipient is not blamed: severity policy
        bounce = found.bounces[0]
        self.assertEqual((bounce.recipient, bounce.status, bounce.severity),
                         ("priya@tarnhelm.example", "5.7.1", "policy"))
        self.assertEqual(found.original_message_ids, ("<176414407011.4411.5566778899001@outreach.example>",))

    def test_a_multi_recipient_dsn_gives_one_bounce_per_failed_or_delayed_recipient(self) -> None:
        # Given a sendmail DSN for four recipients: failed, delayed, failed (vague 5.0.0), delivered
        found = classify_fixture("dsn_multi_recipient.eml")
        # Then the delivered one is left out and each other keeps its own severity
        summary = [(b.recipient, b.action, b.status, b.severity) for b in found.bounces]
        self.assertEqual(summary, [
            ("lena.vogt@brightline.example", "failed", "5.1.1", "hard"),
            ("ops@brightline.example", "delayed", "4.4.1", "soft"),
            ("cfo@brightline.example", "failed", "5.2.1", "hard"),  # the diagnostic's code beats "5.0.0"
        ])
        self.assertEqual(found.bounces[1].original_recipient, "ops-team@brightline.example")
        self.assertEqual(found.send_id, "b7a6c5d4e3f2011fedcba98765432100112233445566778899aabbccddeeff00")

    def test_a_dsn_cut_off_before_its_status_part_is_read_from_its_human_text(self) -> None:
        # Given a delivery-status report truncated in the middle
        found = classify_fixture("dsn_truncated.eml")
        # Then the notice's own text still names the recipient and the code
        self.assertEqual((found.kind, found.reason), ("bounce", "dsn:text"))
        self.assertEqual([(b.recipient, b.status, b.severity) for b in found.bounces],
                         [("kai.lindqvist@fjordline.example", "5.1.1", "hard")])

    def test_a_success_dsn_is_machine_mail_not_a_bounce(self) -> None:
        # Given a DSN whose only recipient was delivered (NOTIFY=SUCCESS)
        raw = ("From: MAILER-DAEMON@mx1.outreach.example\nTo: sam@outreach.example\n"
               "Subject: Successful Mail Delivery Report\nMIME-Version: 1.0\n"
               'Content-Type: multipart/report; report-type=delivery-status; boundary="s"\n\n'
               "--s\nContent-Type: text/plain\n\nYour message was delivered.\n\n"
               "--s\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx1.outreach.example\n\n"
               "Final-Recipient: rfc822; ok@fine.example\nAction: delivered\nStatus: 2.0.0\n\n--s--\n")
        found = classify(parse(raw))
        # Then nothing bounced, and it is still never a reply
        self.assertEqual((found.kind, found.reason, found.bounces, found.machine),
                         ("auto_reply", "dsn:delivered", (), True))


class NonStandardBounceTest(unittest.TestCase):
    def test_a_gmail_style_notice_without_report_type_is_a_hard_bounce(self) -> None:
        # Given a multipart/alternative "Delivery Status Notification (Failure)" from mailer-daemon
        found = classify_fixture("bounce_gmail_style.eml")
        # Then the code in its text decides, and the pasted original's headers correlate it
        self.assertEqual((found.kind, found.reason, found.machine), ("bounce", "daemon-notice", True))
        self.assertEqual([(b.recipient, b.status, b.severity) for b in found.bounces],
                         [("marco.bellini@quarry-labs.example", "5.1.1", "hard")])
        self.assertEqual(found.original_message_ids, ("<176451751202.4411.7788990011223@outreach.example>",))
        self.assertEqual(found.send_id, "3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b")

    def test_an_exim_notice_takes_the_address_above_the_code_and_ignores_ip_addresses(self) -> None:
        # Given an Exim "Mail delivery failed" whose code line follows the address and a host's IP
        found = classify_fixture("bounce_exim_style.eml")
        # Then the three-digit subject code 5.1.10 is read whole, and 192.0.2.25 is not a status
        self.assertEqual([(b.recipient, b.status, b.severity) for b in found.bounces],
                         [("jo.mbeki@closed.example", "5.1.10", "hard")])
        self.assertEqual(found.original_message_ids, ("<176458695703.4411.6655443322110@outreach.example>",))


class ComplaintTest(unittest.TestCase):
    def test_an_arf_report_is_a_complaint_naming_the_recipient_and_the_original(self) -> None:
        # Given an RFC 5965 abuse report with our message attached
        found = classify_fixture("arf_complaint.eml")
        # Then it is a complaint by the Original-Rcpt-To, correlated by Message-ID and X-Send-Id
        self.assertEqual((found.kind, found.reason, found.machine), ("complaint", "arf:abuse", True))
        self.assertEqual(found.recipient, "e.kowalski@mailbox-provider.example")
        self.assertEqual(found.original_message_ids, ("<176466929801.4411.2233445566778@outreach.example>",))
        self.assertEqual(found.send_id, "77aa88bb99cc00dd11ee22ff33aa44bb55cc66dd77ee88ff99aa00bb11cc22dd")
        self.assertEqual(found.extra.get("source_ip"), "192.0.2.14")


class AutoReplyTest(unittest.TestCase):
    def test_an_rfc_3834_ticket_acknowledgement_is_an_auto_reply_not_out_of_office(self) -> None:
        # Given a helpdesk's "Auto-Submitted: auto-replied" acknowledgement
        found = classify_fixture("auto_reply_rfc3834.eml")
        # Then it is machine mail without a return date, still threaded to our message
        self.assertEqual((found.kind, found.reason, found.machine),
                         ("auto_reply", "auto-submitted:auto-replied", True))
        self.assertIsNone(found.return_date)
        self.assertEqual(found.original_message_ids, ("<176423579811.4411.3344556677881@outreach.example>",))

    def test_an_outlook_out_of_office_gives_the_return_date_from_the_injected_today(self) -> None:
        # Given "Automatic reply: Out of Office ... I will be back on 3 December" (no year)
        found = classify_fixture("ooo_outlook.eml", today=date(2026, 11, 25))
        # Then the return date is the next 3 December
        self.assertEqual((found.kind, found.machine), ("out_of_office", True))
        self.assertEqual(found.return_date, date(2026, 12, 3))
        self.assertEqual(found.extra.get("return_date_basis"), "back")

    def test_a_yearless_return_date_already_past_this_year_falls_in_the_next(self) -> None:
        # Given the same note read on 10 December
        found = classify_fixture("ooo_outlook.eml", today=date(2026, 12, 10))
        # Then "3 December" is the one a year later
        self.assertEqual(found.return_date, date(2027, 12, 3))

    def test_without_an_injected_today_the_date_header_anchors_the_year(self) -> None:
        # Given the note, classified with no today (its Date header says 25 Nov 2026)
        found = classify_fixture("ooo_outlook.eml", today=None)
        # Then the year comes from the message, not from the machine's clock
        self.assertEqual(found.return_date, date(2026, 12, 3))

    def test_a_german_abwesenheitsnotiz_is_out_of_office_until_the_given_date(self) -> None:
        # Given a subject-only auto-reply (no RFC 3834 header) saying "bis 02.12.2026", in quoted-printable
        found = classify_fixture("ooo_german.eml")
        # Then the subject decides and the date is read
        self.assertEqual((found.kind, found.reason), ("out_of_office", "subject:abwesenheitsnotiz"))
        self.assertEqual(found.return_date, date(2026, 12, 2))
        self.assertEqual(found.extra.get("return_date_basis"), "until")


class UnsubscribeTest(unittest.TestCase):
    def test_please_remove_me_from_your_list_is_an_unsubscribe_request(self) -> None:
        # Given a Gmail reply whose first line asks to be removed
        found = classify_fixture("unsubscribe_reply.eml")
        # Then it is an unsubscribe from a human, threaded to our message
        self.assertEqual((found.kind, found.machine), ("unsubscribe", False))
        self.assertTrue(found.reason.startswith("body:remove me"), found.reason)
        self.assertEqual(found.original_message_ids, ("<176417231001.4411.4455667788990@outreach.example>",))

    def test_a_bare_one_word_reply_unsubscribes(self) -> None:
        # Given a reply that says only "Unsubscribe."
        found = classify(parse("From: a@lead.example\nSubject: Re: hello\n\nUnsubscribe.\n"))
        # Then that is enough
        self.assertEqual((found.kind, found.reason), ("unsubscribe", "body:unsubscribe"))

    def test_a_question_about_unsubscribing_someone_else_stays_a_reply(self) -> None:
        # Given a longer sentence that merely uses the word
        found = classify(parse("From: a@lead.example\nSubject: Re: hello\n\n"
                               "How do I unsubscribe my team from your competitor's newsletter?\n"))
        # Then it is not taken as a request to stop
        self.assertEqual(found.kind, "reply")

    def test_the_subject_alone_can_ask_to_unsubscribe(self) -> None:
        # Given an empty body under the subject "Re: unsubscribe"
        found = classify(parse("From: a@lead.example\nSubject: Re: unsubscribe\n\n\n"))
        # Then the subject decides
        self.assertEqual((found.kind, found.reason), ("unsubscribe", "subject:unsubscribe"))


class ReplyTest(unittest.TestCase):
    def test_unsubscribe_words_in_the_quoted_part_do_not_make_a_reply_an_unsubscribe(self) -> None:
        # Given a human reply (CRLF) quoting our footer and its "unsubscribe" after "On ... wrote:"
        found = classify_fixture("reply_quoted_unsubscribe.eml")
        # Then it is a reply, threaded by In-Reply-To first, then References, without duplicates
        self.assertEqual((found.kind, found.reason, found.machine), ("reply", "in-reply-to", False))
        self.assertEqual(found.original_message_ids, ("<176430111102.4411.3344556677882@outreach.example>",
                                                      "<176423579811.4411.3344556677881@outreach.example>"))

    def test_an_outlook_quote_without_angle_brackets_is_ignored_too(self) -> None:
        # Given a reply above an Outlook "From:/Sent:" block whose unquoted lines say "remove me"
        found = classify_fixture("reply_outlook_quoted.eml")
        # Then only the words above the block count
        self.assertEqual(found.kind, "reply")
        self.assertEqual(found.original_message_ids, ("<176447912301.4411.5050505050505@outreach.example>",))


class BadInputTest(unittest.TestCase):
    def test_a_broken_boundary_is_a_reply_marked_unparsed_that_keeps_its_thread(self) -> None:
        # Given a multipart whose parts use another boundary than the one declared
        found = classify_fixture("malformed_boundary.eml")
        # Then nothing raises; the result says the body was not readable and keeps In-Reply-To
        self.assertEqual((found.kind, found.reason), ("reply", "unparsed"))
        self.assertIn("StartBoundaryNotFoundDefect", found.extra.get("defects", ""))
        self.assertEqual(found.original_message_ids, ("<176455440001.4411.8080808080808@outreach.example>",))

    def test_invalid_bytes_in_headers_do_not_stop_the_rules(self) -> None:
        # Given Latin-1 and invalid UTF-8 bytes in From/Subject/Message-ID, a garbage Date, an unknown charset
        found = classify_fixture("invalid_header_bytes.eml", today=date(2026, 11, 30))
        # Then the subject still reads as an Abwesenheitsnotiz and "bis 2.12." still gives the date
        self.assertEqual((found.kind, found.return_date), ("out_of_office", date(2026, 12, 2)))

    def test_invalid_bytes_and_a_garbage_date_without_today_still_classify(self) -> None:
        # Given the same message and no today: the Date header cannot anchor the year
        found = classify_fixture("invalid_header_bytes.eml", today=None)
        # Then the UTC date is used and a 2 December is still found
        self.assertEqual(found.kind, "out_of_office")
        self.assertEqual((found.return_date.month, found.return_date.day) if found.return_date else None, (12, 2))

    def test_an_empty_message_is_an_unparsed_reply(self) -> None:
        # Given zero bytes
        found = classify_fixture("empty.eml")
        # Then a Classification comes back all the same
        self.assertEqual((found.kind, found.reason, found.original_message_ids), ("reply", "unparsed", ()))

    def test_something_that_is_not_a_message_is_an_unparsed_reply(self) -> None:
        # Given a caller mistake: bytes instead of a parsed message
        found = classify(cast(EmailMessage, b"From: a@b.example\n\nhi\n"))
        # Then the rule failures are recorded instead of raised
        self.assertEqual((found.kind, found.reason), ("reply", "unparsed"))
        self.assertIn("dsn:", found.extra.get("errors", ""))

    def test_a_huge_references_header_is_capped_and_cheap(self) -> None:
        # Given 20,000 ids in References (about 400 KB of header)
        ids = " ".join(f"<id{i}@thread.example>" for i in range(20_000))
        message = parse(f"From: a@lead.example\nSubject: Re: hi\nReferences: {ids}\n\nSounds good.\n")
        # When it is classified
        started = time.perf_counter()
        found = classify(message)
        elapsed = time.perf_counter() - started
        # Then the ids are capped, the first ones kept in order, and it took well under a second
        self.assertEqual(found.kind, "reply")
        self.assertEqual(len(found.original_message_ids), 100)
        self.assertEqual(found.original_message_ids[0], "<id0@thread.example>")
        self.assertLess(elapsed, 1.0)

    def test_deeply_nested_multiparts_do_not_recurse_without_bound(self) -> None:
        # Given 300 nested multiparts with an "unsubscribe" at the bottom
        raw = "From: a@lead.example\nSubject: Re: hi\nContent-Type: multipart/mixed; boundary=b0\n\n"
        raw += "".join(f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n" for i in range(300))
        raw += "--b300\nContent-Type: text/plain\n\nunsubscribe\n"
        # When it is classified
        found = classify(parse(raw))
        # Then it returns a reply: text deeper than the walk's bound is not read
        self.assertEqual(found.kind, "reply")


class ReturnDateTest(unittest.TestCase):
    def test_the_written_forms_of_a_return_date(self) -> None:
        cases = {
            "I will be back on 3 December.": (date(2026, 12, 3), "back"),
            "Returning on December 3, 2026.": (date(2026, 12, 3), "back"),
            "Out of office until 02.12.2026.": (date(2026, 12, 2), "until"),
            "Away until 2026-12-02.": (date(2026, 12, 2), "until"),
            "Back Monday 7th.": (date(2026, 12, 7), "back"),
            "Ab dem 7.12. bin ich wieder erreichbar.": (date(2026, 12, 7), "back"),
            "De retour le 4 janvier.": (date(2027, 1, 4), "back"),
            "On leave till 3/15/2027.": (date(2027, 3, 15), "until"),
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                self.assertEqual(return_date(text, TODAY), expected)

    def test_times_and_ambiguous_dates_are_not_read_as_return_dates(self) -> None:
        for text in ("Erreichbar bis 17.30 Uhr.", "Back 3/4/2027.", "I will be back soon."):
            with self.subTest(text=text):
                self.assertIsNone(return_date(text, TODAY))


if __name__ == "__main__":
    unittest.main()
