"""Which of our messages an inbound one answers: by reply token, then headers, then a weak fallback.

1. **token**: the ``X-Send-Id`` we put on every message (the send's
   idempotency key) found in the inbound message or the original a bounce
   returns: certain.
2. **headers**: an ``In-Reply-To`` / ``References`` id (or a returned
   original's Message-ID) that is one of our stored Message-IDs: certain.
3. **fallback**: the newest message we sent to the sender's address whose
   subject matches once ``Re:``/``AW:``/``Fwd:`` are stripped: low confidence.

Only mail from the address we wrote to counts as the lead's reply; a match
found for another sender says so (``from_recipient`` false).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from sqlalchemy import select

from agent.storage.db import Database
from agent.storage.models import OutboxMessage

__all__ = ["ThreadMatch", "match_thread", "normal_subject"]

_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|fwd?|wg|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


@dataclass(frozen=True)
class ThreadMatch:
    confidence: str  # token | headers | fallback
    lead_id: str
    campaign_id: str
    step: int
    message_id: str
    to_address: str
    from_recipient: bool

    def to_dict(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "lead_id": self.lead_id, "campaign_id": self.campaign_id,
                "step": self.step, "message_id": self.message_id, "to_address": self.to_address,
                "from_recipient": self.from_recipient}


def normal_subject(subject: str) -> str:
    return " ".join(_PREFIX.sub("", subject or "").split()).casefold()


def match_thread(db: Database, tenant: str, *, sender: str | None, subject: str, send_id: str | None,
                 message_ids: tuple[str, ...]) -> ThreadMatch | None:
    columns = (OutboxMessage.lead_id, OutboxMessage.campaign_id, OutboxMessage.step, OutboxMessage.message_id,
               OutboxMessage.to_address, OutboxMessage.subject)
    base = select(*columns).where(OutboxMessage.tenant_id == tenant)
    with db.connect() as conn:
        if send_id:
            row = conn.execute(base.where(OutboxMessage.idempotency_key == send_id.strip())).first()
            if row is not None:
                return _match("token", row, sender)
        for message_id in message_ids:
            row = conn.execute(base.where(OutboxMessage.message_id == message_id)).first()
            if row is not None:
                return _match("headers", row, sender)
        if sender:
            wanted = normal_subject(subject)
            # Addresses are stored as sent: lower-cased (agent.delivery.message.wire_address).
            for row in conn.execute(base.where(OutboxMessage.to_address == sender.lower())
                                    .order_by(OutboxMessage.id.desc()).limit(20)):
                if wanted and normal_subject(row.subject) == wanted:
                    return _match("fallback", row, sender)
    return None


def _match(confidence: str, row: Any, sender: str | None) -> ThreadMatch:
    return ThreadMatch(confidence, row.lead_id, row.campaign_id, row.step, row.message_id, row.to_address,
                       sender is not None and sender.lower() == row.to_address.lower())


def sender_address(from_header: str | None) -> str | None:
    addresses = [a for _, a in getaddresses([from_header or ""]) if "@" in a]
    return addresses[0].strip().lower() if addresses else None
