"""SQLAlchemy 2 models: tenants' companies, contacts, suppressions and outbox.

The schema itself is created by the Alembic migrations next to this module;
these classes are how the code reads and writes it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    LargeBinary,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Company", "Contact", "Suppression", "OutboxMessage", "DataVersion", "EngineRun",
           "EngineStep", "AuditRunRow", "AuditEnvelopeRow", "AuditRecordRow", "AuditFailureRow",
           "AuditDeliveryRow", "QueueJobRow", "LLMCacheRow", "LeadVectorRow",
           "VariantAssignmentRow", "DraftRow", "InboundMessageRow", "EnrolmentRow", "SendEventRow",
           "PacingSlotRow", "SendingPauseRow", "ImapCursorRow", "utcnow"]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Company(Base):
    """A company, identified per tenant by its registrable domain."""

    __tablename__ = "companies"
    __table_args__ = (
        UniqueConstraint("tenant_id", "domain", name="uq_companies_tenant_domain"),
        Index("ix_companies_tenant_norm", "tenant_id", "normalized_name"),
        Index("ix_companies_tenant_updated", "tenant_id", "updated_at"),
        Index("uq_companies_tenant_name_nodomain", "tenant_id", "normalized_name", unique=True,
              sqlite_where=text("domain IS NULL"), postgresql_where=text("domain IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(255))
    normalized_name: Mapped[str] = mapped_column(String(255))
    domain: Mapped[str | None] = mapped_column(String(255))
    industry: Mapped[str | None] = mapped_column(String(128))
    size: Mapped[str | None] = mapped_column(String(32))
    location: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Contact(Base):
    """A lead: one person at a company, unique per tenant by email."""

    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email", name="uq_contacts_tenant_email"),
        Index("ix_contacts_tenant_company", "tenant_id", "company_id"),
        Index("ix_contacts_tenant_id", "tenant_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default="default")
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id", ondelete="SET NULL"))
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(128))
    last_name: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(64))
    location: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32), default="new")
    lead_score: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str | None] = mapped_column(String(128))
    lawful_basis: Mapped[str | None] = mapped_column(String(64))
    consent_source: Mapped[str | None] = mapped_column(String(255))
    # Denormalised text (name, title, company, industry, location) for full-text search.
    search_text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Suppression(Base):
    """An address (or a whole domain) that must never be contacted again."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("tenant_id", "address", name="uq_suppressions_tenant_address"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default="default")
    # A normalised email address, or "@domain" for a domain-wide suppression.
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(128))
    evidence: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxMessage(Base):
    """One row per (tenant, campaign, lead, step): the idempotency ledger of delivery."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[str] = mapped_column(String(128))
    lead_id: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # drafted|approved|sending|sent|failed|unknown
    message_id: Mapped[str] = mapped_column(String(255), index=True)
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(Text)
    record_hash: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(64))
    provenance: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the attempt in "sending" took the row: a recent claim is a live attempt, an old one a dead worker's.
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DataVersion(Base):
    """A counter per (tenant, scope) that writers bump; caches reload when it moves."""

    __tablename__ = "data_versions"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)


class EngineRun(Base):
    """A flow run known to the checkpoint store: its status and its input."""

    __tablename__ = "engine_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # running|paused|succeeded|failed
    waiting_for: Mapped[str | None] = mapped_column(String(64))
    input_hash: Mapped[str] = mapped_column(String(64))
    input_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class EngineStep(Base):
    """One completed step's envelope, keyed by its stable step key (node, item, visit)."""

    __tablename__ = "engine_steps"

    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("engine_runs.run_id", ondelete="CASCADE"),
                                        primary_key=True)
    step: Mapped[str] = mapped_column(String(512), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    envelope_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditRunRow(Base):
    """A run in the audit trail: its orchestrator, state and attempts."""

    __tablename__ = "audit_runs"
    __table_args__ = (
        Index("ix_audit_runs_state_updated", "state", "updated_at"),
        Index("ix_audit_runs_campaign_created", "campaign_id", "created_at"),
        Index("ix_audit_runs_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    orchestrator: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))  # queued|running|succeeded|failed|dead
    job_id: Mapped[str | None] = mapped_column(String(128))
    campaign_id: Mapped[str | None] = mapped_column(String(128))
    tenant_id: Mapped[str] = mapped_column(String(64), default="default")
    meta_json: Mapped[str] = mapped_column(Text, default="{}")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEnvelopeRow(Base):
    """An envelope a run's node returned, once per (run, content hash)."""

    __tablename__ = "audit_envelopes"
    __table_args__ = (UniqueConstraint("run_id", "envelope_hash", name="uq_audit_envelopes_run_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("audit_runs.run_id", ondelete="CASCADE"))
    node: Mapped[str | None] = mapped_column(Text)
    flow: Mapped[str | None] = mapped_column(Text)
    envelope_hash: Mapped[str] = mapped_column(String(64))
    envelope_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditRecordRow(Base):
    """One record of a saved envelope, indexed for lineage and lookups by lead and message."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("audit_runs.run_id", ondelete="CASCADE"),
                                        index=True)
    node: Mapped[str | None] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64), index=True)
    lead_id: Mapped[str | None] = mapped_column(Text, index=True)
    message_id: Mapped[str | None] = mapped_column(Text, index=True)
    parents_json: Mapped[str] = mapped_column(Text)
    # The record's JSON lives in its envelope (``envelope_id``, at ``position``); rows written
    # before migration 0006 keep their own copy here.
    record_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    envelope_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AuditFailureRow(Base):
    """A failure of a run: the error, and the envelope it came with, if any."""

    __tablename__ = "audit_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("audit_runs.run_id", ondelete="CASCADE"),
                                        index=True)
    node: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    code: Mapped[str | None] = mapped_column(Text)
    envelope_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditDeliveryRow(Base):
    """A message handed to a channel, one row per message id (the latest status)."""

    __tablename__ = "audit_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(Text, unique=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("audit_runs.run_id", ondelete="CASCADE"),
                                        index=True)
    to_address: Mapped[str | None] = mapped_column(Text)
    lead_id: Mapped[str | None] = mapped_column(Text, index=True)
    campaign_id: Mapped[str | None] = mapped_column(Text)
    step: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text)
    provenance_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class QueueJobRow(Base):
    """A job of a broker-backed queue: the truth about it, whatever the broker holds or lost."""

    __tablename__ = "queue_jobs"
    __table_args__ = (
        UniqueConstraint("topic", "idempotency_key", name="uq_queue_jobs_topic_key"),
        Index("ix_queue_jobs_topic_state", "topic", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    topic: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # queued|running|delayed|done|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    job_json: Mapped[str] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    holder: Mapped[str | None] = mapped_column(String(128))
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LLMCacheRow(Base):
    """An LLM answer kept under the hash of everything that shaped it: that prompt is paid for once."""

    __tablename__ = "llm_cache"

    prompt_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    usage_json: Mapped[str] = mapped_column(Text)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class LeadVectorRow(Base):
    """A lead's embedding under one embedder; replaced (new ``id``) when the lead's text changes."""

    __tablename__ = "lead_vectors"
    __table_args__ = (
        UniqueConstraint("contact_id", "embedder", name="uq_lead_vectors_contact_embedder"),
        Index("ix_lead_vectors_tenant_embedder_id", "tenant_id", "embedder", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    embedder: Mapped[str] = mapped_column(String(100))
    text_sha: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class VariantAssignmentRow(Base):
    """The A/B variant a lead got for one step of a campaign: written once, the first writer wins."""

    __tablename__ = "variant_assignments"
    __table_args__ = (
        UniqueConstraint("tenant_id", "campaign_id", "lead_id", "step", name="uq_variant_assignments_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[str] = mapped_column(String(128))
    lead_id: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(Integer)
    variant_id: Mapped[str] = mapped_column(String(64))
    template_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DraftRow(Base):
    """A draft in the approval queue: awaiting_approval, then approved or rejected (maybe edited first)."""

    __tablename__ = "drafts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "campaign_id", "lead_id", "step", name="uq_drafts_key"),
        Index("ix_drafts_tenant_status", "tenant_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[str] = mapped_column(String(128))
    lead_id: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(24))
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    record_json: Mapped[str] = mapped_column(Text)  # the draft record, provenance included, as last edited
    record_hash: Mapped[str] = mapped_column(String(64))
    score: Mapped[int | None] = mapped_column(Integer)
    edited: Mapped[bool] = mapped_column(Boolean, default=False)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class InboundMessageRow(Base):
    """An inbound message, raw, as it came (IMAP, a file, the webhook); classified and acted on after."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("tenant_id", "identity", name="uq_inbound_messages_identity"),
        Index("ix_inbound_messages_tenant_processed", "tenant_id", "processed_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    identity: Mapped[str] = mapped_column(String(300))  # "mid:<Message-ID>" or "sha256:<hex>"
    source: Mapped[str] = mapped_column(String(32))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str | None] = mapped_column(String(32))
    result_json: Mapped[str | None] = mapped_column(Text)
    lead_id: Mapped[str | None] = mapped_column(String(128))
    campaign_id: Mapped[str | None] = mapped_column(String(128))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


class EnrolmentRow(Base):
    """A lead's place in a campaign's sequence: the next step, when it is due, and the thread so far."""

    __tablename__ = "sequence_enrolments"
    __table_args__ = (
        UniqueConstraint("tenant_id", "campaign_id", "lead_id", name="uq_sequence_enrolments_key"),
        Index("ix_sequence_enrolments_due", "tenant_id", "status", "due_at"),
        Index("ix_sequence_enrolments_address", "tenant_id", "to_address"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[str] = mapped_column(String(128))
    lead_id: Mapped[str] = mapped_column(String(128))
    to_address: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16))  # active|paused|stopped|completed
    next_step: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    thread_json: Mapped[str] = mapped_column(Text, default="[]")  # Message-IDs sent, oldest first
    first_subject: Mapped[str | None] = mapped_column(Text)
    stop_reason: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # failed tries of the next step
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SendEventRow(Base):
    """One send, bounce or complaint of a mailbox: what pacing's rates and auto-pause are counted from."""

    __tablename__ = "send_events"
    __table_args__ = (Index("ix_send_events_mailbox", "tenant_id", "mailbox", "kind", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    mailbox: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(16))  # sent|bounce|complaint
    campaign_id: Mapped[str | None] = mapped_column(String(128))
    lead_id: Mapped[str | None] = mapped_column(String(128))
    domain: Mapped[str | None] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PacingSlotRow(Base):
    """A counter in one pacing bucket (a mailbox's day, a domain's hour), taken by conditional UPDATE;
    ``next_at`` is the earliest instant the scope may send again (jitter)."""

    __tablename__ = "pacing_slots"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(400), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SendingPauseRow(Base):
    """A mailbox or campaign that must not send: paused by hand or by the bounce/complaint guard."""

    __tablename__ = "sending_pauses"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(400), primary_key=True)  # "mailbox:<address>" | "campaign:<id>"
    reason: Mapped[str] = mapped_column(String(64))
    evidence: Mapped[str | None] = mapped_column(Text)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImapCursorRow(Base):
    """How far an IMAP folder has been read: its UIDVALIDITY and the highest UID kept."""

    __tablename__ = "imap_cursors"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(400), primary_key=True)  # "user@host:port/folder"
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
