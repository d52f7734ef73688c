"""Lead embeddings: one vector per (lead, embedder), kept beside the lead so every worker shares them.

``id`` grows with every write (a changed lead's row is replaced, not updated in
place), so an in-process index catches up by reading the rows above the last
id it saw.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lead_vectors",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE",
                                                           name="fk_lead_vectors_contact_id_contacts"),
                  nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("embedder", sa.String(100), nullable=False),
        sa.Column("text_sha", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("contact_id", "embedder", name="uq_lead_vectors_contact_embedder"),
    )
    op.create_index("ix_lead_vectors_tenant_embedder_id", "lead_vectors", ["tenant_id", "embedder", "id"])


def downgrade() -> None:
    op.drop_index("ix_lead_vectors_tenant_embedder_id", table_name="lead_vectors")
    op.drop_table("lead_vectors")
