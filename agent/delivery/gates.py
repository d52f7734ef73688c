"""The gates a message passes once more right before it is handed over, inside the channel.

The DeliveryOrchestrator's gates ran when the batch started; a batch paced
over hours can outlive them.  So each channel asks again, per message, before
the bytes leave (the SMTP channel before it claims the key, the outbox channel
after its batch's claims):

1. **pauses**: the mailbox or the campaign paused (by hand, or by the
   bounce/complaint guard): ``deferred``;
2. **suppression**: the address (or its domain) suppressed since: ``skipped``;
3. **sequence**: the lead's sequence stopped (a reply, an unsubscribe) or
   held by an out-of-office: ``cancelled`` / ``deferred``;
4. **pacing**: the send window, the warm-up and daily caps, the per-domain
   rate: ``deferred`` with ``not_before``; jitter is waited out on the run's
   clock.

(Approval is the outbox claim itself: a ``drafted`` or ``cancelled`` row cannot
be claimed.)  A message stopped here gives its claim back, so a later attempt
sends it with the same Message-ID, or never.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.context import RunContext
from agent.delivery.message import sender_address
from agent.delivery.pacing import DEFAULT_GUARD, Pacer, Pacing
from agent.delivery.suppression import SuppressionList
from agent.sequences.store import EnrolmentStore
from agent.storage.db import Database

__all__ = ["SendGates"]


class SendGates:
    """One channel run's send-time gates (``request`` carries the campaign's ``pacing`` and zone)."""

    def __init__(self, db: Database, context: RunContext, request: Mapping[str, Any]) -> None:
        self.tenant = context.tenant
        self.suppression = SuppressionList(db, tenant=context.tenant)
        self.enrolments = EnrolmentStore(db, tenant=context.tenant, clock=context.clock)
        self.pacer = Pacer(db, tenant=context.tenant, clock=context.clock)
        self.clock = context.clock
        pacing = request.get("pacing")
        self.policy = Pacing.model_validate(pacing) if pacing else None
        self.zone = request.get("timezone") or "UTC"
        self.mailbox = sender_address(context.settings.sender).lower()
        self.waited = False  # the last ``pace`` waited out a jitter gap

    def screen(self, messages: Sequence[Mapping[str, Any]],
               suppressed: Mapping[str, str] | None = None) -> dict[int, dict[str, Any]]:
        """The outcome of each message (by position) that a pause, the suppression list or its
        sequence stops now; the others are absent.  One read per gate for the whole list
        (``suppressed``: the suppression list as the caller has just read it)."""
        out: dict[int, dict[str, Any]] = {}
        if not messages:
            return out
        pauses = {c: self.pacer.paused(f"mailbox:{self.mailbox}", f"campaign:{c}")
                  for c in {str(m["campaign_id"]) for m in messages}}
        for index, msg in enumerate(messages):
            pause = pauses[str(msg["campaign_id"])]
            if pause is not None:
                out[index] = {"status": "deferred", "reason": f"paused:{pause['reason']}", "not_before": None,
                              "message_id": None}
        if suppressed is None:
            suppressed = self.suppression.suppressed(m["to"] for m in messages)
        stopped = self.enrolments.blocked((m["campaign_id"], m["lead_id"]) for m in messages)
        for index, msg in enumerate(messages):
            if index in out:
                continue
            if msg["to"] in suppressed:
                out[index] = {"status": "skipped", "reason": "suppressed", "message_id": None}
                continue
            held = stopped.get((str(msg["campaign_id"]), str(msg["lead_id"])))
            if held is not None and held.startswith("stopped:"):
                out[index] = {"status": "cancelled", "reason": f"sequence_{held}", "message_id": None}
            elif held is not None:
                out[index] = {"status": "deferred", "reason": "out_of_office",
                              "not_before": held.split(":", 1)[1], "message_id": None}
        return out

    def pace(self, msg: Mapping[str, Any]) -> dict[str, Any] | None:
        """The last gate: pacing's verdict for one message (None: send it now, jitter waited out)."""
        self.waited = False
        if self.policy is None:
            return None
        decision = self.pacer.acquire(self.policy, mailbox=self.mailbox, to=msg["to"], zone=self.zone,
                                      campaign_id=str(msg["campaign_id"]))
        self.waited = decision.allowed and decision.wait > 0
        if decision.allowed:
            if decision.wait > 0:
                self.clock.sleep(decision.wait)
            return None
        return {"status": "deferred", "reason": decision.reason, "message_id": None,
                "not_before": decision.not_before.isoformat() if decision.not_before else None}

    def check(self, msg: Mapping[str, Any]) -> dict[str, Any] | None:
        """Every gate for one message, read afresh: its outcome if it must not go now, else None.  When
        pacing made it wait, the pauses, suppression and sequence are read once more after the wait."""
        stopped = self.screen([msg]).get(0) or self.pace(msg)
        if stopped is None and self.waited:
            stopped = self.screen([msg]).get(0)
        return stopped

    def sent(self, *msgs: Mapping[str, Any]) -> None:
        """Sends counted for the mailbox's bounce and complaint rates (with or without pacing: bounces
        are always counted, so sends must be too, or the rates would be skewed)."""
        self.pacer.record_sent(self.mailbox, [(m["to"], str(m["campaign_id"]), str(m["lead_id"])) for m in msgs])

    def bounced(self, msg: Mapping[str, Any]) -> None:
        """A bounce at RCPT/DATA: an attempt counted as a send and as a bounce (the rate is bounces per
        message handed over), and the bounce-rate guard may pause the mailbox."""
        self.sent(msg)
        self.pacer.record("bounce", mailbox=self.mailbox, to=msg["to"], campaign_id=str(msg["campaign_id"]),
                          lead_id=str(msg["lead_id"]),
                          guard=self.policy.auto_pause if self.policy is not None else DEFAULT_GUARD)

    @staticmethod
    def final(outcome: Mapping[str, Any]) -> bool:
        """Whether a gate's outcome means never (suppressed, the sequence stopped), not later."""
        return outcome.get("status") != "deferred"

    def refused_for_policy(self, detail: str) -> None:
        """A 5.7.x refusal: our sending is the problem, so the mailbox stops until someone looks."""
        self.pacer.pause(f"mailbox:{self.mailbox}", reason="policy_refused", evidence=detail[:200])
