"""``SqlJobLedger``: the truth about a broker-backed queue's jobs, kept in our database.

A broker moves messages; it does not count attempts across dead workers, keep
dead letters we can query, or survive a restart without persistence.  So every
job of a Celery queue has a row here (``queue_jobs``), written before its
message is published, and a message only asks for its job to be run:

- ``claim`` starts an attempt (attempts + 1, state ``running``, a lease that
  its holder renews) of a job that is queued, delayed, or running under a
  lease that ran out (its worker died).  A job running under a live lease is
  ``Busy``: the message is another copy, and comes back when the lease ends.
  A done or dead job has nothing to do.  So copies of a message never run a
  job twice at once, and publishing a job again is always safe.
- ``finish`` / ``retry`` / ``bury`` settle the attempt in hand: ``done``,
  ``delayed`` until a due time, or ``dead`` with its last error.
- ``overdue`` lists open jobs whose message may be gone (queued or delayed and
  untouched for a while, or running under an expired lease), and marks them
  touched, so that they can be published again.

States: queued → running → done | delayed → running … | dead.  Every change is
one compare-and-set ``UPDATE``, so it holds across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from agent.errors import ConfigurationError, StorageError
from agent.logs import get_logger, redact
from agent.queues.base import Job, QueueStats, error_text
from agent.storage.db import Database, upsert_insert
from agent.storage.models import QueueJobRow
from agent.storage.prepared import Prepared, param
from agent.storage.times import as_utc, utc_clock

__all__ = ["SqlJobLedger", "Claim", "Busy", "OPEN_STATES"]

_JOBS = QueueJobRow.__table__
_LOCK = "agent:queue"
# The statements every job runs, compiled once (see agent.storage.prepared).
_CLAIM = Prepared(
    update(_JOBS).where(_JOBS.c.job_id == param("target"), or_(
        _JOBS.c.state == "queued",
        and_(_JOBS.c.state == "delayed", or_(_JOBS.c.due_at.is_(None), _JOBS.c.due_at <= param("now"))),
        and_(_JOBS.c.state == "running", _JOBS.c.due_at < param("now"))))
    .values(state="running", attempts=_JOBS.c.attempts + 1, holder=param("holder"), due_at=param("due"),
            updated_at=param("now"))
    .returning(_JOBS.c.job_json, _JOBS.c.attempts, _JOBS.c.last_error))
_OURS = update(_JOBS).where(_JOBS.c.job_id == param("target"), _JOBS.c.attempts == param("attempts"),
                            _JOBS.c.state == "running")
_RENEW = Prepared(_OURS.values(due_at=param("due"), updated_at=param("now")))
_FINISH = Prepared(_OURS.values(state=param("state"), holder=None, due_at=param("due"), updated_at=param("now")))
_SETTLE = Prepared(_OURS.values(state=param("state"), holder=None, due_at=param("due"), updated_at=param("now"),
                                last_error=param("error")))
log = get_logger("agent.queue")
OPEN_STATES = ("queued", "running", "delayed")


@dataclass(frozen=True)
class Claim:
    """An attempt in hand: the job, its ``attempts`` counting this one."""

    job: Job

    @property
    def exhausted(self) -> bool:
        """More attempts than allowed: earlier ones died without a word (a worker killed mid-job)."""
        return self.job.attempts > self.job.max_attempts


@dataclass(frozen=True)
class Busy:
    """The job is running under another holder's live lease, for ``seconds`` more at most."""

    seconds: float


class SqlJobLedger:
    """Job rows in ``db`` (a ``Database`` or a URL); ``clock`` gives aware UTC datetimes."""

    def __init__(self, db: Database | str, *, clock: Callable[[], datetime] | None = None) -> None:
        self.db = Database(db) if isinstance(db, str) else db
        if self.db.dialect == "sqlite" and self.db.engine.url.database in (None, "", ":memory:"):
            raise ConfigurationError("SqlJobLedger needs a SQLite file or PostgreSQL: workers share it")
        self.db.migrate()
        self._clock = utc_clock(clock)

    # -- producing ---------------------------------------------------------------------------
    def add(self, topic: str, job: Job) -> tuple[str, bool]:
        """Record ``job`` as queued: ``(job_id, created)``.

        A live job with the same idempotency key on ``topic`` (or the same
        ``job_id``) wins: its id comes back with ``created`` False.  A dead job's
        key is released, so the same work can be queued again.
        """
        return self.add_many(topic, [job])[0]

    def add_many(self, topic: str, jobs: list[Job]) -> list[tuple[str, bool]]:
        """``add`` for each job, new ones in one statement: ``[(job_id, created), ...]`` in order."""
        now = self._clock()
        rows = [{"job_id": job.job_id, "topic": topic, "run_id": job.run_id, "state": "queued", "attempts": 0,
                 "max_attempts": job.max_attempts, "idempotency_key": job.idempotency_key,
                 "job_json": job.model_dump_json(exclude={"attempts"}), "last_error": None, "holder": None,
                 "due_at": None, "created_at": now, "updated_at": now} for job in jobs]
        # One statement per 500 new rows (a statement's bound parameters are limited); a job id twice
        # in one call is one job, the first.
        first = {row["job_id"]: row for row in reversed(rows)}
        unique = list(first.values())[::-1]
        inserted: set[str] = set()
        for start in range(0, len(unique), 500):
            inserted |= self._insert_new(unique[start:start + 500])
        out = []
        seen: set[str] = set()
        for job, row in zip(jobs, rows):
            if job.job_id in inserted and job.job_id not in seen:
                seen.add(job.job_id)
                out.append((job.job_id, True))
                continue
            for _ in range(3):
                # Taken by a live job (that one wins), or by dead ones (their key is released, then ours).
                existing = self._existing(topic, job)
                if existing is not None:
                    out.append((existing, False))
                    break
                if job.job_id in self._insert_new([row]):
                    out.append((job.job_id, True))
                    break
            else:
                raise StorageError(f"job {job.job_id}: its idempotency key keeps conflicting")
        return out

    def _insert_new(self, rows: list[dict[str, Any]]) -> set[str]:
        """Insert the rows that clash with no live job id or key; the ids inserted."""
        if not rows:
            return set()
        insert = upsert_insert(self.db.dialect)
        if insert is None:  # another database: one at a time, a clash is an IntegrityError
            done = set()
            for row in rows:
                try:
                    with self.db.connect() as conn:
                        conn.execute(_JOBS.insert().values(row))
                    done.add(row["job_id"])
                except StorageError as exc:
                    if not isinstance(exc.__cause__, IntegrityError):
                        raise
            return done
        # One statement with the rows as parameters (SQLAlchemy's "insert many values"): compiled once
        # and cached, where a VALUES clause of the rows themselves was compiled anew every call.
        statement = insert(_JOBS).on_conflict_do_nothing().returning(_JOBS.c.job_id)
        with self.db.connect() as conn:
            return set(conn.execute(statement, rows).scalars())

    def _existing(self, topic: str, job: Job) -> str | None:
        same = _JOBS.c.job_id == job.job_id
        if job.idempotency_key is not None:
            same = or_(same, and_(_JOBS.c.topic == topic, _JOBS.c.idempotency_key == job.idempotency_key))
        # Read, then maybe write: the write lock first (SQLite would refuse to upgrade a stale read).
        with self.db.connect(lock=_LOCK) as conn:
            found = conn.execute(select(_JOBS.c.job_id, _JOBS.c.state).where(same)).all()
            for job_id, state in found:
                if state != "dead" or job_id == job.job_id:
                    return job_id  # live work with this key, or this very job, already dead-lettered
            if found:  # only dead holders of the key: release it
                conn.execute(update(_JOBS).where(_JOBS.c.topic == topic,
                                                 _JOBS.c.idempotency_key == job.idempotency_key)
                             .values(idempotency_key=None))
        return None

    # -- consuming ---------------------------------------------------------------------------
    def claim(self, job_id: str, *, lease: float, holder: str | None = None) -> Claim | Busy | None:
        """Start an attempt of ``job_id`` under a ``lease`` of that many seconds.

        ``Busy`` if another holder's lease on it is live; None if there is
        nothing to do (the job is unknown, done or dead).
        """
        now = self._clock()
        with self.db.connect(write=True) as conn:
            row = _CLAIM.execute(conn, {"target": job_id, "now": now, "holder": holder,
                                        "due": now + timedelta(seconds=lease)}).fetchone()
            if row is None:
                # Held under a live lease, or a retry not yet due: this copy comes back then.
                held = conn.execute(select(_JOBS.c.due_at).where(_JOBS.c.job_id == job_id,
                                                                 _JOBS.c.state.in_(("running", "delayed")))).scalar()
                return None if held is None else Busy(max(0.0, (as_utc(held) - now).total_seconds()))
        job_json, attempts, last_error = row
        job = _readable(job_json)
        if job is None:
            # Written by an older version this one cannot read: dead-lettered, not retried forever.
            with self.db.connect(write=True) as conn:
                conn.execute(update(_JOBS).where(_JOBS.c.job_id == job_id, _JOBS.c.state == "running")
                             .values(state="dead", holder=None, due_at=None, updated_at=now,
                                     last_error="the stored job cannot be read by this version"))
            return None
        job = job.model_copy(update={"attempts": attempts})
        if last_error:
            job.meta["last_error"] = last_error  # redacted when it was stored
        return Claim(job)

    def renew(self, claim: Claim, *, lease: float) -> bool:
        """Push back the lease of an attempt in hand; False if the job is no longer ours."""
        now = self._clock()
        return self._settle(claim, _RENEW, due=now + timedelta(seconds=lease), now=now)

    def finish(self, claim: Claim) -> bool:
        """The attempt succeeded: the job is done."""
        return self._settle(claim, _FINISH, state="done", due=None)

    def retry(self, claim: Claim, *, delay: float, error: BaseException | str | None) -> bool:
        """The attempt failed: the job waits ``delay`` seconds before it may run again."""
        due = self._clock() + timedelta(seconds=max(0.0, delay))
        return self._settle(claim, _SETTLE, state="delayed", due=due, error=_stored(error))

    def bury(self, claim: Claim, *, error: BaseException | str | None) -> bool:
        """The job gives up: dead-lettered with its last error."""
        return self._settle(claim, _SETTLE, state="dead", due=None, error=_stored(error))

    def _settle(self, claim: Claim, statement: Prepared, **values: Any) -> bool:
        # Only the attempt in hand, and no later one: the same attempt count, still running.
        params = {"target": claim.job.job_id, "attempts": claim.job.attempts, "now": self._clock(), **values}
        with self.db.connect(write=True) as conn:
            return statement.execute(conn, params).rowcount == 1

    # -- recovery ----------------------------------------------------------------------------
    def overdue(self, topic: str | None, *, after: float, limit: int = 1000) -> list[tuple[str, Job]]:
        """Open jobs whose message may be lost, as ``(topic, job)``; each is marked touched, so the
        next call passes it over for ``after`` seconds more.

        Overdue: untouched for ``after`` seconds and either queued, delayed past
        its due time, or running under a lease that ran out (its worker is gone).
        """
        now = self._clock()
        stale = now - timedelta(seconds=after)
        query = select(_JOBS.c.id, _JOBS.c.topic, _JOBS.c.job_json, _JOBS.c.state, _JOBS.c.updated_at).where(
            _JOBS.c.updated_at < stale, or_(
                _JOBS.c.state == "queued",
                and_(_JOBS.c.state == "delayed", _JOBS.c.due_at < now),
                and_(_JOBS.c.state == "running", _JOBS.c.due_at < now)))
        if topic is not None:
            query = query.where(_JOBS.c.topic == topic)
        found = []
        with self.db.connect(lock=_LOCK) as conn:
            for row in conn.execute(query.order_by(_JOBS.c.id).limit(limit)).all():
                # Compare and set: of two recoverers, one publishes the job again.
                touched = conn.execute(update(_JOBS).where(_JOBS.c.id == row.id, _JOBS.c.state == row.state,
                                                           _JOBS.c.updated_at == row.updated_at)
                                       .values(updated_at=now)).rowcount
                job = _readable(row.job_json)
                if touched == 1 and job is not None:  # an unreadable one is dead-lettered by its next claim
                    found.append((row.topic, job))
        return found

    # -- queries -----------------------------------------------------------------------------
    def state(self, job_id: str) -> dict[str, Any] | None:
        """The row of ``job_id`` (state, attempts, last_error, holder), or None."""
        with self.db.connect() as conn:
            row = conn.execute(select(_JOBS).where(_JOBS.c.job_id == job_id)).mappings().first()
        return None if row is None else {k: row[k] for k in ("job_id", "topic", "run_id", "state", "attempts",
                                                                "max_attempts", "last_error", "holder")}

    def stats(self, topic: str) -> QueueStats:
        with self.db.connect() as conn:
            counts = dict(conn.execute(select(_JOBS.c.state, func.count()).where(_JOBS.c.topic == topic)
                                       .group_by(_JOBS.c.state)).all())
        return QueueStats(ready=counts.get("queued", 0), in_flight=counts.get("running", 0),
                          delayed=counts.get("delayed", 0), dead=counts.get("dead", 0))

    def open_count(self, topic: str | None = None) -> int:
        query = select(func.count()).select_from(_JOBS).where(_JOBS.c.state.in_(OPEN_STATES))
        if topic is not None:
            query = query.where(_JOBS.c.topic == topic)
        with self.db.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def dead_letters(self, topic: str) -> list[Job]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_JOBS.c.job_json, _JOBS.c.attempts, _JOBS.c.last_error)
                                .where(_JOBS.c.topic == topic, _JOBS.c.state == "dead")
                                .order_by(_JOBS.c.updated_at, _JOBS.c.id)).all()
        jobs = []
        for row in rows:
            job = _readable(row.job_json)
            if job is not None:
                jobs.append(job.model_copy(update={"attempts": row.attempts,
                                                   "meta": {**job.meta, "last_error": row.last_error}}))
        return jobs

    def prune(self, *, older_than: timedelta, now: datetime | None = None) -> int:
        """Forget done jobs settled more than ``older_than`` ago (their keys become free again)."""
        cutoff = as_utc(now or self._clock()) - older_than
        with self.db.connect() as conn:
            return int(conn.execute(_JOBS.delete().where(_JOBS.c.state == "done", _JOBS.c.updated_at < cutoff))
                       .rowcount or 0)



def _readable(text: str) -> Job | None:
    """A stored job, or None if this version cannot read it (it is logged)."""
    try:
        return Job.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        log.error("a stored job cannot be read: %s", str(exc).splitlines()[0])
        return None


def _stored(error: BaseException | str | None) -> str | None:
    """An error as the ledger keeps it (and messages carry it): redacted, at most 2,000 characters."""
    text = error_text(error)
    return None if text is None else redact(text)[:2000]
