"""The store's JSON documents: the fast encoder writes exactly what json's own encoder writes.

engine.store.intake keeps one C encoder instead of letting `JSONEncoder.encode` build one per
call, and turns dataclasses into dicts with generated functions; stored documents must not
change by a byte because of either.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from engine.store import intake


@dataclass(frozen=True)
class Code:
    code: str
    text: str = ""


@dataclass(frozen=True)
class Record:
    name: str
    born: date | None
    amount: Decimal | None
    codes: tuple[Code, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)


VALUES = [
    Record("Zoë \u4e2d \x00 \"quoted\" \\ tab\t", date(2024, 2, 29), Decimal("0.50"),
           (Code("08", "HepB"), Code("")), {"n": 1, "f": 1.5, "t": True, "none": None}),
    [Record("a", None, None), {"nested": [date(1999, 12, 31), Code("x")]}],
    "plain text", 3, None, [], {},
]


def plain(value: Any) -> Any:
    """The straightforward hook: a dataclass's fields by name, dates ISO, decimals as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


REFERENCE = json.JSONEncoder(separators=(",", ":"), default=plain)


@pytest.mark.parametrize("value", VALUES)
def test_dumps_matches_the_standard_encoder(value: object) -> None:
    assert intake.dumps(value) == REFERENCE.encode(value) == intake._ENCODER.encode(value)


def test_dumps_refuses_what_it_cannot_store() -> None:
    with pytest.raises(TypeError):
        intake.dumps({"x": object()})
