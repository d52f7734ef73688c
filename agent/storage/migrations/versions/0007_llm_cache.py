"""LLM answers kept under their prompt's hash: the same prompt is paid for once, across processes.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "llm_cache",
        sa.Column("prompt_hash", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("usage_json", sa.Text, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_llm_cache_created_at", "llm_cache", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_llm_cache_created_at", table_name="llm_cache")
    op.drop_table("llm_cache")
