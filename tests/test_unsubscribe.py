"""One-click unsubscribe: signed tokens, the List-Unsubscribe headers, and the HTTP app on a real server.

The app runs under uvicorn on 127.0.0.1 (started and stopped by the tests);
messages go to a real SMTP server (aiosmtpd), and the URL a test POSTs to is
the one taken from the captured message's header.
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
import unittest
from datetime import date, timedelta
from typing import Any

import httpx2 as httpx
import uvicorn

from agent.delivery.suppression import SuppressionList
from agent.delivery.unsubscribe import TokenError, UnsubscribeToken
from agent.high_level_agents.orchestrators import DeliveryOrchestrator
from agent.web import create_app
from tests.smtp_server import SmtpServer
from tests.support import TempHome

SECRET = b"a test secret of enough bytes"


class TokenTest(unittest.TestCase):
    def test_a_token_names_its_message_and_nothing_personal(self) -> None:
        tokens = UnsubscribeToken(SECRET)
        token = tokens.make("t1", "c1", "42", 2, today=date(2026, 11, 24))
        claims = tokens.read(token, today=date(2026, 11, 25))
        self.assertEqual((claims.tenant, claims.campaign_id, claims.lead_id, claims.step), ("t1", "c1", "42", 2))
        self.assertNotIn("@", token)
        self.assertRegex(token, r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

    def test_a_changed_foreign_or_old_token_is_refused_saying_why(self) -> None:
        tokens = UnsubscribeToken(SECRET, max_age_days=30)
        token = tokens.make("t1", "c1", "42", 1, today=date(2026, 1, 1))
        payload, signature = token.split(".")
        other = UnsubscribeToken(b"another secret of enough bytes").make("t1", "c1", "42", 1)
        forged = tokens.make("t1", "c1", "43", 1).split(".")[0] + "." + signature
        for bad, why in ((forged, "not valid"), (other, "not valid"), ("nonsense", "not an unsubscribe token"),
                         (payload + "." + signature[:-1] + "A", "not valid")):
            with self.subTest(why=why), self.assertRaises(TokenError) as caught:
                tokens.read(bad, today=date(2026, 1, 2))
            self.assertIn(why, caught.exception.reason)
        with self.assertRaises(TokenError) as caught:
            tokens.read(token, today=date(2026, 1, 1) + timedelta(days=31))
        self.assertIn("expired", caught.exception.reason)


class _Server:
    """The app under uvicorn on a free port of 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        waited = threading.Event()
        for _ in range(1000):  # until uvicorn says it listens (10 s at most)
            if self.server.started:
                return
            waited.wait(0.01)
        raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


class OneClickTest(unittest.TestCase):
    def setUp(self) -> None:
        self.smtp = SmtpServer()
        self.smtp.__enter__()
        self.addCleanup(self.smtp.__exit__, None, None, None)
        self.home = TempHome(smtp_host="127.0.0.1", smtp_port=self.smtp.port, smtp_security="none",
                             unsubscribe_base_url="https://mail.sender.example")
        self.addCleanup(self.home.cleanup)
        self.web = _Server(create_app(self.home.settings))
        self.web.start()
        self.addCleanup(self.web.stop)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.web.port}", follow_redirects=False)
        self.addCleanup(self.http.close)

    def send(self, lead: str, to: str, step: int = 1) -> list[dict[str, Any]]:
        record = {"to": to, "subject": "Quick question", "body": "Hello,\n\nAre you free on Tuesday?",
                  "lead_id": lead, "campaign_id": "c1", "step": step}
        return DeliveryOrchestrator(settings=self.home.settings).run(
            {"records": [record], "campaign_id": "c1", "allow_delivery": True, "channel": "smtp"})["records"]

    def captured_url(self) -> str:
        raw = self.smtp.received[-1].data
        unfolded = raw.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
        header = re.search(rb"^List-Unsubscribe: ([^\r\n]*)", unfolded, re.MULTILINE).group(1).decode()
        self.assertIn(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", unfolded)
        https, mailto = [part.strip(" <>") for part in header.split(",")]
        self.assertTrue(https.startswith("https://mail.sender.example/u/"), header)  # https first
        self.assertEqual(mailto, "mailto:unsubscribe@sender.example?subject=unsubscribe")
        body = email.message_from_bytes(raw, policy=email.policy.SMTP).get_content()
        self.assertIn(https, body)  # the visible link in the footer
        return https.removeprefix("https://mail.sender.example")

    def test_get_shows_a_confirm_page_and_post_unsubscribes_at_once_and_idempotently(self) -> None:
        self.send("lead-1", "jane@acme.example")
        path = self.captured_url()
        page = self.http.get(path)
        self.assertEqual(page.status_code, 200)
        self.assertIn('<form method="post">', page.text)
        self.assertEqual(SuppressionList(self.home.database()).suppressed(["jane@acme.example"]), {})
        for _ in range(2):  # once, then again: the same answer, no second row
            done = self.http.post(path, content=b"List-Unsubscribe=One-Click",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
            self.assertEqual(done.status_code, 200)
            self.assertNotIn("set-cookie", done.headers)
            self.assertNotIn("jane", done.text)
        self.assertEqual(SuppressionList(self.home.database()).suppressed(["jane@acme.example"]),
                         {"jane@acme.example": "unsubscribed"})
        # And the next step to that lead is never handed to the server
        later = self.send("lead-1", "jane@acme.example", step=2)
        self.assertEqual((later[0]["status"], later[0]["reason"]), ("skipped", "suppressed"))
        self.assertEqual(len(self.smtp.received), 1)

    def test_a_forged_token_is_refused_and_nothing_is_written(self) -> None:
        self.send("lead-2", "max@acme.example")
        path = self.captured_url()
        payload, signature = path.removeprefix("/u/").split(".")
        forged = f"/u/{payload[:-2]}AA.{signature}"
        for method in ("get", "post"):
            for bad in (forged, "/u/caf%C3%A9.%C3%A9t%C3%A9"):  # altered, and not even ASCII
                answer = getattr(self.http, method)(bad)
                self.assertEqual(answer.status_code, 400, bad)
                self.assertIn("not", answer.text)
        self.assertEqual(SuppressionList(self.home.database()).suppressed(["max@acme.example"]), {})


class WithdrawDraftsTest(unittest.TestCase):
    def test_unsubscribing_withdraws_the_leads_drafts_awaiting_approval(self) -> None:
        from agent.delivery.unsubscribe import Unsubscribe, apply_unsubscribe
        from agent.drafts import DraftStore
        from agent.envelope import make_provenance

        home = TempHome(sample_data="on", sample_size=20)
        self.addCleanup(home.cleanup)
        db = home.database()
        store = DraftStore(db)
        from agent.leads.search import LeadSearch

        with db.connect() as conn:
            [row] = LeadSearch(db).load(conn, [3])
        draft = {"to": row["email"], "subject": "Hi", "body": "Hello", "lead_id": "3", "campaign_id": "c9", "step": 1}
        draft["provenance"] = make_provenance(draft, source="test")
        store.park([draft], run_id="r1")
        # When the lead unsubscribes through another campaign's link (no message of that one recorded)
        address, newly = apply_unsubscribe(db, Unsubscribe("default", "c1", "3", 1, date.today()), source="one_click")
        # Then the address is suppressed and the waiting draft is withdrawn, saying why
        self.assertEqual((address, newly), (row["email"], True))
        [withdrawn] = store.list(status="rejected")
        self.assertEqual((withdrawn.lead_id, withdrawn.reason), ("3", "the recipient unsubscribed"))
        self.assertEqual(apply_unsubscribe(db, Unsubscribe("default", "c1", "3", 1, date.today()),
                                           source="one_click"), (row["email"], False))
