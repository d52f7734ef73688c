"""``EnrolmentStore``: one row per (tenant, campaign, lead) saying which step comes next, and when.

A lead is enrolled when its first step is sent (or deferred by pacing).
Every sent step moves it on: the next step of the campaign becomes due its
``wait_days`` later, and the Message-ID joins the thread that follow-ups
answer (``In-Reply-To`` the last, ``References`` all).  After the last step
the enrolment is ``completed``.

What stops or holds a sequence:

- a reply, an unsubscribe, a complaint or a hard bounce: ``stopped`` for good;
- an out-of-office with a return date: ``paused`` until then, then active again;
- pacing (a cap, the send window): the step stays next, due when pacing allows.

Every change is one conditional statement, so the same outcome recorded twice
(a batch retried) moves nothing twice, and a reply that lands while a step is
being scheduled still stops it: the send-time gate (``blocked``) reads the
row again right before the hand-over.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update

from agent.clock import SYSTEM_CLOCK, Clock
from agent.storage.db import Database, upsert_insert
from agent.storage.models import EnrolmentRow
from agent.storage.recipients import recipient_matches
from agent.storage.times import aware

__all__ = ["EnrolmentStore", "Enrolment", "Enrolled", "ACTIVE", "PAUSED", "STOPPED", "COMPLETED", "MAX_ATTEMPTS"]

ACTIVE, PAUSED, STOPPED, COMPLETED = "active", "paused", "stopped", "completed"
MAX_ATTEMPTS = 5  # failed tries of one step before the sequence gives up on the lead
# (campaign id, lead id, address, step): the enrolment a stop or a hold comes from.
Enrolled = tuple[str, str, str, int]


def _verdict(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a delivery outcome does to the sequence: ("sent",), ("deferred", until), ("retry", why),
    ("stop", why) or ("keep",)."""
    status, reason = record.get("status"), str(record.get("reason") or "")
    if status in ("sent", "duplicate"):
        return ("sent",) if record.get("message_id") else ("keep",)
    if status == "awaiting_approval":
        return ("hold",)
    if status == "deferred":
        until = record.get("not_before")
        return ("deferred", datetime.fromisoformat(until) if isinstance(until, str) else until)
    if status == "failed":
        return ("retry", reason.split(":", 1)[0] or "failed")
    if status == "skipped":
        return ("stop", reason) if reason in ("suppressed", "below_icp_threshold") else ("keep",)
    stops = {"bounced": "bounced", "unknown": "delivery_unknown", "conflict": "conflict",
             "rejected": "rejected_by_operator"}
    if status in stops:
        return ("stop", stops[status])
    if status == "cancelled":
        return ("stop", reason.removeprefix("sequence_stopped:") or "cancelled")
    return ("keep",)


@dataclass(frozen=True)
class Enrolment:
    campaign_id: str
    lead_id: str
    to: str
    status: str
    next_step: int
    due_at: datetime | None
    thread: list[str]
    first_subject: str | None
    stop_reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"campaign_id": self.campaign_id, "lead_id": self.lead_id, "to": self.to, "status": self.status,
                "next_step": self.next_step, "due_at": self.due_at.isoformat() if self.due_at else None,
                "thread": self.thread, "first_subject": self.first_subject, "stop_reason": self.stop_reason}


class EnrolmentStore:
    """One tenant's sequence enrolments; ``clock`` says what "now" is."""

    def __init__(self, db: Database, *, tenant: str = "default", clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self.tenant = tenant
        self.clock = clock

    # -- outcomes of sends --------------------------------------------------------------------
    def record_outcomes(self, steps: Mapping[int, float], records: Iterable[Mapping[str, Any]]) -> None:
        """Move enrolments on from a batch's outcomes, in one transaction.  ``steps`` maps each step of
        the campaign to the days to wait before it (step 1: 0).

        - sent (or found sent): the next step becomes due after its wait, or the sequence is complete;
        - deferred by pacing: the step stays next, due at its ``not_before``;
        - failed (a refusal that may pass, a draft that failed): tried again an hour later, then two...
          and after ``MAX_ATTEMPTS`` the sequence stops (``gave_up:<reason>``);
        - bounced, unknown (the server may have it: never re-sent blindly), a conflict, cancelled,
          rejected, suppressed, below the ICP: the sequence stops, saying why;
        - awaiting approval: not due again until the operator's decision is released;
        - anything else (in progress elsewhere, not due): nothing changes.

        An out-of-office hold outlasts any of these; each change is conditional on the status read,
        so a stop or hold that lands meanwhile wins.
        """
        now = self.clock.now()
        moves = [(record, int(record.get("step") or 1), verdict) for record in records
                 if (verdict := _verdict(record))[0] != "keep"]
        if not moves:
            return
        fresh = [{"tenant_id": self.tenant, "campaign_id": str(r["campaign_id"]), "lead_id": str(r["lead_id"]),
                  "to_address": r.get("to") or "", "status": ACTIVE, "next_step": step, "due_at": now,
                  "thread_json": "[]", "first_subject": None, "stop_reason": None, "attempts": 0,
                  "created_at": now, "updated_at": now} for r, step, _ in moves]
        with self.db.connect(write=True) as conn:
            # A lead without an enrolment gets one at this step (a first writer wins: a reply that
            # came first left it stopped) ...
            conn.execute(upsert_insert(self.db.dialect)(EnrolmentRow).on_conflict_do_nothing(
                index_elements=["tenant_id", "campaign_id", "lead_id"]), fresh)
            current = self._rows(conn, [(row["campaign_id"], row["lead_id"]) for row in fresh])
            # ... then each moves on, conditionally on the step it was read at (a retry moves nothing twice)
            changes = []
            for record, step, verdict in moves:
                row = current[(str(record["campaign_id"]), str(record["lead_id"]))]
                if row.status == STOPPED or row.next_step != step:
                    continue  # stopped meanwhile, or already moved on (the same outcome twice)
                change = {"c": row.campaign_id, "l": row.lead_id, "was": step, "next": step, "due": row.due_at,
                          "st": row.status, "read": row.status, "thread": row.thread_json,
                          "subject": row.first_subject, "why": None, "tries": row.attempts}
                # An out-of-office hold outlasts anything an outcome would make due sooner.
                held = aware(row.due_at) if row.status == PAUSED else None
                kind = verdict[0]
                if kind == "sent":
                    later = sorted(s for s in steps if s > step)
                    thread = json.loads(row.thread_json)
                    if record["message_id"] not in thread:
                        thread.append(record["message_id"])
                    change.update(thread=json.dumps(thread), tries=0,
                                  subject=row.first_subject or (record.get("subject") if step == 1 else None))
                    if later:
                        due = now + timedelta(days=steps[later[0]])
                        change.update(next=later[0], due=max(due, held) if held else due)
                    else:
                        change.update(next=step + 1, due=None, st=COMPLETED)
                elif kind == "deferred":
                    due = verdict[1] or now + timedelta(hours=1)
                    change.update(due=max(due, held) if held else due)
                elif kind == "retry" and row.attempts + 1 < MAX_ATTEMPTS:
                    due = now + timedelta(hours=row.attempts + 1)
                    change.update(due=max(due, held) if held else due, tries=row.attempts + 1)
                elif kind == "hold":  # waiting for an operator: not due again until a decision releases it
                    change.update(due=None)
                else:  # stop, or a retry past the limit
                    why = verdict[1] if kind == "stop" else f"gave_up:{verdict[1]}"
                    change.update(st=STOPPED, due=None, why=why[:64], tries=row.attempts + (kind == "retry"))
                changes.append(change)
            if changes:
                table = EnrolmentRow.__table__
                conn.execute(update(table).where(
                    table.c.tenant_id == self.tenant, table.c.campaign_id == bindparam("c"),
                    table.c.lead_id == bindparam("l"), table.c.next_step == bindparam("was"),
                    # as read: a stop or hold that landed since wins (the step's outcome is found again,
                    # from the outbox, the next time it runs)
                    table.c.status == bindparam("read"),
                ).values(next_step=bindparam("next"), due_at=bindparam("due"), status=bindparam("st"),
                         thread_json=bindparam("thread"), first_subject=bindparam("subject"),
                         stop_reason=bindparam("why"), attempts=bindparam("tries"), updated_at=now), changes)

    def _rows(self, conn: Any, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        current = {}
        for campaign_id in {c for c, _ in pairs}:
            leads = list(dict.fromkeys(lead for c, lead in pairs if c == campaign_id))
            for start in range(0, len(leads), 500):
                for row in conn.execute(select(
                        EnrolmentRow.campaign_id, EnrolmentRow.lead_id, EnrolmentRow.next_step, EnrolmentRow.status,
                        EnrolmentRow.thread_json, EnrolmentRow.first_subject, EnrolmentRow.due_at,
                        EnrolmentRow.attempts).where(
                        EnrolmentRow.tenant_id == self.tenant, EnrolmentRow.campaign_id == campaign_id,
                        EnrolmentRow.lead_id.in_(leads[start:start + 500]))):
                    current[(row.campaign_id, row.lead_id)] = row
        return current

    # -- scheduling ---------------------------------------------------------------------------
    def due(self, campaign_id: str, *, limit: int = 10_000) -> list[Enrolment]:
        """Enrolments of ``campaign_id`` whose next step is due now (an out-of-office pause that has
        ended counts), oldest due first."""
        now = self.clock.now()
        return self._select(EnrolmentRow.campaign_id == campaign_id, EnrolmentRow.status.in_((ACTIVE, PAUSED)),
                            EnrolmentRow.due_at <= now, order=EnrolmentRow.due_at, limit=limit)

    def lease(self, campaign_id: str, lead_ids: Iterable[str], step: int, *, seconds: float) -> list[str]:
        """Take the leads whose step ``step`` is due now for one queued job: not due again for
        ``seconds`` (if the job is lost they come due again, and the outbox key keeps the step from
        going out twice).  One conditional UPDATE: of two overlapping ticks only one gets each lead,
        and a lead paused or stopped since it was read is not taken.  The leads taken."""
        now = self.clock.now()
        leads = [str(i) for i in lead_ids]
        taken: list[str] = []
        with self.db.connect(write=True) as conn:
            for start in range(0, len(leads), 500):
                taken.extend(conn.execute(update(EnrolmentRow).where(
                    EnrolmentRow.tenant_id == self.tenant, EnrolmentRow.campaign_id == campaign_id,
                    EnrolmentRow.lead_id.in_(leads[start:start + 500]), EnrolmentRow.next_step == step,
                    EnrolmentRow.status.in_((ACTIVE, PAUSED)), EnrolmentRow.due_at <= now,
                ).values(status=ACTIVE, due_at=now + timedelta(seconds=seconds), updated_at=now)
                    .returning(EnrolmentRow.lead_id)).scalars())
        return taken

    # -- what stops or holds a sequence -------------------------------------------------------
    def stop(self, *, reason: str, address: str | None = None, lead_id: str | None = None,
             campaign_id: str | None = None, ensure: Enrolled | None = None) -> int:
        """Stop the active or paused enrolments of ``address`` (any case) or ``lead_id``; how many.

        ``ensure`` names the (campaign, lead, address, step) the stop comes from (the message a reply
        answers): if that lead has no enrolment yet (its batch is still sending), it gets one,
        stopped, so the batch's outcome cannot start the sequence afterwards."""
        matches = self._who(address, lead_id)
        if not matches:
            return 0
        conditions = [EnrolmentRow.tenant_id == self.tenant, EnrolmentRow.status.in_((ACTIVE, PAUSED)),
                      or_(*matches)]
        if campaign_id is not None:
            conditions.append(EnrolmentRow.campaign_id == campaign_id)
        now = self.clock.now()
        with self.db.connect(write=True) as conn:
            made = self._ensure(conn, ensure, status=STOPPED, due=None, reason=reason[:64], now=now)
            return made + int(conn.execute(update(EnrolmentRow).where(*conditions).values(
                status=STOPPED, stop_reason=reason[:64], due_at=None, updated_at=now)).rowcount)

    def pause_until(self, until: datetime, *, address: str | None = None, lead_id: str | None = None,
                    ensure: Enrolled | None = None) -> int:
        """Hold the active enrolments of ``address`` or ``lead_id`` until ``until`` (an out-of-office's
        return date): the next step waits, the sequence does not stop.  ``ensure``: as for ``stop``."""
        matches = self._who(address, lead_id)
        if not matches:
            return 0
        now = self.clock.now()
        with self.db.connect(write=True) as conn:
            made = self._ensure(conn, ensure, status=PAUSED, due=until, reason=None, now=now)
            return made + int(conn.execute(update(EnrolmentRow).where(
                EnrolmentRow.tenant_id == self.tenant, EnrolmentRow.status.in_((ACTIVE, PAUSED)), or_(*matches),
                or_(EnrolmentRow.due_at.is_(None), EnrolmentRow.due_at < until),
            ).values(status=PAUSED, due_at=until, updated_at=now)).rowcount)

    def _ensure(self, conn: Any, ensure: Enrolled | None, *, status: str, due: datetime | None,
                reason: str | None, now: datetime) -> int:
        """The enrolment ``ensure`` names, created in ``status`` at its step if the lead has none; 1 if made."""
        if ensure is None:
            return 0
        campaign_id, lead_id, address, step = ensure
        result = conn.execute(upsert_insert(self.db.dialect)(EnrolmentRow).on_conflict_do_nothing(
            index_elements=["tenant_id", "campaign_id", "lead_id"]).returning(EnrolmentRow.id), [{
                "tenant_id": self.tenant, "campaign_id": str(campaign_id), "lead_id": str(lead_id),
                "to_address": address, "status": status, "next_step": int(step), "due_at": due,
                "thread_json": "[]", "first_subject": None, "stop_reason": reason, "attempts": 0,
                "created_at": now, "updated_at": now}])
        return len(result.all())

    def blocked(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The send-time gate: of these (campaign, lead) pairs, those whose sequence is stopped
        (``stopped:<reason>``) or paused past now (``paused_until:<iso>``)."""
        by_campaign: dict[str, list[str]] = {}
        for campaign_id, lead_id in pairs:
            by_campaign.setdefault(str(campaign_id), []).append(str(lead_id))
        now = self.clock.now()
        out: dict[tuple[str, str], str] = {}
        with self.db.connect() as conn:
            for campaign_id, leads in by_campaign.items():
                leads = list(dict.fromkeys(leads))
                for start in range(0, len(leads), 500):
                    rows = conn.execute(select(EnrolmentRow.lead_id, EnrolmentRow.status, EnrolmentRow.stop_reason,
                                               EnrolmentRow.due_at).where(
                        EnrolmentRow.tenant_id == self.tenant, EnrolmentRow.campaign_id == campaign_id,
                        EnrolmentRow.lead_id.in_(leads[start:start + 500]),
                        EnrolmentRow.status.in_((STOPPED, PAUSED))))
                    for row in rows:
                        due = aware(row.due_at)
                        if row.status == STOPPED:
                            out[(campaign_id, row.lead_id)] = f"stopped:{row.stop_reason or 'unknown'}"
                        elif due is not None and due > now:
                            out[(campaign_id, row.lead_id)] = f"paused_until:{due.isoformat()}"
        return out

    def reopen(self, campaign_id: str, lead_id: str, step: int) -> bool:
        """A sequence stopped because its step's delivery was unknown, active again at that step and
        due now (an operator settled the outbox row): the next tick finds the step sent and moves on,
        or sends it.  False if it was not stopped for that reason at that step."""
        now = self.clock.now()
        with self.db.connect(write=True) as conn:
            return conn.execute(update(EnrolmentRow).where(
                *self._key(campaign_id, lead_id), EnrolmentRow.status == STOPPED,
                EnrolmentRow.stop_reason == "delivery_unknown", EnrolmentRow.next_step == int(step),
            ).values(status=ACTIVE, stop_reason=None, due_at=now, updated_at=now)).rowcount == 1

    # -- reading ------------------------------------------------------------------------------
    def get(self, campaign_id: str, lead_id: str) -> Enrolment | None:
        found = self._select(*self._key(campaign_id, lead_id))
        return found[0] if found else None

    def for_leads(self, campaign_id: str, lead_ids: Iterable[Any]) -> dict[str, Enrolment]:
        leads = [str(i) for i in lead_ids]
        return {e.lead_id: e for e in self._select(EnrolmentRow.campaign_id == campaign_id,
                                                   EnrolmentRow.lead_id.in_(leads))}

    def list(self, *, campaign_id: str | None = None, status: str | None = None, limit: int = 100) -> list[Enrolment]:
        conditions = []
        if campaign_id is not None:
            conditions.append(EnrolmentRow.campaign_id == campaign_id)
        if status is not None:
            conditions.append(EnrolmentRow.status == status)
        return self._select(*conditions, order=EnrolmentRow.id, limit=limit)

    def counts(self, campaign_id: str) -> dict[str, int]:
        with self.db.connect() as conn:
            rows = conn.execute(select(EnrolmentRow.status, func.count()).where(
                EnrolmentRow.tenant_id == self.tenant, EnrolmentRow.campaign_id == campaign_id)
                .group_by(EnrolmentRow.status))
            return {status: int(n) for status, n in rows}

    # -- helpers ------------------------------------------------------------------------------
    def _key(self, campaign_id: str, lead_id: Any) -> tuple[Any, ...]:
        return (EnrolmentRow.tenant_id == self.tenant, EnrolmentRow.campaign_id == str(campaign_id),
                EnrolmentRow.lead_id == str(lead_id))

    @staticmethod
    def _who(address: str | None, lead_id: str | None) -> list[Any]:
        return recipient_matches(EnrolmentRow, address, lead_id)

    def _select(self, *conditions: Any, order: Any = None, limit: int | None = None) -> list[Enrolment]:
        stmt = select(EnrolmentRow).where(EnrolmentRow.tenant_id == self.tenant, *conditions)
        if order is not None:
            stmt = stmt.order_by(order)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.db.connect() as conn:
            rows = conn.execute(stmt.with_only_columns(*EnrolmentRow.__table__.c)).mappings().all()
        return [Enrolment(r["campaign_id"], r["lead_id"], r["to_address"], r["status"], r["next_step"],
                          aware(r["due_at"]), json.loads(r["thread_json"]), r["first_subject"], r["stop_reason"])
                for r in rows]
