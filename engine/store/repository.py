"""Reads of the registry store in `engine.domain` terms, and the message-log statements.

Owns the translation from rows back to domain values (ORM rows never leave this package): the
reads tests, tools and query handlers use (each opens its own read transaction), patient
lookups by identifier or demographics, and the message-log insert/replay the journal needs.

The VXU write path — and its concurrency rules (unique keys, the match-key advisory lock on
PostgreSQL, BEGIN IMMEDIATE on SQLite) — lives in engine.store.intake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from engine import domain
from engine.dedup import group_set
from engine.matching import Candidate, ScopedIdentifier
from engine.store import models as m
from engine.store.precompiled import Precompiled

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


# --- JSON documents read back into domain values ----------------------------------------

def _coded(data: Any) -> domain.Coded:
    return domain.Coded(**data) if data else domain.Coded()


def _date(data: Any) -> date | None:
    return date.fromisoformat(data) if data else None


def _names(rows: Iterable[Any]) -> tuple[domain.Name, ...]:
    return tuple(domain.Name(**r) for r in rows)


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


class Repository:
    """Reads of the registry schema for one database (SQLite or PostgreSQL).

    The VXU write path lives in engine.store.intake (precompiled statements on the
    group-commit writer); what remains here are the reads tests, tools and query handlers
    use, and the message-log statements the journal needs.
    """

    def __init__(self, engine: Engine, *, vaccine_groups: Callable[[str], frozenset[str]],
                 registry_authority: str) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.vaccine_groups = vaccine_groups
        self.registry_authority = registry_authority
        ident = m.table(m.PatientIdentifier).c
        self._sel_ident = select(ident.patient_id).where(
            ident.scope == bindparam("scope"), ident.authority == bindparam("authority"),
            ident.type_code == bindparam("type_code"), ident.value == bindparam("value"))
        pat = m.table(m.Patient).c
        self._sel_demo = select(pat.id).where(
            pat.birth_date == bindparam("birth_date"), pat.family_norm == bindparam("family"),
            pat.given_norm == bindparam("given"))
        table = m.table(m.MessageLog)
        self._log_insert = insert(table).returning(table.c.id)
        self._log_precompiled = Precompiled(insert(table).inline(), engine.dialect,
                                            [c.name for c in table.columns if c.name != "id"])

    def groups_of(self, cvx: str) -> frozenset[str]:
        return group_set(cvx, self.vaccine_groups(cvx)) if cvx else frozenset()

    # --- matching lookups ---

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

    # --- message log ---

    def log_statement(self) -> Precompiled:
        """The message_log INSERT for a writer connection (every column as a parameter)."""
        return self._log_precompiled

    def log_message(self, session: Session, values: dict[str, Any]) -> int:
        log_id = session.scalar(self._log_insert, values)
        assert log_id is not None
        return int(log_id)

    def replay(self, session: Session, sender: str,
               control_id: str) -> tuple[str, bytes] | None:
        row = session.execute(select(m.MessageLog.content_sha256, m.MessageLog.response).where(
            m.MessageLog.sender == sender, m.MessageLog.replay_key == control_id)).first()
        return (row[0], bytes(row[1])) if row else None

    def purge_payloads(self, older_than: datetime, batch: int = 1000) -> int:
        """Retention: drop raw message content older than a cutoff (outcome rows stay).

        In transactions of at most `batch` rows, so the first purge of a large log never
        holds SQLite's write lock (or one huge PostgreSQL transaction) long enough to make
        intake wait: messages keep being stored between batches."""
        total = 0
        while True:
            with Session(self.engine) as session, session.begin():
                ids = select(m.MessageLog.id).where(
                    m.MessageLog.received_at < older_than,
                    m.MessageLog.payload.is_not(None)).limit(batch).scalar_subquery()
                result = session.execute(update(m.MessageLog).where(m.MessageLog.id.in_(ids))
                                         .values(payload=None))
                done = int(getattr(result, "rowcount", 0) or 0)
            total += done
            if done < batch:
                return total

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
            return [{c.name: getattr(r, c.key) for c in m.table(m.MessageLog).columns}
                    for r in rows]
