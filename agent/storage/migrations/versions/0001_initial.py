"""Initial schema: companies, contacts (+ full-text index), suppressions, outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "companies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("normalized_name", sa.String(255), nullable=False),
        sa.Column("domain", sa.String(255)),
        sa.Column("industry", sa.String(128)),
        sa.Column("size", sa.String(32)),
        sa.Column("location", sa.String(128)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "domain", name="uq_companies_tenant_domain"),
    )
    op.create_index("ix_companies_tenant_norm", "companies", ["tenant_id", "normalized_name"])
    # Without a domain, the normalised name is the company's identity.
    op.create_index(
        "uq_companies_tenant_name_nodomain", "companies", ["tenant_id", "normalized_name"], unique=True,
        sqlite_where=sa.text("domain IS NULL"), postgresql_where=sa.text("domain IS NULL"),
    )
    op.create_index("ix_companies_tenant_updated", "companies", ["tenant_id", "updated_at"])

    op.create_table(
        "contacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column(
            "company_id",
            sa.Integer,
            sa.ForeignKey("companies.id", ondelete="SET NULL", name="fk_contacts_company_id_companies"),
        ),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("first_name", sa.String(128)),
        sa.Column("last_name", sa.String(128)),
        sa.Column("title", sa.String(255)),
        sa.Column("phone", sa.String(64)),
        sa.Column("location", sa.String(128)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("lead_score", sa.Float),
        sa.Column("source", sa.String(128)),
        sa.Column("lawful_basis", sa.String(64)),
        sa.Column("consent_source", sa.String(255)),
        sa.Column("search_text", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "email", name="uq_contacts_tenant_email"),
    )
    op.create_index("ix_contacts_tenant_company", "contacts", ["tenant_id", "company_id"])

    # One counter per (tenant, scope), bumped by every write through the lead store,
    # so in-process caches (the company-name index) know when to reload.
    op.create_table(
        "data_versions",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )

    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("evidence", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "address", name="uq_suppressions_tenant_address"),
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("to_address", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("location", sa.Text),
        sa.Column("record_hash", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("provenance", sa.JSON),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
    )
    op.create_index("ix_outbox_message_id", "outbox", ["message_id"])

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        # External-content FTS5 index over contacts.search_text.  Updates and deletes are
        # mirrored by triggers; inserts are indexed in bulk by
        # agent.storage.fulltext.index_new_contacts, several times faster than a per-row
        # trigger on large imports.  FTS5 must never be told to delete a row it has not
        # indexed (that corrupts it), so the triggers first ask its docsize table.
        op.execute(
            "CREATE VIRTUAL TABLE contacts_fts USING fts5("
            "search_text, content='contacts', content_rowid='id', "
            "tokenize='unicode61 remove_diacritics 2')"
        )
        forget_old = (
            "INSERT INTO contacts_fts(contacts_fts, rowid, search_text) "
            "SELECT 'delete', old.id, old.search_text "
            "WHERE EXISTS (SELECT 1 FROM contacts_fts_docsize WHERE id = old.id);"
        )
        op.execute(f"CREATE TRIGGER contacts_fts_ad AFTER DELETE ON contacts BEGIN {forget_old} END")
        op.execute(
            f"CREATE TRIGGER contacts_fts_au AFTER UPDATE OF search_text ON contacts BEGIN {forget_old} "
            "INSERT INTO contacts_fts(rowid, search_text) VALUES (new.id, new.search_text); END"
        )
    elif dialect == "postgresql":
        op.execute(
            "CREATE INDEX ix_contacts_search_fts ON contacts "
            "USING gin (to_tsvector('simple', search_text))"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for trigger in ("contacts_fts_ad", "contacts_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS contacts_fts")
    op.drop_table("data_versions")
    op.drop_table("outbox")
    op.drop_table("suppressions")
    op.drop_table("contacts")
    op.drop_table("companies")
