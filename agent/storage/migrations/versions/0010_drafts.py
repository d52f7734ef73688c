"""The approval queue: drafts waiting for an operator, one per (tenant, campaign, lead, step).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drafts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("to_address", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("record_json", sa.Text, nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False),
        sa.Column("score", sa.Integer, nullable=True),
        sa.Column("edited", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("tenant_id", "campaign_id", "lead_id", "step", name="uq_drafts_key"),
    )
    op.create_index("ix_drafts_tenant_status", "drafts", ["tenant_id", "status", "id"])
    op.create_index("ix_drafts_run_id", "drafts", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_drafts_run_id", table_name="drafts")
    op.drop_index("ix_drafts_tenant_status", table_name="drafts")
    op.drop_table("drafts")
