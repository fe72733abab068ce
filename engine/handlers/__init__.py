"""Message handlers and the store they share, assembled for `iz-engine serve`.

`build_handlers(database_url, metrics)` opens the registry store, makes sure its schema is
current (an embedded SQLite database is upgraded in place so `serve` with no arguments just
works; a PostgreSQL database must already be at this build's revision — the operator runs
`iz-engine db upgrade` — and anything else is a clear StoreError), and returns the handlers,
the message journal, how many pipeline threads suit the backend, and a `close` that disposes
of the connection pool.

Threads: PostgreSQL gets 8 pipeline threads (one transaction each, in parallel; the pool has
room for all of them plus the journal). SQLite allows one writer at a time, so one thread
does all store work and nothing waits on SQLite's busy lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from engine.errors import StoreError
from engine.mapping import VxuMapper
from engine.observability.metrics import Metrics
from engine.pipeline import Journal, MessageHandler
from engine.store.db import is_sqlite, make_engine
from engine.store.journal import StoreJournal
from engine.store.migrate import check_current, upgrade_engine
from engine.store.repository import Repository

REGISTRY_AUTHORITY = "CAIR2"
POSTGRES_THREADS = 8


@dataclass(frozen=True, slots=True)
class StoreBundle:
    """What the pipeline needs from the store side."""

    handlers: Mapping[str, MessageHandler]
    journal: Journal
    executor_threads: int
    close: Callable[[], None]
    repository: Repository


def build_handlers(database_url: str, metrics: Metrics, *,
                   registry_authority: str = REGISTRY_AUTHORITY,
                   keep_payload: bool = True) -> StoreBundle:
    """Open the store at `database_url` and build the VXU handler and journal over it."""
    from engine.handlers.vxu import StoreMetrics, VxuHandler

    sqlite = is_sqlite(database_url)
    threads = 1 if sqlite else POSTGRES_THREADS
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
    handler = VxuHandler(repository, mapper, StoreMetrics.create(metrics.registry),
                         keep_payload=keep_payload)
    return StoreBundle(handlers={"VXU": handler},
                       journal=StoreJournal(repository, keep_payload=keep_payload),
                       executor_threads=threads, close=engine.dispose, repository=repository)
