"""Shared test helpers: isolated settings per test, and real-service switches.

``USE_REAL_TESTS=1`` turns on tests against real services (CI sets it); then a
missing service is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest
import uuid
from pathlib import Path
from typing import Any

from agent.settings import Settings, get_settings
from agent.storage.db import Database

USE_REAL_TESTS = os.environ.get("USE_REAL_TESTS", "0") == "1"
POSTGRES_URL = os.environ.get("AGENT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def requires_real_services(reason: str = "set USE_REAL_TESTS=1 to run tests against real services"):
    return unittest.skipUnless(USE_REAL_TESTS, reason)


class TempHome:
    """A throwaway data directory with settings pointing into it."""

    def __init__(self, **overrides: Any) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="agent-test-"))
        overrides.setdefault("home", self.path)
        overrides.setdefault("sample_data", "off")
        # Never the developer's own database or tenant, whatever AGENT_* says.
        overrides.setdefault("database_url", f"sqlite:///{self.path / 'agent.db'}")
        overrides.setdefault("tenant", "default")
        overrides.setdefault("outbox_dir", self.path / "outbox")
        self.settings: Settings = get_settings(**overrides)

    def database(self) -> Database:
        return Database.for_settings(self.settings)

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The environment for an ``agent`` subprocess on this home: none of the caller's ``AGENT_*``,
        this home's directory and database, no sample data, plus ``extra``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(AGENT_HOME=str(self.path), AGENT_DATABASE_URL=self.settings.database_url,
                   AGENT_SAMPLE_DATA="off", **extra)
        return env

    def cleanup(self) -> None:
        Database.forget_all()
        shutil.rmtree(self.path, ignore_errors=True)


class PostgresSchema:
    """A fresh schema in a PostgreSQL database (default: the ``test`` one), dropped by ``drop``."""

    def __init__(self, url: str = POSTGRES_URL, *, prefix: str = "t") -> None:
        from sqlalchemy import create_engine, text

        self.name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin = create_engine(url)
        with self._admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))
        sep = "&" if "?" in url else "?"
        self.url = f"{url}{sep}options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        from sqlalchemy import text

        Database.forget_all()
        with self._admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self._admin.dispose()


def postgres_home(test: unittest.TestCase) -> TempHome:
    """A TempHome on a fresh PostgreSQL schema, both cleaned up after ``test``."""
    schema = PostgresSchema()
    test.addCleanup(schema.drop)
    return TempHome(database_url=schema.url)
