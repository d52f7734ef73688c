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

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from agent.errors import StorageError
from agent.storage.db import Database, upsert_insert
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

    def claim_many(self, claims: list[dict[str, Any]]) -> dict[str, tuple[LedgerEntry, bool]]:
        """``claim`` for many keys in one transaction: ``{key: (entry, created)}``.

        Each claim is the row's fields with ``idempotency_key`` and a fresh
        ``message_id``; a row that already existed keeps its own, which is how
        "created" is told apart.
        """
        if not claims:
            return {}
        insert = upsert_insert(self.db.dialect)
        if insert is None:  # another database: one claim at a time
            return {c["idempotency_key"]: self.claim(c["idempotency_key"], **{k: v for k, v in c.items()
                                                                              if k != "idempotency_key"})
                    for c in claims}
        now = utcnow()
        rows = [{**c, "state": "sending", "created_at": now, "location": None, "sent_at": None} for c in claims]
        table = OutboxMessage.__table__
        keys = [c["idempotency_key"] for c in claims]
        with self.db.connect() as conn:
            conn.execute(insert(table).on_conflict_do_nothing(index_elements=["idempotency_key"]), rows)
            found = conn.execute(select(table).where(table.c.idempotency_key.in_(keys))).mappings().all()
        proposed: dict[str, str] = {}
        for c in claims:  # a key twice in one call: its first claim is the one inserted
            proposed.setdefault(c["idempotency_key"], c["message_id"])
        return {r["idempotency_key"]: (LedgerEntry(r["idempotency_key"], r["state"], r["message_id"], r["location"],
                                                   r["sent_at"], r["record_hash"], r["to_address"]),
                                       r["message_id"] == proposed[r["idempotency_key"]])
                for r in found}

    def take(self, key: str, message_id: str) -> bool:
        """Take a ``failed`` row back to ``sending`` for one more attempt; False if another attempt has it
        (or it is no longer ``failed``): only the taker may send."""
        table = OutboxMessage.__table__
        with self.db.connect() as conn:
            return conn.execute(update(table).where(
                table.c.idempotency_key == key, table.c.message_id == message_id, table.c.state == "failed",
            ).values(state="sending")).rowcount == 1

    def mark_many(self, marks: list[tuple[str, str, str | None]]) -> None:
        """``mark`` for many ``(key, state, location)`` in one transaction."""
        if not marks:
            return
        table = OutboxMessage.__table__
        now = utcnow()
        change = (update(table).where(table.c.idempotency_key == bindparam("k"))
                  .values(state=bindparam("s"), location=bindparam("loc"), sent_at=bindparam("at")))
        rows = [{"k": key, "s": state, "loc": location, "at": now if state == "sent" else None}
                for key, state, location in marks]
        with self.db.connect() as conn:
            conn.execute(change, rows)

    def release_many(self, entries: list[LedgerEntry]) -> None:
        """Forget claims made and never attempted (a batch stopped before them): a later run claims
        them afresh, for whatever content it then has."""
        if not entries:
            return
        table = OutboxMessage.__table__
        with self.db.connect() as conn:
            for entry in entries:
                conn.execute(table.delete().where(table.c.idempotency_key == entry.idempotency_key,
                                                  table.c.message_id == entry.message_id,
                                                  table.c.state == "sending"))

    def mark(self, key: str, state: str, *, location: str | None = None) -> None:
        values: dict[str, Any] = {"state": state}
        if location is not None:
            values["location"] = location
        if state == "sent":
            values["sent_at"] = utcnow()
        with self.db.session() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key == key).values(**values))
