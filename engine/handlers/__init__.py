"""Message handlers and the store they share, assembled for `iz-engine serve`.

`build_handlers(database_url, metrics)` opens the registry store, makes sure its schema is
current (an embedded SQLite database is upgraded in place so `serve` with no arguments just
works; a PostgreSQL database must already be at this build's revision — the operator runs
`iz-engine db upgrade` — and anything else is a clear StoreError), and returns the handlers,
the message journal, how many pipeline threads suit the backend, and a `close` that disposes
of the connection pool.

Threads: all store writes go through one group-commit writer (engine.store.writer), which
runs whatever messages are waiting in one transaction — a savepoint each — and commits them
together. The pipeline threads (8 on either backend) parse, validate, map and plan in
parallel and wait for their batch's commit; the more of them wait, the more one fsync
covers. SQLite allows one writer anyway; PostgreSQL gets two writer threads (each its own
connection and batch) so one batch's network waits overlap the other's work. `close` drains the writer, then
disposes of the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from engine.errors import StoreError
from engine.mapping import VxuMapper
from engine.observability.metrics import Metrics
from engine.pipeline import Journal, MessageHandler
from engine.store.db import is_sqlite, make_engine
from engine.store.intake import IntakeStore
from engine.store.journal import StoreJournal
from engine.store.migrate import check_current, upgrade_engine
from engine.store.repository import Repository
from engine.store.writer import GroupCommitter

REGISTRY_AUTHORITY = "CAIR2"
PIPELINE_THREADS = 8
# PostgreSQL: stay under the 64 cached subtransactions per backend (engine.store.writer).
MAX_BATCH = {"sqlite": 64, "postgresql": 32}
# SQLite has one writer whatever we do; PostgreSQL overlaps round trips of two batches.
WRITERS = {"sqlite": 1, "postgresql": 2}


@dataclass(frozen=True, slots=True)
class StoreBundle:
    """What the pipeline needs from the store side."""

    handlers: Mapping[str, MessageHandler]
    journal: Journal
    executor_threads: int
    close: Callable[[], None]
    repository: Repository
    writer: GroupCommitter


def build_handlers(database_url: str, metrics: Metrics, *,
                   registry_authority: str = REGISTRY_AUTHORITY,
                   keep_payload: bool = True, pipeline_threads: int | None = None,
                   writers: int | None = None) -> StoreBundle:
    """Open the store at `database_url` and build the VXU handler and journal over it."""
    from engine.handlers.vxu import StoreMetrics, VxuHandler

    sqlite = is_sqlite(database_url)
    threads = pipeline_threads or PIPELINE_THREADS
    engine = make_engine(database_url, pool_size=threads + 2)
    try:
        if sqlite:
            upgrade_engine(engine)
        else:
            check_current(engine)
    except StoreError:
        engine.dispose()
        raise
    except Exception as exc:
        engine.dispose()
        raise StoreError(f"cannot open the registry store ({type(exc).__name__}); check "
                         "the database URL and that the database is running") from exc
    mapper = VxuMapper.load()
    repository = Repository(engine, vaccine_groups=mapper.vaccine_groups,
                            registry_authority=registry_authority)
    intake = IntakeStore(engine, vaccine_groups=mapper.vaccine_groups,
                         is_placeholder_key=mapper.is_placeholder_key,
                         registry_authority=registry_authority)
    store_metrics = StoreMetrics.create(metrics.registry)
    writer = GroupCommitter(engine, max_batch=MAX_BATCH.get(engine.dialect.name, 32),
                            writers=writers or WRITERS.get(engine.dialect.name, 1),
                            on_batch=store_metrics.batch_messages.observe)
    handler = VxuHandler(intake, writer, mapper, store_metrics, keep_payload=keep_payload)
    journal = StoreJournal(repository, keep_payload=keep_payload, writer=writer,
                           replayed_by_handler={"VXU"})

    def close() -> None:
        writer.close()
        engine.dispose()

    return StoreBundle(handlers={"VXU": handler}, journal=journal, executor_threads=threads,
                       close=close, repository=repository, writer=writer)
