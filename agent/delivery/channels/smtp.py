"""SMTP channel: each message handed to a real mail server, with exactly one DATA per key.

One connection serves a whole batch (``RSET`` between messages, one reconnect
if the server hangs up between them), over STARTTLS, implicit TLS (SSL) or
plain, with authentication when a user is set.  Per message:

1. the gates are read again (below), then the key is claimed in the outbox
   ledger with its Message-ID fixed first (``sending``); a retry reuses it;
2. ``MAIL FROM`` and ``RCPT TO``: a refusal here is certain, so the row
   becomes ``failed`` and a later attempt may send; a 5xx ``RCPT`` is a hard
   bounce, recorded, and the address is suppressed (5.7.x excepted: that is
   our sending's problem, not the recipient's);
3. ``DATA``: a 250 makes the row ``sent``; a 4xx/5xx reply is ``failed`` (a 5xx
   a bounce); but a connection lost or timed out *during* DATA leaves the row
   ``unknown``: the server may have accepted the message, so it is never sent
   again without an operator.  A row found in ``sending`` or ``unknown`` by a
   later attempt (a worker killed mid-send) is reported ``unknown`` and not
   re-sent.

The DeliveryOrchestrator's gates run first; then, per message, right before
its claim and hand-over, ``SendGates`` reads them again (pauses, suppression,
the lead's sequence, pacing; see ``agent.delivery.gates``), and a claim of a
``drafted`` or ``cancelled`` row is refused (approval).  Each key is claimed
only then, so a worker killed in a long paced batch strands one claim at
most.  A 5.7.x refusal pauses the mailbox; every bounce counts towards its
bounce rate.  Error texts are never echoed from the server or the email
stack (they carry addresses); the SMTP code and enhanced status are.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

from agent.agents.base import BaseAgent
from agent.context import RunContext
from agent.delivery.dkim_signing import signer_for
from agent.delivery.gates import SendGates
from agent.delivery.channels.common import claim_fields, finish_records, result_records, unclaimable
from agent.delivery.ledger import LedgerEntry, OutboxLedger
from agent.delivery.message import build_message, sender_address
from agent.delivery.suppression import SuppressionList
from agent.delivery.unsubscribe import unsubscribe_url
from agent.envelope import make_envelope
from agent.errors import ConfigurationError, DeliveryError
from agent.settings import Settings
from agent.storage.db import Database
from agent.storage.models import utcnow

__all__ = ["SmtpChannel", "SmtpSession", "ADDRESS_GONE"]

# A claim younger than this is a live attempt (its DATA may be in flight; a send is bounded by the
# SMTP timeout); older, it is a dead worker's, and its outcome is unknown.
LIVE_CLAIM = timedelta(minutes=15)

# RFC 3463 statuses that say the recipient address is bad or gone (5.1.7 and 5.1.8 are the sender's).
ADDRESS_GONE = frozenset({"5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})


class _Unknown(Exception):
    """The connection failed during DATA: the server may or may not have the message."""


class SmtpSession:
    """One SMTP connection, opened on first use and reused; reconnects once if dropped between sends."""

    def __init__(self, settings: Settings) -> None:
        if not settings.smtp_host:
            raise ConfigurationError("setting smtp_host: the smtp channel needs a mail server "
                                     "(AGENT_SMTP_HOST), or use the outbox channel")
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self._used = False  # a message was handed over on this connection: RSET before the next
        self.connections = 0

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.smtp_ca_file or None)

    def _open(self) -> smtplib.SMTP:
        s = self.settings
        try:
            if s.smtp_security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                                      context=self._context())
            else:
                smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            smtp.ehlo()
            if s.smtp_security == "starttls":
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if s.smtp_username:
                password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                smtp.login(s.smtp_username, password)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP server {s.smtp_host} refused the login ({exc.smtp_code})") from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"cannot open an SMTP session with {s.smtp_host}:{s.smtp_port}: "
                                f"{type(exc).__name__}") from None
        self.connections += 1
        return smtp

    def send(self, sender: str, to: str, data: bytes) -> None:
        """Hand one message over; ``SMTPResponseException`` for a refusal (certain), ``_Unknown`` if
        the connection failed during DATA, ``DeliveryError`` if it failed before."""
        for attempt in (1, 2):
            if self._smtp is None:
                self._smtp, self._used = self._open(), False
            smtp = self._smtp
            try:
                if self._used:
                    smtp.rset()
                self._used = True
                code, _ = smtp.mail(sender)
                if code != 250:
                    raise smtplib.SMTPSenderRefused(code, b"", sender)
                code, reply = smtp.rcpt(to)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({to: (code, reply)})
            except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused):
                raise  # a refusal (SMTPException is an OSError: caught here first)
            except (smtplib.SMTPServerDisconnected, OSError):
                self.close()  # dropped before DATA: nothing was sent, so a fresh connection may retry
                if attempt == 2:
                    raise DeliveryError("the SMTP server closed the connection before DATA") from None
                continue
            try:
                code, reply = smtp.data(data)
            except smtplib.SMTPDataError:
                raise  # refused at the DATA command itself, before any of the body was sent
            except (smtplib.SMTPException, OSError, socket.timeout):
                self.close()  # lost, or an unreadable reply, after the body went out: it may be delivered
                raise _Unknown() from None
            if code == 250:
                return
            if 400 <= code < 600:
                raise smtplib.SMTPDataError(code, reply)  # a proper refusal of the body
            self.close()
            raise _Unknown()  # a reply we cannot read (smtplib's -1): the server may have the message

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None


class SmtpChannel(BaseAgent):
    """Delivery channel that sends through an SMTP server (``AGENT_SMTP_*`` settings)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"write", "send"})
    channel = "smtp"

    def __init__(self, db: Database | None = None) -> None:
        self._db = db

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        settings = context.settings
        db = self._db or Database.for_settings(settings)
        ledger = OutboxLedger(db)
        suppression = SuppressionList(db, tenant=context.tenant)
        messages = list(request["messages"])
        suppressed = suppression.suppressed(m["to"] for m in messages)
        results = result_records(messages, context, self.channel)
        sending = [(r, m) for r, m in zip(results, messages) if m["to"] not in suppressed]
        # Configuration that could fail a send is resolved before anything is claimed.
        session = SmtpSession(settings)
        signer = signer_for(settings)
        unsubscribe_url(settings, context.tenant, "check", "check", 1)
        gates = SendGates(db, context, request)
        done: dict[str, dict[str, Any]] = {}
        try:
            for result, msg in sending:
                key = result["idempotency_key"]
                if key in done:  # the same (campaign, lead, step) twice in one request: sent once at most
                    same = done[key]["to"] == result["to"]
                    result.update(status="duplicate" if same else "conflict",
                                  reason="same_key_in_request" if same else "content_changed",
                                  message_id=done[key]["message_id"] if same else None)
                    continue
                done[key] = result
                if gates.policy is not None:
                    # A key already settled (a batch run again) is reported as it stands, before pacing
                    # could spend a slot of the cap or a jitter wait on it.
                    existing = ledger.get(key)
                    if existing is not None and existing.state in ("sent", "unknown", "drafted", "cancelled"):
                        result.update(self._one(existing, False, msg, session, ledger, gates, context, signer))
                        continue
                # Every gate read again now (pauses, suppression, the sequence, then pacing, whose
                # jitter is waited out; after a wait the first three are read once more).
                stopped = gates.check(msg)
                if stopped is not None:
                    result.update(stopped)
                    continue
                # Claimed only now, right before the hand-over: a worker killed in a paced batch
                # leaves one claim at most, not every message it had yet to send.
                entry, created = ledger.claim_many([claim_fields(key, msg, context, self.channel)])[key]
                try:
                    result.update(self._one(entry, created, msg, session, ledger, gates, context, signer))
                except DeliveryError:
                    if not any(r.get("status") == "sent" for r in done.values()):
                        raise  # nothing went out: the job's own retry is the answer
                    # Some went out: their outcomes must reach the sequence, so the batch ends here with
                    # this message failed (its row is "failed": a later attempt may send it) and the rest
                    # not attempted (nothing claimed for them).
                    result.update(status="failed", reason="server_unreachable", message_id=None)
                    break
        finally:
            session.close()
        for result, _ in sending:
            if "status" not in result:
                result.update(status="failed", reason="not_attempted:server_unreachable", message_id=None)
        finish_records(results, messages, suppressed, context, self.channel)
        return make_envelope(results, source=f"channel:{self.channel}", run_id=context.run_id, flow=context.flow,
                             node=context.node, agent=self.channel, duration_ms=context.elapsed_ms(),
                             connections=session.connections)

    def _one(self, entry: LedgerEntry, created: bool, msg: Mapping[str, Any], session: SmtpSession,
             ledger: OutboxLedger, gates: SendGates, context: RunContext, signer: Any) -> dict[str, Any]:
        settings = context.settings
        key = entry.idempotency_key
        if entry.state == "sent":
            return {"status": "duplicate", "reason": "already_sent", "message_id": entry.message_id}
        blocked = unclaimable(entry, created)
        if blocked is not None:
            return blocked
        if not created and entry.state in ("sending", "unknown"):
            if entry.record_hash != msg["parent_hash"] or entry.to_address != msg["to"]:
                return {"status": "conflict", "reason": "content_changed", "message_id": None}
            if entry.state == "sending" and entry.claimed_at is not None \
                    and utcnow() - entry.claimed_at < LIVE_CLAIM:
                # Another attempt holds it right now (its DATA may be in flight): its outcome will tell.
                return {"status": "in_progress", "reason": "another_attempt_in_progress",
                        "message_id": entry.message_id}
            # An earlier attempt claimed it long ago and may have reached DATA: never sent blindly again.
            ledger.mark_many([(key, "unknown", None)], only_from="sending")
            return {"status": "unknown", "reason": "earlier_attempt_unfinished", "message_id": entry.message_id}
        if not created and not ledger.take(key, entry.message_id, record_hash=msg["parent_hash"], to_address=msg["to"],
                                           subject=msg["subject"]):
            # A failed row is retried by one attempt only: another one took it first.
            return {"status": "in_progress", "reason": "another_attempt_in_progress", "message_id": entry.message_id}
        try:
            data = build_message(sender=settings.sender, to=msg["to"], subject=msg["subject"], body=msg["body"],
                                 message_id=entry.message_id, postal_address=settings.postal_address, send_id=key,
                                 unsubscribe_url=unsubscribe_url(settings, context.tenant, msg["campaign_id"],
                                                                 msg["lead_id"], msg["step"]),
                                 in_reply_to=msg.get("in_reply_to"), references=msg.get("references"))
            if signer is not None:
                data = signer.sign(data)
        except Exception as exc:  # nothing was sent: the row must not stay "sending"
            ledger.mark_many([(key, "failed", None)])
            raise DeliveryError(f"message for key {key[:12]}… could not be built: {type(exc).__name__}") from None
        envelope_from = sender_address(settings.sender)
        try:
            session.send(envelope_from, msg["to"], data)
        except _Unknown:
            ledger.mark_many([(key, "unknown", None)])
            return {"status": "unknown", "reason": "connection_lost_during_data", "message_id": entry.message_id}
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            return self._refused(key, code, reply, "rcpt", msg, entry, ledger, gates)
        except smtplib.SMTPDataError as exc:
            return self._refused(key, exc.smtp_code, exc.smtp_error, "data", msg, entry, ledger, gates)
        except smtplib.SMTPResponseException as exc:  # MAIL FROM refused: the mailbox's problem
            ledger.mark_many([(key, "failed", None)])
            return {"status": "failed", "reason": f"sender_refused:{exc.smtp_code}", "message_id": entry.message_id}
        except DeliveryError:
            ledger.mark_many([(key, "failed", None)])
            raise
        ledger.mark_many([(key, "sent", f"smtp://{settings.smtp_host}")])
        gates.sent(msg)
        return {"status": "sent", "reason": None, "message_id": entry.message_id}

    @staticmethod
    def _refused(key: str, code: int, reply: bytes | str, stage: str, msg: Mapping[str, Any], entry: LedgerEntry,
                 ledger: OutboxLedger, gates: SendGates) -> dict[str, Any]:
        ledger.mark_many([(key, "failed", None)])
        status = _enhanced(reply)
        detail = f"{stage}:{code}" + (f" {status}" if status else "")
        if 500 <= code < 600:
            if status.startswith("5.7."):
                # Policy: our sending is refused, not the address.  The mailbox stops until someone looks.
                gates.refused_for_policy(detail)
                return {"status": "failed", "reason": f"policy_refused:{detail}", "message_id": entry.message_id}
            gates.bounced(msg)
            if stage == "rcpt" and status in ADDRESS_GONE:
                # The address itself does not exist (any more): never write to it again.
                gates.suppression.add(msg["to"], reason="hard_bounce", source="smtp", evidence=detail)
                gates.enrolments.stop(reason="hard_bounce", address=msg["to"])
                return {"status": "bounced", "reason": f"hard_bounce:{detail}", "message_id": entry.message_id}
            # Refused for the message or for reasons the code does not pin on the address (size, content,
            # a blocklist, no enhanced code): a bounce, recorded, but the address is not suppressed.
            return {"status": "bounced", "reason": f"refused:{detail}", "message_id": entry.message_id}
        return {"status": "failed", "reason": f"deferred:{detail}", "message_id": entry.message_id}


def _enhanced(reply: bytes | str) -> str:
    """The RFC 3463 enhanced status code at the start of a reply ("5.1.1"), or ""."""
    text = reply.decode("ascii", "replace") if isinstance(reply, bytes) else str(reply)
    first = text.strip().split(" ", 1)[0] if text.strip() else ""
    parts = first.split(".")
    return first if len(parts) == 3 and all(p.isdigit() for p in parts) else ""

