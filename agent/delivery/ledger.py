"""Outbox ledger: the unique row per idempotency key that makes delivery exactly-once.

One row per (tenant, campaign, lead, step), through one state machine::

    drafted ──approve──> approved ──claim──> sending ──> sent | failed | unknown
       └────reject / suppress / reply──> cancelled <──────┘ (from approved)

A draft that waits for an operator is staged ``drafted`` (its Message-ID
already fixed); an operator's approval makes it ``approved``; a rejection, a
suppression or a reply makes it ``cancelled``.  A send *claims* its key:
a new row is inserted as ``sending``, an ``approved`` one is taken to
``sending`` by a conditional UPDATE, and a ``drafted`` or ``cancelled`` one
cannot be claimed at all, which is the approval gate checked again at the
moment of sending.  Then the channel hands the message over and the row
becomes ``sent``.  A retry after
a crash finds the claimed row and reuses its Message-ID, but only for the same
content (``record_hash`` and ``to_address`` are kept for that check); a row
already ``sent`` is never sent again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from agent.errors import StorageError
from agent.storage.db import Database, upsert_insert
from agent.storage.models import OutboxMessage, utcnow
from agent.storage.times import aware

__all__ = ["LedgerEntry", "OutboxLedger", "STAGED"]


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
    # How this attempt came to own the row: "new" (inserted), "approved" (taken from an approved
    # draft), or None (it existed already: a retry, a duplicate, a draft not approved).
    claimed_from: str | None = None
    claimed_at: datetime | None = None  # when the attempt in "sending" took it


STAGED = ("drafted", "approved")  # waiting to be sent: what cancelling stops


def _entry(row: OutboxMessage, claimed_from: str | None = None) -> LedgerEntry:
    return LedgerEntry(row.idempotency_key, row.state, row.message_id, row.location, row.sent_at,
                       row.record_hash, row.to_address, claimed_from, aware(row.claimed_at))


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
                row = OutboxMessage(idempotency_key=key, state="sending", claimed_at=utcnow(), **fields)
                session.add(row)
                session.flush()
                entry = _entry(row, "new")
            return entry, True
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
        existing = self.get(key)
        if existing is None:  # pragma: no cover - the conflicting row vanished
            raise StorageError(f"outbox key {key[:12]}… conflicted but cannot be read")
        if existing.state == "approved" and self._take_approved(key, fields):
            return replace(existing, state="sending", claimed_from="approved",
                           record_hash=fields["record_hash"], to_address=fields["to_address"]), True
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
        rows = [{**c, "state": "sending", "created_at": now, "claimed_at": now, "location": None, "sent_at": None}
                for c in claims]
        table = OutboxMessage.__table__
        keys = [c["idempotency_key"] for c in claims]
        with self.db.connect() as conn:
            conn.execute(insert(table).on_conflict_do_nothing(index_elements=["idempotency_key"]), rows)
            found = conn.execute(select(table).where(table.c.idempotency_key.in_(keys))).mappings().all()
        proposed: dict[str, dict[str, Any]] = {}
        for c in claims:  # a key twice in one call: its first claim is the one inserted
            proposed.setdefault(c["idempotency_key"], c)
        out: dict[str, tuple[LedgerEntry, bool]] = {}
        for r in found:
            key = r["idempotency_key"]
            entry = LedgerEntry(key, r["state"], r["message_id"], r["location"], r["sent_at"], r["record_hash"],
                                r["to_address"], None, aware(r["claimed_at"]))
            if r["message_id"] == proposed[key]["message_id"]:
                out[key] = (replace(entry, claimed_from="new"), True)
            elif r["state"] == "approved" and self._take_approved(key, proposed[key]):
                # An operator's approved draft: this attempt takes it, keeping its Message-ID.
                out[key] = (replace(entry, state="sending", claimed_from="approved",
                                    record_hash=proposed[key]["record_hash"],
                                    to_address=proposed[key]["to_address"]), True)
            else:
                out[key] = (entry, False)
        return out

    def _take_approved(self, key: str, fields: dict[str, Any]) -> bool:
        """``approved`` -> ``sending`` for one claim of exactly the content the operator approved (its
        record hash and address); False if another attempt took it, or the content differs."""
        table = OutboxMessage.__table__
        values = {k: fields[k] for k in ("subject", "run_id", "provenance", "channel") if k in fields}
        with self.db.connect() as conn:
            return conn.execute(update(table).where(
                table.c.idempotency_key == key, table.c.state == "approved",
                table.c.record_hash == fields.get("record_hash"), table.c.to_address == fields.get("to_address"),
            ).values(state="sending", claimed_at=utcnow(), **values)).rowcount == 1

    def stage_many(self, rows: list[dict[str, Any]], *, state: str = "drafted") -> None:
        """Stage drafts (``drafted``, or ``approved`` when no approval is needed) with their
        Message-IDs fixed; a key already in the ledger keeps its row."""
        if state not in STAGED:
            raise ValueError(f"a staged row is drafted or approved, not {state!r}")
        if not rows:
            return
        insert = upsert_insert(self.db.dialect)
        now = utcnow()
        values = [{**r, "state": state, "created_at": now, "location": None, "sent_at": None} for r in rows]
        with self.db.connect() as conn:
            if insert is None:
                for value in values:
                    try:
                        conn.execute(OutboxMessage.__table__.insert(), value)
                    except IntegrityError:
                        pass
            else:
                conn.execute(insert(OutboxMessage.__table__).on_conflict_do_nothing(
                    index_elements=["idempotency_key"]), values)

    def take(self, key: str, message_id: str, **content: Any) -> bool:
        """Take a ``failed`` row back to ``sending`` for one more attempt; False if another attempt has it
        (or it is no longer ``failed``): only the taker may send.  A failed row was never handed over,
        so the attempt may carry new ``content`` (``record_hash``, ``to_address``, ``subject``...) under
        the same Message-ID."""
        table = OutboxMessage.__table__
        with self.db.connect() as conn:
            return conn.execute(update(table).where(
                table.c.idempotency_key == key, table.c.message_id == message_id, table.c.state == "failed",
            ).values(state="sending", claimed_at=utcnow(), **content)).rowcount == 1

    def mark_many(self, marks: list[tuple[str, str, str | None]], *, only_from: str | None = None) -> None:
        """``mark`` for many ``(key, state, location)`` in one transaction (with ``only_from``: only rows
        still in that state)."""
        if not marks:
            return
        table = OutboxMessage.__table__
        now = utcnow()
        change = (update(table).where(table.c.idempotency_key == bindparam("k"))
                  .values(state=bindparam("s"), location=bindparam("loc"), sent_at=bindparam("at")))
        if only_from is not None:
            change = change.where(table.c.state == only_from)
        rows = [{"k": key, "s": state, "loc": location, "at": now if state == "sent" else None}
                for key, state, location in marks]
        with self.db.connect() as conn:
            conn.execute(change, rows)

    def release_many(self, entries: list[LedgerEntry], *, cancel: bool = False) -> None:
        """Give back claims made and never attempted (a batch stopped before them, pacing deferred
        them): a new row is forgotten (a later run claims it afresh, for whatever content it then
        has); a taken approved row is approved again, so the operator's approval stands; or, with
        ``cancel`` (a gate said it must never go: the lead replied, unsubscribed), ``cancelled``."""
        if not entries:
            return
        table = OutboxMessage.__table__
        with self.db.connect() as conn:
            for entry in entries:
                mine = (table.c.idempotency_key == entry.idempotency_key, table.c.message_id == entry.message_id,
                        table.c.state == "sending")
                if entry.claimed_from == "approved":
                    conn.execute(update(table).where(*mine).values(state="cancelled" if cancel else "approved"))
                else:
                    conn.execute(table.delete().where(*mine))

    def rows(self, *, state: str | None = None, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Rows for an operator (newest first): key, state, campaign, lead, step, address, subject,
        Message-ID and times."""
        table = OutboxMessage.__table__
        stmt = select(table.c.idempotency_key, table.c.state, table.c.campaign_id, table.c.lead_id, table.c.step,
                      table.c.to_address, table.c.subject, table.c.message_id, table.c.created_at,
                      table.c.claimed_at, table.c.sent_at).order_by(table.c.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(table.c.state == state)
        if tenant is not None:
            stmt = stmt.where(table.c.tenant_id == tenant)
        with self.db.connect() as conn:
            return [dict(row) for row in conn.execute(stmt).mappings()]

    def settle(self, key: str, *, delivered: bool) -> LedgerEntry | None:
        """An operator's answer for an ``unknown`` row (checked in the mail server's log, say):
        ``sent`` if it was delivered, else ``failed``, which a later attempt sends under the same
        Message-ID.  None if the key is not ``unknown``."""
        table = OutboxMessage.__table__
        values: dict[str, Any] = {"state": "sent" if delivered else "failed"}
        if delivered:
            values["sent_at"] = utcnow()
        with self.db.connect() as conn:
            changed = conn.execute(update(table).where(table.c.idempotency_key == key, table.c.state == "unknown")
                                   .values(**values)).rowcount
        return self.get(key) if changed == 1 else None

    def mark(self, key: str, state: str, *, location: str | None = None) -> None:
        values: dict[str, Any] = {"state": state}
        if location is not None:
            values["location"] = location
        if state == "sent":
            values["sent_at"] = utcnow()
        with self.db.session() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key == key).values(**values))
