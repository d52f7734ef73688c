"""Outbox ledger: the unique row per idempotency key that makes delivery exactly-once.

A send first *claims* its key (state ``sending``, Message-ID fixed), then the
channel hands the message over, then the row becomes ``sent``.  A retry after
a crash finds the claimed row and reuses its Message-ID, but only for the same
content (``record_hash`` and ``to_address`` are kept for that check); a row
already ``sent`` is never sent again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from agent.errors import StorageError
from agent.storage.db import Database
from agent.storage.models import OutboxMessage, utcnow

__all__ = ["LedgerEntry", "OutboxLedger"]


@dataclass(frozen=True)
class LedgerEntry:
    idempotency_key: str
    state: str
    message_id: str
    location: str | None
    sent_at: datetime | None
    # What was claimed: a resume must be for this record to this address.
    record_hash: str
    to_address: str


def _entry(row: OutboxMessage) -> LedgerEntry:
    return LedgerEntry(row.idempotency_key, row.state, row.message_id, row.location, row.sent_at,
                       row.record_hash, row.to_address)


class OutboxLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, key: str) -> LedgerEntry | None:
        with self.db.session() as session:
            row = session.execute(select(OutboxMessage).where(OutboxMessage.idempotency_key == key)).scalar_one_or_none()
            return _entry(row) if row else None

    def claim(self, key: str, **fields: Any) -> tuple[LedgerEntry, bool]:
        """The entry for ``key`` and whether this call created it."""
        try:
            with self.db.session() as session:
                row = OutboxMessage(idempotency_key=key, state="sending", **fields)
                session.add(row)
                session.flush()
                entry = _entry(row)
            return entry, True
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
        existing = self.get(key)
        if existing is None:  # pragma: no cover - the conflicting row vanished
            raise StorageError(f"outbox key {key[:12]}… conflicted but cannot be read")
        return existing, False

    def mark(self, key: str, state: str, *, location: str | None = None) -> None:
        values: dict[str, Any] = {"state": state}
        if location is not None:
            values["location"] = location
        if state == "sent":
            values["sent_at"] = utcnow()
        with self.db.session() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key == key).values(**values))
