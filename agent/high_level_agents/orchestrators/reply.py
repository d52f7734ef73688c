"""ReplyOrchestrator: one stored inbound message in; classified, matched to its thread, acted on, audited.

The flow::

    read ── classify ── match ── act

``read`` takes the raw bytes the inbound store kept (so the whole flow can run
again on any message); ``classify`` applies the rules (bounce, complaint,
auto-reply, out-of-office, unsubscribe request) and, for a human reply only,
the sentiment (``unknown`` when it fails); ``match`` finds the message of ours
it answers; ``act`` does what the kind asks:

- hard bounce, complaint, unsubscribe request: the address is suppressed,
  its waiting drafts and outbox rows cancelled and its sequences stopped; a
  hard bounce or complaint counts towards the mailbox's rates (which may
  pause it); a 5.7.x policy bounce suppresses nobody but pauses the mailbox
  (our sending is the problem); a soft bounce is suppressed after three;
- reply: the lead is ``replied``, its drafts awaiting approval are
  withdrawn and its sequences stopped;
- out-of-office: the lead is ``out_of_office`` and its sequences wait until
  the return date (a week when the message gives none): held, not stopped;
- other machine mail: recorded, nothing else.

Every step's envelope is audited like any run's; the inbound row records the
outcome.  Malformed mail never stops the flow: the rules classify what they
can, and an unparsable message is a ``reply`` with reason ``unparsed``.
"""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import asdict
from datetime import date, datetime, timedelta, timezone
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update

from agent.delivery.message import sender_address
from agent.delivery.pacing import Pacer
from agent.delivery.suppression import SuppressionList
from agent.drafts import DraftStore
from agent.embeddings import embedder_for
from agent.engine.flow import Flow, FlowGraph
from agent.engine.outputs import Output
from agent.engine.state import FlowState
from agent.high_level_agents.orchestrators.base import BaseOrchestrator
from agent.inbound.classify import Classification, classify
from agent.inbound.sentiment import SentimentClassifier
from agent.inbound.store import InboundStore
from agent.inbound.threads import match_thread, sender_address
from agent.sequences import EnrolmentStore
from agent.storage.db import Database
from agent.storage.models import Contact, InboundMessageRow

__all__ = ["ReplyOrchestrator", "ReplyPayload"]

SOFT_BOUNCE_LIMIT = 3
OOO_DEFAULT_DAYS = 7
# Why a sequence stopped (its code) as an operator reads it on a withdrawn draft.
_WHY = {"replied": "the lead replied", "unsubscribed": "the recipient unsubscribed",
        "complaint": "the recipient complained", "hard_bounce": "the address bounced"}
_SOURCE = "inbound"


class ReplyPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inbound_id: int = Field(ge=1, strict=True)


class ReplyOrchestrator(BaseOrchestrator):
    name: ClassVar[str] = "reply_orchestrator"
    capabilities: ClassVar[frozenset[str]] = frozenset({"read", "write"})
    payload_model: ClassVar[type[BaseModel]] = ReplyPayload
    passthrough_envelopes: ClassVar[bool] = False

    def build_flow(self, variant: Any = None) -> FlowGraph:
        return (Flow(self.name, input_model=ReplyPayload)
                .node("read", self._read, lineage=None, description="the stored raw message, parsed")
                .node("classify", self._classify, description="rules, then sentiment for a human reply")
                .node("match", self._match, description="the message of ours it answers")
                .node("act", self._act, description="suppress, update the lead, withdraw drafts; record")
                .then("read", "classify", "match", "act")
                .build())

    # -- nodes ------------------------------------------------------------------------------------
    def _db(self) -> Database:
        return Database.for_settings(self.settings)

    def _read(self, state: FlowState) -> Output:
        stored = InboundStore(self._db(), tenant=state.tenant).get(state.input.inbound_id)
        message = email.message_from_bytes(stored.raw, policy=email.policy.default)
        record = {"inbound_id": stored.id, "identity": stored.identity, "source": stored.source,
                  "size": len(stored.raw), "from": _header(message, "From"), "subject": _header(message, "Subject"),
                  "sender": sender_address(_header(message, "From"))}
        return Output([record], source=_SOURCE, source_id=f"inbound_messages/{stored.id}")

    def _classify(self, state: FlowState) -> list[dict[str, Any]]:
        stored = InboundStore(self._db(), tenant=state.tenant).get(state.input.inbound_id)
        message = email.message_from_bytes(stored.raw, policy=email.policy.default)
        try:
            found = classify(message)
        except Exception as exc:  # noqa: BLE001 - the rules promise not to raise; if they do, the mail is kept
            found = Classification(kind="reply", reason=f"unparsed:{type(exc).__name__}")
        record: dict[str, Any] = {"kind": found.kind, "reason": found.reason, "machine": found.machine,
                                  "bounces": [asdict(b) for b in found.bounces],
                                  "return_date": found.return_date.isoformat() if found.return_date else None,
                                  "original_message_ids": list(found.original_message_ids), "send_id": found.send_id,
                                  "recipient": getattr(found, "recipient", None), "sentiment": None}
        if found.kind == "reply":
            from agent.llm import LLMClient

            try:
                classifier = SentimentClassifier(embedder_for(self.settings), LLMClient(self.settings))
                sentiment = classifier.classify(_body(message))
                record["sentiment"] = {"label": sentiment.label, "method": sentiment.method, **sentiment.detail}
            except Exception as exc:  # noqa: BLE001 - no embedder or model: the label is unknown, the reply kept
                record["sentiment"] = {"label": "unknown", "method": "none", "error": type(exc).__name__}
        return [record]

    def _match(self, state: FlowState) -> list[dict[str, Any]]:
        read = state.records("read")[0]
        found = state.records("classify")[0]
        match = match_thread(self._db(), state.tenant, sender=read["sender"], subject=read["subject"] or "",
                             send_id=found["send_id"], message_ids=tuple(found["original_message_ids"]))
        return [{"matched": match is not None, **(match.to_dict() if match else {})}]

    def _act(self, state: FlowState) -> Output:
        db = self._db()
        read, found, match = state.records("read")[0], state.records("classify")[0], state.records("match")[0]
        kind = found["kind"]
        actions: list[dict[str, Any]] = []
        suppression = SuppressionList(db, tenant=state.tenant)
        lead_id = match.get("lead_id") if match["matched"] else None
        if kind == "bounce":
            for bounce in found["bounces"]:
                # The address the report names, else the one we sent to: never the report's own sender.
                address = bounce["recipient"] or (match.get("to_address") if match["matched"] else None)
                if not address:
                    actions.append({"action": "bounce_unattributed", "status": bounce["status"]})
                    continue
                if bounce["severity"] == "hard":
                    suppression.add(address, reason="hard_bounce", source="dsn", evidence=bounce["status"])
                    actions.append({"action": "suppressed", "address": address, "reason": "hard_bounce"})
                    actions.extend(self._withdraw(db, state.tenant, address, None, "hard_bounce", match))
                    self._status(db, state.tenant, lead_id, "bounced", actions)
                    actions.extend(self._count(db, state.tenant, "bounce", address, match))
                elif bounce["severity"] == "policy":
                    # Our sending is refused: the mailbox stops until someone looks; the recipient is not suppressed.
                    paused = Pacer(db, tenant=state.tenant, clock=self.clock).pause(
                        f"mailbox:{self._mailbox()}", reason="policy_refused", evidence=bounce["status"])
                    actions.append({"action": "mailbox_paused", "status": bounce["status"], "newly": paused,
                                    "reason": "our sending was refused (5.7.x): the recipient is not suppressed"})
                elif self._soft_bounces(db, state.tenant, address, state.input.inbound_id) >= SOFT_BOUNCE_LIMIT:
                    suppression.add(address, reason="soft_bounces", source="dsn", evidence=bounce["status"])
                    actions.append({"action": "suppressed", "address": address, "reason": "soft_bounces"})
                else:
                    actions.append({"action": "soft_bounce_counted", "address": address})
        elif kind == "complaint":
            # The person who complained: the address we sent to, else the one the report names; never the
            # feedback loop's own sender.
            address = match.get("to_address") if match["matched"] else found.get("recipient")
            if address:
                suppression.add(address, reason="complaint", source="arf", evidence=read["identity"][:200])
                actions.append({"action": "suppressed", "address": address, "reason": "complaint"})
                actions.extend(self._withdraw(db, state.tenant, address, lead_id, "complaint", match))
                self._status(db, state.tenant, lead_id, "complained", actions)
                actions.extend(self._count(db, state.tenant, "complaint", address, match))
        elif kind == "unsubscribe" and read["sender"]:
            # Whoever asks is suppressed; the lead's own status and drafts change only if it was the lead.
            suppression.add(read["sender"], reason="unsubscribe_reply", source="inbound",
                            evidence=read["identity"][:200])
            actions.append({"action": "suppressed", "address": read["sender"], "reason": "unsubscribe_reply"})
            if match["matched"] and match["from_recipient"]:
                actions.extend(self._withdraw(db, state.tenant, read["sender"], lead_id, "unsubscribed", match))
                self._status(db, state.tenant, lead_id, "unsubscribed", actions)
        elif kind == "reply" and match["matched"] and match["from_recipient"]:
            self._status(db, state.tenant, lead_id, "replied", actions)
            actions.extend(self._withdraw(db, state.tenant, match["to_address"], lead_id, "replied", match))
        elif kind == "reply" and not match["matched"] and read["sender"]:
            # A person writing back on a new thread (no header or subject ties it to ours) has still
            # answered: whatever sequence writes to that address stops.
            stopped = EnrolmentStore(db, tenant=state.tenant, clock=self.clock).stop(
                reason="replied", address=read["sender"])
            if stopped:
                actions.append({"action": "sequence_stopped", "count": stopped, "reason": "replied",
                                "confidence": "sender"})
        elif kind == "out_of_office" and match["matched"]:
            self._status(db, state.tenant, lead_id, "out_of_office", actions)
            # The sequence waits until they are back (a week when the message gives no date); it goes on then.
            until = _return_instant(found["return_date"]) or self.clock.now() + timedelta(days=OOO_DEFAULT_DAYS)
            held = EnrolmentStore(db, tenant=state.tenant, clock=self.clock).pause_until(
                max(until, self.clock.now()), address=match["to_address"], lead_id=lead_id, ensure=_enrolled(match))
            actions.append({"action": "sequence_waits", "until": until.isoformat(), "enrolments": held})
        outcome = {"kind": kind, "reason": found["reason"], "sentiment": found["sentiment"], "match": match,
                   "actions": actions, "return_date": found["return_date"]}
        InboundStore(db, tenant=state.tenant).done(state.input.inbound_id, kind=kind, result=outcome,
                                                   lead_id=lead_id, campaign_id=match.get("campaign_id"))
        return Output([{"inbound_id": read["inbound_id"], **outcome}], source=_SOURCE)

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _status(db: Database, tenant: str, lead_id: str | None, status: str, actions: list[dict[str, Any]]) -> None:
        if not lead_id or not str(lead_id).isdigit():
            return
        with db.connect(write=True) as conn:
            changed = conn.execute(update(Contact).where(Contact.tenant_id == tenant, Contact.id == int(lead_id))
                                   .values(status=status)).rowcount
        if changed:
            actions.append({"action": "lead_status", "lead_id": str(lead_id), "status": status})

    def _withdraw(self, db: Database, tenant: str, address: str | None, lead_id: str | None,
                  why: str, match: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The recipient's waiting drafts withdrawn (their outbox rows cancelled) and every sequence of
        theirs stopped: a reply, an unsubscribe, a complaint or a hard bounce ends it.  The matched
        message's own sequence is stopped even before its batch has enrolled the lead."""
        count = DraftStore(db, tenant=tenant).withdraw(address=address, lead_id=lead_id, by="inbound",
                                                       reason=_WHY.get(why, why))
        stopped = EnrolmentStore(db, tenant=tenant, clock=self.clock).stop(
            reason=why, address=address, lead_id=lead_id, ensure=_enrolled(match))
        return ([{"action": "drafts_withdrawn", "count": count}] if count else []) + \
            ([{"action": "sequence_stopped", "count": stopped, "reason": why}] if stopped else [])

    def _mailbox(self) -> str:
        return (sender_address(self.settings.sender) or self.settings.sender).lower()

    def _count(self, db: Database, tenant: str, kind: str, address: str, match: dict[str, Any]) -> list[dict[str, Any]]:
        """A bounce or complaint counted against our mailbox; past the guard's rate it pauses it."""
        pacer = Pacer(db, tenant=tenant, clock=self.clock)
        pacer.record(kind, mailbox=self._mailbox(), to=address, campaign_id=match.get("campaign_id"),
                     lead_id=match.get("lead_id"))
        pause = pacer.paused(f"mailbox:{self._mailbox()}")
        return [{"action": "mailbox_paused", "reason": pause["reason"]}] if pause else []

    @staticmethod
    def _soft_bounces(db: Database, tenant: str, address: str, this: int) -> int:
        """Soft bounces for ``address``: the other messages that counted one, and this one."""
        fragment = json.dumps({"action": "soft_bounce_counted", "address": address}, sort_keys=True)[1:-1]
        with db.connect() as conn:
            seen = conn.execute(select(func.count()).select_from(InboundMessageRow).where(
                InboundMessageRow.tenant_id == tenant, InboundMessageRow.kind == "bounce",
                InboundMessageRow.id != this,
                InboundMessageRow.result_json.contains(fragment, autoescape=True))).scalar_one()
        return int(seen) + 1


def _enrolled(match: dict[str, Any] | None) -> tuple[str, str, str, int] | None:
    """The (campaign, lead, address, step) of the message an inbound one answers, when it is ours."""
    if not match or not match.get("matched") or not match.get("campaign_id"):
        return None
    return (match["campaign_id"], match["lead_id"], match["to_address"], int(match["step"]))


def _return_instant(value: str | None) -> datetime | None:
    """An out-of-office's return date as the start of that day, UTC."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        return None
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _header(message: Any, name: str) -> str | None:
    try:
        value = message.get(name)
        return None if value is None else " ".join(str(value).split())[:500]
    except Exception:  # noqa: BLE001 - a header the library cannot parse is absent for us
        return None


def _body(message: Any) -> str:
    try:
        part = message.get_body(preferencelist=("plain",)) if message.is_multipart() else message
        return part.get_content() if part is not None else ""
    except Exception:  # noqa: BLE001 - undecodable content: no words of its own
        return ""
