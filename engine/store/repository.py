"""Reads and writes of the registry store, in `engine.domain` terms.

Owns the translation between domain values and rows (ORM rows never leave this package) and
the statements the VXU handler runs inside its one transaction per message. Write methods
take the caller's `Session` (the transaction is the handler's); read methods used by tests,
tools and the future QBP handler open their own read transaction.

Concurrency: identifier keys, event keys and (sender, MSH-10) are unique in the database, so
two engines racing on the same patient or message fail one transaction with an
IntegrityError, which the handler retries or answers from the log. Demographic matching,
which no unique constraint can guard, runs under a transaction-scoped advisory lock on the
match key (PostgreSQL); SQLite serialises writers with BEGIN IMMEDIATE already.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine import domain
from engine.dedup import DoseFacts, group_set
from engine.matching import Candidate, ScopedIdentifier
from engine.store import models as m

ACTIVE = "active"
DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An immunization event as stored: owner org, status, keys and the domain record."""

    event_id: int
    organization: str
    status: str
    keys: tuple[domain.EventKey, ...]
    vaccination: domain.Vaccination


@dataclass(frozen=True, slots=True)
class StoredPatient:
    """A registry patient read back whole."""

    patient_id: int
    patient: domain.Patient
    identifiers: tuple[tuple[str, domain.Identifier], ...]  # (scope, identifier)
    responsible_persons: tuple[domain.ResponsiblePerson, ...]
    settings: dict[str, domain.PatientSettings] = field(default_factory=dict)
    events: tuple[StoredEvent, ...] = ()

    def active_events(self) -> list[StoredEvent]:
        return [e for e in self.events if e.status == ACTIVE]


# --- JSON documents for composites ---------------------------------------------------------

def _json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _coded(data: Any) -> domain.Coded:
    return domain.Coded(**data) if data else domain.Coded()


def _date(data: Any) -> date | None:
    return date.fromisoformat(data) if data else None


def _names(rows: Iterable[Any]) -> tuple[domain.Name, ...]:
    return tuple(domain.Name(**r) for r in rows)


_EVENT_DETAIL = ("administered", "units", "information_source", "administering_provider",
                 "administered_at", "lot_numbers", "manufacturer", "refusal_reason", "route",
                 "site", "ordering_provider", "entered_by", "funding_source",
                 "funding_eligibility", "vis", "key", "action")
_DECODE: dict[str, Callable[[Any], Any]] = {
    "administered": _coded, "units": _coded, "information_source": _coded,
    "manufacturer": _coded, "refusal_reason": _coded, "route": _coded, "site": _coded,
    "funding_source": _coded, "funding_eligibility": _coded,
    "administering_provider": lambda d: domain.Provider(**d),
    "ordering_provider": lambda d: domain.Provider(**d),
    "entered_by": lambda d: domain.Provider(**d),
    "administered_at": lambda d: domain.Site(**d),
    "lot_numbers": tuple,
    "key": lambda d: domain.EventKey(**d),
    "action": domain.Action,
    "vis": lambda vs: tuple(domain.Vis(_coded(v["document"]), _coded(v["vaccine"]),
                                       _date(v["published"]), _date(v["presented"]))
                            for v in vs),
}


def _table(model: type[m.Base]) -> Table:
    return cast(Table, model.__table__)


_SETTING_COLUMNS = ("publicity_code", "publicity", "publicity_date", "protection",
                    "protection_date", "registry_status", "registry_status_date", "updated_at")


class Repository:
    """Statements over the registry schema for one database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, *, vaccine_groups: Callable[[str], frozenset[str]],
                 registry_authority: str) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.vaccine_groups = vaccine_groups
        self.registry_authority = registry_authority
        self._org_ids: dict[str, int] = {}
        # Statements are built once and executed with parameters ("precompiled"): building
        # a SQLAlchemy construct per call costs more than the round trip it saves.
        self._inserts: dict[str, Any] = {}
        ident = m.PatientIdentifier.__table__.c
        self._sel_ident = select(ident.patient_id).where(
            ident.scope == bindparam("scope"), ident.authority == bindparam("authority"),
            ident.type_code == bindparam("type_code"), ident.value == bindparam("value"))
        pat = m.Patient.__table__.c
        self._sel_demo = select(pat.id).where(
            pat.birth_date == bindparam("birth_date"), pat.family_norm == bindparam("family"),
            pat.given_norm == bindparam("given"))
        ev, key = m.ImmunizationEvent.__table__.c, m.EventKey.__table__.c
        by_key = (select(ev.id, ev.patient_id, ev.status).join(
            m.EventKey.__table__, key.event_id == ev.id).where(
            key.org_id == bindparam("org_id"), key.authority == bindparam("authority"),
            key.key_id == bindparam("key_id")))
        self._sel_by_key = (by_key.with_for_update(of=m.ImmunizationEvent.__table__)
                            if self.dialect == "postgresql" else by_key)
        self._sel_org_events = select(
            ev.id, ev.kind, ev.cvx, ev.information_source, ev.lot_number, ev.version,
            ev.administered_on).where(
            ev.patient_id == bindparam("patient_id"), ev.org_id == bindparam("org_id"),
            ev.kind == bindparam("kind"), ev.status == ACTIVE,
            ev.administered_on == bindparam("on"))
        log = _table(m.MessageLog)
        self._upd_log = update(log).where(log.c.id == bindparam("log_id_"))
        setting = self._insert(m.PatientSetting)
        self._upsert_setting = setting.on_conflict_do_update(
            index_elements=["patient_id", "org_id"],
            set_={c: setting.excluded[c] for c in _SETTING_COLUMNS})

    # --- helpers ---

    def _insert(self, model: type[m.Base], returning: bool = False,
                ignore_conflicts: bool = False) -> Any:
        """A cached Core INSERT for a model's table (values come as execute parameters)."""
        name = f"{model.__tablename__}:{returning}:{ignore_conflicts}"
        stmt = self._inserts.get(name)
        if stmt is None:
            table = _table(model)
            stmt = (postgresql.insert(table) if self.dialect == "postgresql"
                    else sqlite.insert(table))
            if ignore_conflicts:
                stmt = stmt.on_conflict_do_nothing()
            if returning:
                stmt = stmt.returning(table.c.id)
            self._inserts[name] = stmt
        return stmt

    def groups_of(self, cvx: str) -> frozenset[str]:
        return group_set(cvx, self.vaccine_groups(cvx)) if cvx else frozenset()

    # --- organizations ---

    def org_id(self, session: Session, code: str, now: datetime) -> int:
        """The id of an organization, enrolling it on first sight (race-safe upsert)."""
        cached = self._org_ids.get(code)
        if cached is not None:
            return cached
        session.execute(self._insert(m.Organization, ignore_conflicts=True),
                        {"code": code, "created_at": now})
        org_id = session.scalar(select(m.Organization.id).where(m.Organization.code == code))
        assert org_id is not None
        # Cache only ids that will survive: a rolled-back insert must not be remembered.
        session.info.setdefault("org_ids", {})[code] = org_id
        return org_id

    def remember_committed(self, session: Session) -> None:
        self._org_ids.update(session.info.pop("org_ids", {}))

    # --- matching lookups ---

    def lock_match_key(self, session: Session, key: str) -> None:
        """Serialise demographic matching of the same person across engines (PostgreSQL)."""
        if self.dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                            {"k": zlib.crc32(key.encode("utf-8"))})

    def _candidates(self, session: Session, patient_ids: Sequence[int]) -> list[Candidate]:
        if not patient_ids:
            return []
        rows = session.execute(select(m.Patient).where(m.Patient.id.in_(patient_ids))).scalars()
        idents: dict[int, list[ScopedIdentifier]] = {}
        for ident in session.execute(select(m.PatientIdentifier).where(
                m.PatientIdentifier.patient_id.in_(patient_ids))).scalars():
            idents.setdefault(ident.patient_id, []).append(ScopedIdentifier(
                ident.scope, ident.authority, ident.type_code, ident.value))
        return [Candidate(p.id, p.family_norm, p.given_norm, p.birth_date, p.sex,
                          p.birth_order, tuple(idents.get(p.id, ()))) for p in rows]

    def by_identifiers(self, session: Session,
                       keys: Sequence[ScopedIdentifier]) -> list[Candidate]:
        if not keys:
            return []
        ids: set[int] = set()
        for key in keys:
            if key.scope == "*" and key.type_code == "SR":
                if key.value.isdigit() and session.get(m.Patient, int(key.value)) is not None:
                    ids.add(int(key.value))
                continue
            found = session.scalar(self._sel_ident, {
                "scope": key.scope, "authority": key.authority, "type_code": key.type_code,
                "value": key.value})
            if found is not None:
                ids.add(found)
        return self._candidates(session, sorted(ids))

    def by_demographics(self, session: Session, family_norm: str, given_norm: str,
                        birth_date: date | None) -> list[Candidate]:
        if birth_date is None:
            return []
        ids = session.scalars(self._sel_demo, {"birth_date": birth_date, "family": family_norm,
                                               "given": given_norm}).all()
        return self._candidates(session, list(ids))

    # --- patients ---

    def create_patient(self, session: Session, patient: domain.Patient, family_norm: str,
                       given_norm: str, org_id: int, now: datetime) -> int:
        patient_id = session.scalar(self._insert(m.Patient, returning=True), {
            "family_norm": family_norm, "given_norm": given_norm,
            "birth_date": patient.birth_date, "sex": patient.sex,
            "multiple_birth": patient.multiple_birth, "birth_order": patient.birth_order,
            "death_date": patient.death_date, "death_indicator": patient.death_indicator,
            "created_at": now, "updated_at": now, "updated_by_org_id": org_id})
        assert patient_id is not None
        # Our own registry id (PID-3 type SR) is the patient's primary key.
        session.execute(self._insert(m.PatientIdentifier), {
            "patient_id": patient_id, "scope": "*", "authority": self.registry_authority,
            "type_code": "SR", "value": str(patient_id), "position": -1})
        self._write_details(session, patient_id, patient, replace=False)
        return int(patient_id)

    def update_patient(self, session: Session, patient_id: int, patient: domain.Patient,
                       family_norm: str, given_norm: str, org_id: int, now: datetime) -> None:
        """Most recent report wins, attribute by attribute: what this message omits is kept."""
        values: dict[str, Any] = {"updated_at": now, "updated_by_org_id": org_id}
        if patient.names:
            values.update(family_norm=family_norm, given_norm=given_norm)
        for attr in ("birth_date", "sex", "multiple_birth", "birth_order", "death_date",
                     "death_indicator"):
            value = getattr(patient, attr)
            if value not in (None, ""):
                values[attr] = value
        session.execute(update(m.Patient).where(m.Patient.id == patient_id).values(**values))
        self._write_details(session, patient_id, patient, replace=True)

    def _write_details(self, session: Session, patient_id: int, patient: domain.Patient,
                       replace: bool) -> None:
        def rows(items: Sequence[Any], **extra: Any) -> list[dict[str, Any]]:
            return [dict(dataclasses.asdict(item), patient_id=patient_id, position=i, **extra)
                    for i, item in enumerate(items)]

        parts: list[tuple[type[m.Base], Any, list[dict[str, Any]]]] = []
        if patient.names:
            parts.append((m.PatientName, m.PatientName.role == "patient",
                          rows(patient.names, role="patient")))
        if patient.mother_maiden_names:
            parts.append((m.PatientName, m.PatientName.role == "mother_maiden",
                          rows(patient.mother_maiden_names, role="mother_maiden")))
        if patient.addresses:
            parts.append((m.PatientAddress, None, rows(patient.addresses)))
        if patient.phones:
            parts.append((m.PatientPhone, None, rows(patient.phones)))
        if patient.races:
            parts.append((m.PatientCode, m.PatientCode.role == "race",
                          rows(patient.races, role="race")))
        if patient.ethnicities:
            parts.append((m.PatientCode, m.PatientCode.role == "ethnicity",
                          rows(patient.ethnicities, role="ethnicity")))
        for model, role_filter, values in parts:
            if replace:
                stmt = delete(model).where(model.patient_id == patient_id)  # type: ignore[attr-defined]
                session.execute(stmt if role_filter is None else stmt.where(role_filter))
            session.execute(self._insert(model), values)

    def add_identifiers(self, session: Session, patient_id: int,
                        keys: Sequence[ScopedIdentifier]) -> None:
        """Attach identifiers the patient does not carry yet (unique per scope/authority)."""
        values = [{"patient_id": patient_id, "scope": k.scope, "authority": k.authority,
                   "type_code": k.type_code, "value": k.value, "position": i}
                  for i, k in enumerate(keys) if not (k.scope == "*" and k.type_code == "SR")]
        if values:
            session.execute(self._insert(m.PatientIdentifier, ignore_conflicts=True), values)

    def claim_identifiers(self, session: Session, patient_id: int,
                          keys: Sequence[ScopedIdentifier]) -> None:
        """Attach a new patient's identifiers; raises IntegrityError if any is taken."""
        values = [{"patient_id": patient_id, "scope": k.scope, "authority": k.authority,
                   "type_code": k.type_code, "value": k.value, "position": i}
                  for i, k in enumerate(keys) if not (k.scope == "*" and k.type_code == "SR")]
        if values:
            session.execute(self._insert(m.PatientIdentifier), values)

    def replace_responsible(self, session: Session, patient_id: int,
                            persons: Sequence[domain.ResponsiblePerson], existing: bool) -> None:
        """NK1s of the latest message that has any replace the stored ones."""
        if not persons:
            return
        if existing:
            session.execute(delete(m.ResponsiblePerson)
                            .where(m.ResponsiblePerson.patient_id == patient_id))
        session.execute(self._insert(m.ResponsiblePerson), [
            {"patient_id": patient_id, "position": i, "relationship_code": p.relationship.code,
             "detail": _json(p)} for i, p in enumerate(persons)])

    def upsert_setting(self, session: Session, patient_id: int, org_id: int,
                       s: domain.PatientSettings, now: datetime) -> None:
        session.execute(self._upsert_setting, {
            "patient_id": patient_id, "org_id": org_id, "publicity_code": s.publicity.code,
            "publicity": _json(s.publicity), "publicity_date": s.publicity_date,
            "protection": s.protection, "protection_date": s.protection_date,
            "registry_status": s.registry_status,
            "registry_status_date": s.registry_status_date, "updated_at": now})

    # --- events ---

    def event_by_key(self, session: Session, org_id: int,
                     key: domain.EventKey) -> tuple[int, int, str] | None:
        """(event id, patient id, status) for an org's ORC-3, locked for update."""
        row = session.execute(self._sel_by_key, {"org_id": org_id, "authority": key.authority,
                                                 "key_id": key.id}).first()
        return (row[0], row[1], row[2]) if row else None

    def facts(self, v: domain.Vaccination, event_id: int = 0, order: int = 0) -> DoseFacts:
        signature = ""
        if v.kind is domain.EventKind.OBSERVATION:
            signature = "|".join(sorted(f"{o.code.code}={o.coded_value.code or o.value}"
                                        for o in v.observations))
        return DoseFacts(event_id, v.kind.value, v.administered_on, self.groups_of(v.cvx),
                         v.historical, bool(v.lot_numbers), order, signature)

    def org_event_facts(self, session: Session, patient_id: int, org_id: int,
                        kind: str, on: date | None) -> list[tuple[DoseFacts, domain.Vaccination | None]]:
        """The org's active events of one kind on one date (de-duplication candidates)."""
        if on is None:
            return []
        if kind != domain.EventKind.OBSERVATION.value:
            return [(DoseFacts(r.id, r.kind, r.administered_on, self.groups_of(r.cvx),
                               bool(r.information_source) and r.information_source != "00",
                               bool(r.lot_number), r.version), None)
                    for r in session.execute(self._sel_org_events, {
                        "patient_id": patient_id, "org_id": org_id, "kind": kind, "on": on})]
        stmt = select(m.ImmunizationEvent).where(
            m.ImmunizationEvent.patient_id == patient_id, m.ImmunizationEvent.org_id == org_id,
            m.ImmunizationEvent.kind == kind, m.ImmunizationEvent.status == ACTIVE,
            m.ImmunizationEvent.administered_on == on)
        out: list[tuple[DoseFacts, domain.Vaccination | None]] = []
        for row in session.execute(stmt).scalars():
            v = self._vaccination(row, self._observations(session, [row.id]).get(row.id, []))
            out.append((self.facts(v, row.id, row.version), v))
        return out

    def _event_values(self, v: domain.Vaccination) -> dict[str, Any]:
        return {
            "kind": v.kind.value, "cvx": v.cvx, "ndc": v.ndc, "cpt": v.cpt,
            "vaccine_groups": ",".join(sorted(self.groups_of(v.cvx)))[:200],
            "administered_on": v.administered_on, "administered_ts": v.administered_ts[:64],
            "amount": v.amount, "lot_number": (v.lot_numbers[0] if v.lot_numbers else "")[:64],
            "expiration_date": v.expiration_date, "mvx": v.manufacturer.code[:64],
            "route_code": v.route.code[:64], "site_code": v.site.code[:64],
            "information_source": v.information_source.code[:64],
            "completion_status": v.completion_status[:8],
            "refusal_reason": v.refusal_reason.code[:64],
            "funding_eligibility": v.funding_eligibility.code[:64],
            "funding_source": v.funding_source.code[:64],
            "facility_code": v.administered_at.facility[:200],
            "detail": {name: _json(getattr(v, name)) for name in _EVENT_DETAIL},
        }

    def insert_event(self, session: Session, patient_id: int, org_id: int,
                     v: domain.Vaccination, now: datetime) -> int:
        event_id = session.scalar(self._insert(m.ImmunizationEvent, returning=True), dict(
            patient_id=patient_id, org_id=org_id, status=ACTIVE, created_at=now,
            updated_at=now, deleted_at=None, version=1, **self._event_values(v)))
        assert event_id is not None
        self._insert_observations(session, event_id, v.observations)
        return int(event_id)

    def replace_event(self, session: Session, event_id: int, patient_id: int,
                      v: domain.Vaccination, now: datetime) -> None:
        """The addendum rule: the order group is the complete record, so replace it whole."""
        session.execute(update(m.ImmunizationEvent).where(m.ImmunizationEvent.id == event_id)
                        .values(patient_id=patient_id, status=ACTIVE, updated_at=now,
                                deleted_at=None, version=m.ImmunizationEvent.version + 1,
                                **self._event_values(v)))
        session.execute(delete(m.EventObservation).where(m.EventObservation.event_id == event_id))
        self._insert_observations(session, event_id, v.observations)

    def delete_event(self, session: Session, event_id: int, now: datetime) -> None:
        """RXA-21 D: kept for audit, excluded from histories."""
        session.execute(update(m.ImmunizationEvent).where(m.ImmunizationEvent.id == event_id)
                        .values(status=DELETED, deleted_at=now, updated_at=now,
                                version=m.ImmunizationEvent.version + 1))

    def add_key(self, session: Session, org_id: int, key: domain.EventKey,
                event_id: int) -> None:
        session.execute(self._insert(m.EventKey), {
            "org_id": org_id, "authority": key.authority[:200], "key_id": key.id[:200],
            "event_id": event_id})

    def _insert_observations(self, session: Session, event_id: int,
                             observations: Sequence[domain.Observation]) -> None:
        if not observations:
            return
        session.execute(self._insert(m.EventObservation), [
            {"event_id": event_id, "position": i, "code": o.code.code[:64],
             "value_type": o.value_type[:8], "value": o.value,
             "value_code": o.coded_value.code[:64], "sub_id": o.sub_id[:64],
             "observed_on": o.observed_on,
             "detail": {"code": _json(o.code), "coded_value": _json(o.coded_value),
                        "units": _json(o.units), "method": _json(o.method),
                        "status": o.status}}
            for i, o in enumerate(observations)])

    # --- message log ---

    def log_message(self, session: Session, values: dict[str, Any]) -> int:
        log_id = session.scalar(self._insert(m.MessageLog, returning=True), values)
        assert log_id is not None
        return int(log_id)

    def finish_log(self, session: Session, log_id: int, **values: Any) -> None:
        session.execute(self._upd_log, {"log_id_": log_id, **values})

    def replay(self, session: Session, sender: str,
               control_id: str) -> tuple[str, bytes] | None:
        row = session.execute(select(m.MessageLog.content_sha256, m.MessageLog.response).where(
            m.MessageLog.sender == sender, m.MessageLog.replay_key == control_id)).first()
        return (row[0], bytes(row[1])) if row else None

    def purge_payloads(self, older_than: datetime) -> int:
        """Retention: drop raw message content older than a cutoff (outcome rows stay)."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(update(m.MessageLog).where(
                m.MessageLog.received_at < older_than, m.MessageLog.payload.is_not(None))
                .values(payload=None))
            return int(getattr(result, "rowcount", 0) or 0)

    # --- reads ---

    def _observations(self, session: Session,
                      event_ids: Sequence[int]) -> dict[int, list[domain.Observation]]:
        out: dict[int, list[domain.Observation]] = {}
        if not event_ids:
            return out
        rows = session.execute(select(m.EventObservation).where(
            m.EventObservation.event_id.in_(event_ids))
            .order_by(m.EventObservation.event_id, m.EventObservation.position)).scalars()
        for r in rows:
            d = r.detail
            out.setdefault(r.event_id, []).append(domain.Observation(
                code=_coded(d["code"]), value_type=r.value_type, value=r.value,
                coded_value=_coded(d["coded_value"]), units=_coded(d["units"]),
                sub_id=r.sub_id, observed_on=r.observed_on, method=_coded(d["method"]),
                status=d["status"]))
        return out

    @staticmethod
    def _vaccination(row: m.ImmunizationEvent,
                     observations: Sequence[domain.Observation]) -> domain.Vaccination:
        detail = {k: _DECODE[k](v) for k, v in row.detail.items() if k in _DECODE}
        return domain.Vaccination(
            kind=domain.EventKind(row.kind), cvx=row.cvx, ndc=row.ndc, cpt=row.cpt,
            administered_on=row.administered_on, administered_ts=row.administered_ts,
            amount=row.amount, expiration_date=row.expiration_date,
            completion_status=row.completion_status, observations=tuple(observations),
            **detail)

    def patient_ids(self) -> list[int]:
        with Session(self.engine) as session:
            return list(session.scalars(select(m.Patient.id).order_by(m.Patient.id)))

    def find_patients(self, scope: str, authority: str, type_code: str,
                      value: str) -> list[int]:
        t = m.PatientIdentifier
        with Session(self.engine) as session:
            return list(session.scalars(select(t.patient_id).where(
                t.scope == scope, t.authority == authority, t.type_code == type_code,
                t.value == value)))

    def load_patient(self, patient_id: int) -> StoredPatient | None:
        """Everything stored about one patient, as domain values."""
        with Session(self.engine) as session:
            p = session.get(m.Patient, patient_id)
            if p is None:
                return None
            names = session.execute(select(m.PatientName).where(
                m.PatientName.patient_id == patient_id).order_by(m.PatientName.position)
            ).scalars().all()

            def name_rows(role: str) -> tuple[domain.Name, ...]:
                return tuple(domain.Name(n.family, n.given, n.middle, n.suffix, n.prefix,
                                         n.type_code) for n in names if n.role == role)

            codes = session.execute(select(m.PatientCode).where(
                m.PatientCode.patient_id == patient_id).order_by(m.PatientCode.position)
            ).scalars().all()

            def code_rows(role: str) -> tuple[domain.Coded, ...]:
                return tuple(domain.Coded(c.code, c.text, c.system, c.alt_code, c.alt_text,
                                          c.alt_system) for c in codes if c.role == role)

            addresses = tuple(domain.Address(a.street, a.other, a.city, a.state, a.zip,
                                             a.country, a.type_code, a.county)
                              for a in session.execute(select(m.PatientAddress).where(
                                  m.PatientAddress.patient_id == patient_id)
                                  .order_by(m.PatientAddress.position)).scalars())
            phones = tuple(domain.Phone(t.use, t.equipment, t.email, t.country_code, t.area,
                                        t.number, t.extension)
                           for t in session.execute(select(m.PatientPhone).where(
                               m.PatientPhone.patient_id == patient_id)
                               .order_by(m.PatientPhone.position)).scalars())
            idents = session.execute(select(m.PatientIdentifier).where(
                m.PatientIdentifier.patient_id == patient_id)
                .order_by(m.PatientIdentifier.position, m.PatientIdentifier.id)).scalars().all()
            identifiers = tuple((i.scope, domain.Identifier(i.value, i.authority, i.type_code))
                                for i in idents)
            persons = tuple(
                domain.ResponsiblePerson(
                    _names(r.detail["names"]), _coded(r.detail["relationship"]),
                    tuple(domain.Address(**a) for a in r.detail["addresses"]),
                    tuple(domain.Phone(**t) for t in r.detail["phones"]))
                for r in session.execute(select(m.ResponsiblePerson).where(
                    m.ResponsiblePerson.patient_id == patient_id)
                    .order_by(m.ResponsiblePerson.position)).scalars())
            settings = {
                code: domain.PatientSettings(_coded(s.publicity), s.publicity_date,
                                             s.protection, s.protection_date,
                                             s.registry_status, s.registry_status_date)
                for s, code in session.execute(
                    select(m.PatientSetting, m.Organization.code)
                    .join(m.Organization, m.Organization.id == m.PatientSetting.org_id)
                    .where(m.PatientSetting.patient_id == patient_id))}
            events = session.execute(
                select(m.ImmunizationEvent, m.Organization.code)
                .join(m.Organization, m.Organization.id == m.ImmunizationEvent.org_id)
                .where(m.ImmunizationEvent.patient_id == patient_id)
                .order_by(m.ImmunizationEvent.id)).all()
            ids = [e.id for e, _ in events]
            observations = self._observations(session, ids)
            keys: dict[int, list[domain.EventKey]] = {}
            if ids:
                for k in session.execute(select(m.EventKey).where(
                        m.EventKey.event_id.in_(ids)).order_by(m.EventKey.id)).scalars():
                    keys.setdefault(k.event_id, []).append(domain.EventKey(k.key_id,
                                                                          k.authority))
            stored = tuple(StoredEvent(e.id, code, e.status, tuple(keys.get(e.id, ())),
                                       self._vaccination(e, observations.get(e.id, [])))
                           for e, code in events)
            patient = domain.Patient(
                identifiers=tuple(i for scope, i in identifiers if scope != "*"),
                names=name_rows("patient"), mother_maiden_names=name_rows("mother_maiden"),
                birth_date=p.birth_date, sex=p.sex, races=code_rows("race"),
                ethnicities=code_rows("ethnicity"), addresses=addresses, phones=phones,
                multiple_birth=p.multiple_birth, birth_order=p.birth_order,
                death_date=p.death_date, death_indicator=p.death_indicator)
            return StoredPatient(patient_id, patient, identifiers, persons, settings, stored)

    def counts(self) -> dict[str, int]:
        """Row counts per table (tests use this to prove nothing half-written remains)."""
        with Session(self.engine) as session:
            return {table.name: int(session.scalar(select(func.count()).select_from(table))
                                    or 0)
                    for table in m.Base.metadata.sorted_tables}

    def message_log(self, sender: str, control_id: str) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.execute(select(m.MessageLog).where(
                m.MessageLog.sender == sender, m.MessageLog.control_id == control_id)
                .order_by(m.MessageLog.id)).scalars()
            return [{c.name: getattr(r, c.key) for c in m.MessageLog.__table__.columns}
                    for r in rows]
