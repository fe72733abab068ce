"""structlog set-up: JSON lines in production, console in development; never patient data.

Only these keys may be bound to a log context: peer, sender, control_id, message_type,
event, codes, counts, durations. `scrub` drops anything else that looks like message content,
as a second line of defence (asserted by tests/test_no_phi.py).
"""

from __future__ import annotations

import io
import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

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


def configure(fmt: str = "console", level: str = "info", stream: Any = None) -> None:
    """Configure structlog once at start-up (`fmt` is "json" or "console")."""
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
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


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
