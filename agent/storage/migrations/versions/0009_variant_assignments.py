"""A/B variant assignments: the variant a lead got for one step of a campaign, written once.

The first writer wins (insert, or read the row that is already there), so a
lead keeps its variant when the campaign's weights change later.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "variant_assignments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("variant_id", sa.String(64), nullable=False),
        sa.Column("template_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # The key's leading columns (tenant, campaign) also serve the counts per variant.
        sa.UniqueConstraint("tenant_id", "campaign_id", "lead_id", "step", name="uq_variant_assignments_key"),
    )


def downgrade() -> None:
    op.drop_table("variant_assignments")
