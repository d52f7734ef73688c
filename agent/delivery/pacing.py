"""The sending pacer: whether one message may go out from a mailbox right now.

A campaign's ``pacing:`` block (``Pacing``) is checked by ``Pacer.acquire``
right before each send, gate after gate; the first that refuses decides::

    paused ─> window ─> daily cap (warm-up) ─> domain rate ─> jitter
    "paused:<reason>"  "outside_window"  "daily_cap" | "warmup_cap"  "domain_rate"  (never refuses)

- **pauses**: a ``sending_pauses`` row for ``mailbox:<address>`` or
  ``campaign:<id>``, set by hand or by the bounce/complaint guard.
- **window**: the allowed weekdays and hours, local to the campaign's zone.
- **daily cap**: sends per mailbox per local day, shared by every campaign
  of the mailbox; while warming up, the ramp ``start + increase * days``
  lowers it.
- **domain rate**: sends per recipient domain per UTC hour, per mailbox.
- **jitter**: a random gap between two sends of a mailbox; the caller waits
  ``wait`` seconds before handing over.

Several threads and processes send from one mailbox at once, so a cap is
never read then written: its bucket row is inserted if missing (on conflict,
nothing), then taken by one conditional ``UPDATE ... SET count = count + 1
WHERE count < cap``, which the database runs one at a time per row.  The
whole check is one write transaction, and a gate that refuses gives back the
counts taken by the gates before it, so a refused message never uses up a
cap.  A slot taken counts even if the send then fails (conservative).

``Pacer.record`` keeps the sends, bounces and complaints of each mailbox;
after a bounce or complaint it runs ``check_health``, which pauses the mailbox
once a rate crosses its threshold over enough sends (``AutoPause``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from agent.errors import ConfigurationError, InvalidInput
from agent.leads.normalize import registrable_domain
from agent.storage.db import Database, upsert_insert
from agent.storage.models import PacingSlotRow, SendEventRow, SendingPauseRow
from agent.storage.times import as_utc, aware, utc_clock

__all__ = ["SendWindow", "WarmUp", "AutoPause", "Pacing", "PaceDecision", "Pacer", "EVENT_KINDS", "DEFAULT_GUARD"]

_SLOTS = PacingSlotRow.__table__
_PAUSES = SendingPauseRow.__table__
_EVENTS = SendEventRow.__table__
EVENT_KINDS = ("sent", "bounce", "complaint")


# -- policy: a campaign's ``pacing:`` block ------------------------------------------------------
class SendWindow(BaseModel):
    """The weekdays (ISO, 1 = Monday) and local hours ``[start, end)`` in which a campaign sends."""

    model_config = ConfigDict(extra="forbid")
    days: list[Annotated[int, Field(ge=1, le=7)]] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    start: time = time(9, 0)
    end: time = time(17, 0)

    @field_validator("days")
    @classmethod
    def _distinct(cls, days: list[int]) -> list[int]:
        if len(set(days)) != len(days):
            raise ValueError("each weekday at most once")
        return days

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time, info: ValidationInfo) -> time:
        if value.tzinfo is not None:
            raise ValueError("a local time without a UTC offset (the campaign's zone applies)")
        if info.field_name == "end" and "start" in info.data and value <= info.data["start"]:
            raise ValueError("must be after start")
        return value

    def contains(self, local: datetime) -> bool:
        return local.isoweekday() in self.days and self.start <= local.time() < self.end

    def next_open(self, local: datetime) -> datetime:
        """When the window next opens after ``local`` (aware, UTC)."""
        today = local.date()
        if today.isoweekday() in self.days and local.time() < self.start:
            return _instant(today, self.start, local.tzinfo)
        return _instant(self.next_day(today), self.start, local.tzinfo)

    def next_day(self, day: date) -> date:
        """The first allowed day after ``day``."""
        return next(d for d in (day + timedelta(days=i) for i in range(1, 8)) if d.isoweekday() in self.days)


class WarmUp(BaseModel):
    """A new mailbox's ramp: ``start`` sends on its first day, ``increase`` more each day after."""

    model_config = ConfigDict(extra="forbid")
    start: int = Field(default=20, ge=1)
    increase: int = Field(default=10, ge=0)
    since: date | None = None  # None: the day of the mailbox's first recorded send (today if none)

    def cap(self, first: date, today: date) -> int:
        return self.start + self.increase * max(0, (today - first).days)


class AutoPause(BaseModel):
    """Pause a mailbox whose bounce or complaint rate, over ``min_sample`` sends or more, crosses its threshold."""

    model_config = ConfigDict(extra="forbid")
    bounce_rate: float = Field(default=0.05, gt=0, le=1)
    complaint_rate: float = Field(default=0.003, gt=0, le=1)
    min_sample: int = Field(default=50, ge=1)
    window_days: int = Field(default=7, ge=1)


class Pacing(BaseModel):
    """A campaign's ``pacing:`` block; every gate is off when unset (auto-pause is on by default)."""

    model_config = ConfigDict(extra="forbid")
    daily_cap: int | None = Field(default=None, ge=0)
    per_domain_per_hour: int | None = Field(default=None, ge=0)
    window: SendWindow | None = None
    jitter_seconds: tuple[Annotated[float, Field(ge=0, le=3600)], Annotated[float, Field(ge=0, le=3600)]] = (0, 0)
    warmup: WarmUp | None = None
    auto_pause: AutoPause | None = Field(default_factory=AutoPause)

    @field_validator("jitter_seconds")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError("the minimum gap must not exceed the maximum")
        return value


DEFAULT_GUARD = AutoPause()


@dataclass(frozen=True)
class PaceDecision:
    """``allowed``, else ``reason`` and ``not_before`` (aware UTC; None for a pause without an end).
    When allowed, the caller waits ``wait`` seconds (jitter) before handing the message over."""

    allowed: bool
    reason: str | None
    not_before: datetime | None
    wait: float = 0.0


class Pacer:
    """Pacing of one tenant's mailboxes in ``db``; ``clock`` gives aware datetimes (a callable, or an
    ``agent.clock.Clock``), ``rng`` draws the jitter gaps."""

    def __init__(self, db: Database, *, tenant: str = "default", clock: Callable[[], datetime] | Any = None,
                 rng: random.Random | None = None) -> None:
        self.db = db
        self.tenant = tenant
        self._insert = upsert_insert(db.dialect)  # with on-conflict-do-nothing
        if self._insert is None:
            raise ConfigurationError(f"pacing needs SQLite or PostgreSQL, not {db.dialect}")
        self._clock = utc_clock(clock.now if callable(getattr(clock, "now", None)) else clock)
        self._rng = rng or random.Random()

    # -- the gates -------------------------------------------------------------------------------
    def acquire(self, policy: Pacing, *, mailbox: str, to: str, zone: str = "UTC",
                campaign_id: str | None = None) -> PaceDecision:
        """May one message from ``mailbox`` to ``to`` go now?  Call right before sending it."""
        mailbox, tz, now = _mailbox(mailbox), _zone(zone), self._clock()
        local = now.astimezone(tz)
        scopes = [f"mailbox:{mailbox}"] + ([f"campaign:{campaign_id}"] if campaign_id else [])
        with self.db.connect(write=True) as conn:
            pause = self._paused(conn, scopes)
            if pause is not None:
                return PaceDecision(False, f"paused:{pause['reason']}", None)
            window = policy.window
            if window is not None and not window.contains(local):
                return PaceDecision(False, "outside_window", window.next_open(local))
            cap, reason = self._day_cap(conn, policy, mailbox, local)
            day = (f"mailbox:{mailbox}", local.date().isoformat())
            if not self._take(conn, *day, cap):
                tomorrow = window.next_day(local.date()) if window else local.date() + timedelta(days=1)
                return PaceDecision(False, reason, _instant(tomorrow, window.start if window else time(0), tz))
            # Counted even without a cap: another campaign of the mailbox may have one.
            hour = (f"domain:{mailbox}:{_domain(to)}", now.strftime("%Y-%m-%dT%H"))
            if not self._take(conn, *hour, policy.per_domain_per_hour):
                conn.execute(update(_SLOTS).where(*self._slot(*day)).values(count=_SLOTS.c.count - 1))
                return PaceDecision(False, "domain_rate",
                                    now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
            wait = self._space(conn, mailbox, now, policy.jitter_seconds)
        return PaceDecision(True, None, None, wait)

    def _day_cap(self, conn: Connection, policy: Pacing, mailbox: str, local: datetime) -> tuple[int | None, str]:
        """The mailbox's cap for the local day of ``local``, and the reason a refusal gives."""
        cap, reason = policy.daily_cap, "daily_cap"
        if policy.warmup is not None:
            first = policy.warmup.since or self._first_send(conn, mailbox, local)
            ramp = policy.warmup.cap(first, local.date())
            if cap is None or ramp < cap:
                cap, reason = ramp, "warmup_cap"
        return cap, reason

    def _first_send(self, conn: Connection, mailbox: str, local: datetime) -> date:
        """The local day of the mailbox's first recorded send (today if none)."""
        first = conn.execute(select(func.min(_EVENTS.c.at)).where(
            _EVENTS.c.tenant_id == self.tenant, _EVENTS.c.mailbox == mailbox, _EVENTS.c.kind == "sent")).scalar()
        return local.date() if first is None else min(local.date(), as_utc(first).astimezone(local.tzinfo).date())

    def _slot(self, scope: str, bucket: str) -> tuple[Any, ...]:
        return _SLOTS.c.tenant_id == self.tenant, _SLOTS.c.scope == scope, _SLOTS.c.bucket == bucket

    def _take(self, conn: Connection, scope: str, bucket: str, cap: int | None) -> bool:
        """One more in the bucket, if it holds fewer than ``cap`` (None: no cap, always)."""
        self._ensure(conn, scope, bucket)
        change = update(_SLOTS).where(*self._slot(scope, bucket)).values(count=_SLOTS.c.count + 1)
        if cap is not None:
            change = change.where(_SLOTS.c.count < cap)
        return conn.execute(change).rowcount == 1

    def _ensure(self, conn: Connection, scope: str, bucket: str) -> None:
        row = {"tenant_id": self.tenant, "scope": scope, "bucket": bucket, "count": 0, "next_at": None}
        conn.execute(self._insert(_SLOTS).values(row).on_conflict_do_nothing())

    def _space(self, conn: Connection, mailbox: str, now: datetime, gap: tuple[float, float]) -> float:
        """Reserve the mailbox's next send instant; the seconds until it."""
        key = (f"jitter:{mailbox}", "next")
        self._ensure(conn, *key)
        # The row is locked (PostgreSQL) or the file is (SQLite) until this transaction ends.
        held = aware(conn.execute(select(_SLOTS.c.next_at).where(*self._slot(*key)).with_for_update()).scalar())
        start = now if held is None or held <= now else held
        step = timedelta(seconds=self._rng.uniform(*gap))
        conn.execute(update(_SLOTS).where(*self._slot(*key)).values(next_at=start + step))
        return (start - now).total_seconds()

    def prune(self, *, older_than: timedelta = timedelta(days=7)) -> int:
        """Drop day and hour buckets older than ``older_than`` (a cap only ever reads today's and this
        hour's); the jitter slots and the send events (warm-up and rates read them) stay.  How many."""
        cutoff = (self._clock() - older_than).date().isoformat()
        with self.db.connect(write=True) as conn:
            return int(conn.execute(_SLOTS.delete().where(
                _SLOTS.c.tenant_id == self.tenant, _SLOTS.c.bucket != "next", _SLOTS.c.bucket < cutoff)).rowcount)

    # -- events and health -----------------------------------------------------------------------
    def record(self, kind: str, *, mailbox: str, to: str | None = None, campaign_id: str | None = None,
               lead_id: str | None = None, guard: AutoPause | None = DEFAULT_GUARD) -> None:
        """Keep a ``sent``, ``bounce`` or ``complaint`` of ``mailbox``; after a bounce or complaint,
        ``check_health`` with ``guard`` (a campaign's ``policy.auto_pause``; None: no check)."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"an event kind is one of {', '.join(EVENT_KINDS)}, not {kind!r}")
        mailbox = _mailbox(mailbox)
        with self.db.connect(write=True) as conn:
            conn.execute(_EVENTS.insert().values(
                tenant_id=self.tenant, mailbox=mailbox, kind=kind, campaign_id=campaign_id, lead_id=lead_id,
                domain=_domain(to) if to else None, at=self._clock()))
        if kind != "sent" and guard is not None:
            self.check_health(mailbox, guard)

    def record_sent(self, mailbox: str, sends: list[tuple[str, str | None, str | None]]) -> None:
        """Keep many ``sent`` events of ``mailbox`` at once: ``(to, campaign_id, lead_id)`` each."""
        if not sends:
            return
        mailbox, now = _mailbox(mailbox), self._clock()
        with self.db.connect(write=True) as conn:
            conn.execute(_EVENTS.insert(), [{"tenant_id": self.tenant, "mailbox": mailbox, "kind": "sent",
                                             "campaign_id": campaign_id, "lead_id": lead_id, "domain": _domain(to),
                                             "at": now} for to, campaign_id, lead_id in sends])

    def check_health(self, mailbox: str, guard: AutoPause) -> str | None:
        """Pause ``mailbox`` if a rate over the last ``window_days`` crosses its threshold; the reason, else None."""
        mailbox = _mailbox(mailbox)
        since = self._clock() - timedelta(days=guard.window_days)
        with self.db.connect() as conn:
            counts = dict(conn.execute(select(_EVENTS.c.kind, func.count()).where(
                _EVENTS.c.tenant_id == self.tenant, _EVENTS.c.mailbox == mailbox, _EVENTS.c.at >= since,
            ).group_by(_EVENTS.c.kind)).all())
        sent = counts.get("sent", 0)
        if sent < guard.min_sample:
            return None  # too few sends for a rate to mean anything
        for kind, reason, threshold in (("bounce", "bounce_rate", guard.bounce_rate),
                                        ("complaint", "complaint_rate", guard.complaint_rate)):
            if counts.get(kind, 0) / sent >= threshold:
                evidence = f"{counts[kind]} {kind}s / {sent} sent in {guard.window_days} days"
                self.pause(f"mailbox:{mailbox}", reason=reason, evidence=evidence)
                return reason
        return None

    # -- pauses ----------------------------------------------------------------------------------
    def pause(self, scope: str, *, reason: str, evidence: str | None = None) -> bool:
        """Stop sending for ``scope`` (``mailbox:<address>`` or ``campaign:<id>``); True if newly paused."""
        row = {"tenant_id": self.tenant, "scope": _scope(scope), "reason": reason, "evidence": evidence,
               "since": self._clock()}
        with self.db.connect(write=True) as conn:
            # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT DO NOTHING.
            return conn.execute(self._insert(_PAUSES).values(row).on_conflict_do_nothing()
                                .returning(_PAUSES.c.scope)).first() is not None

    def resume(self, scope: str) -> bool:
        """Let ``scope`` send again; True if it was paused."""
        with self.db.connect(write=True) as conn:
            return conn.execute(_PAUSES.delete().where(
                _PAUSES.c.tenant_id == self.tenant, _PAUSES.c.scope == _scope(scope))).rowcount == 1

    def pauses(self) -> list[dict[str, Any]]:
        """Every pause of the tenant, oldest first."""
        with self.db.connect() as conn:
            rows = conn.execute(select(_PAUSES).where(_PAUSES.c.tenant_id == self.tenant)
                                .order_by(_PAUSES.c.since, _PAUSES.c.scope)).mappings().all()
        return [_pause(row) for row in rows]

    def paused(self, *scopes: str) -> dict[str, Any] | None:
        """The pause of the first of ``scopes`` that is paused, else None."""
        with self.db.connect() as conn:
            return self._paused(conn, [_scope(s) for s in scopes])

    def _paused(self, conn: Connection, scopes: list[str]) -> dict[str, Any] | None:
        rows = conn.execute(select(_PAUSES).where(
            _PAUSES.c.tenant_id == self.tenant, _PAUSES.c.scope.in_(scopes))).mappings().all()
        found = {row["scope"]: row for row in rows}
        return next((_pause(found[s]) for s in scopes if s in found), None)


def _pause(row: Any) -> dict[str, Any]:
    return {"scope": row["scope"], "reason": row["reason"], "evidence": row["evidence"],
            "since": as_utc(row["since"]).isoformat()}


def _instant(day: date, at: time, tz: Any) -> datetime:
    """A local wall-clock time on ``day`` in ``tz``, as a UTC instant (zoneinfo applies that day's offset)."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(timezone.utc)


def _mailbox(address: str) -> str:
    mailbox = address.strip().lower()
    if not mailbox:
        raise InvalidInput("mailbox", "is required")
    return mailbox


def _scope(scope: str) -> str:
    kind, _, name = scope.partition(":")
    return f"mailbox:{_mailbox(name)}" if kind == "mailbox" else scope


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("zone", f"not a time zone: {name!r}") from None


def _domain(address: str) -> str:
    """The recipient's registrable domain (its whole domain part if the suffix list has none)."""
    return registrable_domain(address) or address.rpartition("@")[2].strip().lower()
