"""Compiled CDSi supporting data: frozen dataclasses, their JSON codec and the packaged loader.

The compiled form (``data/schedule-4.64.json.gz``) is produced by
:mod:`engine.forecast.schedule_import` from CDC's XML release and is the only supporting data
the engine reads at run time.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from engine.forecast.dates import Offset

__all__ = [
    "FORMAT_VERSION",
    "AgeRule",
    "AllowableInterval",
    "Antigen",
    "AntigenSeries",
    "BirthDateImmunity",
    "Condition",
    "ConditionSet",
    "ConditionalSkip",
    "ContraindicatedVaccine",
    "Contraindication",
    "CvxAntigen",
    "CvxMapping",
    "Indication",
    "Interval",
    "LiveVirusConflict",
    "ObservationDef",
    "Schedule",
    "SeriesDose",
    "VaccineGroup",
    "VaccineRule",
    "default_schedule",
    "load_schedule",
    "schedule_from_json",
    "schedule_to_json",
]

FORMAT_VERSION = 1
PACKAGED_SCHEDULE = "schedule-4.64.json.gz"


@dataclass(frozen=True)
class AgeRule:
    """One ``age`` block of a series dose (CALCDTAGE-*), with its effective window."""

    abs_min_age: Offset | None = None
    min_age: Offset | None = None
    earliest_rec_age: Offset | None = None
    latest_rec_age: Offset | None = None
    max_age: Offset | None = None
    effective_date: date | None = None
    cessation_date: date | None = None


@dataclass(frozen=True)
class Interval:
    """A preferable interval (section 6.5) and its reference-dose selector."""

    from_previous: bool = False
    from_target_dose: int | None = None
    from_most_recent: tuple[str, ...] = ()
    from_relevant_obs: str | None = None
    abs_min_int: Offset | None = None
    min_int: Offset | None = None
    earliest_rec_int: Offset | None = None
    latest_rec_int: Offset | None = None
    priority: bool = False
    effective_date: date | None = None
    cessation_date: date | None = None
    # Derived at construction (never serialised): ``from_most_recent`` as comparable CVX keys.
    recent_keys: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recent_keys", frozenset(map(_cvx_key, self.from_most_recent)))


@dataclass(frozen=True)
class AllowableInterval:
    """An allowable interval (section 6.6)."""

    from_previous: bool = False
    from_target_dose: int | None = None
    abs_min_int: Offset | None = None
    effective_date: date | None = None
    cessation_date: date | None = None


@dataclass(frozen=True)
class VaccineRule:
    """A preferable, allowable or inadvertent vaccine of a series dose."""

    cvx: str
    vaccine_type: str = ""
    begin_age: Offset | None = None
    end_age: Offset | None = None
    trade_name: str = ""
    mvx: str = ""
    volume: str = ""
    forecast: bool = False
    # Derived at construction (never serialised): the CVX as compared with administered doses.
    cvx_key: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cvx_key", _cvx_key(self.cvx))


@dataclass(frozen=True)
class Condition:
    """One conditional-skip condition (tables 6-6 to 6-9)."""

    condition_type: str
    condition_id: str = ""
    start_date: date | None = None
    end_date: date | None = None
    begin_age: Offset | None = None
    end_age: Offset | None = None
    interval: Offset | None = None
    dose_count: int | None = None
    dose_type: str = ""
    dose_count_logic: str = ""
    vaccine_types: tuple[str, ...] = ()
    series_groups: tuple[str, ...] = ()
    # Derived at construction (never serialised): ``vaccine_types`` as comparable CVX keys.
    type_keys: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "type_keys", frozenset(map(_cvx_key, self.vaccine_types)))


@dataclass(frozen=True)
class ConditionSet:
    """A set of conditions joined by ``condition_logic`` (table 6-10)."""

    set_id: str
    description: str = ""
    condition_logic: str = "AND"
    effective_date: date | None = None
    cessation_date: date | None = None
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class ConditionalSkip:
    """The conditional-skip block of a series dose (table 6-11)."""

    context: str
    set_logic: str = "OR"
    sets: tuple[ConditionSet, ...] = ()


@dataclass(frozen=True)
class SeriesDose:
    """A series dose: the template of a target dose."""

    dose_number: int
    ages: tuple[AgeRule, ...] = ()
    intervals: tuple[Interval, ...] = ()
    allowable_intervals: tuple[AllowableInterval, ...] = ()
    preferable_vaccines: tuple[VaccineRule, ...] = ()
    allowable_vaccines: tuple[VaccineRule, ...] = ()
    inadvertent_vaccines: tuple[VaccineRule, ...] = ()
    conditional_skips: tuple[ConditionalSkip, ...] = ()
    recurring: bool = False
    season_start: date | None = None
    season_end: date | None = None
    # Derived at construction (never serialised): the vaccine rules by CVX key, in data order,
    # so that evaluating a dose (6.8 / 6.9) looks at the rules of its own CVX only.
    preferable_by_cvx: Mapping[str, tuple[VaccineRule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    allowable_by_cvx: Mapping[str, tuple[VaccineRule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # The minimum interval of the first from-previous interval, which projects the finish
    # date of a series (table 8-9) for every later target dose of every forecast.
    previous_min_int: Offset | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferable_by_cvx", _by_cvx(self.preferable_vaccines))
        object.__setattr__(self, "allowable_by_cvx", _by_cvx(self.allowable_vaccines))
        mins = [i.min_int for i in self.intervals if i.from_previous and i.min_int]
        object.__setattr__(self, "previous_min_int", mins[0] if mins else None)


def _by_cvx(rules: tuple[VaccineRule, ...]) -> dict[str, tuple[VaccineRule, ...]]:
    table: dict[str, tuple[VaccineRule, ...]] = {}
    for rule in rules:
        table[rule.cvx_key] = (*table.get(rule.cvx_key, ()), rule)
    return table


@dataclass(frozen=True)
class Indication:
    """An observation that makes a risk series relevant (section 5.1)."""

    observation_code: str
    description: str = ""
    begin_age: Offset | None = None
    end_age: Offset | None = None
    guidance: str = ""


@dataclass(frozen=True)
class AntigenSeries:
    """An antigen series ("path to immunity")."""

    name: str
    target_disease: str
    vaccine_group: str
    series_type: str
    equivalent_series_groups: tuple[str, ...] = ()
    required_genders: tuple[str, ...] = ()
    default_series: bool = False
    product_path: bool = False
    series_group_name: str = ""
    series_group: str = ""
    priority: str = "A"
    preference: int = 1
    min_age_to_start: Offset | None = None
    max_age_to_start: Offset | None = None
    admin_guidance: tuple[str, ...] = ()
    indications: tuple[Indication, ...] = ()
    doses: tuple[SeriesDose, ...] = ()


@dataclass(frozen=True)
class ContraindicatedVaccine:
    """A vaccine named by a vaccine-level contraindication."""

    cvx: str
    vaccine_type: str = ""
    begin_age: Offset | None = None
    end_age: Offset | None = None


@dataclass(frozen=True)
class Contraindication:
    """An antigen-level (no vaccines) or vaccine-level contraindication (section 7.3)."""

    observation_code: str
    title: str = ""
    text: str = ""
    guidance: str = ""
    begin_age: Offset | None = None
    end_age: Offset | None = None
    vaccines: tuple[ContraindicatedVaccine, ...] = ()


@dataclass(frozen=True)
class BirthDateImmunity:
    """Immunity by birth before a date (table 7-3)."""

    immunity_birth_date: date
    birth_country: str = ""
    exclusion_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Antigen:
    """All supporting data for one antigen."""

    name: str
    immunity_codes: tuple[str, ...] = ()
    birth_date_immunity: tuple[BirthDateImmunity, ...] = ()
    antigen_contraindications: tuple[Contraindication, ...] = ()
    vaccine_contraindications: tuple[Contraindication, ...] = ()
    series: tuple[AntigenSeries, ...] = ()


@dataclass(frozen=True)
class LiveVirusConflict:
    """A vaccine-type conflict: ``current`` given too soon after ``previous`` (section 6.7)."""

    previous_cvx: str
    current_cvx: str
    begin: Offset | None = None
    min_end: Offset | None = None
    end: Offset | None = None


@dataclass(frozen=True)
class VaccineGroup:
    """A vaccine group and the antigens it classifies."""

    name: str
    administer_full: bool = False
    antigens: tuple[str, ...] = ()


@dataclass(frozen=True)
class CvxAntigen:
    """An antigen contained in a CVX, limited to an age at administration."""

    antigen: str
    begin_age: Offset | None = None
    end_age: Offset | None = None


@dataclass(frozen=True)
class CvxMapping:
    """The antigens of one CVX code."""

    cvx: str
    description: str = ""
    associations: tuple[CvxAntigen, ...] = ()


@dataclass(frozen=True)
class ObservationDef:
    """A CDSi coded observation (underlying condition, contraindication, immunity...)."""

    code: str
    title: str = ""
    group: str = ""
    indication_text: str = ""
    contraindication_text: str = ""


@dataclass(frozen=True)
class Schedule:
    """The whole compiled supporting-data release."""

    source_version: str
    antigens: tuple[Antigen, ...] = ()
    vaccine_groups: tuple[VaccineGroup, ...] = ()
    cvx_map: tuple[CvxMapping, ...] = ()
    live_virus_conflicts: tuple[LiveVirusConflict, ...] = ()
    observations: tuple[ObservationDef, ...] = ()
    format_version: int = FORMAT_VERSION

    @cached_property
    def antigen_by_name(self) -> Mapping[str, Antigen]:
        return {antigen.name: antigen for antigen in self.antigens}

    @cached_property
    def cvx_by_code(self) -> Mapping[str, CvxMapping]:
        return {_cvx_key(mapping.cvx): mapping for mapping in self.cvx_map}

    @cached_property
    def group_by_name(self) -> Mapping[str, VaccineGroup]:
        return {group.name: group for group in self.vaccine_groups}

    @cached_property
    def conflicts_by_current(self) -> Mapping[str, Mapping[str, LiveVirusConflict]]:
        """Conflicts keyed by impacted (current) CVX, then by conflicting (previous) CVX."""
        table: dict[str, dict[str, LiveVirusConflict]] = {}
        for conflict in self.live_virus_conflicts:
            by_previous = table.setdefault(_cvx_key(conflict.current_cvx), {})
            by_previous[_cvx_key(conflict.previous_cvx)] = conflict
        return table


_CVX_KEYS: dict[str, str] = {}


def _cvx_key(cvx: str) -> str:
    # CVX codes appear both zero-padded ("03") and bare ("3"); compare them as numbers.
    key = _CVX_KEYS.get(cvx)
    if key is None:
        key = _CVX_KEYS[cvx] = cvx.strip().lstrip("0") or "0"
    return key


# --- JSON codec -------------------------------------------------------------------------

_T = TypeVar("_T")


def _encode(value: Any) -> Any:
    if isinstance(value, Offset):
        return [value.years, value.months, value.days]
    if isinstance(value, date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for fld in dataclasses.fields(value):
            if fld.name.startswith("_") or not fld.init:
                continue
            item = getattr(value, fld.name)
            if item is None or item == () or item == "" or item is False:
                continue
            out[fld.name] = _encode(item)
        return out
    if isinstance(value, tuple):
        return [_encode(item) for item in value]
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _decode(tp: Any, raw: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if raw is None:
            return None
        inner = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        return _decode(inner[0], raw)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        return tuple(_decode(item_type, item) for item in raw)
    if tp is Offset:
        return Offset(int(raw[0]), int(raw[1]), int(raw[2]))
    if tp is date:
        return date.fromisoformat(raw)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, raw)
    return raw


def _decode_dataclass(cls: type[_T], raw: Mapping[str, Any]) -> _T:
    hints = _hints(cls)
    kwargs = {name: _decode(hints[name], value) for name, value in raw.items() if name in hints}
    return cls(**kwargs)


def schedule_to_json(schedule: Schedule) -> dict[str, Any]:
    """Encode a schedule as plain JSON data (empty fields are omitted)."""
    encoded = _encode(schedule)
    assert isinstance(encoded, dict)
    encoded["format_version"] = schedule.format_version
    return encoded


def schedule_from_json(raw: Mapping[str, Any]) -> Schedule:
    """Decode the output of :func:`schedule_to_json`."""
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported compiled schedule format {version!r}")
    return _decode_dataclass(Schedule, raw)


def load_schedule(path: Path) -> Schedule:
    """Load a compiled schedule file (``.json`` or ``.json.gz``)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return schedule_from_json(json.loads(data))


@cache
def default_schedule() -> Schedule:
    """The packaged CDSi 4.64 schedule, loaded once per process."""
    resource = resources.files("engine.forecast").joinpath("data", PACKAGED_SCHEDULE)
    raw = json.loads(gzip.decompress(resource.read_bytes()))
    return schedule_from_json(raw)
