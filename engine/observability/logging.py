"""structlog set-up: JSON lines in production, console in development; never patient data.

Only these keys may be bound to a log context: peer, sender, control_id, message_type,
event, codes, counts, durations. `scrub` drops anything else that looks like message content,
as a second line of defence (asserted by tests/test_no_phi.py).
"""

from __future__ import annotations

import io
import json
import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog
from structlog._config import _CONFIG

_FORBIDDEN_KEYS = frozenset({"message", "raw", "frame", "payload", "name", "dob", "birth_date",
                             "address", "phone", "patient", "text", "body", "segments"})


def scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Remove keys that could carry patient data before the event is rendered."""
    for key in list(event_dict):
        if key in _FORBIDDEN_KEYS:
            event_dict[key] = "[removed]"
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        # Exception messages can quote message content: keep the type and frames only.
        exc = sys.exc_info()[1] if exc_info is True else exc_info
        if isinstance(exc, tuple):
            exc = exc[1]
        if isinstance(exc, BaseException):
            event_dict.setdefault("error", type(exc).__name__)
            event_dict.setdefault("where", [
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}"
                for f in traceback.extract_tb(exc.__traceback__)])
    return event_dict


class _CurrentStderr(io.TextIOBase):
    """Writes to whatever sys.stderr is at write time (it may be replaced after set-up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _fast_column(formatter: Any) -> Any:
    """A column formatter rendering exactly what `KeyValueColumnFormatter` renders.

    structlog's builds a StringIO per key-value pair (one event renders ~8 of them); this
    concatenates the same parts. Any other formatter is returned unchanged.
    """
    if type(formatter) is not structlog.dev.KeyValueColumnFormatter:
        return formatter
    reset = formatter.reset_style
    head = formatter.prefix + reset if formatter.prefix else ""
    tail = reset + (formatter.postfix + reset if formatter.postfix else "")
    width, value_repr = formatter.width, formatter.value_repr
    if formatter.key_style is None:
        before = head + formatter.value_style

        def value_only(key: str, value: object) -> str:
            text = value_repr(value)
            if len(text) < width:
                text += " " * (width - len(text))
            return before + text + tail

        return value_only
    key_before = head + formatter.key_style
    key_after = reset + "=" + formatter.value_style

    def key_value(key: str, value: object) -> str:
        text = value_repr(value)
        if len(text) < width:
            text += " " * (width - len(text))
        return key_before + key + key_after + text + tail

    return key_value


def console_renderer() -> Any:
    """structlog's ConsoleRenderer (no colours), its key=value columns rendered cheaper."""
    renderer = structlog.dev.ConsoleRenderer(colors=False)
    renderer.columns = [structlog.dev.Column(col.key, _fast_column(col.formatter))
                        for col in renderer.columns]
    return renderer


def configure(fmt: str = "console", level: str = "info", stream: Any = None) -> None:
    """Configure structlog once at start-up (`fmt` is "json" or "console")."""
    renderer: Any = (structlog.processors.JSONRenderer(_json_encode) if fmt == "json"
                     else console_renderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(
            stream or cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )


def _fallback(obj: Any) -> Any:
    return structlog.processors._json_fallback_handler(obj)


# `json.dumps(obj, default=...)` builds a new JSONEncoder per call; this one is built once and
# renders byte-for-byte what JSONRenderer's default (`json.dumps` + its fallback) renders.
_ENCODER = json.JSONEncoder(default=_fallback)


def _json_encode(obj: Any, **_kw: Any) -> str:
    return _ENCODER.encode(obj)


class _Logger:
    """A module logger that assembles its bound logger once per structlog configuration.

    `structlog.get_logger` returns a lazy proxy that rebuilds a bound logger (logger factory,
    wrapper class, context) on *every* call, because `cache_logger_on_first_use` would pin a
    logger past a later `configure` (tests and `structlog.testing.capture_logs` reconfigure).
    This proxy keeps the built logger and rebuilds it only when the configuration changed,
    checked by the identity of the configured parts (held, so an identity is never reused).
    """

    __slots__ = ("_proxy", "_state")

    def __init__(self, name: str) -> None:
        self._proxy: Any = structlog.get_logger(name)
        # (processors, wrapper class, logger factory, context class, bound logger): replaced
        # as one object, so a thread never pairs a new configuration with an old logger.
        self._state: tuple[Any, Any, Any, Any, Any] | None = None

    def _get(self) -> Any:
        cfg, state = _CONFIG, self._state
        if (state is None or state[0] is not cfg.default_processors
                or state[1] is not cfg.default_wrapper_class
                or state[2] is not cfg.logger_factory
                or state[3] is not cfg.default_context_class):
            state = (cfg.default_processors, cfg.default_wrapper_class, cfg.logger_factory,
                     cfg.default_context_class, self._proxy.bind())
            self._state = state
        return state[4]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


def get_logger(name: str) -> Any:
    return _Logger(name)
