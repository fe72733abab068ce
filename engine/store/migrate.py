"""Schema migrations: `upgrade(url)` (the CLI's `iz-engine db upgrade`) and the currency check.

Alembic is configured programmatically (no alembic.ini): the scripts live in
`engine/store/migrations/`. `serve` upgrades an embedded SQLite database itself; a PostgreSQL
database shared by several engines is upgraded by the operator, and `check_current` refuses to
start against a schema that is behind (or ahead of) this build.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from engine.errors import StoreError
from engine.store.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError("no migrations found")
    return head


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision` on an existing Engine."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def upgrade(url: str) -> None:
    """Bring the database at `url` to the newest schema (idempotent)."""
    engine = make_engine(url, pool_size=1)
    try:
        upgrade_engine(engine)
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_current(engine: Engine) -> None:
    """Raise StoreError telling the operator what to do when the schema is not this build's."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise StoreError(
            f"database schema is at revision {current or '(none)'} but this engine needs "
            f"{head}; run `iz-engine db upgrade --database-url URL` first")
