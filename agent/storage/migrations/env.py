"""Alembic environment: runs on the connection handed over by agent.storage.db."""

from __future__ import annotations

from alembic import context

from agent.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - guarded by agent.storage.db
    raise RuntimeError("run migrations through agent.storage.db.Database.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
