"""Statements compiled once per database and executed with plain parameters (the hot path).

SQLAlchemy's ORM and even Core `Connection.execute` spend far more CPU per statement than a
local database needs to run it (measured on this project's VXU intake: Session.execute about
220 µs, Connection.execute about 60 µs, the driver itself about 10 µs per small INSERT on
SQLite; on PostgreSQL the gap is similar on top of the round trip). `Precompiled` keeps what
matters from SQLAlchemy — the dialect's SQL text (bind casts, RETURNING, ON CONFLICT) and each
column type's bind processor, so rows are stored exactly as the ORM would store them and
read back by it — and executes on the connection's DBAPI cursor directly. Even
`Connection.exec_driver_sql` costs 30–60 µs per statement on top of the driver (an execution
context and a result object each time); here what callers rely on is kept by hand: the
engine's `before_cursor_execute` / `after_cursor_execute` listeners still run (tests inject
faults and count statements with them), driver errors still surface as the matching
`sqlalchemy.exc` class, and a disconnect still invalidates the connection. Statements run in
the caller's transaction (the writer begins and commits it through SQLAlchemy, so
transaction events fire as usual).

JSON parameters are passed already encoded (JSON text): encoding happens on the pipeline
threads, not on the single writer.

PostgreSQL pipeline mode (`pipelined`): on PostgreSQL each statement the writer waits for is a
network round trip, and its CPU cost (the client's and the server's send/receive/wake-up) is
most of a small statement's cost. Inside `pipelined(conn)` a statement whose rows nobody needs
yet (an INSERT without RETURNING, a `send` not yet read) is queued instead of waited for, and
the queue goes out with the next statement that must be read, or with `flush()`. The writer
flushes after each message's unit of work, so a failure still surfaces inside the message that
caused it (its savepoint/rollback logic is unchanged), and COMMIT is only sent after every
queued statement succeeded. SQLite (no pipeline) runs every statement at once, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import JSON, Connection, Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement


class Precompiled:
    """One statement's SQL text for one dialect plus the bind processors of its parameters."""

    __slots__ = ("_fixed", "_group", "_multi", "_plan", "_processors", "names", "positional",
                 "returns_rows", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect,
                 column_keys: Sequence[str] | None = None, *,
                 rows: bool | None = None) -> None:
        """`rows`: whether callers read what the statement returns (default: SELECTs, text
        and RETURNING do); in pipeline mode a statement nobody reads is not waited for."""
        compiled = cast(SQLCompiler, statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys else None))
        self.sql = str(compiled)
        dml = compiled.isinsert or compiled.isupdate or compiled.isdelete
        self.returns_rows = (rows if rows is not None
                             else bool(compiled.effective_returning) or not dml)
        self.positional = bool(compiled.positional)
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        names = list(compiled.positiontup or []) if self.positional else list(binds)
        self.names: tuple[str, ...] = tuple(names)
        processors: dict[str, Callable[[Any], Any]] = {}
        for name in set(names):
            bind_type = binds[name].type
            if isinstance(bind_type, JSON):
                continue  # callers pass JSON text
            processor = bind_type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        self._processors = processors
        # Per parameter: its processor or None (one tuple walk per row, no dict lookups).
        self._plan = tuple((n, processors.get(n)) for n in names)
        # Values compiled into the statement (constants in WHERE/SET) are still parameters.
        self._fixed = {n: binds[n].value for n in set(names)
                       if not binds[n].required and binds[n].value is not None}
        # A positional INSERT's "(?, ?, ...)" group and where it ends, for `insert_rows`.
        self._group: tuple[str, int] | None = None
        self._multi: dict[int, str] = {}
        start = self.sql.find("VALUES (") + len("VALUES ")
        if compiled.isinsert and self.positional and start >= len("VALUES "):
            end = self.sql.index(")", start) + 1
            group = self.sql[start:end]
            if group.count("?") == len(names) and not set(group) - set("(?, )"):
                self._group = (group, end)

    def bind(self, values: Mapping[str, Any]) -> Any:
        """Driver parameters (tuple for positional drivers, dict otherwise) for one row."""
        if self._fixed:
            values = {**self._fixed, **values}
        if self.positional:
            return tuple([values[n] if p is None else p(values[n]) for n, p in self._plan])
        return {n: values[n] if p is None else p(values[n]) for n, p in self._plan}

    def execute(self, conn: Connection, values: Mapping[str, Any] | None = None) -> Rows:
        """Run the statement; its rows (if it `returns_rows`) once the server sent them."""
        out = _run(conn, self.sql, self.bind(values or {}), many=False,
                   wait=self.returns_rows)
        # Queued in pipeline mode, unread: its failure surfaces at the writer's flush.
        return out if isinstance(out, Rows) else Rows([])

    def send(self, conn: Connection,
             values: Mapping[str, Any] | None = None) -> Pending | Rows:
        """Run the statement, reading its rows only when `result()` is asked for: in pipeline
        mode several statements' results then come back in one round trip."""
        return _run(conn, self.sql, self.bind(values or {}), many=False, wait=False)

    def insert_rows(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """All rows in one multi-row INSERT (SQLite): one statement to prepare, bind and step
        instead of executemany's per-row reset and rebind; nothing to do for none."""
        if self._group is None:
            self.execute_many(conn, rows)
            return
        per_chunk = max(1, _MAX_PARAMS // len(self.names))
        for at in range(0, len(rows), per_chunk):
            chunk = rows[at:at + per_chunk]
            n = len(chunk)
            sql = self.sql if n == 1 else self._multi.get(n)
            if sql is None:
                group, end = self._group
                sql = self._multi[n] = (self.sql[:end] + f", {group}" * (n - 1)
                                        + self.sql[end:])
            params: list[Any] = []
            for row in chunk:
                params.extend(self.bind(row))
            _run(conn, sql, tuple(params), many=False, wait=False)

    def execute_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """One executemany for all rows (nothing to do for none)."""
        params = [self.bind(row) for row in rows]
        if params:
            _run(conn, self.sql, params, many=True, wait=False)


# Parameters per multi-row INSERT: SQLite's lowest compile-time limit (999 before 3.32).
_MAX_PARAMS = 999


class Rows:
    """What a statement returned, fetched in full (the store's statements return few rows)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def first(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def scalar_one(self) -> Any:
        if not self._rows:
            raise NoResultFound("the statement returned no row")
        if len(self._rows) > 1:
            raise MultipleResultsFound("the statement returned several rows")
        return self._rows[0][0]

    def result(self) -> Rows:
        return self


class Pending:
    """A statement queued in pipeline mode whose rows are read on demand."""

    __slots__ = ("_conn", "_cursor", "_params", "_sql")

    def __init__(self, conn: Connection, cursor: Any, sql: str, params: Any) -> None:
        self._conn, self._cursor, self._sql, self._params = conn, cursor, sql, params

    def result(self) -> Rows:
        """The rows (waits for the server; a failure of this statement raises here)."""
        conn, cursor = self._conn, self._cursor
        with _translated(conn, cursor, self._sql, self._params):
            try:
                return Rows(list(cursor.fetchall()))
            finally:
                cursor.close()


def in_pipeline(conn: Connection) -> bool:
    """Whether `conn` is in PostgreSQL pipeline mode (see the module docstring)."""
    pgconn = getattr(conn.connection.dbapi_connection, "pgconn", None)
    return pgconn is not None and bool(pgconn.pipeline_status)


@contextlib.contextmanager
def pipelined(conn: Connection) -> Iterator[Callable[[], None]]:
    """Pipeline mode for the block on psycopg (a no-op elsewhere); yields `flush`, which
    sends what is queued and waits until the server ran it (raising its failure, if any)."""
    dbapi_conn: Any = conn.connection.dbapi_connection
    if not hasattr(dbapi_conn, "pipeline"):
        yield _nothing
        return
    with _translated(conn, None, "SYNC", None), dbapi_conn.pipeline() as pipe:
        def flush() -> None:
            with _translated(conn, None, "SYNC", None):
                pipe.sync()

        yield flush


def _nothing() -> None:
    return None


@contextlib.contextmanager
def _translated(conn: Connection, cursor: Any, sql: str, params: Any) -> Iterator[None]:
    """Driver errors as the matching sqlalchemy.exc class; a lost connection invalidated."""
    try:
        yield
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, cursor, sql, params, exc) from exc


def _wrapped(conn: Connection, cursor: Any, sql: str, params: Any,
             exc: Any) -> Exception:
    """The sqlalchemy.exc error for a driver error; a lost connection is invalidated."""
    dialect = conn.dialect
    dbapi_conn = conn.connection.dbapi_connection if not conn.invalidated else None
    lost = dialect.is_disconnect(exc, dbapi_conn, cursor)
    if lost and not conn.invalidated:
        conn.invalidate(exc)
    error: Exception = DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error,
                                           connection_invalidated=lost, dialect=dialect)
    return error


def _run(conn: Connection, sql: str, params: Any, *, many: bool,
         wait: bool) -> Rows | Pending:
    """Execute on the DBAPI cursor. In pipeline mode the statement is only queued unless
    `wait` (the caller reads its rows now); a queued one returns `Pending`."""
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    cursor = dbapi_conn.cursor()
    keep_open = False
    # Inline rather than `_translated` (a context manager costs more than SQLite's INSERT).
    try:
        for before in conn.dispatch.before_cursor_execute:
            sql, params = before(conn, cursor, sql, params, None, many)
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        pipeline = getattr(dbapi_conn, "pgconn", None) is not None and in_pipeline(conn)
        if pipeline and not wait and not many:
            pending = Pending(conn, cursor, sql, params)
            keep_open = True
            rows: list[tuple[Any, ...]] = []
        elif pipeline and wait:
            rows = list(cursor.fetchall())
        else:
            rows = list(cursor.fetchall()) if cursor.description is not None else []
        for after in conn.dispatch.after_cursor_execute:
            after(conn, cursor, sql, params, None, many)
        return pending if keep_open else Rows(rows)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, cursor, sql, params, exc) from exc
    finally:
        if not keep_open:
            cursor.close()
