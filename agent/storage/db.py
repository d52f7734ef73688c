"""Database handle: engine, migrations and sessions for one URL.

``Database.for_settings()`` returns one handle per URL per process, created on
first use (never at import time).  Opening a handle brings the schema to the
Alembic head, and for the embedded default loads the sample leads into an
empty store.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent.errors import ConfigurationError, StorageError
from agent.settings import Settings, get_settings

__all__ = ["Database", "MIGRATIONS_DIR", "upsert_insert", "bulk_cache"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


# Page cache per SQLite connection, in KiB: every pooled connection grows its own up to this, so
# it is kept small; a bulk import raises its own connection's (see ``bulk_cache``).
CACHE_KIB = 8192
BULK_CACHE_KIB = 65536
# How long a SQLite writer waits for another before it gives up ("database is locked").
BUSY_TIMEOUT_S = 30.0


def upsert_insert(dialect: str) -> Any:
    """The dialect's ``insert`` with ``on_conflict_do_nothing`` / ``on_conflict_do_update`` (SQLite and
    PostgreSQL), or None for a database without them."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    return insert


@contextmanager
def bulk_cache(conn: Connection) -> Iterator[None]:
    """Give a bulk writer's SQLite connection a 64 MiB page cache while the block runs: large
    imports stay out of the disk.  (PostgreSQL: nothing to do.)"""
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size=-{CACHE_KIB}")


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Transactions are begun explicitly (see _sqlite_begin), so writers can take the lock up front.
    dbapi_conn.isolation_level = None
    # SQLite's lower() folds ASCII only; agent_lower() folds every script, as PostgreSQL's does.
    # Queries use it only for non-ASCII needles, where it matters (see agent.leads.search).
    dbapi_conn.create_function("agent_lower", 1, lambda v: v.lower() if isinstance(v, str) else v,
                               deterministic=True)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    cur.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # A writer asks for the write lock before it reads what it will write against.
    immediate = conn.get_execution_options().get("agent_write_lock")
    # On the driver's connection: through exec_driver_sql this cost more than the BEGIN itself.
    try:
        conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    except sqlite3.Error as exc:
        raise StorageError(f"database error: {type(exc).__name__}: {exc}") from exc


class WriterLock:
    """Writers of one SQLite file, one at a time across this machine's processes.

    A thread lock, then ``flock`` on a file beside the database (created with
    the database file's permissions).  SQLite alone would make a second writer
    poll in its busy handler, sleeping up to 100 ms between looks, so two busy
    processes spend most of their time asleep; a writer waiting here looks
    again within a millisecond.  Like SQLite's busy timeout, a writer that has
    waited ``timeout`` seconds gives up with ``StorageError``.  Reentrant
    within a thread.  A forked child opens its own lock file (an inherited
    descriptor would share the parent's lock instead of waiting for it).
    """

    _by_path: dict[str, WriterLock] = {}
    _by_path_lock = threading.Lock()

    def __init__(self, path: str, *, timeout: float = BUSY_TIMEOUT_S) -> None:
        self.database = path
        self.path = f"{path}-writer.lock"
        self.timeout = timeout
        self._generation = 0
        self._reset()

    @classmethod
    def for_file(cls, path: str) -> WriterLock:
        """The one lock of this process for the SQLite file at ``path`` (every ``Database`` on it
        shares it, so a thread that holds it through one of them is not blocked by another)."""
        with cls._by_path_lock:
            found = cls._by_path.get(path)
            if found is None:
                found = cls._by_path[path] = cls(path)
            return found

    def _reset(self) -> None:
        self._thread = threading.RLock()
        self._fd: int | None = None
        self._depth = 0
        self._generation += 1  # a hold() begun before a fork leaves the child's count alone

    def after_fork(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the parent keeps its own copy, and with it its lock
        self._reset()

    def _open(self) -> int:
        try:
            mode = os.stat(self.database).st_mode & 0o666
        except OSError:
            mode = 0o600
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise StorageError(f"cannot open the writer lock {self.path}: {exc.strerror}") from exc

    def _acquire(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self.timeout
        pause = 0.0001
        while True:
            time.sleep(pause)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(f"database is locked: another writer held it for {self.timeout:g} s") from None
            pause = min(pause * 2, 0.001)

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread:
            generation = self._generation
            if self._depth == 0:
                if self._fd is None:
                    self._fd = self._open()
                self._acquire(self._fd)
            self._depth += 1
            try:
                yield
            finally:
                if generation == self._generation:  # else a fork reset this lock in between
                    self._depth -= 1
                    if self._depth == 0 and self._fd is not None:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)


def _describe(exc: SQLAlchemyError) -> str:
    """The error's class and the first line of the driver's message (no row values)."""
    orig = getattr(exc, "orig", None)
    first = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


_ALL: weakref.WeakSet[Database] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child (Celery's prefork pool, multiprocessing) must not use its parent's pooled
    # connections: their sockets are shared with the parent, and on PostgreSQL the first query
    # fails.  Each engine forgets its pool here (close=False: the parent's connections stay open).
    for db in list(_ALL):
        db.engine.dispose(close=False)
        db._ready_lock = threading.Lock()
    for db in list(_ALL):
        db._ambient = threading.local()  # a transaction() of the forking thread is the parent's
    for writers in WriterLock._by_path.values():
        writers.after_fork()
    WriterLock._by_path_lock = threading.Lock()
    Database._handles_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


class Database:
    """One database: its engine, schema migrations and session factory."""

    _handles: dict[str, Database] = {}
    _handles_lock = threading.Lock()

    def __init__(self, url: str, *, connect_args: dict[str, Any] | None = None) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigurationError(f"setting database_url: not a database URL ({exc})") from None
        self.url = url
        self.dialect = parsed.get_backend_name()
        # Row values never reach error messages or logs.
        options: dict[str, Any] = {"future": True, "hide_parameters": True}
        self._writers: WriterLock | None = None
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:" and not database.startswith("file:"):
                path = Path(database).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                self._writers = WriterLock.for_file(str(path.resolve()))
            options["connect_args"] = {"check_same_thread": False, **(connect_args or {})}
        else:
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            options["pool_pre_ping"] = True
            if connect_args:
                options["connect_args"] = connect_args
        try:
            self.engine: Engine = create_engine(parsed, **options)
        except (ArgumentError, ImportError) as exc:
            raise ConfigurationError(
                f"setting database_url: cannot use {parsed.drivername!r} ({exc}); "
                "for PostgreSQL install the extra: pip install 'agent-sdr[postgres]'"
            ) from None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._ambient = threading.local()  # this thread's transaction(), if any
        self._ready = False
        self._ready_lock = threading.Lock()
        _ALL.add(self)

    @classmethod
    def for_settings(cls, settings: Settings | None = None) -> Database:
        """The process-wide handle for the configured URL, ready to use."""
        settings = settings or get_settings()
        url = settings.resolved_database_url
        with cls._handles_lock:
            db = cls._handles.get(url)
            if db is None:
                db = cls._handles[url] = cls(url)
        db.ensure_ready(settings)
        return db

    @classmethod
    def forget_all(cls) -> None:
        """Dispose every cached handle (tests and tools that switch URLs)."""
        with cls._handles_lock:
            for db in cls._handles.values():
                db.engine.dispose()
            cls._handles.clear()

    def ensure_ready(self, settings: Settings | None = None) -> None:
        """Migrate to head and, when asked for, load sample data (once)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            self.migrate()
            settings = settings or get_settings()
            if settings.wants_sample_data:
                from agent.leads.sample import load_sample_data

                load_sample_data(self, size=settings.sample_size, tenant=settings.tenant)
            self._ready = True

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` with Alembic (a no-op when current)."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            # Under the write lock, so processes opening a fresh store at once migrate it once.
            with self.connect(lock="agent:migrations") as conn:
                if revision == "head":
                    current = MigrationContext.configure(conn).get_current_revision()
                    if current == ScriptDirectory.from_config(cfg).get_current_head():
                        return
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        except StorageError as exc:
            raise StorageError(f"cannot migrate {self.safe_url}: {exc}") from exc.__cause__

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, fit for logs and messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StorageError(f"database error: {_describe(exc)}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def connect(self, *, lock: str | None = None, write: bool = False) -> Iterator[Connection]:
        """A Core connection in a transaction (bulk paths).

        ``write`` says the transaction will write: on SQLite it waits for the
        file's ``WriterLock``, then begins IMMEDIATE (the database's write
        lock), so it never fails to upgrade a read; on PostgreSQL it changes
        nothing (rows lock themselves).  ``lock`` implies ``write``, and on
        PostgreSQL also takes a transaction-scoped advisory lock on the name:
        writers that name the same lock run one at a time.

        Inside this thread's ``transaction()`` on this handle, the block joins
        that transaction instead of opening one (another handle on the same
        file does not: its writes wait for the transaction to end, and on
        SQLite give up after the busy timeout).
        """
        sqlite_writer = self.dialect == "sqlite" and (write or lock is not None)
        joined = getattr(self._ambient, "conn", None)
        if joined is not None:
            if sqlite_writer and not self._ambient.writer:
                raise StorageError("a write inside a read-only transaction() of the same database")
            try:
                if lock is not None and self.dialect == "postgresql":
                    joined.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": lock})
                yield joined
            except SQLAlchemyError as exc:
                raise StorageError(f"database error: {_describe(exc)}") from exc
            return
        try:
            with self._writer(sqlite_writer), self.engine.connect() as conn:
                if sqlite_writer:
                    conn.execution_options(agent_write_lock=True)
                with conn.begin():
                    if lock is not None and self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": lock})
                    yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {_describe(exc)}") from exc

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction that every ``connect`` of this thread on this database joins until the
        block ends: several stores' writes (a job's claim and its audit) commit together, or not
        at all.  Nested, it joins the outer one."""
        if getattr(self._ambient, "conn", None) is not None:
            with self.connect(write=write) as conn:
                yield conn
            return
        with self.connect(write=write) as conn:
            self._ambient.conn, self._ambient.writer = conn, write
            try:
                yield conn
            finally:
                self._ambient.conn = None

    def _writer(self, wanted: bool) -> Any:
        return self._writers.hold() if wanted and self._writers is not None else nullcontext()

    def count(self, model: Any, **filters: Any) -> int:
        with self.session() as s:
            stmt = select(func.count()).select_from(model).filter_by(**filters)
            return int(s.execute(stmt).scalar_one())
