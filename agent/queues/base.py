"""The queue contract: the ``Job`` a queue carries and the verbs every backend offers.

Delivery is at-least-once.  ``dequeue`` hands a job out and counts the attempt;
the job stays *in flight* until it is acked or nacked, or until its visibility
timeout runs out, when it is delivered again under the same ``job_id``.  A job
that has used up ``max_attempts`` goes to the topic's dead-letter list instead
of back to the queue.  ``join()`` lets tests and shutdown code wait for a topic
to drain without sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from agent.envelope import _check_utc_iso, new_run_id, utc_now_iso
from agent.errors import InvalidInput, PayloadError
from agent.validation import first_error

__all__ = ["Job", "QueueStats", "JobQueue", "Queue", "check_topic", "error_text"]

_TOPIC = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


JobId = Annotated[str, Field(min_length=1, max_length=64)]  # a job's or a run's id
_JOB_ID: TypeAdapter[str] = TypeAdapter(JobId)


def parse_job_id(value: Any, field: str = "job_id") -> str:
    """``value`` as a job id; a ``PayloadError`` naming ``field`` if it is not one."""
    try:
        return _JOB_ID.validate_python(value, strict=True)
    except ValidationError as exc:
        raise PayloadError(*first_error(exc, field)) from None


class Job(BaseModel):
    """One unit of work: run ``orchestrator`` on ``payload`` as part of run ``run_id``.

    ``attempts`` counts deliveries (``dequeue`` raises it); ``idempotency_key``
    makes enqueueing the same work twice on a topic a no-op; ``meta`` carries
    what the queue and workers note about the job (``last_error``).
    """

    model_config = ConfigDict(extra="forbid")
    job_id: JobId = Field(default_factory=new_run_id)
    run_id: JobId = Field(default_factory=new_run_id)
    orchestrator: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)
    # strict: "3" or True must not pass as a count.
    attempts: int = Field(default=0, ge=0, strict=True)
    max_attempts: int = Field(default=5, ge=1, le=100, strict=True)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    enqueued_at: str = Field(default_factory=utc_now_iso)
    meta: dict[str, Any] = Field(default_factory=dict)

    _utc = field_validator("enqueued_at")(_check_utc_iso)

    @field_validator("meta")
    @classmethod
    def _known_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        # The audit trail files a job's run under meta["campaign_id"]: it must be a name.
        campaign = meta.get("campaign_id")
        if campaign is not None and (not isinstance(campaign, str) or not 1 <= len(campaign) <= 128):
            raise ValueError("campaign_id must be a string of 1 to 128 characters")
        return meta

    @classmethod
    def parse(cls, value: Job | Mapping[str, Any], prefix: str = "job") -> Job:
        """``value`` as a ``Job``; an error is a ``PayloadError`` naming ``<prefix>.<field>``."""
        if isinstance(value, Job):
            return value
        if not isinstance(value, Mapping):
            raise PayloadError(prefix, "must be a Job or an object of job fields")
        try:
            return cls.model_validate(dict(value))
        except ValidationError as exc:
            raise PayloadError(*first_error(exc, prefix)) from None


@dataclass(frozen=True)
class QueueStats:
    """Jobs of one topic by state: waiting to be taken, taken, waiting out a delay, given up."""

    ready: int
    in_flight: int
    delayed: int
    dead: int


def check_topic(topic: Any) -> str:
    """``topic`` if it is 1..64 letters, digits or ``_.:-``; else ``InvalidInput("topic", ...)``."""
    if not isinstance(topic, str) or _TOPIC.fullmatch(topic) is None:
        raise InvalidInput("topic", "must be 1 to 64 letters, digits or _ . : -")
    return topic


def error_text(error: BaseException | str | None) -> str | None:
    """How an error is kept in ``meta["last_error"]``: ``"ValueError: boom"`` or the text given."""
    if error is None or isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}"


class JobQueue:
    """What every queue backend offers its producers; topics are checked with ``check_topic``.

    Push backends (Celery) stop here: their workers are handed jobs by the
    broker.  Pull backends are a ``Queue``, which adds the verbs a ``Worker``
    takes jobs with.

    Errors: a bad topic or job raises ``InvalidInput`` (``PayloadError`` for a
    job) naming the field and enqueues nothing; ``enqueue`` on a stopped queue
    raises ``ConfigurationError``.
    """

    def enqueue(self, topic: str, job: Job | Mapping[str, Any]) -> str:
        """Add ``job`` to ``topic`` and return its ``job_id``.

        A job whose ``idempotency_key`` is already known on ``topic`` (queued, in
        flight, delayed or acked not long ago) adds nothing: the first job's id
        is returned.
        """
        raise NotImplementedError

    def enqueue_many(self, topic: str, jobs: Iterable[Job | Mapping[str, Any]]) -> list[str]:
        """``enqueue`` each job; all are checked before any is added."""
        parsed = [Job.parse(job, f"jobs[{i}]") for i, job in enumerate(jobs)]
        return [self.enqueue(topic, job) for job in parsed]

    def dead_letters(self, topic: str) -> list[Job]:
        """The jobs of ``topic`` that ran out of attempts, oldest first."""
        raise NotImplementedError

    def stats(self, topic: str) -> QueueStats:
        raise NotImplementedError

    def join(self, topic: str | None = None, timeout: float | None = None) -> bool:
        """Wait until ``topic`` (every topic if None) has no ready, delayed or in-flight job.

        True if it drained, False if ``timeout`` seconds passed first.
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Refuse new jobs (and, on a pull queue, wake every blocked ``dequeue``)."""
        raise NotImplementedError


class Queue(JobQueue):
    """A pull queue: the producer verbs plus those a ``Worker`` takes and settles jobs with.

    Acking or nacking a job that is not in flight raises ``InvalidInput("job_id", ...)``.
    """

    def dequeue(self, topic: str, timeout: float | None = None) -> Job | None:
        """Take the next ready job of ``topic`` (attempts + 1), waiting up to ``timeout`` seconds.

        ``None`` when nothing came in time or the queue was stopped; ``timeout=None``
        waits until a job comes or ``stop()`` is called.
        """
        raise NotImplementedError

    # ``attempt`` (the ``attempts`` of the job as dequeued) names the delivery in hand: a worker
    # whose job was redelivered to another one after its visibility timeout is refused
    # (InvalidInput) instead of settling the newer delivery.
    def ack(self, job_id: str, *, attempt: int | None = None) -> None:
        """The job is done: forget it (its idempotency key is remembered)."""
        raise NotImplementedError

    def nack(self, job_id: str, *, delay: float = 0.0, error: BaseException | str | None = None,
             attempt: int | None = None) -> None:
        """The job failed: ready again after ``delay`` seconds, or dead-lettered if out of attempts."""
        raise NotImplementedError

    def dead(self, job_id: str, *, error: BaseException | str | None = None, attempt: int | None = None) -> None:
        """Dead-letter a job in flight at once, attempts left or not: retrying cannot help it."""
        raise NotImplementedError

    def extend(self, job_id: str, *, attempt: int | None = None, seconds: float | None = None) -> None:
        """Push back the visibility deadline of a job in hand (default: one visibility timeout)."""
        raise NotImplementedError
