"""``InboundStore``: every inbound message kept raw before anything reads it.

Identity is the Message-ID (``mid:<...>``) when the message has one, else the
sha256 of its bytes: the same message fetched twice (an IMAP poll after a
crash, a file imported again, a webhook retried) is stored once.  A message
over ``MAX_BYTES`` is refused with the size named, and nothing is written:
the source keeps it.  Processing (classify, match, act) reads the stored
bytes, so it can run again on any message; ``pending()`` is what has not
been processed, oldest first, and ``done()`` records the outcome or the error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from agent.errors import InvalidInput
from agent.storage.db import Database, upsert_insert
from agent.storage.models import InboundMessageRow, utcnow

__all__ = ["InboundStore", "StoredMessage", "MAX_BYTES", "message_identity"]

MAX_BYTES = 25 * 1024 * 1024
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^<>\r\n]{1,250}>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class StoredMessage:
    id: int
    identity: str
    source: str
    raw: bytes
    received_at: datetime
    kind: str | None
    processed: bool


def message_identity(raw: bytes) -> str:
    """``mid:<id>`` from the header block's Message-ID, else ``sha256:<hex>`` of the bytes."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = _MESSAGE_ID.search(head)
    if found:
        return "mid:" + found.group(1).decode("ascii", "replace").strip()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class InboundStore:
    def __init__(self, db: Database, *, tenant: str = "default") -> None:
        self.db = db
        self.tenant = tenant

    def store(self, raw: bytes, *, source: str) -> tuple[StoredMessage, bool]:
        """Keep ``raw``; ``(message, newly stored)``.  The same message again is the stored one."""
        if not isinstance(raw, (bytes, bytearray)) or not raw:
            raise InvalidInput("message", "is empty")
        if len(raw) > MAX_BYTES:
            raise InvalidInput("message", f"is {len(raw):,} bytes, over the {MAX_BYTES:,} kept; not stored")
        raw = bytes(raw)
        identity = message_identity(raw)
        row = {"tenant_id": self.tenant, "identity": identity, "source": source[:32], "raw": raw, "size": len(raw),
               "sha256": hashlib.sha256(raw).hexdigest(), "received_at": utcnow()}
        with self.db.connect(write=True) as conn:
            inserted = conn.execute(upsert_insert(self.db.dialect)(InboundMessageRow).values(**row)
                                    .on_conflict_do_nothing(index_elements=["tenant_id", "identity"])
                                    .returning(InboundMessageRow.id)).scalar()
        return self._one(InboundMessageRow.identity == identity), inserted is not None

    def get(self, message_id: int) -> StoredMessage:
        found = self._select(InboundMessageRow.id == message_id)
        if not found:
            raise InvalidInput("inbound_id", f"no inbound message {message_id} for tenant {self.tenant!r}")
        return found[0]

    def pending(self, limit: int = 100) -> list[StoredMessage]:
        return self._select(InboundMessageRow.processed_at.is_(None), limit=limit)

    def done(self, message_id: int, *, kind: str | None, result: Mapping[str, Any], lead_id: str | None = None,
             campaign_id: str | None = None, error: str | None = None) -> None:
        with self.db.connect(write=True) as conn:
            conn.execute(update(InboundMessageRow).where(
                InboundMessageRow.id == message_id, InboundMessageRow.tenant_id == self.tenant,
            ).values(kind=kind, result_json=json.dumps(result, default=str, sort_keys=True), lead_id=lead_id,
                     campaign_id=campaign_id, processed_at=utcnow(), error=error))

    def failed(self, message_id: int, error: str) -> None:
        """Record why processing failed; the message stays pending for the next run."""
        with self.db.connect(write=True) as conn:
            conn.execute(update(InboundMessageRow).where(
                InboundMessageRow.id == message_id, InboundMessageRow.tenant_id == self.tenant,
            ).values(error=error))

    def result(self, message_id: int) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            text = conn.execute(select(InboundMessageRow.result_json).where(
                InboundMessageRow.id == message_id, InboundMessageRow.tenant_id == self.tenant)).scalar()
        return None if text is None else json.loads(text)

    def _one(self, condition: Any) -> StoredMessage:
        return self._select(condition)[0]

    def _select(self, *conditions: Any, limit: int | None = None) -> list[StoredMessage]:
        stmt = (select(InboundMessageRow.id, InboundMessageRow.identity, InboundMessageRow.source, InboundMessageRow.raw,
                       InboundMessageRow.received_at, InboundMessageRow.kind, InboundMessageRow.processed_at)
                .where(InboundMessageRow.tenant_id == self.tenant, *conditions).order_by(InboundMessageRow.id))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.db.connect() as conn:
            return [StoredMessage(r.id, r.identity, r.source, bytes(r.raw), r.received_at, r.kind,
                                  r.processed_at is not None) for r in conn.execute(stmt)]
