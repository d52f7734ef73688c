"""Inbound mail, stored raw first: one row per message (by Message-ID, else the sha256 of its bytes).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(300), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=True),
        sa.Column("result_json", sa.Text, nullable=True),
        sa.Column("lead_id", sa.String(128), nullable=True),
        sa.Column("campaign_id", sa.String(128), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.UniqueConstraint("tenant_id", "identity", name="uq_inbound_messages_identity"),
    )
    op.create_index("ix_inbound_messages_tenant_processed", "inbound_messages", ["tenant_id", "processed_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_inbound_messages_tenant_processed", table_name="inbound_messages")
    op.drop_table("inbound_messages")
