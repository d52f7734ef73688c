"""An audit record's JSON is kept once, in its envelope: its index row points there.

Rows written before keep their own ``record_json``; new rows leave it empty
and name their envelope and their position in it.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import itertools
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
    # Envelope by envelope: each is read and parsed once, whatever the number of its records.
    rows = conn.execute(sa.text("SELECT id, envelope_id, position FROM audit_records "
                                "WHERE record_json IS NULL ORDER BY envelope_id")).all()
    for envelope_id, group in itertools.groupby(rows, key=lambda row: row[1]):
        body = None if envelope_id is None else conn.execute(
            sa.text("SELECT envelope_json FROM audit_envelopes WHERE id = :id"), {"id": envelope_id}).scalar()
        if body is None:
            continue
        records = json.loads(body)["records"]
        conn.execute(sa.text("UPDATE audit_records SET record_json = :body WHERE id = :id"),
                     [{"id": row_id, "body": json.dumps(records[position], ensure_ascii=False,
                                                        separators=(",", ":"), sort_keys=True)}
                      for row_id, _envelope, position in group])
    # A row whose envelope is gone cannot get its record back: it goes too.
    conn.execute(sa.text("DELETE FROM audit_records WHERE record_json IS NULL"))
    with op.batch_alter_table("audit_records") as batch:
        batch.alter_column("record_json", existing_type=sa.Text, nullable=False)
        batch.drop_column("position")
        batch.drop_column("envelope_id")
