"""Primitive datatype formats (NM, SI, DT, DTM/TS) and HL7 date parsing for business rules.

Owns "is this text a valid value of that primitive type", including calendar validity
(``20231345`` is not a date), and turning a DT/DTM into a `datetime.date`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

_NM = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_SI = re.compile(r"\d+")
_DT = re.compile(r"(\d{4})(?:(\d{2})(?:(\d{2}))?)?")
_DTM = re.compile(r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,4})?)?)?)?)?)?"
                  r"([+-]\d{4})?")


def _calendar_ok(y: str, m: str | None, d: str | None) -> bool:
    try:
        date(int(y), int(m or 1), int(d or 1))
    except ValueError:
        return False
    return True


def is_dt(text: str) -> bool:
    m = _DT.fullmatch(text)
    return bool(m) and _calendar_ok(m.group(1), m.group(2), m.group(3))  # type: ignore[union-attr]


def is_dtm(text: str) -> bool:
    m = _DTM.fullmatch(text)
    if not m:
        return False
    hh, mm, ss, tz = m.group(4), m.group(5), m.group(6), m.group(7)
    if hh is not None and int(hh) > 23:
        return False
    if (mm is not None and int(mm) > 59) or (ss is not None and int(ss) > 59):
        return False
    if tz is not None and (int(tz[1:3]) > 14 or int(tz[3:]) > 59):
        return False
    return _calendar_ok(m.group(1), m.group(2), m.group(3))


# primitive datatype -> (check, CDC 0533 code used when it fails)
FORMATS: dict[str, tuple[Callable[[str], bool], int]] = {
    "NM": (lambda v: _NM.fullmatch(v) is not None, 4),
    "SI": (lambda v: _SI.fullmatch(v) is not None, 4),
    "DT": (is_dt, 2),
    "DTM": (is_dtm, 2),
}


def to_date(text: str) -> date | None:
    """The calendar date of a DT/DTM value (None when absent, invalid or less precise than a
    day: "2011-1411" is the year 2011 at UTC-14:11, not a date)."""
    m = _DTM.fullmatch(text)
    if m is None or m.group(3) is None or not is_dtm(text):
        return None
    return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
