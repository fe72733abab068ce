"""config.yaml + environment → one frozen, typed `Config`; every problem reported at once.

Each part of the engine receives only its slice (`ServerConfig`, `AcceptConfig`, ...). Secrets
(database passwords, TLS key passphrases) come only from the environment:
``IZ_ENGINE_DATABASE_URL`` overrides `database.url`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config.yaml")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the MLLP listener; `ca_file` set + `require_client_cert` = mutual TLS."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    require_client_cert: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The MLLP listener's limits and timeouts."""

    host: str = "127.0.0.1"
    port: int = 2575
    max_connections: int = 2000
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    max_frame_bytes: int = 4 * 1024 * 1024
    accept_lone_fs_at_eof: bool = False
    shutdown_grace_s: float = 10.0
    tls: TlsConfig = field(default_factory=TlsConfig)
    # Engine processes sharing the listening socket (engine.workers); 1 = this process serves.
    workers: int = 1


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8575


@dataclass(frozen=True, slots=True)
class AcceptConfig:
    """What the accept-level checks allow (MSH-9, MSH-11, MSH-12)."""

    message_types: tuple[str, ...] = ("VXU^V04", "QBP^Q11")
    processing_ids: tuple[str, ...] = ("P", "T")
    versions: tuple[str, ...] = ("2.5.1",)


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """How the engine names itself in MSH-3/MSH-4 of its responses."""

    application: str = "IZ-ENGINE"
    facility: str = "CAIR2"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = "sqlite:///var/iz-engine.sqlite3"
    # Raw message content older than this is dropped (the log row and response stay);
    # 0 keeps it forever.
    payload_retention_days: int = 0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str = "console"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    accept: AcceptConfig = field(default_factory=AcceptConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ack_policy: str = "acks/policy.yaml"
    as_of: str = ""


class _Reader:
    """Typed reads from a YAML mapping that collect problems instead of raising at the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def section(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{key}: expected a mapping")
            return {}
        return value

    def get(self, data: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
        if key not in data or data[key] is None:
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is tuple:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            self.problems.append(f"{where}.{key}: expected a list of strings")
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problems.append(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
            return default
        return value


def _known_keys(data: Mapping[str, Any], allowed: set[str], where: str, problems: list[str]) -> None:
    for key in data:
        if key not in allowed:
            problems.append(f"{where}.{key}: unknown setting" if where else f"{key}: unknown setting")


def from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from parsed YAML plus environment; raises ConfigError listing all problems."""
    env = os.environ if env is None else env
    problems: list[str] = []
    r = _Reader(problems)
    _known_keys(data, {"server", "http", "accept", "identity", "database", "logging",
                       "ack_policy", "as_of"}, "", problems)

    s = r.section(data, "server")
    _known_keys(s, {"host", "port", "max_connections", "idle_timeout_s", "frame_timeout_s",
                    "write_timeout_s", "max_frame_bytes", "accept_lone_fs_at_eof",
                    "shutdown_grace_s", "tls", "workers"}, "server", problems)
    t = r.section(s, "tls")
    _known_keys(t, {"cert_file", "key_file", "ca_file", "require_client_cert"}, "server.tls",
                problems)
    tls = TlsConfig(
        cert_file=r.get(t, "cert_file", str, "", "server.tls"),
        key_file=r.get(t, "key_file", str, "", "server.tls"),
        ca_file=r.get(t, "ca_file", str, "", "server.tls"),
        require_client_cert=r.get(t, "require_client_cert", bool, False, "server.tls"),
    )
    if tls.cert_file and not tls.key_file:
        problems.append("server.tls.key_file: required when cert_file is set")
    if tls.require_client_cert and not tls.ca_file:
        problems.append("server.tls.ca_file: required when require_client_cert is true")
    d = ServerConfig()
    server = ServerConfig(
        host=r.get(s, "host", str, d.host, "server"),
        port=r.get(s, "port", int, d.port, "server"),
        max_connections=r.get(s, "max_connections", int, d.max_connections, "server"),
        idle_timeout_s=r.get(s, "idle_timeout_s", float, d.idle_timeout_s, "server"),
        frame_timeout_s=r.get(s, "frame_timeout_s", float, d.frame_timeout_s, "server"),
        write_timeout_s=r.get(s, "write_timeout_s", float, d.write_timeout_s, "server"),
        max_frame_bytes=r.get(s, "max_frame_bytes", int, d.max_frame_bytes, "server"),
        accept_lone_fs_at_eof=r.get(s, "accept_lone_fs_at_eof", bool, False, "server"),
        shutdown_grace_s=r.get(s, "shutdown_grace_s", float, d.shutdown_grace_s, "server"),
        tls=tls,
        workers=r.get(s, "workers", int, d.workers, "server"),
    )
    if not 1 <= server.workers <= 64:
        problems.append("server.workers: must be 1..64")
    if not 0 <= server.port <= 65535:
        problems.append("server.port: must be 0..65535")
    if server.max_frame_bytes < 1024:
        problems.append("server.max_frame_bytes: must be at least 1024")
    if server.max_connections < 1:
        problems.append("server.max_connections: must be at least 1")

    h = r.section(data, "http")
    _known_keys(h, {"host", "port"}, "http", problems)
    http = HttpConfig(host=r.get(h, "host", str, "127.0.0.1", "http"),
                      port=r.get(h, "port", int, 8575, "http"))

    a = r.section(data, "accept")
    _known_keys(a, {"message_types", "processing_ids", "versions"}, "accept", problems)
    ad = AcceptConfig()
    accept = AcceptConfig(
        message_types=r.get(a, "message_types", tuple, ad.message_types, "accept"),
        processing_ids=r.get(a, "processing_ids", tuple, ad.processing_ids, "accept"),
        versions=r.get(a, "versions", tuple, ad.versions, "accept"),
    )

    i = r.section(data, "identity")
    _known_keys(i, {"application", "facility"}, "identity", problems)
    identity = IdentityConfig(application=r.get(i, "application", str, "IZ-ENGINE", "identity"),
                              facility=r.get(i, "facility", str, "CAIR2", "identity"))

    db = r.section(data, "database")
    _known_keys(db, {"url", "payload_retention_days"}, "database", problems)
    retention = r.get(db, "payload_retention_days", int, 0, "database")
    if retention < 0:
        problems.append("database.payload_retention_days: must be 0 (keep) or more")
    url = env.get("IZ_ENGINE_DATABASE_URL") or r.get(db, "url", str, DatabaseConfig().url,
                                                     "database")

    lg = r.section(data, "logging")
    _known_keys(lg, {"format", "level"}, "logging", problems)
    logging_cfg = LoggingConfig(format=r.get(lg, "format", str, "console", "logging"),
                                level=r.get(lg, "level", str, "info", "logging"))
    if logging_cfg.format not in ("console", "json"):
        problems.append("logging.format: must be 'console' or 'json'")

    as_of = r.get(data, "as_of", str, "", "")
    if problems:
        raise ConfigError(problems)
    return Config(server=server, http=http, accept=accept, identity=identity,
                  database=DatabaseConfig(url=url, payload_retention_days=retention),
                  logging=logging_cfg,
                  ack_policy=r.get(data, "ack_policy", str, "acks/policy.yaml", ""), as_of=as_of)


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load config.yaml (or defaults when the default path is absent)."""
    target = path or DEFAULT_CONFIG_PATH
    if not target.exists():
        if path is not None:
            raise ConfigError([f"{target}: file not found"])
        return from_mapping({}, env)
    try:
        data = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{target}: not valid YAML ({exc})"]) from None
    if not isinstance(data, Mapping):
        raise ConfigError([f"{target}: top level must be a mapping"])
    return from_mapping(data, env)
