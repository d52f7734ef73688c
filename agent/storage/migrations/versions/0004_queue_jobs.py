"""Jobs of broker-backed queues (Celery): state, attempts and dead letters kept in our store.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "queue_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("job_json", sa.Text, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("holder", sa.String(128)),
        sa.Column("due_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("job_id", name="uq_queue_jobs_job_id"),
        sa.UniqueConstraint("topic", "idempotency_key", name="uq_queue_jobs_topic_key"),
    )
    op.create_index("ix_queue_jobs_topic_state", "queue_jobs", ["topic", "state"])


def downgrade() -> None:
    op.drop_index("ix_queue_jobs_topic_state", table_name="queue_jobs")
    op.drop_table("queue_jobs")
