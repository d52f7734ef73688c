"""Audit store: runs, envelopes and their indexed records, failures, deliveries.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _run_id() -> sa.Column:
    return sa.Column("run_id", sa.String(64), sa.ForeignKey("audit_runs.run_id", ondelete="CASCADE"),
                     nullable=False)


def upgrade() -> None:
    op.create_table(
        "audit_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("orchestrator", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(128)),
        sa.Column("campaign_id", sa.String(128)),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("meta_json", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.UniqueConstraint("run_id", name="uq_audit_runs_run_id"),
    )
    op.create_index("ix_audit_runs_state_updated", "audit_runs", ["state", "updated_at"])
    op.create_index("ix_audit_runs_campaign_created", "audit_runs", ["campaign_id", "created_at"])
    op.create_index("ix_audit_runs_created", "audit_runs", ["created_at"])
    op.create_table(
        "audit_envelopes",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_id(),
        sa.Column("node", sa.Text),
        sa.Column("flow", sa.Text),
        sa.Column("envelope_hash", sa.String(64), nullable=False),
        sa.Column("envelope_json", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        # Also the index of a run's envelopes (run_id leads).
        sa.UniqueConstraint("run_id", "envelope_hash", name="uq_audit_envelopes_run_hash"),
    )
    op.create_table(
        "audit_records",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_id(),
        sa.Column("node", sa.Text),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("lead_id", sa.Text),
        sa.Column("message_id", sa.Text),
        sa.Column("parents_json", sa.Text, nullable=False),
        sa.Column("record_json", sa.Text, nullable=False),
    )
    for column in ("run_id", "hash", "lead_id", "message_id"):
        op.create_index(f"ix_audit_records_{column}", "audit_records", [column])
    op.create_table(
        "audit_failures",
        sa.Column("id", sa.Integer, primary_key=True),
        _run_id(),
        sa.Column("node", sa.Text),
        sa.Column("error_type", sa.Text),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("code", sa.Text),
        sa.Column("envelope_json", sa.Text),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_audit_failures_run_id", "audit_failures", ["run_id"])
    op.create_table(
        "audit_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("message_id", sa.Text, nullable=False),
        _run_id(),
        sa.Column("to_address", sa.Text),
        sa.Column("lead_id", sa.Text),
        sa.Column("campaign_id", sa.Text),
        sa.Column("step", sa.Integer),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("provenance_json", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("message_id", name="uq_audit_deliveries_message_id"),
    )
    op.create_index("ix_audit_deliveries_run_id", "audit_deliveries", ["run_id"])
    op.create_index("ix_audit_deliveries_lead_id", "audit_deliveries", ["lead_id"])


def downgrade() -> None:
    # Indexes go with their tables.
    for table in ("audit_deliveries", "audit_failures", "audit_records", "audit_envelopes", "audit_runs"):
        op.drop_table(table)
