"""structlog set-up: JSON lines in production, console in development; never patient data.

Only these keys may be bound to a log context: peer, sender, control_id, message_type,
event, codes, counts, durations. `scrub` drops anything else that looks like message content,
as a second line of defence (asserted by tests/test_no_phi.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_FORBIDDEN_KEYS = frozenset({"message", "raw", "frame", "payload", "name", "dob", "birth_date",
                             "address", "phone", "patient", "text", "body", "segments"})


def scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Remove keys that could carry patient data before the event is rendered."""
    for key in list(event_dict):
        if key in _FORBIDDEN_KEYS:
            event_dict[key] = "[removed]"
    return event_dict


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
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
