"""Engine checkpoints: runs and their completed steps.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "engine_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("waiting_for", sa.String(64)),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("input_json", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_engine_runs_updated_at", "engine_runs", ["updated_at"])
    op.create_table(
        "engine_steps",
        sa.Column("run_id", sa.String(64), sa.ForeignKey("engine_runs.run_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("step", sa.String(512), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("envelope_json", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("engine_steps")
    op.drop_index("ix_engine_runs_updated_at", table_name="engine_runs")
    op.drop_table("engine_runs")
