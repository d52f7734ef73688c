"""DeliveryOrchestrator: gates, exactly-once outbox delivery, validation, provenance.

One contract suite (``DeliveryContract``) runs against SQLite and PostgreSQL.
"""

from __future__ import annotations

import email
import email.policy
import unittest
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from agent.builtins import default_registry
from agent.context import RunContext
from agent.delivery.keys import idempotency_key
from agent.delivery.ledger import LedgerEntry, OutboxLedger
from agent.delivery.suppression import SuppressionList
from agent.envelope import make_envelope, record_hash
from agent.errors import DeliveryError, EnvelopeError, PayloadError
from agent.high_level_agents.orchestrators import DeliveryOrchestrator
from agent.storage.models import OutboxMessage
from tests.support import TempHome, postgres_home, requires_real_services


def message(lead_id: str = "lead-1", to: str = "jane@acme.example", **changes: Any) -> dict[str, Any]:
    """One outgoing message record, with every routing field explicit."""
    return {"to": to, "subject": "Quick question", "body": "Hello Jane,\n\nAre you free on Tuesday?",
            "lead_id": lead_id, "campaign_id": "c1", "step": 1, **changes}


def channel_message(lead_id: str = "lead-1", to: str = "jane@acme.example", **changes: Any) -> dict[str, Any]:
    """One message as the orchestrator hands it to a channel (but not normalised)."""
    record = message(lead_id, to=to, **changes)
    return {**record, "parent_hash": record_hash(record), "provenance": None}


class DeliveryContract:
    """The delivery behaviour every database backend must show."""

    def make_home(self) -> TempHome:  # pragma: no cover - provided by the backend test case
        raise NotImplementedError

    def setUp(self) -> None:
        self.home = self.make_home()
        self.addCleanup(self.home.cleanup)
        self.db = self.home.database()
        self.orchestrator = DeliveryOrchestrator(settings=self.home.settings)
        self.outbox: Path = self.home.settings.resolved_outbox_dir

    def deliver(self, *records: dict[str, Any], allow_delivery: bool = True) -> list[dict[str, Any]]:
        payload = {"records": list(records), "campaign_id": "c1", "allow_delivery": allow_delivery}
        return self.orchestrator.run(payload)["records"]

    def outbox_files(self) -> list[Path]:
        return sorted(self.outbox.iterdir()) if self.outbox.exists() else []

    def outbox_rows(self) -> int:
        return self.db.count(OutboxMessage)

    def assertNothingWritten(self) -> None:
        self.assertEqual(self.outbox_files(), [])
        self.assertEqual(self.outbox_rows(), 0)

    def claim_as_crashed(self, *, record: dict[str, Any] | None = None, to: str = "jane@acme.example",
                         message_id: str = "<crashed.1@sender.example>") -> tuple[str, LedgerEntry]:
        """A key claimed in state "sending", as if the process died before writing the file."""
        key = idempotency_key("default", "c1", "lead-1", 1)
        entry, created = OutboxLedger(self.db).claim(
            key, tenant_id="default", campaign_id="c1", lead_id="lead-1", step=1, channel="outbox",
            message_id=message_id, to_address=to, subject="Quick question",
            record_hash=record_hash(record or message()))
        self.assertTrue(created)
        return key, entry

    def write_outbox_file(self, key: str, message_id: str) -> Path:
        """An .eml already under ``key`` in the outbox directory."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.outbox / f"{key}.eml"
        path.write_bytes(f"Message-ID: {message_id}\r\nSubject: earlier\r\n\r\nbody\r\n".encode())
        return path

    def run_channel(self, *messages: dict[str, Any]) -> list[dict[str, Any]]:
        """Call the registered outbox channel directly, past every orchestrator gate."""
        channel = default_registry().resolve("outbox")
        return channel.run({"messages": list(messages)}, context=RunContext(settings=self.home.settings))["records"]

    # -- delivery off ------------------------------------------------------------------
    def test_delivery_is_off_by_default_and_every_record_is_skipped(self) -> None:
        # Given two messages and a payload that does not mention allow_delivery
        payload = {"records": [message("lead-1"), message("lead-2", to="bob@globex.example")], "campaign_id": "c1"}

        # When the orchestrator runs
        records = self.orchestrator.run(payload)["records"]

        # Then both come back skipped because delivery is disabled
        self.assertEqual([(r["status"], r["reason"]) for r in records], [("skipped", "delivery_disabled")] * 2)

    def test_delivery_off_writes_no_file_and_no_outbox_row(self) -> None:
        # Given a message
        # When it is delivered with delivery off
        self.deliver(message(), allow_delivery=False)

        # Then nothing reaches the outbox directory or the ledger
        self.assertNothingWritten()

    # -- sending -------------------------------------------------------------------------
    def test_allowed_delivery_writes_exactly_one_eml_per_message(self) -> None:
        # Given two messages to different leads
        # When they are delivered
        records = self.deliver(message("lead-1"), message("lead-2", to="bob@globex.example"))

        # Then each is sent into its own file in the outbox directory
        self.assertEqual([r["status"] for r in records], ["sent", "sent"])
        self.assertEqual(sorted(Path(r["location"]) for r in records), self.outbox_files())

    def test_the_eml_carries_the_required_headers(self) -> None:
        # Given a delivered message
        record = self.deliver(message())[0]

        # When its file is parsed
        parsed = email.message_from_bytes(Path(record["location"]).read_bytes(), policy=email.policy.default)

        # Then sender, recipient, subject, date, id and unsubscribe headers are present
        self.assertEqual(parsed["From"].addresses[0].addr_spec, parseaddr(self.home.settings.sender)[1])
        self.assertEqual(parsed["To"].addresses[0].addr_spec, "jane@acme.example")
        self.assertEqual(parsed["Subject"], "Quick question")
        self.assertIsNotNone(parsed["Date"].datetime)
        self.assertTrue(parsed["List-Unsubscribe"].startswith("<"))

    def test_the_eml_message_id_is_the_one_reported(self) -> None:
        # Given a delivered message
        record = self.deliver(message())[0]

        # When its file is parsed
        parsed = email.message_from_bytes(Path(record["location"]).read_bytes(), policy=email.policy.default)

        # Then its Message-ID is the one in the result and in the ledger
        self.assertEqual(parsed["Message-ID"], record["message_id"])
        self.assertEqual(OutboxLedger(self.db).get(record["idempotency_key"]).message_id, record["message_id"])

    def test_the_eml_body_holds_the_text_and_the_footer(self) -> None:
        # Given a delivered message
        record = self.deliver(message())[0]

        # When its body is read
        parsed = email.message_from_bytes(Path(record["location"]).read_bytes(), policy=email.policy.default)
        body = parsed.get_body(("plain",)).get_content()

        # Then it carries the text, the postal address and the opt-out line
        self.assertIn("Are you free on Tuesday?", body)
        self.assertIn(self.home.settings.postal_address, body)
        self.assertIn("unsubscribe", body)

    # -- exactly once ----------------------------------------------------------------------
    def test_a_rerun_of_the_same_step_is_a_duplicate_with_the_same_message_id(self) -> None:
        # Given a message already sent
        first = self.deliver(message())[0]

        # When the same (campaign, lead, step) is delivered again
        again = self.deliver(message())[0]

        # Then it is reported as a duplicate of the first send
        self.assertEqual((again["status"], again["reason"]), ("duplicate", "already_sent"))
        self.assertEqual(again["message_id"], first["message_id"])

    def test_a_rerun_of_the_same_step_writes_no_second_file(self) -> None:
        # Given a message already sent
        self.deliver(message())

        # When the same (campaign, lead, step) is delivered again
        self.deliver(message())

        # Then there is still one file and one ledger row
        self.assertEqual(len(self.outbox_files()), 1)
        self.assertEqual(self.outbox_rows(), 1)

    def test_the_same_step_twice_in_one_payload_is_sent_once_and_reported_once_as_duplicate(self) -> None:
        # Given one payload holding the same (campaign, lead, step) twice
        # When it is delivered
        records = self.deliver(message(), message())

        # Then the first is sent, the second is its duplicate, and one file exists
        self.assertEqual([r["status"] for r in records], ["sent", "duplicate"])
        self.assertEqual(records[1]["message_id"], records[0]["message_id"])
        self.assertEqual(len(self.outbox_files()), 1)

    def test_a_different_step_is_a_new_message(self) -> None:
        # Given step 1 already sent
        first = self.deliver(message(step=1))[0]

        # When step 2 to the same lead is delivered
        second = self.deliver(message(step=2, subject="Following up"))[0]

        # Then it is sent as a new message with its own Message-ID and file
        self.assertEqual((second["status"], second["reason"]), ("sent", None))
        self.assertNotEqual(second["message_id"], first["message_id"])
        self.assertEqual(len(self.outbox_files()), 2)

    def test_a_send_left_in_sending_by_a_crash_is_resumed_with_its_message_id(self) -> None:
        # Given a key claimed in state "sending" for this message, as if the process died before writing
        key, claimed = self.claim_as_crashed()

        # When the message is delivered
        record = self.deliver(message())[0]

        # Then the send is finished under the claimed Message-ID, in one file
        self.assertEqual((record["status"], record["reason"]), ("sent", "resumed"))
        self.assertEqual(record["message_id"], claimed.message_id)
        self.assertEqual(self.outbox_files(), [Path(record["location"])])
        self.assertEqual(OutboxLedger(self.db).get(key).state, "sent")

    def test_a_claim_left_by_a_crash_is_not_finished_with_changed_content(self) -> None:
        # Given a key claimed in state "sending" for the original message
        key, _ = self.claim_as_crashed()

        # When a message with the same (campaign, lead, step) but another subject is delivered
        record = self.deliver(message(subject="Something else entirely"))[0]

        # Then it is a conflict, no file is written and the claim is left as it was
        self.assertEqual((record["status"], record["reason"]), ("conflict", "content_changed"))
        self.assertEqual(self.outbox_files(), [])
        self.assertEqual(OutboxLedger(self.db).get(key).state, "sending")

    def test_a_claim_left_by_a_crash_for_another_address_is_not_finished(self) -> None:
        # Given a key claimed in state "sending" for the same record but another recipient
        self.claim_as_crashed(to="someone.else@acme.example")

        # When the message is delivered
        record = self.deliver(message())[0]

        # Then it is a conflict and no file is written
        self.assertEqual((record["status"], record["reason"]), ("conflict", "content_changed"))
        self.assertEqual(self.outbox_files(), [])

    def test_an_outbox_file_with_another_message_id_is_a_conflict_and_is_not_marked_sent(self) -> None:
        # Given an .eml already under the message's key that carries a different Message-ID
        key = idempotency_key("default", "c1", "lead-1", 1)
        existing = self.write_outbox_file(key, "<someone.else@sender.example>")
        before = existing.read_bytes()

        # When the message is delivered
        record = self.deliver(message())[0]

        # Then it is a conflict, the file is untouched and the ledger row is not sent
        self.assertEqual((record["status"], record["reason"]), ("conflict", "outbox_file_mismatch"))
        self.assertEqual(existing.read_bytes(), before)
        self.assertEqual(OutboxLedger(self.db).get(key).state, "unknown")

    def test_a_file_written_just_before_a_crash_is_adopted_when_it_carries_the_claimed_message_id(self) -> None:
        # Given a claim left in "sending" whose file was written before the process died
        key, claimed = self.claim_as_crashed()
        existing = self.write_outbox_file(key, claimed.message_id)

        # When the message is delivered
        record = self.deliver(message())[0]

        # Then the existing file is the send: the row becomes sent and no second file appears
        self.assertEqual((record["status"], record["reason"]), ("sent", "resumed"))
        self.assertEqual(self.outbox_files(), [existing])
        self.assertEqual(OutboxLedger(self.db).get(key).state, "sent")

    # -- channel failures --------------------------------------------------------------------
    def test_a_message_the_channel_cannot_write_leaves_its_row_failed(self) -> None:
        # Given a message the channel cannot build (a non-ASCII local part, past the orchestrator)
        bad = channel_message(to="jörg@acme.example")

        # When the outbox channel is called with it
        with self.assertRaises(DeliveryError):
            self.run_channel(bad)

        # Then its ledger row is marked failed, not left in "sending"
        self.assertEqual(OutboxLedger(self.db).get(idempotency_key("default", "c1", "lead-1", 1)).state, "failed")

    def test_a_channel_failure_names_the_key_prefix_and_not_the_address(self) -> None:
        # Given a message the channel cannot build
        bad = channel_message(to="jörg@acme.example")

        # When the outbox channel is called with it
        with self.assertRaises(DeliveryError) as caught:
            self.run_channel(bad)

        # Then the error points at the idempotency key and keeps the address out of logs
        self.assertIn(idempotency_key("default", "c1", "lead-1", 1)[:12], str(caught.exception))
        self.assertNotIn("jörg", str(caught.exception))

    def test_a_channel_failure_abandons_the_rest_of_the_batch(self) -> None:
        # Given a failing message followed by a good one
        batch = [channel_message(to="jörg@acme.example"), channel_message("lead-2", to="bob@globex.example")]

        # When the outbox channel is called with both
        with self.assertRaises(DeliveryError):
            self.run_channel(*batch)

        # Then the good one was not attempted (a re-run is idempotent) and no file exists
        self.assertIsNone(OutboxLedger(self.db).get(idempotency_key("default", "c1", "lead-2", 1)))
        self.assertEqual(self.outbox_files(), [])

    # -- suppression -------------------------------------------------------------------------
    def test_a_suppressed_address_is_skipped_and_gets_no_file(self) -> None:
        # Given Jane's address on the suppression list
        SuppressionList(self.db, tenant="default").add("Jane@acme.example", reason="unsubscribed", source="test")

        # When messages to Jane and Bob are delivered
        records = self.deliver(message("lead-1"), message("lead-2", to="bob@globex.example"))

        # Then Jane's is skipped as suppressed and only Bob's file is written
        self.assertEqual([(r["status"], r["reason"]) for r in records],
                         [("skipped", "suppressed"), ("sent", None)])
        self.assertEqual(self.outbox_files(), [Path(records[1]["location"])])

    def test_a_suppressed_domain_skips_every_address_on_it(self) -> None:
        # Given the whole acme.example domain suppressed
        SuppressionList(self.db, tenant="default").add("@acme.example", reason="complaint", source="test")

        # When a message to an address on a subdomain of it is delivered
        records = self.deliver(message(to="jane@mail.acme.example"))

        # Then it is skipped and nothing is written
        self.assertEqual((records[0]["status"], records[0]["reason"]), ("skipped", "suppressed"))
        self.assertNothingWritten()

    def test_the_outbox_channel_alone_skips_a_suppressed_address_given_in_another_case(self) -> None:
        # Given bob@x.example suppressed
        SuppressionList(self.db, tenant="default").add("bob@x.example", reason="unsubscribed", source="test")

        # When the outbox channel is called directly with Bob@X.example
        records = self.run_channel(channel_message(to="Bob@X.example"))

        # Then it is skipped as suppressed and nothing is written
        self.assertEqual((records[0]["status"], records[0]["reason"]), ("skipped", "suppressed"))
        self.assertNothingWritten()

    def test_the_outbox_channel_alone_skips_a_mixed_case_address_on_a_suppressed_domain(self) -> None:
        # Given the whole acme.example domain suppressed, entered in mixed case
        SuppressionList(self.db, tenant="default").add("@Acme.Example", reason="complaint", source="test")

        # When the outbox channel is called directly with an address on it in mixed case
        records = self.run_channel(channel_message(to="Jane@Mail.ACME.example"))

        # Then it is skipped as suppressed and nothing is written
        self.assertEqual((records[0]["status"], records[0]["reason"]), ("skipped", "suppressed"))
        self.assertNothingWritten()

    def test_the_suppression_gate_reports_a_mixed_case_address_under_the_string_given(self) -> None:
        # Given bob@x.example suppressed
        SuppressionList(self.db, tenant="default").add("bob@x.example", reason="unsubscribed", source="test")

        # When the registered gate is asked about Bob@X.example
        gate = default_registry().resolve("suppression_gate")
        found = gate.run({"addresses": ["Bob@X.example"]}, context=RunContext(settings=self.home.settings))

        # Then that very string is reported suppressed, with its reason
        self.assertEqual([(r["address"], r["suppressed"], r["reason"]) for r in found["records"]],
                         [("Bob@X.example", True, "unsubscribed")])

    def test_a_suppressed_internationalised_address_is_skipped_in_its_punycode_form(self) -> None:
        # Given an address on an internationalised domain suppressed in its Unicode form
        SuppressionList(self.db, tenant="default").add("user@bücher.example", reason="bounce", source="test")

        # When a message to the same address in punycode is delivered
        records = self.deliver(message(to="user@xn--bcher-kva.example"))

        # Then it is skipped as suppressed and nothing is written
        self.assertEqual((records[0]["status"], records[0]["reason"]), ("skipped", "suppressed"))
        self.assertNothingWritten()

    # -- bad input ------------------------------------------------------------------------------
    def assertRefused(self, bad: dict[str, Any], field: str) -> None:
        # Given a valid message followed by a bad one
        payload = {"records": [message("lead-1"), bad], "campaign_id": "c1", "allow_delivery": True}

        # When the orchestrator runs
        with self.assertRaises(PayloadError) as caught:
            self.orchestrator.run(payload)

        # Then the error names the bad field and not even the valid message was written
        self.assertEqual(caught.exception.field, field)
        self.assertNothingWritten()

    def test_an_invalid_recipient_is_refused_and_nothing_is_written(self) -> None:
        self.assertRefused(message("lead-2", to="not-an-address"), "records[1].to")

    def test_an_empty_subject_is_refused_and_nothing_is_written(self) -> None:
        self.assertRefused(message("lead-2", subject="   "), "records[1].subject")

    def test_a_multi_line_subject_is_refused_and_nothing_is_written(self) -> None:
        self.assertRefused(message("lead-2", subject="Hello\nBcc: victim@example.org"), "records[1].subject")

    def test_a_missing_lead_id_is_refused_and_nothing_is_written(self) -> None:
        bad = message("lead-2")
        del bad["lead_id"]
        self.assertRefused(bad, "records[1].lead_id")

    def test_a_recipient_with_a_non_ascii_local_part_is_refused_and_nothing_is_written(self) -> None:
        self.assertRefused(message("lead-2", to="jörg@acme.example"), "records[1].to")

    def test_a_malformed_provenance_hash_on_a_bare_record_is_refused_and_nothing_is_written(self) -> None:
        self.assertRefused(message("lead-2", provenance={"source": "drafts", "hash": "not-a-hash"}),
                           "records[1].provenance.hash")

    def test_malformed_provenance_parents_on_a_bare_record_are_refused_and_nothing_is_written(self) -> None:
        self.assertRefused(message("lead-2", provenance={"source": "drafts", "parents": ["abc"]}),
                           "records[1].provenance.parents")

    def test_a_payload_without_campaign_id_is_refused_when_a_record_has_none(self) -> None:
        # Given a record without campaign_id in a payload without one
        bare = message()
        del bare["campaign_id"]

        # When the orchestrator runs
        with self.assertRaises(PayloadError) as caught:
            self.orchestrator.run({"records": [bare], "allow_delivery": True})

        # Then the error names campaign_id and nothing is written
        self.assertEqual(caught.exception.field, "campaign_id")
        self.assertNothingWritten()

    def test_records_that_carry_their_own_campaign_id_need_none_in_the_payload(self) -> None:
        # Given records that each carry a campaign_id, in a payload without one
        payload = {"records": [message("lead-1"), message("lead-2", to="bob@globex.example")], "allow_delivery": True}

        # When the orchestrator runs
        records = self.orchestrator.run(payload)["records"]

        # Then both are sent under their own campaign
        self.assertEqual([(r["status"], r["campaign_id"]) for r in records], [("sent", "c1"), ("sent", "c1")])

    def test_a_recipient_on_an_internationalised_domain_is_addressed_in_punycode(self) -> None:
        # Given a message to an address on an internationalised domain, in mixed case
        # When it is delivered
        record = self.deliver(message(to="User@Bücher.example"))[0]

        # Then the result and the file's To: header carry the lower-cased ASCII form
        parsed = email.message_from_bytes(Path(record["location"]).read_bytes(), policy=email.policy.default)
        self.assertEqual(record["to"], "user@xn--bcher-kva.example")
        self.assertEqual(parsed["To"].addresses[0].addr_spec, "user@xn--bcher-kva.example")

    def test_an_envelope_whose_record_was_tampered_after_hashing_is_refused(self) -> None:
        # Given an envelope from upstream whose record was edited after its hash was taken
        envelope = make_envelope([message()], source="drafts")
        envelope["records"][0]["to"] = "attacker@evil.example"

        # When it is delivered
        with self.assertRaises(EnvelopeError) as caught:
            self.orchestrator.run({**envelope, "campaign_id": "c1", "allow_delivery": True})

        # Then it is refused at the hash of that record and nothing is written
        self.assertEqual(caught.exception.field, "records[0].provenance.hash")
        self.assertNothingWritten()

    # -- provenance ---------------------------------------------------------------------------
    def test_each_result_names_its_input_record_as_parent(self) -> None:
        # Given bare records, one relying on defaults and normalisation (no step, mixed-case address)
        records_in = [message("lead-1"), {"to": "Bob@Globex.example", "subject": "Hi", "body": "Hello", "lead_id": "lead-2"}]

        # When they are delivered
        records_out = self.deliver(*records_in)

        # Then each result's parents contain the hash of the record as it was given
        for given, result in zip(records_in, records_out):
            self.assertIn(record_hash(given), result["provenance"]["parents"])

    def test_a_skipped_result_names_its_input_record_as_parent(self) -> None:
        # Given a bare record
        given = message()

        # When it is delivered with delivery off
        result = self.deliver(given, allow_delivery=False)[0]

        # Then the skipped result still points at the record it came from
        self.assertIn(record_hash(given), result["provenance"]["parents"])

    def test_an_enveloped_result_names_the_upstream_record_hash_as_parent(self) -> None:
        # Given an intact envelope from upstream
        envelope = make_envelope([message()], source="drafts")
        upstream = envelope["records"][0]["provenance"]["hash"]

        # When it is delivered
        result = self.orchestrator.run({**envelope, "campaign_id": "c1", "allow_delivery": True})["records"][0]

        # Then the result's parent is the upstream record's hash
        self.assertEqual(result["status"], "sent")
        self.assertIn(upstream, result["provenance"]["parents"])


class SQLiteDeliveryTests(DeliveryContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return TempHome()


@requires_real_services()
class PostgresDeliveryTests(DeliveryContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return postgres_home(self)


if __name__ == "__main__":
    unittest.main()
