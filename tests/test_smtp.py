"""The SMTP channel against a real SMTP server (aiosmtpd on 127.0.0.1, started by each test).

Exact bytes, one connection per batch, a 550 5.1.1 at RCPT as a hard bounce
and suppression, exactly one DATA per key across retries, and a connection
lost during DATA left ``unknown``, never re-sent.
"""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
import threading
import unittest
from typing import Any

from agent.delivery.keys import idempotency_key
from agent.delivery.ledger import OutboxLedger
from agent.delivery.pacing import Pacer
from agent.delivery.suppression import SuppressionList
from agent.errors import ConfigurationError, DeliveryError
from agent.high_level_agents.orchestrators import DeliveryOrchestrator
from tests.smtp_server import SmtpServer
from tests.support import TempHome


def message(lead_id: str, to: str, **changes: Any) -> dict[str, Any]:
    return {"to": to, "subject": "Quick question", "body": f"Hello {lead_id},\n\nAre you free on Tuesday?",
            "lead_id": lead_id, "campaign_id": "c1", "step": 1, **changes}


def age_claims(home: TempHome, minutes: int = 20) -> None:
    """Every claim in "sending" made ``minutes`` ago: too old to be a live attempt's (LIVE_CLAIM)."""
    from datetime import timedelta

    from sqlalchemy import update

    from agent.storage.models import OutboxMessage, utcnow

    with home.database().connect(write=True) as conn:
        conn.execute(update(OutboxMessage).where(OutboxMessage.state == "sending")
                     .values(claimed_at=utcnow() - timedelta(minutes=minutes)))


class SmtpChannelTest(unittest.TestCase):
    def start(self, **server_options: Any) -> SmtpServer:
        server = SmtpServer(**server_options)
        server.__enter__()
        self.addCleanup(server.__exit__, None, None, None)
        return server

    def home(self, server: SmtpServer, **settings: Any) -> TempHome:
        home = TempHome(**{"smtp_host": "127.0.0.1", "smtp_port": server.port, "smtp_security": "none", **settings})
        self.addCleanup(home.cleanup)
        return home

    def deliver(self, home: TempHome, *records: dict[str, Any]) -> list[dict[str, Any]]:
        orchestrator = DeliveryOrchestrator(settings=home.settings)
        payload = {"records": list(records), "campaign_id": "c1", "allow_delivery": True, "channel": "smtp"}
        return orchestrator.run(payload)["records"]

    def test_a_batch_goes_over_one_connection_with_its_message_ids_and_exact_bytes(self) -> None:
        server = self.start()
        home = self.home(server)
        results = self.deliver(home, *(message(f"lead-{n}", f"person{n}@acme.example") for n in range(5)))
        self.assertEqual([r["status"] for r in results], ["sent"] * 5)
        self.assertEqual(server.handler.connections, 1)
        self.assertEqual(len(server.received), 5)
        first = server.received[0]
        self.assertEqual((first.mail_from, first.rcpt_tos), ("outreach@sender.example", ["person0@acme.example"]))
        parsed = email.message_from_bytes(first.data, policy=email.policy.SMTP)
        self.assertEqual(parsed["Message-ID"], results[0]["message_id"])
        self.assertEqual(parsed["X-Send-Id"], idempotency_key("default", "c1", "lead-0", 1))
        self.assertTrue(all(len(line) <= 998 for line in first.data.split(b"\r\n")))
        unfolded = first.data.replace(b"\r\n ", b" ")
        self.assertIn(b"List-Unsubscribe: <mailto:unsubscribe@sender.example?subject=unsubscribe>", unfolded)
        # The ledger fixed each Message-ID before sending and says sent
        entry = OutboxLedger(home.database()).get(idempotency_key("default", "c1", "lead-0", 1))
        self.assertEqual((entry.state, entry.message_id), ("sent", results[0]["message_id"]))

    def test_a_550_at_rcpt_is_a_hard_bounce_and_the_address_is_suppressed(self) -> None:
        server = self.start()
        server.handler.refuse["gone@acme.example"] = "550 5.1.1 <gone@acme.example>: user unknown"
        home = self.home(server)
        results = self.deliver(home, message("a", "gone@acme.example"), message("b", "here@acme.example"))
        self.assertEqual([r["status"] for r in results], ["bounced", "sent"])
        self.assertEqual(results[0]["reason"], "hard_bounce:rcpt:550 5.1.1")
        self.assertEqual([r.rcpt_tos for r in server.received], [["here@acme.example"]])
        self.assertEqual(SuppressionList(home.database()).suppressed(["gone@acme.example"]),
                         {"gone@acme.example": "hard_bounce"})
        # and a later step to that address never reaches the server
        again = self.deliver(home, message("a", "gone@acme.example", step=2))
        self.assertEqual((again[0]["status"], again[0]["reason"]), ("skipped", "suppressed"))

    def test_a_policy_refusal_or_a_4xx_does_not_suppress_the_recipient(self) -> None:
        server = self.start()
        server.handler.refuse["p@acme.example"] = "550 5.7.1 sending domain blocked"
        server.handler.refuse["t@acme.example"] = "451 4.3.0 try again later"
        home = self.home(server)
        results = self.deliver(home, message("t", "t@acme.example"), message("p", "p@acme.example"),
                               message("q", "q@acme.example"))
        self.assertEqual([(r["status"], r["reason"]) for r in results],
                         [("failed", "deferred:rcpt:451 4.3.0"), ("failed", "policy_refused:rcpt:550 5.7.1"),
                          # a 5.7.x says our sending is refused: the mailbox stops, the rest waits for a person
                          ("deferred", "paused:policy_refused")])
        self.assertEqual(SuppressionList(home.database()).suppressed(["p@acme.example", "t@acme.example"]), {})
        pacer = Pacer(home.database())
        self.assertEqual(pacer.paused("mailbox:outreach@sender.example")["reason"], "policy_refused")
        self.assertEqual(server.received, [])
        # a failed key was never accepted, so a retry sends it, once (after someone resumes the mailbox)
        self.assertTrue(pacer.resume("mailbox:outreach@sender.example"))
        server.handler.refuse.clear()
        retry = self.deliver(home, message("t", "t@acme.example"))
        self.assertEqual(retry[0]["status"], "sent")
        self.assertEqual(retry[0]["message_id"], results[0]["message_id"])

    def test_a_refusal_that_does_not_say_the_address_is_gone_is_a_bounce_but_suppresses_nobody(self) -> None:
        server = self.start()
        server.handler.refuse["blocked@acme.example"] = "550 rejected, listed at a blocklist"
        server.handler.refuse_data["big@acme.example"] = "552 5.3.4 message too big"
        home = self.home(server)
        results = self.deliver(home, message("a", "blocked@acme.example"), message("b", "big@acme.example"))
        self.assertEqual([(r["status"], r["reason"]) for r in results],
                         [("bounced", "refused:rcpt:550"), ("bounced", "refused:data:552 5.3.4")])
        self.assertEqual(SuppressionList(home.database()).suppressed(["blocked@acme.example", "big@acme.example"]),
                         {})

    def test_a_failed_key_is_retried_by_one_attempt_only(self) -> None:
        server = self.start()
        server.handler.refuse["t@acme.example"] = "451 4.3.0 try again later"
        home = self.home(server)
        [first] = self.deliver(home, message("t", "t@acme.example"))
        self.assertEqual(first["status"], "failed")
        server.handler.refuse.clear()
        # Given another attempt has already taken the failed row back for its retry
        key = idempotency_key("default", "c1", "t", 1)
        self.assertTrue(OutboxLedger(home.database()).take(key, first["message_id"]))
        # When this attempt retries too, then it does not send: one DATA per key; the other attempt is live
        [second] = self.deliver(home, message("t", "t@acme.example"))
        self.assertEqual((second["status"], second["reason"]), ("in_progress", "another_attempt_in_progress"))
        self.assertEqual(server.received, [])
        # And once that attempt is too old to be alive, the key is unknown, for an operator: still no DATA
        age_claims(home)
        [third] = self.deliver(home, message("t", "t@acme.example"))
        self.assertEqual((third["status"], third["reason"]), ("unknown", "earlier_attempt_unfinished"))
        self.assertEqual(server.received, [])

    def test_the_same_key_twice_in_one_request_is_sent_once(self) -> None:
        server = self.start()
        home = self.home(server)
        results = self.deliver(home, message("a", "a@acme.example"), message("a", "a@acme.example"))
        self.assertEqual([r["status"] for r in results], ["sent", "duplicate"])
        self.assertEqual(len(server.received), 1)

    def test_exactly_one_data_per_key_whatever_the_retries(self) -> None:
        server = self.start()
        home = self.home(server)
        first = self.deliver(home, message("a", "a@acme.example"))
        again = self.deliver(home, message("a", "a@acme.example"))
        self.assertEqual([first[0]["status"], again[0]["status"]], ["sent", "duplicate"])
        self.assertEqual(len(server.received), 1)

    def test_a_connection_lost_during_data_is_unknown_and_never_sent_again(self) -> None:
        server = self.start()
        server.handler.drop_data_for.add("lost@acme.example")
        home = self.home(server)
        results = self.deliver(home, message("x", "lost@acme.example"), message("y", "next@acme.example"))
        self.assertEqual([(r["status"], r["reason"]) for r in results],
                         [("unknown", "connection_lost_during_data"), ("sent", None)])
        key = idempotency_key("default", "c1", "x", 1)
        self.assertEqual(OutboxLedger(home.database()).get(key).state, "unknown")
        # A retry (the server would now accept) does not send it blindly
        server.handler.drop_data_for.clear()
        retry = self.deliver(home, message("x", "lost@acme.example"))
        self.assertEqual((retry[0]["status"], retry[0]["reason"]), ("unknown", "earlier_attempt_unfinished"))
        self.assertEqual([r.rcpt_tos for r in server.received], [["next@acme.example"]])

    def test_a_claim_left_sending_by_a_killed_worker_is_not_sent_again(self) -> None:
        server = self.start()
        home = self.home(server)
        # Given a worker claimed the key, then died before it could mark the outcome
        ledger = OutboxLedger(home.database())
        record = message("k", "k@acme.example")
        from agent.envelope import record_hash

        ledger.claim(idempotency_key("default", "c1", "k", 1), tenant_id="default", campaign_id="c1", lead_id="k",
                     step=1, channel="smtp", message_id="<claimed@sender.example>", to_address="k@acme.example",
                     subject="Quick question", record_hash=record_hash(record), run_id=None, provenance=None)
        # When the batch is retried, after the claim is too old to be a live attempt's
        age_claims(home)
        results = self.deliver(home, record)
        # Then it is unknown, for an operator, and nothing reached the server
        self.assertEqual((results[0]["status"], results[0]["message_id"]), ("unknown", "<claimed@sender.example>"))
        self.assertEqual(server.received, [])

    def test_a_worker_killed_during_data_then_retried_makes_exactly_one_data(self) -> None:
        server = self.start()
        arrived, release = threading.Event(), threading.Event()
        server.handler.hold_data["slow@acme.example"] = (arrived, release)
        self.addCleanup(release.set)
        home = self.home(server)
        env = home.cli_env(AGENT_SMTP_HOST="127.0.0.1", AGENT_SMTP_PORT=str(server.port), AGENT_SMTP_SECURITY="none")
        record = message("s", "slow@acme.example")
        script = ("import json, sys\n"
                  "from agent.high_level_agents.orchestrators import DeliveryOrchestrator\n"
                  "DeliveryOrchestrator().run({'records': [json.loads(sys.argv[1])], 'campaign_id': 'c1',"
                  " 'allow_delivery': True, 'channel': 'smtp'})\n")
        worker = subprocess.Popen([sys.executable, "-c", script, json.dumps(record)], env=env)
        self.addCleanup(worker.kill)
        # Given a worker whose message reached the server whole, killed before the server's answer
        self.assertTrue(arrived.wait(60), "the worker's DATA never arrived")
        worker.kill()
        worker.wait(timeout=60)
        release.set()  # the server accepts what it already has
        # When the batch is retried at once: the claim may be a live attempt's, so nothing is sent
        [soon] = self.deliver(home, record)
        self.assertEqual((soon["status"], soon["reason"]), ("in_progress", "another_attempt_in_progress"))
        # And retried again once the claim is too old to be alive, twice
        age_claims(home)
        retries = [self.deliver(home, record)[0] for _ in range(2)]
        # Then nothing is sent again: the key is unknown, for an operator, and the server has one DATA
        self.assertEqual({(r["status"], r["reason"]) for r in retries}, {("unknown", "earlier_attempt_unfinished")})
        self.assertEqual(OutboxLedger(home.database()).get(idempotency_key("default", "c1", "s", 1)).state, "unknown")
        self.assertEqual([r.rcpt_tos for r in server.received], [["slow@acme.example"]])

    def test_starttls_and_authentication(self) -> None:
        server = self.start(tls=True, users={"mailer": "s3cret"})
        home = self.home(server, smtp_security="starttls", smtp_username="mailer", smtp_password="s3cret",
                         smtp_ca_file=str(server.cert))
        results = self.deliver(home, message("a", "a@acme.example"))
        self.assertEqual(results[0]["status"], "sent")
        self.assertEqual(len(server.received), 1)
        # a wrong password is the channel's error, naming the server but never the secret
        wrong = self.home(server, smtp_security="starttls", smtp_username="mailer", smtp_password="nope",
                          smtp_ca_file=str(server.cert))
        with self.assertRaises(DeliveryError) as caught:
            self.deliver(wrong, message("b", "b@acme.example"))
        self.assertIn("refused the login", str(caught.exception))
        self.assertNotIn("nope", str(caught.exception))

    def test_a_server_that_cannot_be_reached_leaves_every_key_free_for_a_retry(self) -> None:
        # Given a server that is down (nobody listens on its port yet)
        later = SmtpServer()
        home = self.home(later)
        with self.assertRaises(DeliveryError):
            self.deliver(home, message("a", "a@acme.example"), message("b", "b@acme.example"))
        # When it is up, the retry sends both, once each
        later.__enter__()
        self.addCleanup(later.__exit__, None, None, None)
        results = self.deliver(home, message("a", "a@acme.example"), message("b", "b@acme.example"))
        self.assertEqual([r["status"] for r in results], ["sent", "sent"])
        self.assertEqual(len(later.received), 2)

    def test_dkim_signs_what_is_sent_and_a_receiver_verifies_it(self) -> None:
        import base64
        import subprocess
        import tempfile

        import dkim

        server = self.start()
        keys = tempfile.mkdtemp(prefix="agent-dkim-")
        private, public = f"{keys}/private.pem", f"{keys}/public.der"
        subprocess.run(["openssl", "genrsa", "-out", private, "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", private, "-pubout", "-outform", "DER", "-out", public],
                       check=True, capture_output=True)
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(open(public, "rb").read())
        home = self.home(server, dkim_domain="sender.example", dkim_selector="s1", dkim_private_key_file=private,
                         unsubscribe_base_url="https://mail.sender.example")
        self.assertEqual(self.deliver(home, message("a", "a@acme.example"))[0]["status"], "sent")
        raw = server.received[0].data
        self.assertTrue(raw.startswith(b"DKIM-Signature:"))
        signed = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
        self.assertIn(b"list-unsubscribe-post", signed.lower().split(b"h=", 1)[1].split(b";", 1)[0])

        def dns(name: bytes, timeout: int = 5) -> bytes:
            return record if name == b"s1._domainkey.sender.example." else b""

        self.assertTrue(dkim.verify(raw, dnsfunc=dns))
        self.assertFalse(dkim.verify(raw.replace(b"Are you free", b"Are you busy"), dnsfunc=dns))

    def test_without_a_server_configured_the_channel_says_which_setting(self) -> None:
        home = TempHome()
        self.addCleanup(home.cleanup)
        with self.assertRaises(ConfigurationError) as caught:
            self.deliver(home, message("a", "a@acme.example"))
        self.assertIn("smtp_host", str(caught.exception))
        # and nothing was claimed: the key is free for when a server is set
        self.assertIsNone(OutboxLedger(home.database()).get(idempotency_key("default", "c1", "a", 1)))
