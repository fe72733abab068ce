"""Payload retention: raw message content is dropped after database.payload_retention_days.

The log row (sender, control id, outcome, the exact response bytes) stays, so retransmissions
are still answered byte for byte; only the raw content goes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from engine import config
from engine.cli import main
from engine.errors import ConfigError
from tests.store.conftest import Registry
from tests.store.messages import Dose, vxu


def _payloads(url: str) -> dict[str, bool]:
    """control id -> whether the raw payload is still kept."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT control_id, payload IS NOT NULL FROM message_log"))
            return {str(cid): bool(kept) for cid, kept in rows}
    finally:
        engine.dispose()


def test_purge_drops_old_payloads_and_keeps_the_responses(registry: Registry,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    old = vxu("OLD-1", doses=[Dose(key="K1")])
    first = registry.send(old)
    registry.send(vxu("NEW-1", mr="MR2", family="Other", doses=[Dose(key="K2")]))
    engine = create_engine(registry.url)  # the test pipeline's clock is fixed: set the ages
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for control_id, received in (("OLD-1", now - timedelta(days=40)),
                                     ("NEW-1", now - timedelta(days=2))):
            conn.execute(text("UPDATE message_log SET received_at = :t WHERE control_id = :c"),
                         {"t": received, "c": control_id})
    engine.dispose()

    assert main(["db", "purge-payloads", "--older-than-days", "30",
                 "--database-url", registry.url]) == 0
    assert "1 message(s)" in capsys.readouterr().err
    assert _payloads(registry.url) == {"OLD-1": False, "NEW-1": True}
    # the stored response still answers a retransmission of the purged message
    assert registry.send(old) == first


def test_purge_needs_a_retention_period(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "purge-payloads", "--database-url", "sqlite:///unused.db"]) == 2
    assert "older-than-days" in capsys.readouterr().err


def test_retention_days_are_configuration() -> None:
    cfg = config.from_mapping({"database": {"payload_retention_days": 90}}, env={})
    assert cfg.database.payload_retention_days == 90
    assert config.from_mapping({}, env={}).database.payload_retention_days == 0
    with pytest.raises(ConfigError, match="payload_retention_days"):
        config.from_mapping({"database": {"payload_retention_days": -1}}, env={})


def test_purge_works_in_batches(registry: Registry) -> None:
    """A large backlog is purged in several short transactions, all of it."""
    for n in range(5):
        registry.send(vxu(f"B-{n}", mr=f"MRB{n}", family=f"Batch{'abcde'[n]}",
                          doses=[Dose(key=f"KB{n}")]))
    cutoff = datetime.now(UTC) + timedelta(days=1)  # everything is older than this
    assert registry.repo.purge_payloads(cutoff, batch=2) == 5
    assert set(_payloads(registry.url).values()) == {False}
    assert registry.repo.purge_payloads(cutoff, batch=2) == 0
