"""Storage: where the embedded database lives, migrations, and bad configuration."""

from __future__ import annotations

import os
import unittest
from unittest import mock

from sqlalchemy import inspect

from agent.errors import ConfigurationError, InvalidInput, StorageError
from agent.settings import get_settings
from agent.storage.db import Database
from tests.support import PostgresSchema, TempHome, requires_real_services

TABLES = {"companies", "contacts", "suppressions", "outbox", "data_versions", "alembic_version"}


class SettingsTest(unittest.TestCase):
    def test_database_url_comes_from_the_environment(self) -> None:
        with mock.patch.dict(os.environ, {"AGENT_DATABASE_URL": "sqlite:////tmp/elsewhere.db"}):
            self.assertEqual(get_settings().resolved_database_url, "sqlite:////tmp/elsewhere.db")

    def test_default_is_a_sqlite_file_in_the_per_user_data_dir(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env["XDG_DATA_HOME"] = "/data/x"
        with mock.patch.dict(os.environ, env, clear=True):
            settings = get_settings()
        self.assertEqual(settings.resolved_database_url, "sqlite:////data/x/agent/agent.db")
        self.assertTrue(settings.wants_sample_data)

    def test_explicit_url_does_not_get_sample_data_by_default(self) -> None:
        self.assertFalse(get_settings(database_url="sqlite:///x.db").wants_sample_data)

    def test_bad_setting_raises_configuration_error_naming_it(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            get_settings(sample_size=-1)
        self.assertIn("sample_size", str(caught.exception))

    def test_unusable_database_url_raises_configuration_error(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            Database("nonsense://")
        self.assertIn("database_url", str(caught.exception))


class UnreachableDatabaseTest(unittest.TestCase):
    def test_a_database_that_refuses_connections_raises_storage_error_without_the_password(self) -> None:
        # Given: nothing listens on port 1
        db = Database("postgresql+psycopg://app:s3cret@127.0.0.1:1/none?connect_timeout=2")
        # When
        with self.assertRaises(StorageError) as caught:
            db.migrate()
        # Then
        self.assertIn("127.0.0.1:1", str(caught.exception))
        self.assertNotIn("s3cret", str(caught.exception))


class FullTextIndexTest(unittest.TestCase):
    def test_rows_written_outside_the_lead_store_never_corrupt_the_sqlite_index(self) -> None:
        # Given: a contact inserted by plain SQL, so never indexed in bulk
        from sqlalchemy import text

        home = TempHome()
        self.addCleanup(home.cleanup)
        db = home.database()
        with db.connect() as conn:
            conn.execute(text("INSERT INTO contacts (tenant_id, email, status, search_text, created_at, updated_at) "
                              "VALUES ('default', 'raw@x.example', 'new', 'Raw Person', '2026-01-01 00:00:00', "
                              "'2026-01-01 00:00:00')"))
        # When: it is updated, then deleted, through the triggers
        with db.connect() as conn:
            conn.execute(text("UPDATE contacts SET search_text = 'Raw Changed' WHERE email = 'raw@x.example'"))
            found = conn.execute(text("SELECT count(*) FROM contacts_fts WHERE contacts_fts MATCH 'changed'")).scalar()
            conn.execute(text("DELETE FROM contacts WHERE email = 'raw@x.example'"))
        # Then: the update indexed it, and FTS5's own integrity check passes
        self.assertEqual(found, 1)
        with db.connect() as conn:
            conn.execute(text("INSERT INTO contacts_fts(contacts_fts) VALUES ('integrity-check')"))


class ConcurrentFirstOpenTest(unittest.TestCase):
    def test_processes_opening_a_fresh_store_at_once_migrate_and_seed_it_once(self) -> None:
        # Given: an empty data directory and three processes about to open it
        import shutil
        import subprocess
        import sys
        import tempfile

        home = tempfile.mkdtemp(prefix="agent-open-")
        self.addCleanup(shutil.rmtree, home, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(AGENT_HOME=home, AGENT_SAMPLE_SIZE="500")
        code = ("from agent.storage.db import Database; from agent.storage.models import Contact;"
                "print(Database.for_settings().count(Contact))")
        # When
        procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outputs = [p.communicate(timeout=120) for p in procs]
        # Then: every process succeeds and sees the one sample load
        for proc, (out, errors) in zip(procs, outputs, strict=True):
            self.assertEqual(proc.returncode, 0, errors)
            self.assertEqual(out.strip(), "500")


class MigrationSuite:
    home: TempHome

    def test_migrations_create_every_table(self) -> None:
        db = self.home.database()
        self.assertTrue(TABLES <= set(inspect(db.engine).get_table_names()))

    def test_migrating_again_is_a_no_op(self) -> None:
        db = self.home.database()
        db.migrate()
        db.migrate()
        self.assertTrue(TABLES <= set(inspect(db.engine).get_table_names()))

    def test_downgrade_to_base_and_back_up_round_trips(self) -> None:
        from alembic import command
        from alembic.config import Config

        db = self.home.database()
        cfg = Config()
        cfg.set_main_option("script_location", str(__import__("agent.storage.db").storage.db.MIGRATIONS_DIR))
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        self.assertNotIn("contacts", inspect(db.engine).get_table_names())
        db.migrate()
        self.assertTrue(TABLES <= set(inspect(db.engine).get_table_names()))


class SQLiteMigrationTest(MigrationSuite, unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome()

    def tearDown(self) -> None:
        self.home.cleanup()


@requires_real_services()
class PostgresMigrationTest(MigrationSuite, unittest.TestCase):
    def setUp(self) -> None:
        self.schema = PostgresSchema()
        self.home = TempHome(database_url=self.schema.url)

    def tearDown(self) -> None:
        self.home.cleanup()
        self.schema.drop()


class TransactionTest(unittest.TestCase):
    """``Database.transaction``: several stores' writes commit together, or not at all."""

    def setUp(self) -> None:
        from agent.audit import SqlAuditStore
        from agent.queues.ledger import SqlJobLedger

        self.home = TempHome()
        self.addCleanup(self.home.cleanup)
        self.db = self.home.database()
        self.audit, self.ledger = SqlAuditStore(self.db), SqlJobLedger(self.db)

    def test_writes_of_two_stores_in_one_transaction_commit_together(self) -> None:
        from agent.queues import Job

        # Given a queued job
        [(job_id, _)] = self.ledger.add_many("t", [Job(orchestrator="lead")])
        # When its claim and its audited start are written in one transaction
        with self.db.transaction():
            claim = self.ledger.claim(job_id, lease=60)
            self.audit.begin_attempt(claim.job.run_id, orchestrator="lead", job_id=job_id)
        # Then both are there
        self.assertEqual(self.ledger.state(job_id)["state"], "running")
        self.assertEqual(self.audit.get_run(claim.job.run_id).state, "running")

    def test_a_failure_inside_the_transaction_writes_nothing_of_either(self) -> None:
        from agent.queues import Job

        # Given a queued job
        [(job_id, _)] = self.ledger.add_many("t", [Job(orchestrator="lead", run_id="run-1")])
        # When the audit write fails after the claim, within one transaction
        with self.assertRaises(InvalidInput), self.db.transaction():
            self.ledger.claim(job_id, lease=60)
            self.audit.begin_attempt("run-1", orchestrator="")  # refused: no orchestrator
        # Then the claim was rolled back with it: the job is still queued, no run exists
        self.assertEqual(self.ledger.state(job_id)["state"], "queued")
        self.assertIsNone(self.audit.get_run("run-1"))

    def test_a_nested_transaction_joins_the_outer_one(self) -> None:
        with self.assertRaises(RuntimeError), self.db.transaction():
            with self.db.transaction():
                self.audit.start_run("inner", orchestrator="lead")
            raise RuntimeError("the outer block fails after the inner one ended")
        self.assertIsNone(self.audit.get_run("inner"))


class WriterLockTest(unittest.TestCase):
    """SQLite writers of one file take turns through a lock file, across processes."""

    def test_a_forked_child_waits_for_the_lock_its_parent_holds(self) -> None:
        import fcntl
        import multiprocessing

        home = TempHome()
        self.addCleanup(home.cleanup)
        db = home.database()
        context = multiprocessing.get_context("fork")
        answer = context.Queue()

        def child() -> None:
            # The child's own descriptor: without it, flock on the inherited one would succeed at once.
            locks = db._writers
            with locks._thread:
                fd = os.open(locks.path, os.O_RDWR) if locks._fd is None else locks._fd
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    answer.put("got it")
                except BlockingIOError:
                    answer.put("waits")

        with db.connect(write=True) as conn:  # the parent holds the writer lock
            conn.exec_driver_sql("SELECT 1")
            proc = context.Process(target=child)
            proc.start()
            proc.join(30)
        self.assertEqual(answer.get(timeout=30), "waits")

    def test_a_writer_that_waited_the_busy_timeout_gives_up_naming_the_lock(self) -> None:
        from agent.storage.db import WriterLock

        # Given a writer holding the lock (another handle on the file: another process's view)
        home = TempHome()
        self.addCleanup(home.cleanup)
        path = str(home.settings.resolved_database_url).split("///", 1)[1]
        holder, waiter = WriterLock(path), WriterLock(path, timeout=0.05)
        # When another writer waits for it longer than its timeout
        with holder.hold(), self.assertRaises(StorageError) as caught:
            with waiter.hold():
                pass
        # Then it gives up with a clear error, and the lock works again once free
        self.assertIn("database is locked", str(caught.exception))
        with waiter.hold():
            pass
