"""Sequences and pacing: enrolments, send events, pacing slots, sending pauses; IMAP read cursors;
the outbox's claim time.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "sequence_enrolments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("to_address", sa.String(320), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("next_step", sa.Integer, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("thread_json", sa.Text, nullable=False),
        sa.Column("first_subject", sa.Text, nullable=True),
        sa.Column("stop_reason", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant_id", "campaign_id", "lead_id", name="uq_sequence_enrolments_key"),
    )
    op.create_index("ix_sequence_enrolments_due", "sequence_enrolments", ["tenant_id", "status", "due_at"])
    op.create_index("ix_sequence_enrolments_address", "sequence_enrolments", ["tenant_id", "to_address"])
    op.create_table(
        "send_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("mailbox", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=True),
        sa.Column("lead_id", sa.String(128), nullable=True),
        sa.Column("domain", sa.String(255), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_send_events_mailbox", "send_events", ["tenant_id", "mailbox", "kind", "at"])
    op.create_table(
        "pacing_slots",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(400), primary_key=True),
        sa.Column("bucket", sa.String(32), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "sending_pauses",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(400), primary_key=True),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("evidence", sa.Text, nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )


    op.create_table(
        "imap_cursors",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("mailbox", sa.String(400), primary_key=True),
        sa.Column("uidvalidity", sa.BigInteger, nullable=False),
        sa.Column("last_uid", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_at")
    op.drop_table("imap_cursors")
    op.drop_table("sending_pauses")
    op.drop_table("pacing_slots")
    op.drop_index("ix_send_events_mailbox", table_name="send_events")
    op.drop_table("send_events")
    op.drop_index("ix_sequence_enrolments_address", table_name="sequence_enrolments")
    op.drop_index("ix_sequence_enrolments_due", table_name="sequence_enrolments")
    op.drop_table("sequence_enrolments")
