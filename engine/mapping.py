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
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from engine import domain
from engine.errors import Issue, Location, Severity
from engine.hl7.er7 import Message, Segment

MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "mappings"
CODES_DIR = MAPPINGS_DIR / "codes"

_RECORDS: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (
        domain.Coded, domain.Name, domain.Identifier, domain.Address, domain.Phone,
        domain.Provider, domain.Site, domain.EventKey, domain.Patient, domain.PatientSettings,
        domain.ResponsiblePerson, domain.Vaccination, domain.Observation)
}
_PATH = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?(?:\.(\d+))?\Z")
_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")


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
    m = _DATE.match(text)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text.strip()) if text.strip() else None
    except InvalidOperation:
        return None
    return value if value is None or value.is_finite() else None


def _action(text: str) -> domain.Action:
    try:
        return domain.Action(text.strip().upper() or "A")
    except ValueError:
        return domain.Action.ADD  # unknown 0323 codes are the validator's to report


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "text": lambda s: s, "date": hl7_date, "int": _int, "decimal": _decimal, "action": _action,
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


# --- segment access honouring validation ----------------------------------------------------

class _View:
    """A segment plus its message position; emptied fields read as empty."""

    __slots__ = ("emptied", "index", "segment", "sequence", "trees")

    def __init__(self, segment: Segment, index: int, sequence: int,
                 emptied: frozenset[tuple[int, int]]) -> None:
        self.segment = segment
        self.index = index
        self.sequence = sequence
        self.emptied = emptied
        # Several attributes read the same field (RXA-5 feeds the product, CVX, NDC, CPT):
        # split it once per message.
        self.trees: dict[int, list[list[list[str]]]] = {}

    def _hidden(self, field_no: int) -> bool:
        return bool(self.emptied) and (self.index, field_no) in self.emptied

    def value(self, field_no: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        reps = self.tree(field_no)
        return _leaf(reps[rep - 1], comp, sub) if rep <= len(reps) else ""

    def tree(self, field_no: int) -> list[list[list[str]]]:
        found = self.trees.get(field_no)
        if found is None:
            found = self.trees[field_no] = (
                [] if self._hidden(field_no) or not self.segment.field(field_no)
                else self.segment.field_tree(field_no))
        return found


Context = Mapping[str, _View]


def _leaf(rep: list[list[str]], comp: int, sub: int) -> str:
    if comp > len(rep):
        return ""
    subs = rep[comp - 1]
    return subs[sub - 1] if sub <= len(subs) else ""


# --- compiled specs --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Composite:
    record: type[Any]
    components: tuple[tuple[str, int, int], ...]

    def build(self, rep: list[list[str]]) -> Any:
        return self.record(**{name: _leaf(rep, c, s) for name, c, s in self.components})


@dataclass(frozen=True, slots=True)
class _Attr:
    name: str
    segment: str
    field: int
    comp: int
    sub: int
    composite: _Composite | None
    repeat: bool
    convert: Callable[[str], Any]
    normalise: str
    when: tuple[tuple[str, int, int, int, frozenset[str]], ...]

    def applies(self, ctx: Context) -> bool:
        for seg, f, c, s, allowed in self.when:
            view = ctx.get(seg)
            if view is None or view.value(f, c, s) not in allowed:
                return False
        return True

    def read(self, view: _View) -> Any:
        if self.composite is None:
            if self.repeat:
                return tuple(v for rep in view.tree(self.field)
                             if (v := self.convert(_leaf(rep, self.comp, self.sub))))
            return self.convert(view.value(self.field, self.comp, self.sub))
        reps = view.tree(self.field)
        if self.repeat:
            return tuple(v for rep in reps if (v := self.composite.build(rep)))
        return self.composite.build(reps[0]) if reps else self.composite.record()


def _parse_path(text: str, where: str) -> tuple[str, int, int, int]:
    m = _PATH.match(str(text))
    if m is None:
        raise MappingError(f"{where}: {text!r} is not a SEG-field[.comp[.sub]] path")
    return m[1], int(m[2]), int(m[3] or 1), int(m[4] or 1)


def _parse_comp(text: str, where: str) -> tuple[int, int]:
    parts = str(text).split(".")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
        raise MappingError(f"{where}: component {text!r} must be N or N.M")
    return int(parts[0]), int(parts[1]) if len(parts) == 2 else 1


class VxuMapper:
    """The compiled `mappings/vxu.yaml` plus its code tables; `map` is pure and thread-safe."""

    def __init__(self, spec: Mapping[str, Any], codes_dir: Path = CODES_DIR) -> None:
        self.source = str(spec.get("source", ""))
        self._types = {name: _Composite(
            self._record(t["record"], f"types.{name}"),
            tuple((attr, *_parse_comp(c, f"types.{name}.{attr}"))
                  for attr, c in t["components"].items()))
            for name, t in spec["types"].items()}
        self._org_paths = [_parse_path(p, "organization") for p in spec["organization"]]
        self.patient_segment, self._patient = self._record_spec(spec["patient"], "patient")
        self._patient_required = tuple(int(f) for f in spec["patient"].get("required", ()))
        self.settings_segment, self._settings = self._record_spec(spec["settings"], "settings")
        self.nk1_segment, self._nk1 = self._record_spec(spec["responsible_person"],
                                                        "responsible_person")
        group = spec["order_group"]
        self._group_starts = frozenset(group["starts"])
        self._group_members = frozenset(group["members"])
        self._group_attrs = tuple(self._attr(n, a, "", f"order_group.{n}")
                                  for n, a in group["attributes"].items())
        self._group_required = tuple(_parse_path(p, "order_group.required")
                                     for p in group.get("required", ()))
        self._placeholder_keys = frozenset(str(k) for k in group.get("placeholder_keys", ()))
        self._kinds = tuple(
            (tuple((*_parse_path(p, "order_group.kind"), _allowed(v))
                   for p, v in (k.get("when") or {}).items()), domain.EventKind(k["kind"]))
            for k in group["kind"])
        obs = spec["observation"]
        self.obx_segment, self._obx = self._record_spec(obs, "observation")
        self._lift = {str(k): str(v) for k, v in (obs.get("lift") or {}).items()}
        self._vis = {str(k): (str(v["attribute"]), str(v.get("convert", "coded")))
                     for k, v in (obs.get("vis") or {}).items()}
        codes = spec["codes"]
        self._admin_systems: dict[str, tuple[str, dict[str, str]]] = {}
        for system, rule in codes["administered"].items():
            table = _read_table(codes_dir / rule["to_cvx"]) if rule.get("to_cvx") else {}
            self._admin_systems[str(system)] = (str(rule["attribute"]), table)
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

    def _record_spec(self, spec: Mapping[str, Any],
                     where: str) -> tuple[str, tuple[type[Any], tuple[_Attr, ...]]]:
        segment = str(spec["segment"])
        record = self._record(spec["record"], where)
        attrs = tuple(self._attr(n, a, segment, f"{where}.{n}")
                      for n, a in spec["attributes"].items())
        return segment, (record, attrs)

    def _attr(self, name: str, a: Mapping[str, Any], segment: str, where: str) -> _Attr:
        if "path" in a:
            seg, f, c, s = _parse_path(a["path"], where)
        else:
            seg, f, c, s = segment, int(a["field"]), 1, 1
        type_name = a.get("type")
        if type_name is not None and type_name not in self._types:
            raise MappingError(f"{where}: unknown type {type_name!r}")
        convert = str(a.get("convert", "text"))
        if convert not in _CONVERTERS:
            raise MappingError(f"{where}: unknown convert {convert!r}")
        when = tuple((*_parse_path(p, where), _allowed(v)) for p, v in (a.get("when") or {}).items())
        return _Attr(name, seg, f, c, s, self._types[type_name] if type_name else None,
                     bool(a.get("repeat", False)), _CONVERTERS[convert],
                     str(a.get("normalise", "")), when)

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
        views: list[_View] = []
        counts: dict[str, int] = {}
        for index, seg in enumerate(message.segments):
            counts[seg.id] = counts.get(seg.id, 0) + 1
            if index not in dropped:
                views.append(_View(seg, index, counts[seg.id], emptied))
        msh = views[0] if views and views[0].segment.id == "MSH" else None
        organization = ""
        for seg_id, f, c, s in self._org_paths:
            if msh is not None and seg_id == "MSH":
                organization = msh.value(f, c, s).strip()
                if organization:
                    break

        issues: list[Issue] = []
        pid = next((v for v in views if v.segment.id == self.patient_segment), None)
        if pid is None:
            issues.append(Issue(100, Severity.ERROR, Location(self.patient_segment, 1),
                                "The patient segment is missing; nothing was stored",
                                7, "mapping.required"))
            return MappingResult(None, tuple(issues), True)
        for f in self._patient_required:
            if not pid.value(f).strip():
                issues.append(Issue(101, Severity.ERROR, Location(pid.segment.id, 1, f),
                                    f"Required field {pid.segment.id}-{f} is missing; the "
                                    "message was not stored", 7, "mapping.required"))
        patient: domain.Patient = self._build(self._patient, {pid.segment.id: pid})
        if patient.birth_date is None and pid.value(7).strip() and 7 in self._patient_required:
            issues.append(Issue(102, Severity.ERROR, Location(pid.segment.id, 1, 7),
                                "PID-7 is not a valid date; the message was not stored", 2,
                                "mapping.required"))
        if issues:
            return MappingResult(None, tuple(issues), True)

        pd1 = next((v for v in views if v.segment.id == self.settings_segment), None)
        settings = (self._build(self._settings, {pd1.segment.id: pd1}) if pd1
                    else domain.PatientSettings())
        persons = tuple(self._build(self._nk1, {v.segment.id: v}) for v in views
                        if v.segment.id == self.nk1_segment)
        events = []
        for group in self._order_groups(views):
            event, problems = self._event(group)
            issues.extend(problems)
            if event is not None:
                events.append(event)
        vxu = domain.Vxu(organization, patient, settings, persons, tuple(events),
                         has_pd1=pd1 is not None)
        return MappingResult(vxu, tuple(issues), False)

    def _build(self, spec: tuple[type[Any], tuple[_Attr, ...]], ctx: Context) -> Any:
        record, attrs = spec
        values: dict[str, Any] = {}
        for attr in attrs:
            view = ctx.get(attr.segment)
            if view is None or (attr.when and not attr.applies(ctx)):
                continue
            values[attr.name] = attr.read(view)
        return record(**values)

    def _order_groups(self, views: Sequence[_View]) -> list[list[_View]]:
        groups: list[list[_View]] = []
        current: list[_View] | None = None
        for view in views:
            seg_id = view.segment.id
            starts = seg_id in self._group_starts and (
                current is None or seg_id == "ORC"
                or any(v.segment.id == seg_id for v in current))
            if starts:
                current = [view]
                groups.append(current)
            elif current is not None and seg_id in self._group_members:
                current.append(view)
            elif seg_id not in self._group_members:
                current = None
        return groups

    def _event(self, group: list[_View]) -> tuple[domain.Vaccination | None, list[Issue]]:
        ctx: dict[str, _View] = {}
        for view in group:
            ctx.setdefault(view.segment.id, view)
        problems = []
        for seg, f, c, s in self._group_required:
            required = ctx.get(seg)
            if required is None or not required.value(f, c, s).strip():
                seq = (required.sequence if required
                       else ctx["ORC"].sequence if "ORC" in ctx else 1)
                problems.append(Issue(101, Severity.ERROR, Location(seg, seq, f),
                                      f"Required field {seg}-{f} is missing; this order group "
                                      "was not stored", 7, "mapping.required"))
        if problems:
            return None, problems

        kind = domain.EventKind.DOSE
        for conditions, candidate in self._kinds:
            if all((v := ctx.get(seg)) is not None and v.value(f, c, s) in allowed
                   for seg, f, c, s, allowed in conditions):
                kind = candidate
                break
        values: dict[str, Any] = {"kind": kind,
                                  "orc_sequence": ctx["ORC"].sequence if "ORC" in ctx else 0,
                                  "rxa_sequence": ctx["RXA"].sequence if "RXA" in ctx else 0}
        for attr in self._group_attrs:
            source = ctx.get(attr.segment)
            if source is None or (attr.when and not attr.applies(ctx)):
                continue
            value = attr.read(source)
            if attr.normalise == "administered":
                values.update(self._product_codes(value))
            elif attr.normalise == "route":
                value = self._route(value)
            values[attr.name] = value

        observations: list[domain.Observation] = []
        vis: dict[str, dict[str, Any]] = {}
        for view in group:
            if view.segment.id != self.obx_segment:
                continue
            obs: domain.Observation = self._build(self._obx, {view.segment.id: view})
            code = obs.code.code
            if code in self._lift:
                values[self._lift[code]] = obs.coded_value
            elif code in self._vis:
                name, how = self._vis[code]
                raw = obs.value or obs.coded_value.code
                vis.setdefault(obs.sub_id, {})[name] = (
                    hl7_date(raw) if how == "date" else obs.coded_value)
            else:
                observations.append(obs)
        values["observations"] = tuple(observations)
        values["vis"] = tuple(domain.Vis(**v) for _, v in sorted(vis.items()))
        return domain.Vaccination(**values), []

    def _product_codes(self, coded: domain.Coded) -> dict[str, str]:
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
