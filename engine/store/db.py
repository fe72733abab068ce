"""Database engines for the registry store: URL handling and per-backend durability settings.

SQLite (embedded default): WAL journal, ``synchronous=FULL`` so a committed transaction
survives power loss, a busy timeout instead of immediate "database is locked", foreign keys
on, and ``BEGIN IMMEDIATE`` so a writer takes the write lock up front (two writers never
deadlock upgrading read locks) — except on `read_only(engine)`, whose transactions begin
deferred so a lookup never queues behind the group-commit writer for the write lock.
PostgreSQL (production): psycopg 3, default ``synchronous_commit`` (on) — commits are
durable; nothing here trades that away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_MS = 30_000


READ_ONLY = "iz_read_only"


def read_only(engine: Engine) -> Engine:
    """The same engine (same pool) for transactions that only read."""
    return engine.execution_options(**{READ_ONLY: True})


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, pool_size: int = 10, pool_timeout: float = 5.0) -> Engine:
    """An Engine configured for durable writes on either backend."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, poolclass=NullPool if database in ("", ":memory:")
                               else None, connect_args={"check_same_thread": False,
                                                        "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _sqlite_durability(engine)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, pool_size=pool_size, max_overflow=pool_size,
                           pool_timeout=pool_timeout, pool_pre_ping=True,
                           connect_args={"connect_timeout": 5})
    _postgres_session(engine)
    return engine


def _postgres_session(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # The store's statements are index lookups and inserts by key, whose best plan does
        # not depend on the values. psycopg prepares a statement after a few executions;
        # with a generic plan PostgreSQL stops re-planning it on every execution (measured:
        # planning took about 1 ms, four times the execution, of the event-key lookup). A
        # cached plan is still re-made whenever ANALYZE updates the table's statistics.
        with dbapi_conn.cursor() as cur:
            cur.execute("SET plan_cache_mode = force_generic_plan")
        dbapi_conn.commit()


def _sqlite_durability(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE below is what runs.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        reading = conn.get_execution_options().get(READ_ONLY, False)
        # On the DBAPI connection: SQLAlchemy's own execution path (an execution context and
        # a result per statement) costs more than the BEGIN, once per group-commit batch.
        sql = "BEGIN" if reading else "BEGIN IMMEDIATE"
        try:
            conn.connection.dbapi_connection.execute(sql)
        except conn.dialect.loaded_dbapi.Error as exc:  # e.g. locked past the busy timeout
            raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error,
                                      dialect=conn.dialect) from exc
