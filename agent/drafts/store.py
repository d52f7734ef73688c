"""``DraftStore``: the approval queue, in the database beside the leads and the outbox.

A campaign that requires approval parks each draft here as
``awaiting_approval``, one per (tenant, campaign, lead, step): a batch run
again finds its drafts already queued and leaves them as they are.  An
operator approves, rejects or edits them (``agent drafts ...``).  Each
decision is one conditional UPDATE, so two operators deciding the same draft
cannot both win, and a decided draft never changes again.

An edit keeps the lineage: the edited draft record gets new provenance whose
parent is the draft it replaces, naming who edited it, and it must pass the
same output checks as a generated draft.  When every draft of a held batch is
decided, the batch can be released: its approved drafts, as edited, go to
delivery, and its rejected ones never do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update

from agent.envelope import PROVENANCE, canonical_json, make_provenance
from agent.errors import InvalidInput, PayloadError
from agent.storage.db import Database, upsert_insert
from agent.delivery.keys import idempotency_key
from agent.storage.models import DraftRow, OutboxMessage, utcnow
from agent.storage.recipients import recipient_matches

__all__ = ["DraftStore", "Draft", "cancel_outbox", "AWAITING", "APPROVED", "REJECTED", "DECIDED"]

AWAITING, APPROVED, REJECTED = "awaiting_approval", "approved", "rejected"
DECIDED = (APPROVED, REJECTED)


@dataclass(frozen=True)
class Draft:
    id: int
    campaign_id: str
    lead_id: str
    step: int
    run_id: str
    status: str
    to: str
    subject: str
    body: str
    record: dict[str, Any]
    score: int | None
    edited: bool
    decided_by: str | None
    reason: str | None
    created_at: str
    decided_at: str | None

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "campaign_id": self.campaign_id, "lead_id": self.lead_id, "step": self.step,
                "status": self.status, "to": self.to, "subject": self.subject, "score": self.score,
                "edited": self.edited, "run_id": self.run_id, "decided_by": self.decided_by,
                "created_at": self.created_at, "decided_at": self.decided_at}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "body": self.body, "reason": self.reason, "record": self.record}


class DraftStore:
    """One tenant's approval queue."""

    def __init__(self, db: Database, *, tenant: str = "default") -> None:
        self.db = db
        self.tenant = tenant

    # -- the flow's side ----------------------------------------------------------------------
    def park(self, drafts: Iterable[Mapping[str, Any]], *, run_id: str,
             scores: Mapping[str, int | None] | None = None) -> list[Draft]:
        """Queue these draft records for approval (a key already queued keeps its draft), each with
        its lead's ICP score from ``scores`` (by lead id); returns the queued draft of each, in order."""
        rows = []
        now = utcnow()
        for record in drafts:
            rows.append({"tenant_id": self.tenant, "campaign_id": str(record["campaign_id"]),
                         "lead_id": str(record["lead_id"]), "step": int(record["step"]), "run_id": run_id,
                         "status": AWAITING, "to_address": record["to"], "subject": record["subject"],
                         "body": record["body"], "record_json": canonical_json(dict(record)),
                         "record_hash": record[PROVENANCE]["hash"],
                         "score": (scores or {}).get(str(record["lead_id"])),
                         "edited": False, "created_at": now})
        if not rows:
            return []
        with self.db.connect(write=True) as conn:
            stmt = upsert_insert(self.db.dialect)(DraftRow).on_conflict_do_nothing(
                index_elements=["tenant_id", "campaign_id", "lead_id", "step"])
            conn.execute(stmt, rows)
        found: dict[tuple[str, str, int], Draft] = {}
        for campaign, step in {(r["campaign_id"], r["step"]) for r in rows}:
            leads = [r["lead_id"] for r in rows if (r["campaign_id"], r["step"]) == (campaign, step)]
            found.update(((d.campaign_id, d.lead_id, d.step), d) for d in self.for_leads(campaign, leads, step=step))
        return [found[(r["campaign_id"], r["lead_id"], r["step"])] for r in rows]

    def settle_outbox(self, drafts: Iterable[Draft]) -> None:
        """The outbox rows still ``drafted`` of these queued drafts carry the queued draft's content
        (the one an operator reads and decides: a row staged by an earlier run may hold another
        rendering), and those of decided drafts follow the decision (approved, or cancelled): for a
        row staged while its draft was being decided."""
        changes = [{"k": idempotency_key(self.tenant, d.campaign_id, d.lead_id, d.step),
                    "s": {APPROVED: "approved", REJECTED: "cancelled"}.get(d.status, "drafted"),
                    "h": d.record[PROVENANCE]["hash"], "subj": d.subject} for d in drafts]
        if not changes:
            return
        table = OutboxMessage.__table__
        with self.db.connect(write=True) as conn:
            conn.execute(update(table).where(table.c.idempotency_key == bindparam("k"), table.c.state == "drafted")
                         .values(state=bindparam("s"), record_hash=bindparam("h"), subject=bindparam("subj")),
                         changes)

    def for_leads(self, campaign_id: str, lead_ids: Iterable[Any], *, step: int = 1) -> list[Draft]:
        leads = [str(lead) for lead in lead_ids]
        return self._select(DraftRow.campaign_id == campaign_id, DraftRow.step == step, DraftRow.lead_id.in_(leads))

    def pending_runs(self, run_ids: Iterable[str]) -> dict[str, int]:
        """How many drafts each of these runs still has awaiting a decision."""
        with self.db.connect() as conn:
            rows = conn.execute(select(DraftRow.run_id, func.count()).where(
                DraftRow.tenant_id == self.tenant, DraftRow.run_id.in_(list(run_ids)),
                DraftRow.status == AWAITING).group_by(DraftRow.run_id)).all()
        return {run: int(count) for run, count in rows}

    # -- the operator's side ------------------------------------------------------------------
    def list(self, *, campaign_id: str | None = None, status: str | None = AWAITING,
             limit: int = 50, after_id: int = 0) -> list[Draft]:
        conditions = [DraftRow.id > after_id]
        if campaign_id is not None:
            conditions.append(DraftRow.campaign_id == campaign_id)
        if status is not None:
            if status not in (AWAITING, *DECIDED):
                raise PayloadError("status", f"must be one of {AWAITING}, {APPROVED}, {REJECTED}")
            conditions.append(DraftRow.status == status)
        return self._select(*conditions, limit=limit)

    def get(self, draft_id: int) -> Draft:
        found = self._select(DraftRow.id == draft_id)
        if not found:
            raise PayloadError("draft_id", f"no draft {draft_id} for tenant {self.tenant!r}")
        return found[0]

    def counts(self, campaign_id: str | None = None) -> dict[str, int]:
        stmt = select(DraftRow.status, func.count()).where(DraftRow.tenant_id == self.tenant)
        if campaign_id is not None:
            stmt = stmt.where(DraftRow.campaign_id == campaign_id)
        with self.db.connect() as conn:
            return {status: int(n) for status, n in conn.execute(stmt.group_by(DraftRow.status))}

    def approve(self, draft_ids: Iterable[int], *, by: str, seen: Mapping[int, str] | None = None) -> list[Draft]:
        """Approve drafts; with ``seen`` (draft id -> the record hash the approver read, as ``show``
        prints it) a draft changed since it was read is refused, naming it."""
        return [self._decide(i, APPROVED, by=by, reason=None, seen=(seen or {}).get(i)) for i in draft_ids]

    def reject(self, draft_ids: Iterable[int], *, by: str, reason: str | None = None) -> list[Draft]:
        return [self._decide(i, REJECTED, by=by, reason=reason) for i in draft_ids]

    def withdraw(self, *, address: str | None = None, lead_id: str | None = None, by: str, reason: str) -> int:
        """Reject every draft awaiting approval to ``address`` (any case) or for ``lead_id``: the recipient
        replied, unsubscribed or complained.  Returns how many; one conditional UPDATE."""
        matches = recipient_matches(DraftRow, address, lead_id)
        if not matches:
            return 0
        with self.db.connect(write=True) as conn:
            count = int(conn.execute(update(DraftRow).where(
                DraftRow.tenant_id == self.tenant, DraftRow.status == AWAITING, or_(*matches),
            ).values(status=REJECTED, decided_by=_who(by), reason=reason, decided_at=utcnow())).rowcount)
            # The outbox rows still waiting (drafted, or approved and not yet claimed) never go out.
            cancel_outbox(conn, self.tenant, address=address, lead_id=lead_id)
        return count

    def edit(self, draft_id: int, *, by: str, subject: str | None = None, body: str | None = None,
             check: Callable[[dict[str, Any]], None] | None = None) -> Draft:
        """Replace a waiting draft's subject and/or body.  ``check(record)`` (the copywriter's output
        checks) raises to refuse the edit; nothing is written then."""
        if subject is None and body is None:
            raise PayloadError("edit", "give a new subject, a new body, or both")
        draft = self.get(draft_id)
        if draft.status != AWAITING:
            raise InvalidInput("draft_id", f"draft {draft_id} is {draft.status}; only a draft awaiting "
                                           "approval can be edited")
        record = {k: v for k, v in draft.record.items() if k != PROVENANCE}
        if subject is not None:
            if not subject.strip():
                raise PayloadError("subject", "cannot be empty")
            record["subject"] = subject.strip()
        if body is not None:
            if not body.strip():
                raise PayloadError("body", "cannot be empty")
            record["body"] = body
        if check is not None:
            check(record)
        by = _who(by)
        record[PROVENANCE] = make_provenance(record, source="operator", agent="drafts.edit",
                                             run_id=draft.run_id, node="edit",
                                             parents=[draft.record[PROVENANCE]["hash"]], edited_by=by)
        with self.db.connect(write=True) as conn:
            changed = conn.execute(update(DraftRow).where(
                DraftRow.id == draft_id, DraftRow.tenant_id == self.tenant, DraftRow.status == AWAITING,
                DraftRow.record_hash == draft.record[PROVENANCE]["hash"],
            ).values(subject=record["subject"], body=record["body"], record_json=canonical_json(record),
                     record_hash=record[PROVENANCE]["hash"], edited=True)).rowcount
            if changed == 1:  # the staged outbox row carries the content it may send
                key = idempotency_key(self.tenant, draft.campaign_id, draft.lead_id, draft.step)
                conn.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key == key,
                                                         OutboxMessage.state == "drafted")
                             .values(subject=record["subject"], record_hash=record[PROVENANCE]["hash"]))
        if changed != 1:
            raise InvalidInput("draft_id", f"draft {draft_id} changed while it was being edited; try again")
        return self.get(draft_id)

    def _decide(self, draft_id: int, status: str, *, by: str, reason: str | None,
                seen: str | None = None) -> Draft:
        conditions = [DraftRow.id == draft_id, DraftRow.tenant_id == self.tenant, DraftRow.status == AWAITING]
        if seen is not None:
            if len(seen) < 8:
                raise PayloadError("seen", "give at least the first 8 characters of the hash `drafts show` printed")
            conditions.append(DraftRow.record_hash.startswith(seen.lower(), autoescape=True))
        with self.db.connect(write=True) as conn:
            changed = conn.execute(update(DraftRow).where(*conditions).values(
                status=status, decided_by=_who(by), reason=reason, decided_at=utcnow())).rowcount
            if changed == 1:  # the outbox row moves with the decision, in the same transaction
                row = conn.execute(select(DraftRow.campaign_id, DraftRow.lead_id, DraftRow.step)
                                   .where(DraftRow.id == draft_id)).one()
                key = idempotency_key(self.tenant, row.campaign_id, row.lead_id, row.step)
                conn.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key == key,
                                                         OutboxMessage.state == "drafted")
                             .values(state="approved" if status == APPROVED else "cancelled"))
        draft = self.get(draft_id)
        if changed != 1:
            if draft.status == AWAITING:
                raise InvalidInput("draft_id", f"draft {draft_id} was changed since it was read (it is now "
                                               f"{draft.record['provenance']['hash'][:12]}); read it again")
            if draft.status != status:
                raise InvalidInput("draft_id", f"draft {draft_id} is already {draft.status}")
        return draft

    def _select(self, *conditions: Any, limit: int | None = None) -> list[Draft]:
        stmt = select(DraftRow).where(DraftRow.tenant_id == self.tenant, *conditions).order_by(DraftRow.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.db.connect() as conn:
            return [_draft(row) for row in conn.execute(stmt.with_only_columns(*DraftRow.__table__.c)).mappings()]


def cancel_outbox(conn: Any, tenant: str, *, address: str | None = None, lead_id: str | None = None,
                  campaign_id: str | None = None) -> int:
    """Cancel the outbox rows of ``address`` (any case) or ``lead_id`` that wait to be sent
    (``drafted``, ``approved``): one UPDATE on ``conn``; how many."""
    matches = recipient_matches(OutboxMessage, address, lead_id)
    if not matches:
        return 0
    conditions = [OutboxMessage.tenant_id == tenant, OutboxMessage.state.in_(("drafted", "approved")), or_(*matches)]
    if campaign_id is not None:
        conditions.append(OutboxMessage.campaign_id == campaign_id)
    return int(conn.execute(update(OutboxMessage).where(*conditions).values(state="cancelled")).rowcount)


def _who(by: str) -> str:
    if not by or not by.strip():
        raise PayloadError("by", "name who decides")
    return by.strip()[:128]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _draft(row: Mapping[str, Any]) -> Draft:
    return Draft(id=row["id"], campaign_id=row["campaign_id"], lead_id=row["lead_id"], step=row["step"],
                 run_id=row["run_id"], status=row["status"], to=row["to_address"], subject=row["subject"],
                 body=row["body"], record=json.loads(row["record_json"]), score=row["score"],
                 edited=bool(row["edited"]), decided_by=row["decided_by"], reason=row["reason"],
                 created_at=_iso(row["created_at"]) or "", decided_at=_iso(row["decided_at"]))
