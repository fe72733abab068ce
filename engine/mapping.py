"""Applies `mappings/vxu.yaml` to a parsed VXU and returns the registry's domain records.

Owns the generic mapper: which HL7 path fills which attribute of which `engine.domain`
record, and the code normalisation on the way (NDC/CPT → CVX from the CDC tables generated
into `mappings/codes/`, legacy HL7 0162 routes → NCIT). The YAML says *what*; this module only
knows *how* to read a path, build a composite, repeat, convert, normalise and group segments.
Adding a field is a YAML line plus a domain attribute, not code here.

Validation's verdict is honoured: segments in `dropped` are invisible, fields in `emptied`
read as empty. The mapper also enforces the few things it cannot store without (the YAML's
`required` paths) and reports them as `Issue`s (101, CDC 0533 code 7) with ERR-2 locations,
so the VXU handler is safe even when no validator is configured.

Pure: no I/O after loading, no asyncio/socket/SQLAlchemy.
"""

from __future__ import annotations

import csv
import dataclasses
import operator
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from engine import domain
from engine.errors import Issue, Location, Severity
from engine.hl7.er7 import Message
from engine.hl7.escape import DEFAULT_DELIMITERS, Delimiters, unescape

MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "mappings"
CODES_DIR = MAPPINGS_DIR / "codes"

_RECORDS: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (
        domain.Coded, domain.Name, domain.Identifier, domain.Address, domain.Phone,
        domain.Provider, domain.Site, domain.EventKey, domain.Patient, domain.PatientSettings,
        domain.ResponsiblePerson, domain.Vaccination, domain.Observation)
}
_PATH = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?(?:\.(\d+))?\Z")


@dataclass(frozen=True, slots=True)
class MappingResult:
    """The mapped VXU (None when nothing can be stored) and what the mapper found."""

    vxu: domain.Vxu | None
    issues: tuple[Issue, ...] = ()
    rejected: bool = False


class MappingError(ValueError):
    """The mapping YAML is malformed (raised at load time, never per message)."""


# --- value conversions ---------------------------------------------------------------------

def hl7_date(text: str) -> date | None:
    """The date part of an HL7 DT/TS with at least day precision; None when absent/invalid."""
    # str.isdecimal is exactly what the regex's \d matches (Unicode Nd), and int() reads it;
    # date.fromisoformat reads ASCII YYYYMMDD (ISO 8601 basic) the same way, faster.
    day = text[:8]
    if len(day) < 8:
        return None
    try:
        if day.isascii() and day.isdigit():
            return _fromisoformat(day)
        if day.isdecimal():
            return date(int(day[:4]), int(day[4:6]), int(day[6:8]))
    except ValueError:
        pass
    return None


_fromisoformat = date.fromisoformat


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text.strip()) if text.strip() else None
    except InvalidOperation:
        return None
    return value if value is None or value.is_finite() else None


_ACTIONS = {action.value: action for action in domain.Action}


def _action(text: str) -> domain.Action:
    # Unknown 0323 codes read as ADD: they are the validator's to report.
    return _ACTIONS.get(text.strip().upper() or "A", domain.Action.ADD)


def _as_text(text: str) -> str:
    return text


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "text": _as_text, "date": hl7_date, "int": _int, "decimal": _decimal, "action": _action,
}


def ndc11(raw: str) -> str:
    """An NDC as 11 digits (5-4-2). Dashed forms give the segment lengths (4-4-2, 5-3-2, ...)."""
    raw = raw.strip()
    if "-" in raw:
        parts = raw.split("-")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return parts[0].zfill(5) + parts[1].zfill(4) + parts[2].zfill(2)
        return ""
    digits = "".join(c for c in raw if c.isdigit())
    return digits if len(digits) == 11 else ""


# --- compiled readers ------------------------------------------------------------------------
#
# The YAML is compiled once into small closures, one per path, that read straight from a
# segment's raw field texts. A field is split only as deep as the path asks (first repetition,
# then one component, then one subcomponent) and a leaf is unescaped only when it holds the
# escape character, which gives the same values as splitting the whole field into a tree and
# unescaping every leaf (what `Segment.field_tree` does) at a fraction of the cost: a VXU is
# read at ~100 paths and most of them are plain text.

# Per segment: repetition, component, subcomponent and escape characters, and the delimiters
# themselves for `unescape`.
_Seps = tuple[str, str, str, str, Delimiters]
_DEFAULT_SEPS: _Seps = (DEFAULT_DELIMITERS.repetition, DEFAULT_DELIMITERS.component,
                        DEFAULT_DELIMITERS.subcomponent, DEFAULT_DELIMITERS.escape,
                        DEFAULT_DELIMITERS)
_CACHE_SIZE = 2048  # distinct texts remembered per composite type
# Records that describe no patient, whose values repeat across patients: safe to remember.
_SHARED_RECORDS = frozenset({domain.Coded, domain.Provider, domain.Site})


def _constructor(record: type[Any]) -> Callable[..., Any]:
    """`record(*values)` for a value per init attribute, about twice as fast.

    A frozen dataclass's `__init__` sets each attribute through `object.__setattr__`, looked
    up per attribute. For a slotted record without `__post_init__` whose attributes are all
    init attributes, setting the slots directly gives the same record; any other record is
    returned as is (its own constructor). Generated once per record type, at load.
    """
    names = _init_fields(record)
    slots: list[Any] = [getattr(record, name, None) for name in names]
    if (hasattr(record, "__post_init__") or len(names) != len(dataclasses.fields(record))
            or not all(isinstance(slot, types.MemberDescriptorType) for slot in slots)):
        return record
    namespace: dict[str, Any] = {"new": object.__new__, "cls": record}
    namespace.update((f"set{i}", slot.__set__) for i, slot in enumerate(slots))
    args = ", ".join(f"a{i}" for i in range(len(names)))
    body = "".join(f"    set{i}(x, a{i})\n" for i in range(len(names)))
    exec(f"def make({args}):\n    x = new(cls)\n{body}    return x\n", namespace)
    make: Callable[..., Any] = namespace["make"]
    return make


class _View:
    """A segment as the mapper sees it: emptied fields blanked, plus its message position."""

    __slots__ = ("fields", "id", "seps", "sequence")

    def __init__(self, seg_id: str, fields: list[str], seps: _Seps, sequence: int) -> None:
        self.id = seg_id
        self.fields = fields  # raw (escaped) texts, index 0 = segment id, as `Segment.fields`
        self.seps = seps
        self.sequence = sequence  # occurrence of this segment id in the message, from 1


Context = Mapping[str, _View]
_Text = Callable[[_View], str]  # reads one leaf (first repetition) as text
_Read = Callable[[_View], Any]  # reads an attribute's value (converted, built, repeated)


def _leaf(rep: str, comp: int, sub: int, seps: _Seps) -> str:
    """Component `comp`, subcomponent `sub` (1-based) of one repetition's raw text, unescaped."""
    _, comp_sep, sub_sep, esc, d = seps
    if comp_sep in rep:
        parts = rep.split(comp_sep)
        if comp > len(parts):
            return ""
        rep = parts[comp - 1]
    elif comp != 1:
        return ""
    if sub_sep in rep:
        parts = rep.split(sub_sep)
        if sub > len(parts):
            return ""
        rep = parts[sub - 1]
    elif sub != 1:
        return ""
    return unescape(rep, d) if esc in rep else rep


def _text_reader(field_no: int, comp: int, sub: int, whole: bool) -> _Text:
    """A reader of SEG-field.comp.sub in the first repetition ("" when absent or emptied).

    `whole` is for MSH-1/MSH-2, which hold the delimiters themselves: one unsplit leaf.
    """
    if whole:
        def read_whole(view: _View) -> str:
            fields = view.fields
            raw = fields[field_no] if field_no < len(fields) else ""
            return raw if comp == 1 and sub == 1 else ""
        return read_whole
    if comp == 1 and sub == 1:  # most paths: the first leaf, a prefix of the field
        def read_first(view: _View) -> str:
            fields = view.fields
            raw = fields[field_no] if field_no < len(fields) else ""
            if not raw:
                return raw
            rep_sep, comp_sep, sub_sep, esc, d = view.seps
            if rep_sep in raw:
                raw = raw.partition(rep_sep)[0]
            if comp_sep in raw:
                raw = raw.partition(comp_sep)[0]
            if sub_sep in raw:
                raw = raw.partition(sub_sep)[0]
            return unescape(raw, d) if esc in raw else raw
        return read_first

    def read(view: _View) -> str:
        fields = view.fields
        raw = fields[field_no] if field_no < len(fields) else ""
        if not raw:
            return raw
        seps = view.seps
        return _leaf(raw.partition(seps[0])[0], comp, sub, seps)
    return read


class _Composite:
    """A `types` entry: builds its record from one repetition's raw text."""

    __slots__ = ("_fast", "_kwargs", "_make", "_pad", "_positions", "build", "build_new", "cache",
                 "empty", "record", "shared")

    def __init__(self, record: type[Any], components: Sequence[tuple[str, int, int]],
                 where: str) -> None:
        self.record = record
        names = _init_fields(record)
        unknown = [name for name, _, _ in components if name not in names]
        if unknown or not components:
            raise MappingError(f"{where}: {record.__name__} has no attribute(s) {unknown}"
                               if unknown else f"{where}: no components")
        by_name = {name: (c, s) for name, c, s in components}
        # Records are built positionally when the mapped attributes are the record's leading
        # attributes (true of every type today); otherwise by keyword.
        ordered = names[:len(by_name)]
        self._kwargs: tuple[str, ...] | None = None
        if set(ordered) != set(by_name):
            ordered = [name for name, _, _ in components]
            self._kwargs = tuple(ordered)
        self._positions = tuple(by_name[name] for name in ordered)
        self._make: Callable[..., Any] = (
            _constructor(record) if self._kwargs is None and len(ordered) == len(names)
            else record)
        # Fast path (no subcomponent or escape character in the repetition): every leaf is a
        # whole component, or "" for a subcomponent past the first. Components are padded
        # with "" so that a missing one, and index -1, read as "".
        self._pad = [""] * max(c for c, _ in self._positions)
        getter = operator.itemgetter(*(c - 1 if s == 1 else -1 for c, s in self._positions))
        self._fast: Callable[[list[str]], tuple[str, ...]] = (
            getter if len(self._positions) > 1 else lambda comps: (getter(comps),))
        # The record for an empty field; records are frozen, so one instance serves all.
        self.empty: Any = record()
        # Codes, clinicians and facilities recur in nearly every message ("mL^mL^UCUM", a
        # route, the administering nurse, the clinic): building their record once per distinct
        # text saves most of their cost. Records about the patient (names, addresses, phones,
        # identifiers) are never remembered, so no patient's details outlive the message.
        self.cache: dict[str, Any] = {}
        self.shared = record in _SHARED_RECORDS
        self.build_new: Callable[[str, _Seps], Any] = self._build
        self.build: Callable[[str, _Seps], Any] = self._cached if self.shared else self._build

    def _cached(self, rep: str, seps: _Seps) -> Any:
        cache = self.cache
        if seps is not _DEFAULT_SEPS:
            return self._build(rep, seps)
        found = cache.get(rep)
        if found is None:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()  # crude but thread-safe under the GIL and bounded
            found = cache[rep] = self._build(rep, seps)
        return found

    def _build(self, rep: str, seps: _Seps) -> Any:
        comp_sep, sub_sep, esc = seps[1], seps[2], seps[3]
        if sub_sep in rep or esc in rep:
            values: Sequence[str] = [_leaf(rep, c, s, seps) for c, s in self._positions]
        else:
            comps = rep.split(comp_sep)
            comps.extend(self._pad)
            values = self._fast(comps)
        if self._kwargs is not None:
            return self.record(**dict(zip(self._kwargs, values, strict=True)))
        return self._make(*values)


def _attr_reader(field_no: int, comp: int, sub: int, composite: _Composite | None,
                 repeat: bool, convert: Callable[[str], Any]) -> _Read:
    """The reader of one attribute: a leaf or a composite, the first repetition or all.

    Not for MSH-1/MSH-2 (see `_text_reader`), which the loader only lets be read as text.
    """
    if composite is not None:
        build, empty = composite.build, composite.empty
        if not repeat and composite.shared:
            cache, build_new = composite.cache, composite.build_new

            def read_shared(view: _View) -> Any:
                fields = view.fields
                raw = fields[field_no] if field_no < len(fields) else ""
                if not raw:
                    return empty
                seps = view.seps
                if seps is not _DEFAULT_SEPS:
                    return build_new(raw.partition(seps[0])[0], seps)
                found = cache.get(raw)  # keyed by the repetition: here the whole field, usually
                return found if found is not None else build(raw.partition(seps[0])[0], seps)
            return read_shared
        if repeat:
            def read_composites(view: _View) -> tuple[Any, ...]:
                fields = view.fields
                raw = fields[field_no] if field_no < len(fields) else ""
                if not raw:
                    return ()
                seps = view.seps
                if seps[0] not in raw:  # one repetition, the usual case
                    v = build(raw, seps)
                    return (v,) if v else ()
                return tuple(v for rep in raw.split(seps[0]) if (v := build(rep, seps)))
            return read_composites

        def read_composite(view: _View) -> Any:
            fields = view.fields
            raw = fields[field_no] if field_no < len(fields) else ""
            if not raw:
                return empty
            seps = view.seps
            return build(raw.partition(seps[0])[0], seps)
        return read_composite
    if repeat:
        def read_leaves(view: _View) -> tuple[Any, ...]:
            fields = view.fields
            raw = fields[field_no] if field_no < len(fields) else ""
            if not raw:
                return ()
            seps = view.seps
            return tuple(v for rep in raw.split(seps[0])
                         if (v := convert(_leaf(rep, comp, sub, seps))))
        return read_leaves
    if comp == 1 and sub == 1 and convert is not _as_text:
        return _first_converted(field_no, convert)
    return _converted(_text_reader(field_no, comp, sub, False), convert)


def _converted(text: _Text, convert: Callable[[str], Any]) -> _Read:
    return text if convert is _as_text else lambda view: convert(text(view))


def _first_converted(field_no: int, convert: Callable[[str], Any]) -> _Read:
    """`_converted(_text_reader(field_no, 1, 1, False), convert)` in one call."""
    def read_first_converted(view: _View) -> Any:
        fields = view.fields
        raw = fields[field_no] if field_no < len(fields) else ""
        if raw:
            rep_sep, comp_sep, sub_sep, esc, d = view.seps
            if rep_sep in raw:
                raw = raw.partition(rep_sep)[0]
            if comp_sep in raw:
                raw = raw.partition(comp_sep)[0]
            if sub_sep in raw:
                raw = raw.partition(sub_sep)[0]
            if esc in raw:
                raw = unescape(raw, d)
        return convert(raw)
    return read_first_converted


@dataclass(frozen=True, slots=True)
class _Attr:
    name: str
    segment: str
    read: _Read
    normalise: str
    when: tuple[tuple[str, _Text, frozenset[str]], ...]


def _holds(conditions: Sequence[tuple[str, _Text, frozenset[str]]], ctx: Context) -> bool:
    """Every (segment, path, allowed values) condition holds in `ctx`."""
    for seg, text, allowed in conditions:
        view = ctx.get(seg)
        if view is None or text(view) not in allowed:
            return False
    return True


def _init_fields(record: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(record) if f.init]


class _Record:
    """A one-segment record spec (patient, settings, ...) compiled to one reader per attribute.

    The record is built positionally, in the record's own attribute order. An attribute the
    YAML does not map, whose path is in another segment, or whose `when` does not hold gets
    the record's default (records are frozen, so a default built once at load serves every
    message).
    """

    __slots__ = ("_make", "_names", "_readers", "record")

    def __init__(self, record: type[Any], segment: str, attrs: Sequence[_Attr],
                 where: str) -> None:
        self.record = record
        by_name = {attr.name: attr for attr in attrs}
        readers: list[_Read] = []
        for f in dataclasses.fields(record):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                raise MappingError(f"{where}: {record.__name__}.{f.name} has no default")
            attr = by_name.get(f.name)
            if attr is None or attr.segment != segment or any(
                    seg != segment for seg, _, _ in attr.when):
                readers.append(_constant(default))
            elif attr.when:
                readers.append(_conditional(attr.read, attr.when, default))
            else:
                readers.append(attr.read)
        self._readers = tuple(readers)
        self._names = _init_fields(record)
        self._make = _constructor(record)

    def build(self, view: _View) -> Any:
        return self._make(*[read(view) for read in self._readers])

    def reader(self, name: str) -> _Read:
        """What `build(view).<name>` would be, without building the record."""
        if name not in self._names:
            raise MappingError(f"{self.record.__name__} has no attribute {name!r}")
        return self._readers[self._names.index(name)]


def _constant(value: Any) -> _Read:
    return lambda view: value


def _conditional(read: _Read, when: Sequence[tuple[str, _Text, frozenset[str]]],
                 default: Any) -> _Read:
    """`read` when every condition (all on the segment being read) holds, else `default`."""
    conditions = tuple((text, allowed) for _, text, allowed in when)

    def read_when(view: _View) -> Any:
        for text, allowed in conditions:
            if text(view) not in allowed:
                return default
        return read(view)
    return read_when


def _parse_path(text: str, where: str) -> tuple[str, int, int, int]:
    m = _PATH.match(str(text))
    if m is None or 0 in (field_no := int(m[2]), comp := int(m[3] or 1), sub := int(m[4] or 1)):
        raise MappingError(f"{where}: {text!r} is not a SEG-field[.comp[.sub]] path "
                           "(numbered from 1)")
    return m[1], field_no, comp, sub


def _parse_comp(text: str, where: str) -> tuple[int, int]:
    parts = str(text).split(".")
    if (not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts)
            or any(int(p) == 0 for p in parts)):
        raise MappingError(f"{where}: component {text!r} must be N or N.M (from 1)")
    return int(parts[0]), int(parts[1]) if len(parts) == 2 else 1


def _text_at(path: tuple[str, int, int, int]) -> _Text:
    seg, f, c, s = path
    return _text_reader(f, c, s, seg == "MSH" and f <= 2)


_NORMALISE = frozenset({"", "administered", "route"})


class _Positions:
    """A record's init attributes: their defaults in order, and each name's position."""

    __slots__ = ("_index", "defaults", "record")

    def __init__(self, record: type[Any], where: str) -> None:
        self.record = record
        self.defaults: list[Any] = []
        for f in dataclasses.fields(record):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                self.defaults.append(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                self.defaults.append(f.default_factory())
            else:
                raise MappingError(f"{where}: {record.__name__}.{f.name} has no default")
        self._index = {name: i for i, name in enumerate(_init_fields(record))}

    def index(self, name: str, where: str) -> int:
        if name not in self._index:
            raise MappingError(f"{where}: {self.record.__name__} has no attribute {name!r}")
        return self._index[name]


class VxuMapper:
    """The compiled `mappings/vxu.yaml` plus its code tables; `map` is pure and thread-safe."""

    def __init__(self, spec: Mapping[str, Any], codes_dir: Path = CODES_DIR) -> None:
        self.source = str(spec.get("source", ""))
        self._types = {name: _Composite(
            self._record(t["record"], f"types.{name}"),
            tuple((attr, *_parse_comp(c, f"types.{name}.{attr}"))
                  for attr, c in t["components"].items()), f"types.{name}")
            for name, t in spec["types"].items()}
        self._org_paths = tuple(_text_at(_parse_path(p, "organization"))
                                for p in spec["organization"]
                                if _parse_path(p, "organization")[0] == "MSH")
        self.patient_segment, self._patient = self._record_spec(spec["patient"], "patient")
        required = [int(f) for f in spec["patient"].get("required", ())]
        if any(f < 1 for f in required):
            raise MappingError(f"patient.required: {required} (fields are numbered from 1)")
        self._patient_required = tuple(
            (f, _text_at((self.patient_segment, f, 1, 1))) for f in required)
        # A PID-7 that is sent but is no date is its own error when PID-7 is required.
        self._dob_required = 7 in required
        self._patient_dob = _text_at((self.patient_segment, 7, 1, 1))
        self.settings_segment, self._settings = self._record_spec(spec["settings"], "settings")
        self.nk1_segment, self._nk1 = self._record_spec(spec["responsible_person"],
                                                        "responsible_person")
        group = spec["order_group"]
        self._group_starts = frozenset(group["starts"])
        self._group_members = frozenset(group["members"])
        self._group_attrs = tuple(self._attr(n, a, "", f"order_group.{n}", domain.Vaccination)
                                  for n, a in group["attributes"].items())
        self._group_required = tuple(
            (seg, f, _text_at((seg, f, c, s)))
            for seg, f, c, s in (_parse_path(p, "order_group.required")
                                 for p in group.get("required", ())))
        # A Vaccination is built positionally: attribute values go into a copy of the
        # record's defaults, by index, in the order the dict of keyword arguments used to be
        # filled (so a later attribute still overrides an earlier one).
        self._vac = _Positions(domain.Vaccination, "order_group")
        self._vac_make = _constructor(domain.Vaccination)
        # Consecutive attributes of one segment form a run: its segment is looked up once.
        runs: list[tuple[str, list[tuple[int, _Read, Any, str]]]] = []
        for a in self._group_attrs:
            if not runs or runs[-1][0] != a.segment:
                runs.append((a.segment, []))
            runs[-1][1].append((self._vac.index(a.name, f"order_group.{a.name}"), a.read,
                                a.when, a.normalise))
        self._group_plan = tuple((seg, tuple(steps)) for seg, steps in runs)
        self._vac_kind = self._vac.index("kind", "order_group")
        self._vac_orc = self._vac.index("orc_sequence", "order_group")
        self._vac_rxa = self._vac.index("rxa_sequence", "order_group")
        self._vac_observations = self._vac.index("observations", "order_group")
        self._vac_vis = self._vac.index("vis", "order_group")
        self._placeholder_keys = frozenset(str(k) for k in group.get("placeholder_keys", ()))
        self._kinds = tuple(
            (tuple((path[0], _text_at(path), _allowed(v))
                   for path, v in ((_parse_path(p, "order_group.kind"), v)
                                   for p, v in (k.get("when") or {}).items())),
             domain.EventKind(k["kind"]))
            for k in group["kind"])
        obs = spec["observation"]
        self.obx_segment, self._obx = self._record_spec(obs, "observation")
        self._obx_code = self._obx.reader("code")
        self._obx_value = self._obx.reader("value")
        self._obx_coded_value = self._obx.reader("coded_value")
        self._obx_sub_id = self._obx.reader("sub_id")
        self._lift = {str(k): self._vac.index(str(v), f"observation.lift.{k}")
                      for k, v in (obs.get("lift") or {}).items()}
        self._vis_record = _Positions(domain.Vis, "observation.vis")
        self._vis_make = _constructor(domain.Vis)
        self._vis = {str(k): (self._vis_record.index(str(v["attribute"]), f"observation.vis.{k}"),
                              str(v.get("convert", "coded")) == "date")
                     for k, v in (obs.get("vis") or {}).items()}
        codes = spec["codes"]
        self._admin_systems: dict[str, tuple[str, dict[str, str]]] = {}
        for system, rule in codes["administered"].items():
            table = _read_table(codes_dir / rule["to_cvx"]) if rule.get("to_cvx") else {}
            self._admin_systems[str(system)] = (str(rule["attribute"]), table)
            self._vac.index(str(rule["attribute"]), f"codes.administered.{system}")
        # RXA-5 → its product codes, per distinct (shared, cached) Coded record.
        self._products: dict[domain.Coded, tuple[tuple[int, str], ...]] = {}
        route = codes["route"]
        self._route_systems = frozenset(str(s) for s in route["from_systems"])
        self._route_system = str(route["system"])
        self._route_table = _read_table(codes_dir / route["table"], value_columns=2)
        self._groups: dict[str, frozenset[str]] = {}
        for cvx, group_name in _read_rows(codes_dir / codes["vaccine_groups"]):
            self._groups[cvx] = self._groups.get(cvx, frozenset()) | {group_name}

    # -- loading --

    @classmethod
    def load(cls, path: Path | None = None, codes_dir: Path | None = None) -> VxuMapper:
        path = path or MAPPINGS_DIR / "vxu.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise MappingError(f"{path}: expected a mapping")
        try:
            return cls(data, codes_dir or path.parent / "codes")
        except (KeyError, TypeError) as exc:
            raise MappingError(f"{path}: missing or malformed key {exc}") from None

    @staticmethod
    def _record(name: str, where: str) -> type[Any]:
        if name not in _RECORDS:
            raise MappingError(f"{where}: unknown record {name!r}")
        return _RECORDS[name]

    def _record_spec(self, spec: Mapping[str, Any], where: str) -> tuple[str, _Record]:
        segment = str(spec["segment"])
        record = self._record(spec["record"], where)
        attrs = tuple(self._attr(n, a, segment, f"{where}.{n}", record)
                      for n, a in spec["attributes"].items())
        return segment, _Record(record, segment, attrs, where)

    def _attr(self, name: str, a: Mapping[str, Any], segment: str, where: str,
              record: type[Any]) -> _Attr:
        if name not in _init_fields(record):
            raise MappingError(f"{where}: {record.__name__} has no attribute {name!r}")
        if "path" in a:
            seg, f, c, s = _parse_path(a["path"], where)
        else:
            seg, f, c, s = segment, int(a["field"]), 1, 1
            if f < 1:
                raise MappingError(f"{where}: field {f} (fields are numbered from 1)")
        type_name = a.get("type")
        if type_name is not None and type_name not in self._types:
            raise MappingError(f"{where}: unknown type {type_name!r}")
        convert = str(a.get("convert", "text"))
        if convert not in _CONVERTERS:
            raise MappingError(f"{where}: unknown convert {convert!r}")
        normalise = str(a.get("normalise", ""))
        if normalise not in _NORMALISE:
            raise MappingError(f"{where}: unknown normalise {normalise!r}")
        when = tuple((path[0], _text_at(path), _allowed(v))
                     for path, v in ((_parse_path(p, where), v)
                                     for p, v in (a.get("when") or {}).items()))
        composite = self._types[type_name] if type_name else None
        repeat = bool(a.get("repeat", False))
        if seg == "MSH" and f <= 2:
            if composite is not None or repeat:
                raise MappingError(f"{where}: MSH-{f} holds the delimiters; it is read as text")
            read = _converted(_text_at((seg, f, c, s)), _CONVERTERS[convert])
        else:
            read = _attr_reader(f, c, s, composite, repeat, _CONVERTERS[convert])
        return _Attr(name, seg, read, normalise, when)

    # -- public helpers --

    def vaccine_groups(self, cvx: str) -> frozenset[str]:
        """CDC vaccine groups of a CVX code (empty for unknown codes)."""
        return self._groups.get(cvx.lstrip("0").zfill(2) if cvx.isdigit() else cvx, frozenset())

    def is_placeholder_key(self, key: domain.EventKey) -> bool:
        return not key.id or key.id in self._placeholder_keys

    # -- mapping --

    def map(self, message: Message, dropped: frozenset[int] = frozenset(),
            emptied: frozenset[tuple[int, int]] = frozenset()) -> MappingResult:
        """Domain records for one VXU; `rejected` when the patient cannot be stored."""
        views = _views(message, dropped, emptied)
        organization = ""
        if views and views[0].id == "MSH":
            for text in self._org_paths:
                organization = text(views[0]).strip()
                if organization:
                    break

        issues: list[Issue] = []
        pid = next((v for v in views if v.id == self.patient_segment), None)
        if pid is None:
            issues.append(Issue(100, Severity.ERROR, Location(self.patient_segment, 1),
                                "The patient segment is missing; nothing was stored",
                                7, "mapping.required"))
            return MappingResult(None, tuple(issues), True)
        for f, text in self._patient_required:
            if not text(pid).strip():
                issues.append(Issue(101, Severity.ERROR, Location(pid.id, 1, f),
                                    f"Required field {pid.id}-{f} is missing; the "
                                    "message was not stored", 7, "mapping.required"))
        patient: domain.Patient = self._patient.build(pid)
        if (patient.birth_date is None and self._dob_required
                and self._patient_dob(pid).strip()):
            issues.append(Issue(102, Severity.ERROR, Location(pid.id, 1, 7),
                                "PID-7 is not a valid date; the message was not stored", 2,
                                "mapping.required"))
        if issues:
            return MappingResult(None, tuple(issues), True)

        pd1 = next((v for v in views if v.id == self.settings_segment), None)
        settings = (self._settings.build(pd1) if pd1
                    else domain.PatientSettings())
        persons = tuple(self._nk1.build(v) for v in views
                        if v.id == self.nk1_segment)
        events = []
        for group, ctx in self._order_groups(views):
            event, problems = self._event(group, ctx)
            issues.extend(problems)
            if event is not None:
                events.append(event)
        vxu = domain.Vxu(organization, patient, settings, persons, tuple(events),
                         has_pd1=pd1 is not None)
        return MappingResult(vxu, tuple(issues), False)

    def _order_groups(self, views: Sequence[_View]
                      ) -> list[tuple[list[_View], dict[str, _View]]]:
        """The order groups, each with its first segment of each id (the group's context)."""
        groups: list[tuple[list[_View], dict[str, _View]]] = []
        current: list[_View] | None = None
        ctx: dict[str, _View] = {}
        starts_ids, members = self._group_starts, self._group_members
        for view in views:
            seg_id = view.id
            if seg_id in starts_ids and (current is None or seg_id == "ORC" or seg_id in ctx):
                current = [view]
                ctx = {seg_id: view}
                groups.append((current, ctx))
            elif seg_id in members:
                if current is not None:
                    current.append(view)
                    if seg_id not in ctx:
                        ctx[seg_id] = view
            else:
                current = None
        return groups

    def _event(self, group: list[_View], ctx: dict[str, _View]
               ) -> tuple[domain.Vaccination | None, list[Issue]]:
        problems = []
        for seg, f, text in self._group_required:
            required = ctx.get(seg)
            if required is None or not text(required).strip():
                seq = (required.sequence if required
                       else ctx["ORC"].sequence if "ORC" in ctx else 1)
                problems.append(Issue(101, Severity.ERROR, Location(seg, seq, f),
                                      f"Required field {seg}-{f} is missing; this order group "
                                      "was not stored", 7, "mapping.required"))
        if problems:
            return None, problems

        kind = domain.EventKind.DOSE
        for conditions, candidate in self._kinds:
            if _holds(conditions, ctx):
                kind = candidate
                break
        values = self._vac.defaults.copy()
        values[self._vac_kind] = kind
        orc, rxa = ctx.get("ORC"), ctx.get("RXA")
        values[self._vac_orc] = orc.sequence if orc is not None else 0
        values[self._vac_rxa] = rxa.sequence if rxa is not None else 0
        for segment, steps in self._group_plan:
            source = ctx.get(segment)
            if source is None:
                continue
            for index, read, when, normalise in steps:
                if when and not _holds(when, ctx):
                    continue
                value = read(source)
                if normalise:
                    if normalise == "route":
                        value = self._route(value)
                    else:  # administered: RXA-5 stays as sent; its product codes are added
                        for code_index, code in self._product_codes(value):
                            values[code_index] = code
                values[index] = value

        observations: list[domain.Observation] = []
        vis: dict[str, list[Any]] = {}
        obx_segment, lift, vis_codes = self.obx_segment, self._lift, self._vis
        for view in group:
            if view.id != obx_segment:
                continue
            # Funding and VIS observations need three of the Observation's attributes: read
            # those rather than build the whole record.
            code = self._obx_code(view).code
            if code in lift:
                values[lift[code]] = self._obx_coded_value(view)
            elif code in vis_codes:
                vis_index, is_date = vis_codes[code]
                coded_value = self._obx_coded_value(view)
                sub_id = self._obx_sub_id(view)
                statement = vis.get(sub_id)
                if statement is None:
                    statement = vis[sub_id] = self._vis_record.defaults.copy()
                statement[vis_index] = (
                    hl7_date(self._obx_value(view) or coded_value.code) if is_date
                    else coded_value)
            else:
                observations.append(self._obx.build(view))
        values[self._vac_observations] = tuple(observations)
        if vis:
            make = self._vis_make
            values[self._vac_vis] = tuple(make(*vis[sub_id]) for sub_id in sorted(vis))
        return self._vac_make(*values), []

    def _product_codes(self, coded: domain.Coded) -> tuple[tuple[int, str], ...]:
        """(Vaccination index, value) of cvx/ndc/cpt from RXA-5, remembered per code."""
        products = self._products
        found = products.get(coded)
        if found is None:
            index = self._vac.index
            found = tuple((index(name, "codes"), value)
                          for name, value in self._product_code_values(coded).items())
            if len(products) >= _CACHE_SIZE:
                products.clear()
            products[coded] = found
        return found

    def _product_code_values(self, coded: domain.Coded) -> dict[str, str]:
        """cvx/ndc/cpt from RXA-5 (either triplet); NDC and CPT also give a CVX."""
        found: dict[str, str] = {}
        derived_cvx = ""
        for code, system in ((coded.code, coded.system), (coded.alt_code, coded.alt_system)):
            rule = self._admin_systems.get(system.strip().upper())
            if not code or rule is None:
                continue
            attribute, table = rule
            key = ndc11(code) if attribute == "ndc" else code.strip()
            found.setdefault(attribute, key or code.strip())
            if table and not derived_cvx:
                derived_cvx = table.get(key, "")
        if "cvx" not in found and derived_cvx:
            found["cvx"] = derived_cvx
        return found

    def _route(self, route: domain.Coded) -> domain.Coded:
        if route.system in self._route_systems and route.code in self._route_table:
            ncit, text = self._route_table[route.code].split("\t", 1)
            return domain.Coded(ncit, text, self._route_system,
                                route.code, route.text, route.system)
        return route


def _views(message: Message, dropped: frozenset[int],
           emptied: frozenset[tuple[int, int]]) -> list[_View]:
    """The segments validation kept, with the fields it emptied blanked (on a copy)."""
    hidden: dict[int, list[int]] = {}
    for index, field_no in emptied:
        hidden.setdefault(index, []).append(field_no)
    views: list[_View] = []
    append = views.append
    counts: dict[str, int] = {}
    last_delims: Delimiters | None = None
    seps: _Seps = _DEFAULT_SEPS
    for index, seg in enumerate(message.segments):
        seg_id = seg.id
        counts[seg_id] = sequence = counts.get(seg_id, 0) + 1
        if dropped and index in dropped:
            continue
        d = seg.delimiters
        if d is not last_delims:
            last_delims = d
            seps = (_DEFAULT_SEPS if d == DEFAULT_DELIMITERS
                    else (d.repetition, d.component, d.subcomponent, d.escape, d))
        fields = seg.fields
        if hidden and index in hidden:
            fields = list(fields)
            for field_no in hidden[index]:
                if 0 < field_no < len(fields):
                    fields[field_no] = ""
        append(_View(seg_id, fields, seps, sequence))
    return views


def _allowed(value: Any) -> frozenset[str]:
    values = value if isinstance(value, list) else [value]
    return frozenset(str(v) for v in values)


def _read_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[1:]


def _read_table(path: Path, value_columns: int = 1) -> dict[str, str]:
    """First column → the next `value_columns` columns (tab-joined when more than one)."""
    return {row[0]: "\t".join(row[1:1 + value_columns]) for row in _read_rows(path) if row}


def replace_events(vxu: domain.Vxu, events: Sequence[domain.Vaccination]) -> domain.Vxu:
    """The same VXU with a different set of order groups (used by tests and the handler)."""
    return dataclasses.replace(vxu, events=tuple(events))
