"""Values the database would refuse, decided before it sees them — the same on every backend.

PostgreSQL refuses a text longer than its VARCHAR column and any text containing a NUL
character; SQLite stores both. Left to the database, one message would be stored and answered
AA on SQLite and refused whole on PostgreSQL (a DataError, with no location). So every text
the store writes is checked here, on the pipeline thread, against its column's length (read
from the SQLAlchemy models once, at import) and for NUL, and the answer is decided by what the
value is:

* a value the registry can do without (a middle name, an address line, a lot number, a route
  code, an OBX sub-id, any part of a JSON document...) is not stored — that field is left empty
  and the rest of the message is stored — and the ACK carries a W-severity ERR 102 (0533 code 4,
  "invalid value") at the field's location;
* a value the message cannot be stored without — a patient identifier (PID-3), the legal
  name's family or given name (PID-5), the organization (MSH-4/MSH-22), a vaccine code (RXA-5),
  the administration date (RXA-3) or an order group's key (ORC-3, which later updates and
  deletes refer to) — rejects the message: AE with an E-severity ERR 102 at its location, and
  nothing but the message log row is stored.

Locations come from `mappings/vxu.yaml` (field and component of each record attribute, read
here rather than from the mapper); segment occurrences are the mapper's (`rxa_sequence`,
`orc_sequence`), PID/PD1 are the first, NK1 the record's position. An OBX's own occurrence is
not carried by its record, so an OBX finding points at its order group's RXA and names the
OBX field in its text. Texts name fields and limits, never the values (no patient data).

Cost: walking every text of a message costs about as much as planning it, and almost every
message is fine. `raw_bounds` reads the raw payload once (C-speed): when no NUL can be in it
(no NUL byte, no hex/charset escape that could decode to one) and no field repetition is longer
than the smallest column most values go to (64), only the few shorter columns (8-16
characters: PID-8, PID-24, PID-30, PD1-12, PD1-16, RXA-20, OBX-2) need a look; any finding
there, or a message outside those bounds, gets the full walk.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine import domain
from engine.errors import Issue, Location, Severity
from engine.mapping import MAPPINGS_DIR
from engine.matching import normalise
from engine.store import models as m

RULE = "store.value"
INVALID_VALUE = 4  # CDC table 0533


def _lengths(model: type[m.Base]) -> dict[str, int]:
    lengths = {c.name: getattr(c.type, "length", None) for c in m.table(model).columns}
    return {name: int(n) for name, n in lengths.items() if n}


def _limits(model: type[m.Base], **renamed: str) -> dict[str, int]:
    """Record attribute → its column's length (`renamed`: attribute=column when they differ)."""
    lengths = _lengths(model)
    out = dict(lengths)
    for attribute, column in renamed.items():
        out[attribute] = lengths[column]
    return out


# Column lengths, by record kind (an attribute missing here is stored in a JSON document or
# a TEXT column: only NUL is refused there).
NAME = _limits(m.PatientName)
ADDRESS = _limits(m.PatientAddress)
PHONE = _limits(m.PatientPhone)
CODE = _limits(m.PatientCode)
IDENTIFIER = _limits(m.PatientIdentifier)
PATIENT = _limits(m.Patient)
NORMALISED_NAME = {"family": PATIENT["family_norm"], "given": PATIENT["given_norm"]}
SETTING = _limits(m.PatientSetting)
EVENT = _limits(m.ImmunizationEvent)
KEY = {"id": _lengths(m.EventKey)["key_id"], "authority": _lengths(m.EventKey)["authority"]}
OBSERVATION = _limits(m.EventObservation)
ORGANIZATION = _lengths(m.Organization)["code"]
# Coded values whose code is an immunization_event column (the rest of the CE is JSON).
EVENT_CODES = {"manufacturer": EVENT["mvx"], "route": EVENT["route_code"],
               "site": EVENT["site_code"], "information_source": EVENT["information_source"],
               "refusal_reason": EVENT["refusal_reason"],
               "funding_eligibility": EVENT["funding_eligibility"],
               "funding_source": EVENT["funding_source"]}


def _field_of(spec: Mapping[str, Any]) -> tuple[str, int]:
    """(segment, field) of an attribute spec: `field: 5` (own segment) or `path: RXA-5`."""
    if "path" in spec:
        segment, _, rest = str(spec["path"]).partition("-")
        return segment, int(rest.split(".")[0])
    return "", int(spec["field"])


def _component(position: str) -> int:
    return int(position.split(".")[0])


@dataclass(frozen=True, slots=True)
class _Places:
    """Where each record attribute comes from, read from mappings/vxu.yaml."""

    fields: dict[str, dict[str, tuple[str, int]]]  # part → attribute → (segment, field)
    components: dict[str, dict[str, int]]  # record class name → attribute → component

    @classmethod
    def load(cls) -> _Places:
        data = yaml.safe_load((MAPPINGS_DIR / "vxu.yaml").read_text(encoding="utf-8"))
        fields: dict[str, dict[str, tuple[str, int]]] = {}
        for part in ("patient", "settings", "responsible_person", "order_group",
                     "observation"):
            section = data[part]
            own = str(section.get("segment", ""))
            fields[part] = {}
            for attribute, spec in section["attributes"].items():
                segment, number = _field_of(spec)
                fields[part][attribute] = (segment or own, number)
        components = {str(t["record"]): {a: _component(str(p))
                                         for a, p in t["components"].items()}
                      for t in data["types"].values()}
        return cls(fields, components)


@dataclass
class Screened:
    """A VXU with refused optional values emptied, and what was found."""

    vxu: domain.Vxu
    issues: list[Issue] = field(default_factory=list)
    rejected: bool = False


# Below this length a value fits every column but the short ones `_short_ok` checks.
COMMON_LIMIT = min(n for limits in (NAME, ADDRESS, PHONE, CODE, IDENTIFIER, KEY, EVENT_CODES,
                                    OBSERVATION) for n in limits.values() if n >= 64)


def raw_bounds(payload: bytes, field_sep: str = "|", repetition_sep: str = "~",
               escape: str = "\\") -> tuple[int, bool]:
    """(longest field repetition of the raw message in bytes, whether a NUL is possible).

    Every mapped text is a piece of one field repetition, unescaped (which only shortens
    it), so its length in characters is at most that many bytes."""
    table, nul = _raw_patterns(field_sep, repetition_sep, escape)
    longest = max(map(len, payload.translate(table).split(b"\r")), default=0)
    return longest, nul.search(payload) is not None


@functools.lru_cache(maxsize=16)
def _raw_patterns(field_sep: str, repetition_sep: str,
                  escape: str) -> tuple[bytes, re.Pattern[bytes]]:
    """Separators → CR (one C-level split), and where a NUL byte could be or be escaped."""
    separators = (field_sep + repetition_sep).encode() + b"\n"
    table = bytes.maketrans(separators, b"\r" * len(separators))
    escaped = re.escape(escape.encode() or b"\\")
    return table, re.compile(b"\x00|" + escaped + b"[XCM]")


def _short_ok(vxu: domain.Vxu) -> bool:
    """The columns shorter than COMMON_LIMIT hold this message's values."""
    p, s = vxu.patient, vxu.settings
    if (len(p.sex) > PATIENT["sex"] or len(p.multiple_birth) > PATIENT["multiple_birth"]
            or len(p.death_indicator) > PATIENT["death_indicator"]
            or len(s.protection) > SETTING["protection"]
            or len(s.registry_status) > SETTING["registry_status"]):
        return False
    # Matching's normalised name can be longer than the raw one (NFKD expands ligatures such
    # as U+FDFA to 18 letters), so the raw bounds do not cover its column.
    legal = p.legal_name
    if any(len(normalise(getattr(legal, part))) > limit
           for part, limit in NORMALISED_NAME.items()):
        return False
    for v in vxu.events:
        if len(v.completion_status) > EVENT["completion_status"]:
            return False
        if any(len(o.value_type) > OBSERVATION["value_type"] for o in v.observations):
            return False
    return True


class Screen:
    """Checks every stored text of a mapped VXU (see the module docstring)."""

    def __init__(self) -> None:
        self.places = _Places.load()

    def check(self, vxu: domain.Vxu, bounds: tuple[int, bool] | None = None) -> Screened:
        """`bounds`: `raw_bounds` of the message's payload, when known (the fast path)."""
        if bounds is not None and bounds[0] <= COMMON_LIMIT and not bounds[1] and _short_ok(
                vxu):
            return Screened(vxu)
        run = _Run(self.places)
        organization = vxu.organization
        if _problem(organization, ORGANIZATION):
            run.refuse(Location("MSH", 1, 4), "The sending organization (MSH-4/MSH-22)",
                       _problem(organization, ORGANIZATION), required=True)
        patient = run.patient(vxu.patient)
        settings = run.settings(vxu.settings) if vxu.has_pd1 else vxu.settings
        persons = tuple(run.person(p, i + 1) for i, p in enumerate(vxu.responsible_persons))
        events = tuple(run.event(v) for v in vxu.events)
        out = dataclasses.replace(vxu, patient=patient, settings=settings,
                                  responsible_persons=persons, events=events)
        return Screened(out if run.issues else vxu, run.issues, run.rejected)


_UNLIMITED = 1 << 62
_TEXTS: dict[type[Any], tuple[str, ...]] = {}


def _texts_of(cls: type[Any]) -> tuple[str, ...]:
    """The text attributes of a flat domain record (Name, Coded, Address, ...)."""
    names = _TEXTS.get(cls)
    if names is None:
        names = _TEXTS[cls] = tuple(f.name for f in dataclasses.fields(cls)
                                    if f.type in ("str", str))
    return names


def _problem(value: str, limit: int | None) -> str:
    if "\x00" in value:
        return "contains a NUL character"
    if limit is not None and len(value) > limit:
        return f"is longer than the {limit} characters the registry stores"
    return ""


class _Run:
    """One message's check: findings, and whether the message must be rejected."""

    def __init__(self, places: _Places) -> None:
        self.places = places
        self.issues: list[Issue] = []
        self.rejected = False

    def refuse(self, location: Location, what: str, problem: str, *, required: bool) -> None:
        if required:
            self.rejected = True
            self.issues.append(Issue(
                102, Severity.ERROR, location,
                f"{what} {problem}; the registry cannot store the message without it, so "
                "nothing was stored. Correct the value before resending the message",
                INVALID_VALUE, RULE))
        else:
            self.issues.append(Issue(
                102, Severity.WARNING, location,
                f"{what} {problem}; that value was not stored, the rest of the message was",
                INVALID_VALUE, RULE))

    def record(self, record: Any, limits: Mapping[str, int], at: Location, label: str,
               required: frozenset[str] = frozenset()) -> Any:
        """`record` with each refused optional text emptied (the same object if none was).

        `at` is the field's location; a composite's attributes add their component.
        """
        names = _texts_of(type(record))
        if not any("\x00" in v or len(v) > limits.get(n, _UNLIMITED)
                   for n in names if (v := getattr(record, n))):
            return record
        components = self.places.components.get(type(record).__name__, {})
        changes: dict[str, Any] = {}
        for name in names:
            value = getattr(record, name)
            if not value:
                continue
            problem = _problem(value, limits.get(name))
            if not problem:
                continue
            where = at
            if name in components and at.field:
                where = dataclasses.replace(at, repetition=at.repetition or 1,
                                            component=components[name])
            self.refuse(where, f"{label} ({name})", problem, required=name in required)
            if name not in required:
                changes[name] = ""
        return dataclasses.replace(record, **changes) if changes else record

    def _at(self, part: str, attribute: str, sequence: int, repetition: int = 0) -> Location:
        segment, number = self.places.fields[part][attribute]
        return Location(segment, sequence, number, repetition)

    def _label(self, part: str, attribute: str) -> str:
        segment, number = self.places.fields[part][attribute]
        return f"{segment}-{number}"

    def patient(self, p: domain.Patient) -> domain.Patient:
        changes: dict[str, Any] = {}
        legal = p.legal_name
        repeated = {"identifiers": IDENTIFIER, "names": NAME, "mother_maiden_names": NAME,
                    "races": CODE, "ethnicities": CODE, "addresses": ADDRESS, "phones": PHONE}
        for attribute, limits in repeated.items():
            items = getattr(p, attribute)
            checked = []
            for i, item in enumerate(items):
                required: frozenset[str] = frozenset()
                if attribute == "identifiers":
                    required = frozenset({"value", "authority", "type_code"})
                elif item is legal:
                    required = frozenset({"family", "given"})
                    self._normalised(item, i + 1)
                checked.append(self.record(item, limits, self._at("patient", attribute, 1, i + 1),
                                           self._label("patient", attribute), required))
            if any(a is not b for a, b in zip(checked, items, strict=True)):
                changes[attribute] = tuple(checked)
        for attribute in ("sex", "multiple_birth", "death_indicator"):
            value = getattr(p, attribute)
            problem = _problem(value, PATIENT[attribute])
            if value and problem:
                self.refuse(self._at("patient", attribute, 1), self._label("patient", attribute),
                            problem, required=False)
                changes[attribute] = ""
        return dataclasses.replace(p, **changes) if changes else p

    def _normalised(self, legal: domain.Name, repetition: int) -> None:
        """The legal name is matched on in normalised form, in a shorter column."""
        for part, limit in NORMALISED_NAME.items():
            value = getattr(legal, part)
            if _problem(value, NAME[part]) or len(normalise(value)) <= limit:
                continue  # fine, or reported (once) by `record`
            self.refuse(Location("PID", 1, 5, repetition,
                                 self.places.components["Name"][part]),
                        f"PID-5 ({part})", f"is longer than the {limit} characters the "
                        "registry matches names on", required=True)

    def settings(self, s: domain.PatientSettings) -> domain.PatientSettings:
        changes: dict[str, Any] = {}
        publicity = self.record(s.publicity, {"code": SETTING["publicity_code"]},
                                self._at("settings", "publicity", 1),
                                self._label("settings", "publicity"))
        if publicity is not s.publicity:
            changes["publicity"] = publicity
        for attribute in ("protection", "registry_status"):
            value = getattr(s, attribute)
            problem = _problem(value, SETTING[attribute])
            if value and problem:
                self.refuse(self._at("settings", attribute, 1),
                            self._label("settings", attribute), problem, required=False)
                changes[attribute] = ""
        return dataclasses.replace(s, **changes) if changes else s

    def person(self, p: domain.ResponsiblePerson, sequence: int) -> domain.ResponsiblePerson:
        changes: dict[str, Any] = {}
        for attribute in ("names", "addresses", "phones"):
            items = getattr(p, attribute)
            checked = tuple(self.record(item, {}, self._at("responsible_person", attribute,
                                                           sequence, i + 1),
                                        self._label("responsible_person", attribute))
                            for i, item in enumerate(items))
            if any(a is not b for a, b in zip(checked, items, strict=True)):
                changes[attribute] = checked
        relationship = self.record(p.relationship, {"code": _lengths(m.ResponsiblePerson)[
            "relationship_code"]}, self._at("responsible_person", "relationship", sequence),
            self._label("responsible_person", "relationship"))
        if relationship is not p.relationship:
            changes["relationship"] = relationship
        return dataclasses.replace(p, **changes) if changes else p

    def event(self, v: domain.Vaccination) -> domain.Vaccination:
        changes: dict[str, Any] = {}
        rxa = v.rxa_sequence or 1
        orc = v.orc_sequence or rxa

        def at(attribute: str, repetition: int = 0) -> Location:
            segment = self.places.fields["order_group"][attribute][0]
            return self._at("order_group", attribute, orc if segment == "ORC" else rxa,
                            repetition)

        def label(attribute: str) -> str:
            return self._label("order_group", attribute)

        key = self.record(v.key, KEY, at("key"), label("key"), frozenset({"id", "authority"}))
        administered = self.record(v.administered, {"code": EVENT["cvx"]}, at("administered"),
                                   label("administered"), frozenset({"code"}))
        for attribute, value in (("key", key), ("administered", administered)):
            if value is not getattr(v, attribute):
                changes[attribute] = value
        for attribute, limit in (("cvx", EVENT["cvx"]), ("ndc", EVENT["ndc"]),
                                 ("cpt", EVENT["cpt"])):
            problem = _problem(getattr(v, attribute), limit)
            if problem:
                self.refuse(dataclasses.replace(at("administered"), component=1),
                            f"{label('administered')} (vaccine code)", problem, required=True)
        problem = _problem(v.administered_ts, EVENT["administered_ts"])
        if problem:
            self.refuse(at("administered_ts"), label("administered_ts"), problem, required=True)
        for attribute, limit in EVENT_CODES.items():
            coded = getattr(v, attribute)
            if attribute in self.places.fields["order_group"]:
                where, what = at(attribute), label(attribute)
            else:  # lifted from an OBX (funding): located at the group's RXA
                where, what = Location("RXA", rxa), f"the {attribute.replace('_', ' ')} OBX-5"
            checked = self.record(coded, {"code": limit}, where, what)
            if checked is not coded:
                changes[attribute] = checked
        for attribute in ("units", "administering_provider", "ordering_provider", "entered_by"):
            value = getattr(v, attribute)
            checked = self.record(value, {}, at(attribute), label(attribute))
            if checked is not value:
                changes[attribute] = checked
        site = self.record(v.administered_at, {"facility": EVENT["facility_code"]},
                           at("administered_at"), label("administered_at"))
        if site is not v.administered_at:
            changes["administered_at"] = site
        lots = []
        for i, lot in enumerate(v.lot_numbers):
            problem = _problem(lot, EVENT["lot_number"] if i == 0 else None)
            if problem:
                self.refuse(at("lot_numbers", i + 1), label("lot_numbers"), problem,
                            required=False)
            else:
                lots.append(lot)
        if len(lots) != len(v.lot_numbers):
            changes["lot_numbers"] = tuple(lots)
        problem = _problem(v.completion_status, EVENT["completion_status"])
        if v.completion_status and problem:
            self.refuse(at("completion_status"), label("completion_status"), problem,
                        required=False)
            changes["completion_status"] = ""
        vis = tuple(self._vis(item, rxa) for item in v.vis)
        if any(a is not b for a, b in zip(vis, v.vis, strict=True)):
            changes["vis"] = vis
        observations = tuple(self._observation(o, rxa) for o in v.observations)
        if any(a is not b for a, b in zip(observations, v.observations, strict=True)):
            changes["observations"] = observations
        return dataclasses.replace(v, **changes) if changes else v

    def _vis(self, vis: domain.Vis, rxa: int) -> domain.Vis:
        changes = {name: self.record(getattr(vis, name), {}, Location("RXA", rxa),
                                     "a VIS OBX-5 of this order group")
                   for name in ("document", "vaccine")}
        changes = {k: c for k, c in changes.items() if c is not getattr(vis, k)}
        return dataclasses.replace(vis, **changes) if changes else vis

    def _observation(self, o: domain.Observation, rxa: int) -> domain.Observation:
        fields = self.places.fields["observation"]
        changes: dict[str, Any] = {}
        scalar = {"value_type": OBSERVATION["value_type"], "value": None,
                  "sub_id": OBSERVATION["sub_id"], "status": None}
        for attribute, limit in scalar.items():
            value = getattr(o, attribute)
            problem = _problem(value, limit)
            if value and problem:
                self.refuse(Location("RXA", rxa),
                            f"OBX-{fields[attribute][1]} of an OBX of this order group",
                            problem, required=False)
                changes[attribute] = ""
        for attribute, limits in (("code", {"code": OBSERVATION["code"]}),
                                  ("coded_value", {"code": OBSERVATION["value_code"]}),
                                  ("units", {}), ("method", {})):
            value = getattr(o, attribute)
            checked = self.record(value, limits, Location("RXA", rxa),
                                  f"OBX-{fields[attribute][1]} of an OBX of this order group")
            if checked is not value:
                changes[attribute] = checked
        return dataclasses.replace(o, **changes) if changes else o
