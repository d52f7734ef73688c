"""What every delivery channel does the same way around its own hand-over.

- ``result_records``: one result per message, keyed by its idempotency key;
- ``claim_fields``: the ledger claim of a message, its Message-ID fixed before sending;
- ``finish_records``: suppressed messages reported ``skipped``, every result given
  provenance whose parent is the draft it delivers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.context import RunContext
from agent.delivery.keys import idempotency_key
from agent.delivery.message import new_message_id
from agent.envelope import make_provenance

__all__ = ["result_records", "claim_fields", "finish_records", "unclaimable"]

# A row in these states is not this attempt's to send (see agent.delivery.ledger).
_NOT_SENDABLE = {"drafted": "awaiting_approval", "cancelled": "cancelled", "approved": "approved_not_taken"}


def unclaimable(entry: Any, created: bool) -> dict[str, Any] | None:
    """The outcome of a message whose outbox row waits for an operator or was cancelled: the approval
    gate, checked again at the moment of sending.  None when the row may go on."""
    if created or entry.state not in _NOT_SENDABLE:
        return None
    status = "cancelled" if entry.state == "cancelled" else "skipped"
    return {"status": status, "reason": _NOT_SENDABLE[entry.state], "message_id": None}


def result_records(messages: list[Mapping[str, Any]], context: RunContext, channel: str) -> list[dict[str, Any]]:
    results = []
    for msg in messages:
        key = idempotency_key(context.tenant, msg["campaign_id"], msg["lead_id"], msg["step"])
        results.append({"to": msg["to"], "lead_id": msg["lead_id"], "campaign_id": msg["campaign_id"],
                        "step": msg["step"], "subject": msg["subject"], "channel": channel,
                        "idempotency_key": key, "message_id": None, "location": None})
    return results


def claim_fields(key: str, msg: Mapping[str, Any], context: RunContext, channel: str) -> dict[str, Any]:
    return {"idempotency_key": key, "tenant_id": context.tenant, "campaign_id": msg["campaign_id"],
            "lead_id": msg["lead_id"], "step": msg["step"], "channel": channel,
            "message_id": new_message_id(context.settings.sender), "to_address": msg["to"],
            "subject": msg["subject"], "record_hash": msg["parent_hash"], "run_id": context.run_id,
            "provenance": msg.get("provenance")}


def finish_records(results: list[dict[str, Any]], messages: list[Mapping[str, Any]], suppressed: Mapping[str, str],
                   context: RunContext, channel: str) -> list[dict[str, Any]]:
    for result, msg in zip(results, messages):
        if msg["to"] in suppressed:
            result.update(status="skipped", reason="suppressed")
        result["provenance"] = make_provenance(
            result, source=f"channel:{channel}", source_id=result["idempotency_key"], agent=channel,
            run_id=context.run_id, node=context.node, parents=[msg["parent_hash"]], hash_now=False)
    return results  # the caller's make_envelope hashes each
