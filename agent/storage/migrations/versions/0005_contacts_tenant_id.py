"""Leads of a tenant in id order: keyset pages (``after_id``) read on from where the last ended.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_contacts_tenant_id", "contacts", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_contacts_tenant_id", table_name="contacts")
