"""Store fixtures: every store test runs against SQLite (a temp file) and real PostgreSQL.

PostgreSQL comes from IZ_TEST_DATABASE_URL (default the local `test` database's server); the
session creates its own uniquely named database there, migrates it once, truncates it before
each test, and drops it at the end. Unreachable PostgreSQL skips those tests — or fails them
when IZ_REQUIRE_POSTGRES=1 (CI).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from engine.config import AcceptConfig, IdentityConfig
from engine.handlers import StoreBundle, build_handlers
from engine.observability.metrics import Metrics
from engine.pipeline import Pipeline
from engine.responses import ResponseBuilder
from engine.store import models
from engine.store.migrate import upgrade

PG_URL = os.environ.get("IZ_TEST_DATABASE_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SHARED = Path(__file__).resolve().parents[3] / "shared"
FIXED_NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def _pg_server_url(database: str) -> str:
    return make_url(PG_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": 3})
    name = f"iz_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if os.environ.get("IZ_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but unreachable: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL unreachable ({type(exc).__name__})")
    url = _pg_server_url(name)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in models.Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated registry database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    url: str = request.getfixturevalue("postgres_database")
    _truncate(url)
    return url


@dataclass
class Registry:
    """A pipeline wired to a real store, as `serve` wires it."""

    url: str
    bundle: StoreBundle
    pipeline: Pipeline

    def send(self, payload: bytes | str) -> bytes:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        return self.pipeline.process(data, peer="test")

    @property
    def repo(self) -> Any:
        return self.bundle.repository

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = self.bundle.repository.counts()
        return result

    def data_counts(self) -> dict[str, int]:
        """Row counts without the message log (what a message must not half-write)."""
        return {k: v for k, v in self.counts().items() if k != "message_log"}


def make_registry(url: str, *, validator: Any = None) -> Registry:
    metrics = Metrics()
    bundle = build_handlers(url, metrics)
    ids = itertools.count(1)
    responses = ResponseBuilder(IdentityConfig(), clock=lambda: FIXED_NOW,
                                ids=lambda: f"ACK{next(ids):06d}")
    pipeline = Pipeline(accept=AcceptConfig(), responses=responses, metrics=metrics,
                        handlers=bundle.handlers, journal=bundle.journal, validator=validator,
                        today=lambda: FIXED_NOW.date())
    return Registry(url, bundle, pipeline)


@pytest.fixture
def registry(database_url: str) -> Iterator[Registry]:
    reg = make_registry(database_url)
    yield reg
    reg.bundle.close()


@pytest.fixture
def registry_factory(database_url: str) -> Iterator[Callable[..., Registry]]:
    made: list[Registry] = []

    def factory(**kwargs: Any) -> Registry:
        reg = make_registry(database_url, **kwargs)
        made.append(reg)
        return reg

    yield factory
    for reg in made:
            reg.bundle.close()
