"""Statements compiled once per database and executed with plain parameters (the hot path).

SQLAlchemy's ORM and even Core `Connection.execute` spend far more CPU per statement than a
local database needs to run it (measured on this project's VXU intake: Session.execute about
220 µs, Connection.execute about 60 µs, the driver itself about 10 µs per small INSERT on
SQLite; on PostgreSQL the gap is similar on top of the round trip). `Precompiled` keeps what
matters from SQLAlchemy — the dialect's SQL text (bind casts, RETURNING, ON CONFLICT) and each
column type's bind processor, so rows are stored exactly as the ORM would store them and
read back by it — and executes through `Connection.exec_driver_sql`, which still fires engine
events (tests inject faults and count statements with them) and still wraps driver errors in
`sqlalchemy.exc` classes.

JSON parameters are passed already encoded (JSON text): encoding happens on the pipeline
threads, not on the single writer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Connection, CursorResult, Dialect
from sqlalchemy.sql.elements import ClauseElement


class Precompiled:
    """One statement's SQL text for one dialect plus the bind processors of its parameters."""

    __slots__ = ("_fixed", "_processors", "names", "positional", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect,
                 column_keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(dialect=dialect,
                                     column_keys=list(column_keys) if column_keys else None)
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

    def execute(self, conn: Connection, values: Mapping[str, Any] | None = None) -> CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, self.bind(values or {}))

    def execute_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """One executemany for all rows (nothing to do for none)."""
        params = [self.bind(row) for row in rows]
        if params:
            conn.exec_driver_sql(self.sql, params)
