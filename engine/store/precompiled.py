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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import JSON, Connection, Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement


class Precompiled:
    """One statement's SQL text for one dialect plus the bind processors of its parameters."""

    __slots__ = ("_fixed", "_processors", "names", "positional", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect,
                 column_keys: Sequence[str] | None = None) -> None:
        compiled = cast(SQLCompiler, statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys else None))
        self.sql = str(compiled)
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
        # Values compiled into the statement (constants in WHERE/SET) are still parameters.
        self._fixed = {n: binds[n].value for n in set(names)
                       if not binds[n].required and binds[n].value is not None}

    def bind(self, values: Mapping[str, Any]) -> Any:
        """Driver parameters (tuple for positional drivers, dict otherwise) for one row."""
        procs = self._processors
        if self._fixed:
            values = {**self._fixed, **values}
        if self.positional:
            return tuple(procs[n](values[n]) if n in procs else values[n] for n in self.names)
        return {n: procs[n](values[n]) if n in procs else values[n] for n in self.names}

    def execute(self, conn: Connection, values: Mapping[str, Any] | None = None) -> Rows:
        return _run(conn, self.sql, self.bind(values or {}), many=False)

    def execute_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """One executemany for all rows (nothing to do for none)."""
        params = [self.bind(row) for row in rows]
        if params:
            _run(conn, self.sql, params, many=True)


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


def _run(conn: Connection, sql: str, params: Any, *, many: bool) -> Rows:
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    dialect = conn.dialect
    cursor = dbapi_conn.cursor()
    try:
        for before in conn.dispatch.before_cursor_execute:
            sql, params = before(conn, cursor, sql, params, None, many)
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        rows = list(cursor.fetchall()) if cursor.description is not None else []
        for after in conn.dispatch.after_cursor_execute:
            after(conn, cursor, sql, params, None, many)
        return Rows(rows)
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, dbapi_conn, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error,
                                  connection_invalidated=lost, dialect=dialect) from exc
    finally:
        cursor.close()
