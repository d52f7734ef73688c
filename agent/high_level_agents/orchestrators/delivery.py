"""DeliveryOrchestrator: gates, then a channel; delivery is off unless asked for.

Input is an envelope (or a bare list under ``records``) of messages: ``to``,
``subject``, ``body``, ``lead_id``, ``campaign_id`` (per message, or once for
the payload) and optionally ``step``.  Every message is validated before
anything is written: a recipient must be deliverable as ASCII (an IDN domain
becomes punycode, a non-ASCII local part is refused), and a ``provenance`` on
a bare record must carry well-formed hashes.

Gates, in order: ``allow_delivery`` (off by default: every record comes back
``skipped``/``delivery_disabled`` and nothing is written), the suppression
list, then the channel, which checks suppression again and writes each
(campaign, lead, step) at most once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from agent.delivery.message import is_one_line, wire_address
from agent.delivery.pacing import Pacing
from agent.engine.flow import Flow, FlowGraph
from agent.engine.outputs import Output
from agent.engine.state import FlowState
from agent.envelope import record_hash, validate_envelope
from agent.errors import PayloadError
from agent.high_level_agents.orchestrators.base import BaseOrchestrator
from agent.validation import ZoneName, first_error

__all__ = ["DeliveryOrchestrator", "DeliveryPayload", "OutgoingMessage"]

_KEY = r"^[\w.:@/-]{1,128}$"
_HASH = r"^[0-9a-f]{64}$"
_MSGID = r"^<[!-;=?-~]{3,250}>$"  # one bracketed id, printable ASCII: no space, no line break


class _ProvenanceRefs(BaseModel):
    """The parts of a bare record's provenance that delivery trusts as lineage."""

    model_config = ConfigDict(extra="allow")
    hash: str | None = Field(default=None, pattern=_HASH)
    parents: list[str] | None = None

    @field_validator("parents")
    @classmethod
    def _hashes(cls, value: list[str] | None) -> list[str] | None:
        for parent in value or ():
            if not re.fullmatch(_HASH, parent):
                raise ValueError(f"must be a list of sha256 hex hashes, not {parent[:16]!r}")
        return value


class OutgoingMessage(BaseModel):
    """One message to deliver; other fields (and provenance) ride along."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)
    to: str
    subject: str = Field(min_length=1, max_length=900)
    body: str = Field(min_length=1, max_length=200_000)
    lead_id: str = Field(min_length=1, max_length=128)
    campaign_id: str | None = Field(default=None, pattern=_KEY)
    step: int = Field(default=1, ge=1, le=100)
    provenance: dict[str, Any] | None = None
    # A follow-up's thread: the Message-ID it answers, and every Message-ID of the thread, oldest first.
    in_reply_to: str | None = Field(default=None, pattern=_MSGID)
    references: list[Annotated[str, Field(pattern=_MSGID)]] | None = Field(default=None, max_length=100)
    # Hash of the record as received, before normalisation and defaults: the provenance parent.
    _input_hash: str | None = PrivateAttr(default=None)

    @field_validator("lead_id", mode="before")
    @classmethod
    def _lead_id_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("to")
    @classmethod
    def _address(cls, value: str) -> str:
        # Refused here, before a ledger row is claimed for it.
        return wire_address(value)

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if not is_one_line(value):
            raise ValueError("must be a single line (no line break or control character)")
        return value


class DeliveryPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[OutgoingMessage]
    metadata: dict[str, Any] | None = None
    # No default: a shared fallback would make unrelated ad-hoc messages to one lead collide.
    campaign_id: str | None = Field(default=None, pattern=_KEY, validate_default=True)
    allow_delivery: bool = False
    channel: Literal["outbox", "smtp"] = "outbox"
    # The campaign's pacing (caps, windows, jitter, warm-up, auto-pause), applied right before each send.
    pacing: Pacing | None = None
    timezone: ZoneName = Field(default="UTC", max_length=64)

    @field_validator("campaign_id")
    @classmethod
    def _campaign_known(cls, value: str | None, info: ValidationInfo) -> str | None:
        records = info.data.get("records")  # absent when the records failed: that error comes first
        if value is None and records is not None and any(r.campaign_id is None for r in records):
            raise ValueError("is required unless every record carries its own campaign_id")
        return value


class DeliveryOrchestrator(BaseOrchestrator):
    """Delivers drafted messages through a channel, behind every gate."""

    name: ClassVar[str] = "delivery_orchestrator"
    capabilities: ClassVar[frozenset[str]] = frozenset({"write", "send"})
    payload_model: ClassVar[type[BaseModel]] = DeliveryPayload
    passthrough_envelopes: ClassVar[bool] = False

    def validate_payload(self, payload: Any) -> DeliveryPayload:
        model: DeliveryPayload = super().validate_payload(payload)
        if model.metadata is not None:
            # An envelope from upstream: its records and hashes must be intact.
            validate_envelope({"metadata": payload["metadata"], "records": payload["records"]})
        for i, (msg, raw) in enumerate(zip(model.records, payload["records"], strict=True)):
            if msg.provenance is not None:
                # A bare record's provenance hash becomes the parent of what is sent: it must
                # at least be a hash.  (An envelope's hashes were checked in full above.)
                try:
                    _ProvenanceRefs.model_validate(msg.provenance)
                except ValidationError as exc:
                    raise PayloadError(*first_error(exc, f"records[{i}].provenance")) from None
            msg._input_hash = record_hash(raw)
        return model

    def flow_variant(self, payload: DeliveryPayload) -> str:
        return payload.channel

    def build_flow(self, variant: Any = None) -> FlowGraph:
        """prepare -> (delivery off: disabled) | suppression -> [channel] -> deliver."""
        return (Flow(self.name, input_model=DeliveryPayload)
                .node("prepare", _prepare, description="the messages as sent, each tied to its input record")
                .node("disabled", _disabled, description="delivery is off: every message is skipped")
                # Each address's verdict derives from the messages to it, not from the whole batch.
                .node("suppression", agent="suppression_gate", request=_suppression_request,
                      lineage=("address", "to"))
                .node("channel", agent=variant or "outbox", request=_channel_request)
                .node("deliver", _deliver, description="every message's outcome, in input order")
                .route("prepare", _delivery_switch, {"on": "suppression", "off": "disabled"})
                .route("suppression", _anything_allowed, {"yes": "channel", "no": "deliver"})
                .then("channel", "deliver")
                .build())


def _prepare(state: FlowState) -> list[dict[str, Any]]:
    payload: DeliveryPayload = state.input
    messages = []
    for msg in payload.records:
        data = msg.model_dump()
        prov = data.get("provenance") or {}
        parent = prov.get("hash") or msg._input_hash or record_hash(data)
        messages.append({
            **{k: data[k] for k in ("to", "subject", "body", "lead_id", "step")},
            **({"in_reply_to": msg.in_reply_to, "references": msg.references} if msg.in_reply_to else {}),
            "campaign_id": msg.campaign_id or payload.campaign_id,
            "parent_hash": parent,
            # The caller's own provenance, kept for the ledger (``provenance`` is this record's).
            "origin": prov or None,
            "provenance": {"source": "delivery", "parents": [parent]},
        })
    return messages


def _delivery_switch(state: FlowState) -> str:
    return "on" if state.input.allow_delivery else "off"


def _suppression_request(state: FlowState) -> dict[str, Any]:
    return {"addresses": [m["to"] for m in state.records("prepare")]}


def _blocked(state: FlowState) -> set[str]:
    return {r["address"] for r in state.records("suppression") if r["suppressed"]}


def _anything_allowed(state: FlowState) -> str:
    blocked = _blocked(state)
    return "yes" if any(m["to"] not in blocked for m in state.records("prepare")) else "no"


def _channel_request(state: FlowState) -> dict[str, Any]:
    blocked = _blocked(state)
    messages = []
    for m in state.records("prepare"):
        if m["to"] not in blocked:
            message = {k: v for k, v in m.items() if k not in ("origin", "provenance")}
            message["provenance"] = m["origin"]
            messages.append(message)
    payload: DeliveryPayload = state.input
    pacing = payload.pacing.model_dump(mode="json") if payload.pacing is not None else None
    return {"messages": messages, "pacing": pacing, "timezone": payload.timezone}


def _disabled(state: FlowState) -> Output:
    records = _skipped(state.records("prepare"), "delivery_disabled")
    return Output(records, source="delivery", counts={"skipped": len(records)} if records else {},
                  allow_delivery=False)


def _deliver(state: FlowState) -> Output:
    messages = state.records("prepare")
    blocked = _blocked(state)
    sent = iter(state.records("channel") if "channel" in state else [])
    skipped = iter(_skipped([m for m in messages if m["to"] in blocked], "suppressed"))
    # Both lists keep the input order; matching by position (not by key) keeps a key
    # repeated in one payload from reporting its first, real send as a duplicate.
    records = [next(skipped) if m["to"] in blocked else next(sent) for m in messages]
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return Output(records, source="delivery", counts=counts, channel=state.input.channel, allow_delivery=True)


def _skipped(messages: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [{"to": m["to"], "lead_id": m["lead_id"], "campaign_id": m["campaign_id"], "step": m["step"],
             "subject": m["subject"], "status": "skipped", "reason": reason, "channel": None,
             "message_id": None, "location": None,
             "provenance": {"source": "delivery", "parents": [m["parent_hash"]]}}
            for m in messages]
