"""Test helpers: a deterministic pipeline (fixed clock and control ids) and response readers."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from engine.config import AcceptConfig, IdentityConfig
from engine.hl7 import Message, decode, parse
from engine.observability.metrics import Metrics
from engine.pipeline import MessageHandler, Pipeline
from engine.responses import ResponseBuilder

FIXED_NOW = datetime(2026, 11, 22, 10, 30, 0, tzinfo=timezone(timedelta(hours=-8)))


def fixed_builder() -> ResponseBuilder:
    counter = itertools.count(1)
    return ResponseBuilder(IdentityConfig(), clock=lambda: FIXED_NOW,
                           ids=lambda: f"ACK{next(counter):05d}")


def fixed_pipeline(handlers: Mapping[str, MessageHandler] | None = None,
                   accept: AcceptConfig | None = None) -> Pipeline:
    """A pipeline whose responses are byte-reproducible."""
    return Pipeline(accept=accept or AcceptConfig(), responses=fixed_builder(), metrics=Metrics(),
                    handlers=handlers)


def read(response: bytes) -> Message:
    return parse(decode(response))


def err_triples(response: bytes) -> list[tuple[str, str, str]]:
    """(ERR-2, ERR-3.1, ERR-4) of every ERR segment."""
    msg = read(response)
    return [(e.field(2), e.value(3, 1), e.value(4)) for e in msg.all("ERR")]


def msa(response: bytes) -> tuple[str, str]:
    seg = read(response).first("MSA")
    assert seg is not None
    return seg.value(1), seg.value(2)
