"""config.yaml + environment → one frozen Config; every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import config
from engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_config_yaml_loads_and_uses_embedded_sqlite() -> None:
    """The repository's config.yaml is valid and points at an SQLite file."""
    cfg = config.load(REPO / "config.yaml", env={})
    assert cfg.database.url.startswith("sqlite:///")
    assert cfg.server.port == 2575 and cfg.http.port == 8575
    assert cfg.server.max_frame_bytes == 4 * 1024 * 1024


def test_environment_overrides_the_database_url() -> None:
    """IZ_ENGINE_DATABASE_URL wins over database.url."""
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    cfg = config.from_mapping({"database": {"url": "sqlite:///x"}},
                              env={"IZ_ENGINE_DATABASE_URL": url})
    assert cfg.database.url == url


def test_all_problems_are_reported_together() -> None:
    """Several mistakes produce one ConfigError listing each of them."""
    with pytest.raises(ConfigError) as info:
        config.from_mapping({"server": {"port": "x", "max_frame_bytes": 10, "bogus": 1},
                             "logging": {"format": "xml"}, "nonsense": {}}, env={})
    problems = "\n".join(info.value.problems)
    for fragment in ("server.port", "server.max_frame_bytes", "server.bogus", "logging.format",
                     "nonsense"):
        assert fragment in problems
    assert len(info.value.problems) == 5


def test_mutual_tls_needs_a_ca_file() -> None:
    """require_client_cert without ca_file is a configuration error."""
    with pytest.raises(ConfigError, match="ca_file"):
        config.from_mapping({"server": {"tls": {"cert_file": "c", "key_file": "k",
                                                "require_client_cert": True}}}, env={})


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """--config pointing nowhere is reported, not silently defaulted."""
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "absent.yaml", env={})


def test_config_is_frozen() -> None:
    """Config values cannot be changed after loading."""
    cfg = config.from_mapping({}, env={})
    with pytest.raises(AttributeError):
        cfg.server.port = 1  # type: ignore[misc]


def test_workers_default_to_one_process_and_are_bounded() -> None:
    """server.workers: 1 unless set; 0 or more than 64 processes is a configuration error."""
    assert config.from_mapping({}, env={}).server.workers == 1
    assert config.from_mapping({"server": {"workers": 4}}, env={}).server.workers == 4
    for bad in (0, 65):
        with pytest.raises(ConfigError, match=r"server\.workers"):
            config.from_mapping({"server": {"workers": bad}}, env={})
