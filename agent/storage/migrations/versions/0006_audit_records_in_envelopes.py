"""An audit record's JSON is kept once, in its envelope: its index row points there.

Rows written before keep their own ``record_json``; new rows leave it empty
and name their envelope and their position in it.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("envelope_id", sa.Integer))
        batch.add_column(sa.Column("position", sa.Integer))
        batch.alter_column("record_json", existing_type=sa.Text, nullable=True)


def downgrade() -> None:
    # Each row gets its record's JSON back from its envelope before the columns go.
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT r.id, r.position, e.envelope_json FROM audit_records r "
                                "JOIN audit_envelopes e ON e.id = r.envelope_id "
                                "WHERE r.record_json IS NULL")).all()
    for row_id, position, envelope_json in rows:
        record = json.loads(envelope_json)["records"][position]
        conn.execute(sa.text("UPDATE audit_records SET record_json = :body WHERE id = :id"),
                     {"body": json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
                      "id": row_id})
    with op.batch_alter_table("audit_records") as batch:
        batch.alter_column("record_json", existing_type=sa.Text, nullable=False)
        batch.drop_column("position")
        batch.drop_column("envelope_id")
