"""The VXU write path: a message planned off the writer, then stored in a few statements.

Two halves, because the group-commit writer (engine.store.writer) is a single thread and
every CPU cycle spent on it is a cycle every waiting message waits for:

* `IntakeStore.plan(vxu)` runs on the pipeline thread: the refused-value check
  (engine.store.screen), normalised names, scoped identifiers, match key, the rows of every
  child table, JSON documents (encoded once, here), dose facts.
* `IntakeStore.store(tx, plan, now)` runs on the writer inside the message's savepoint and
  only binds and executes precompiled statements (engine.store.precompiled):

  ======================================  =============================================
  statement                               when
  ======================================  =============================================
  pg_advisory_xact_lock(match key)        PostgreSQL (SQLite: BEGIN IMMEDIATE already)
  one candidate query                     always: identifier hits and exact-demographic
                                          candidates with all their identifiers
  INSERT patient (RETURNING id)           new patient
   or UPDATE patient (+ DELETE per part)  matched patient (most recent report wins)
  one INSERT per child table              names, addresses, phones, codes, identifiers,
                                          NK1 (only tables the message has rows for)
  upsert patient_setting                  PD1 present
  one key query (FOR UPDATE)              any keyed order group
  one query of the org's active events    matched patient (de-duplication candidates)
  per order group: INSERT/UPDATE          the event itself
  one INSERT of all new keys / OBX        at the end
  ======================================  =============================================

  On SQLite the log lookup, the candidate query, the key query and the last patient and
  event ids are one statement (`_sqlite_ahead`, run with the log lookup), new rows get their
  ids from it (max + 1, what SQLite would pick itself) instead of RETURNING, new events wait
  for one multi-row INSERT, and each child table's rows are one multi-row INSERT
  (`Precompiled.insert_rows`): a new patient's message with two doses is twelve statements,
  not fifteen. What SQLite runs costs about the same either way; what is saved is Python
  work and GIL hand-offs on the single writer thread, which every other thread waits behind.

  On PostgreSQL the patient part is one statement (engine.store.pgwrite.PatientStatements)
  and the new events with their keys and OBX another (EventStatements), so a new patient's
  message is six statements: log lookup (+ lock, + ids), candidates, keys, patient, events,
  log row.

  The decisions (engine.matching, engine.dedup, the RXA-21 table in engine.handlers.vxu)
  are made in Python over what those queries returned, with an in-memory overlay of what
  this message already wrote, so the order groups of one message still see each other
  exactly as if every lookup had gone to the database.

PostgreSQL runs the writer's first pass in pipeline mode (engine.store.precompiled), and this
module arranges its statements so that a new patient's message costs two round trips: the
match-key lock with the log lookup, the candidate query, the key query and the allocation of
the new rows' ids (`nextval`) go out together (`_Ahead`; the server still runs them in order,
so the candidate query's snapshot follows the lock); everything after that returns nothing the
writer reads, and goes out with the writer's flush at the end of the message.

Race safety is unchanged: identifier keys, event keys and (sender, MSH-10) are unique in the
database, demographic matching runs under the match-key lock, key lookups lock their events.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    Engine,
    bindparam,
    delete,
    func,
    insert,
    null,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from engine import domain
from engine.dedup import DoseFacts, find_duplicate, group_set, takes_precedence
from engine.errors import Issue, Location, UnknownKeyIdentifier
from engine.matching import (
    GLOBAL_SCOPE,
    Candidate,
    ScopedIdentifier,
    decide,
    match_key,
    normalise,
    scoped_identifiers,
)
from engine.store import models as m
from engine.store import pgwrite
from engine.store.precompiled import Pending, Precompiled, Rows
from engine.store.screen import Screen
from engine.store.writer import Tx

ACTIVE = "active"
DELETED = "deleted"
# Tx note: this attempt already holds the match-key lock (taken with the log lookup).
_LOCKED = "match_key_locked"
# Tx note: the `_Ahead` queries sent with the log lookup.
_AHEAD = "ahead"
# Events this message wrote are reported later than any stored version.
_THIS_MESSAGE = 1 << 30


# --- JSON documents -----------------------------------------------------------------------

_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _names_of(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


# Per dataclass, a function returning its fields as a dict, built from a dict display
# (`{"a": v.a, ...}`): measured about twice as fast as a comprehension over the field names
# with getattr, and looked up by exact type instead of asking `is_dataclass` each time.
# Other types (dates, decimals) are remembered as None.
_AS_DICT: dict[type[Any], Callable[[Any], dict[str, Any]] | None] = {}


def _as_dict_of(cls: type[Any]) -> Callable[[Any], dict[str, Any]] | None:
    found = None
    if dataclasses.is_dataclass(cls):
        names = _names_of(cls)
        assert all(n.isidentifier() for n in names)
        body = ", ".join(f"{n!r}: v.{n}" for n in names)
        scope: dict[str, Any] = {}
        exec(f"def as_dict(v):\n    return {{{body}}}\n", scope)
        found = scope["as_dict"]
    _AS_DICT[cls] = found
    return found


def _encode(value: Any) -> Any:
    """json's hook for what it cannot encode itself; strings, lists and dicts stay in C."""
    kind = type(value)
    as_dict = _AS_DICT[kind] if kind in _AS_DICT else _as_dict_of(kind)
    if as_dict is not None:
        return as_dict(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} as JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_encode)
# The C encoder `_ENCODER.encode` builds anew on every call (a plan encodes a dozen small
# documents, so that set-up was most of json's time), made once with the same settings;
# only the circular-reference check is left out (domain values are trees). Same text.
_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER: Any = (_make_c_encoder(None, _encode, json.encoder.encode_basestring_ascii, None,
                                   ":", ",", False, False, True)
                   if _make_c_encoder is not None else None)


def dumps(value: Any) -> str:
    """A domain value as JSON text (dataclasses → objects, dates → ISO text)."""
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(value, 0))
    return _ENCODER.encode(value)


def _open_json(row: dict[str, Any]) -> str:
    """`row` as a JSON object without its closing brace; its "detail" (already JSON text)
    is spliced in as the document it is, not as a string."""
    head = dumps({k: v for k, v in row.items() if k != "detail"})
    return f'{head[:-1]},"detail":{row["detail"]}'


def _flat(item: Any) -> dict[str, Any]:
    """A flat record (Name, Address, Phone, Coded) as a row's columns."""
    return {n: getattr(item, n) for n in _names_of(type(item))}


EVENT_DETAIL = ("administered", "units", "information_source", "administering_provider",
                "administered_at", "lot_numbers", "manufacturer", "refusal_reason", "route",
                "site", "ordering_provider", "entered_by", "funding_source",
                "funding_eligibility", "vis", "key", "action")


# --- the plan ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EventPlan:
    """One order group, ready to bind."""

    event: domain.Vaccination
    keyed: bool
    key: tuple[str, str]  # (authority, id) as stored
    values: dict[str, Any]  # immunization_event columns that come from the message
    facts: DoseFacts
    observations: tuple[dict[str, Any], ...]  # event_observation rows without event_id
    # PostgreSQL: `values` and each observation row as JSON objects left open for the ids
    # (`,"id":N}` / `,"event_id":N}`), encoded here once (engine.store.pgwrite.EventStatements)
    pg_row: str = ""
    pg_observations: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VxuPlan:
    """A mapped VXU as rows and decisions' inputs; built off the writer thread."""

    organization: str
    patient: domain.Patient
    keys: tuple[ScopedIdentifier, ...]
    family: str
    given: str
    lock_key: int
    patient_values: dict[str, Any]
    details: tuple[tuple[str, str, tuple[dict[str, Any], ...]], ...]  # (table, role, rows)
    detail_rows: tuple[tuple[str, tuple[dict[str, Any], ...]], ...]  # rows grouped by table
    responsible: tuple[dict[str, Any], ...]
    setting: dict[str, Any] | None
    events: tuple[EventPlan, ...]
    pg: dict[str, Any] | None = None  # PostgreSQL: the patient part as one statement's params
    # Values the store refused (engine.store.screen): W issues for emptied optional fields,
    # E issues and `rejected` when the message cannot be stored (then nothing is).
    findings: tuple[Issue, ...] = ()
    rejected: bool = False


@dataclass(slots=True)
class _Ahead:
    """Queries sent before their results are needed (one round trip in pipeline mode)."""

    candidates: Pending | Rows
    keys: Pending | Rows | None  # None: the organization's id was not known yet
    ids: tuple[int, list[int]] | None  # PostgreSQL: (new patient id, [new event ids])


@dataclass(slots=True)
class _Known:
    """An org's event key as this transaction currently knows it."""

    event_id: int
    patient_id: int
    status: str


# PostgreSQL: a new patient's id and `:n` new events' ids, allocated before the INSERTs.
_NEXT_IDS = ("nextval(pg_get_serial_sequence('patient', 'id')), "
             "ARRAY(SELECT nextval(pg_get_serial_sequence('immunization_event', 'id')) "
             "FROM generate_series(1, :n))")
_PATIENT_ATTRS = ("birth_date", "sex", "multiple_birth", "birth_order", "death_date",
                  "death_indicator")
_DETAIL_TABLES = ("patient_name", "patient_address", "patient_phone", "patient_code")


class IntakeStore:
    """Plans and stores VXUs for one database (statements compiled once, at construction)."""

    def __init__(self, engine: Engine, *, vaccine_groups: Callable[[str], frozenset[str]],
                 is_placeholder_key: Callable[[domain.EventKey], bool],
                 registry_authority: str) -> None:
        self.dialect = engine.dialect.name
        self.vaccine_groups = vaccine_groups
        self.is_placeholder_key = is_placeholder_key
        self.registry_authority = registry_authority
        self._org_ids: dict[str, int] = {}
        self.screen = Screen()
        self._groups: dict[str, frozenset[str]] = {}
        d = engine.dialect
        pg = self.dialect == "postgresql"
        dialect_insert = postgresql.insert if pg else sqlite.insert

        def ins(model: type[m.Base], *, returning: bool = False,
                with_id: bool = False) -> Precompiled:
            table = m.table(model)
            cols = [c.name for c in table.columns if with_id or c.name != "id"]
            stmt = insert(table).returning(table.c.id) if returning else insert(table).inline()
            return Precompiled(stmt, d, cols)

        self._ins_org = Precompiled(dialect_insert(m.table(m.Organization)).inline()
                                    .on_conflict_do_nothing(), d, ["code", "created_at"])
        self._sel_org = Precompiled(select(m.Organization.id).where(
            m.Organization.code == bindparam("code")), d)
        self._lock = Precompiled(select(func.pg_advisory_xact_lock(bindparam("k"))), d) if (
            pg) else None
        self._pg = pgwrite.PatientStatements(d) if pg else None
        self._pg_events = pgwrite.EventStatements(d) if pg else None
        self._ins_patient = ins(m.Patient, returning=True)
        # SQLite with ids read ahead (`_sqlite_ahead`): the rows' ids are known, no RETURNING.
        self._ins_patient_id = ins(m.Patient, with_id=True)
        self._ins_event_id = ins(m.ImmunizationEvent, with_id=True)
        pat = m.table(m.Patient).c
        # Most recent report wins attribute by attribute; a NULL parameter keeps the column.
        self._upd_patient = Precompiled(update(m.table(m.Patient)).where(
            pat.id == bindparam("pid")).values(
            updated_at=bindparam("now"), updated_by_org_id=bindparam("org_id"),
            **{a: func.coalesce(bindparam(f"n_{a}", type_=pat[a].type), pat[a])
               for a in ("family_norm", "given_norm", *_PATIENT_ATTRS)}), d)
        self._ins_ident = ins(m.PatientIdentifier)
        ident_conflict = (dialect_insert(m.table(m.PatientIdentifier)).inline()
                          .on_conflict_do_nothing())
        self._add_ident = Precompiled(ident_conflict, d, [
            c.name for c in m.table(m.PatientIdentifier).columns if c.name != "id"])
        models = {"patient_name": m.PatientName, "patient_address": m.PatientAddress,
                  "patient_phone": m.PatientPhone, "patient_code": m.PatientCode}
        self._ins_detail = {name: ins(model) for name, model in models.items()}
        self._del_detail: dict[tuple[str, str], Precompiled] = {}
        for name, model in models.items():
            table = m.table(model)
            stmt = delete(table).where(table.c.patient_id == bindparam("pid"))
            if "role" in table.c:
                for role in ("patient", "mother_maiden", "race", "ethnicity"):
                    self._del_detail[name, role] = Precompiled(
                        stmt.where(table.c.role == role), d)
            else:
                self._del_detail[name, ""] = Precompiled(stmt, d)
        self._ins_nk1 = ins(m.ResponsiblePerson)
        nk1 = m.table(m.ResponsiblePerson)
        self._del_nk1 = Precompiled(delete(nk1).where(nk1.c.patient_id == bindparam("pid")), d)
        setting = dialect_insert(m.table(m.PatientSetting)).inline()
        set_cols = ("publicity_code", "publicity", "publicity_date", "protection",
                    "protection_date", "registry_status", "registry_status_date", "updated_at")
        self._upsert_setting = Precompiled(setting.on_conflict_do_update(
            index_elements=["patient_id", "org_id"],
            set_={c: setting.excluded[c] for c in set_cols}), d,
            ["patient_id", "org_id", *set_cols])
        self._ins_event = ins(m.ImmunizationEvent, returning=True)
        self._ids = Precompiled(text("SELECT " + _NEXT_IDS), d) if pg else None
        ev = m.table(m.ImmunizationEvent)
        event_cols = [c.name for c in ev.columns if c.name not in (
            "id", "patient_id", "org_id", "status", "created_at", "updated_at", "deleted_at",
            "version")]
        self._replace_event = Precompiled(update(ev).where(ev.c.id == bindparam("eid")).values(
            status=ACTIVE, deleted_at=null(), version=ev.c.version + 1), d,
            [*event_cols, "patient_id", "updated_at"])
        self._delete_event = Precompiled(update(ev).where(ev.c.id == bindparam("eid")).values(
            status=DELETED, deleted_at=bindparam("now"), updated_at=bindparam("now"),
            version=ev.c.version + 1), d)
        obs = m.table(m.EventObservation)
        self._del_obs = Precompiled(delete(obs).where(obs.c.event_id == bindparam("eid")), d)
        self._ins_obs = ins(m.EventObservation)
        self._ins_key = ins(m.EventKey)
        self._ins_log = ins(m.MessageLog)
        log = m.table(m.MessageLog).c
        self._sel_log = Precompiled(select(log.content_sha256, log.response).where(
            log.sender == bindparam("sender"), log.replay_key == bindparam("key")), d)
        # PostgreSQL: the match-key lock and the new rows' ids ride on the log lookup (one
        # statement, not three). The lock is taken before the candidate query runs, whose
        # snapshot must follow it; ids a retransmission or a matched patient does not use are
        # a harmless gap in the sequence.
        self._lock_and_log = Precompiled(text(
            "SELECT l.content_sha256, l.response, " + _NEXT_IDS + " FROM (SELECT "
            "pg_advisory_xact_lock(:k)) AS a "
            "LEFT OUTER JOIN message_log l ON l.sender = :sender AND l.replay_key = :key"),
            d) if pg else None
        self._sel_org_events = Precompiled(select(
            ev.c.id, ev.c.kind, ev.c.cvx, ev.c.information_source, ev.c.lot_number,
            ev.c.administered_on).where(
            ev.c.patient_id == bindparam("pid"), ev.c.org_id == bindparam("org_id"),
            ev.c.status == ACTIVE), d)
        self._sel_org_observations = Precompiled(select(
            obs.c.event_id, obs.c.code, obs.c.value, obs.c.value_code).where(
            obs.c.event_id.in_(select(ev.c.id).where(
                ev.c.patient_id == bindparam("pid"), ev.c.org_id == bindparam("org_id"),
                ev.c.status == ACTIVE, ev.c.kind == domain.EventKind.OBSERVATION.value))), d)
        # Tuple IN-lists of any length with one fixed statement text: arrays on PostgreSQL,
        # a JSON array on SQLite.
        if pg:
            idents = ("SELECT * FROM unnest(CAST(:k_scope AS VARCHAR[]), CAST(:k_auth AS "
                      "VARCHAR[]), CAST(:k_type AS VARCHAR[]), CAST(:k_value AS VARCHAR[]))")
            keys = ""
        else:
            idents = ("SELECT json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), "
                      "json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]') "
                      "FROM json_each(:keys) AS j")
            keys = ("SELECT json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]') "
                    "FROM json_each(:keys) AS j")
        candidates = (
            "SELECT p.id, p.family_norm, p.given_norm, p.birth_date, p.sex, p.birth_order, "
            "i.scope, i.authority, i.type_code, i.value "
            "FROM patient p LEFT OUTER JOIN patient_identifier i ON i.patient_id = p.id "
            "WHERE p.id IN ("
            "SELECT x.patient_id FROM patient_identifier x "
            f"WHERE (x.scope, x.authority, x.type_code, x.value) IN ({idents}) "
            "UNION ALL SELECT y.id FROM patient y WHERE y.birth_date = :birth_date "
            "AND y.family_norm = :family AND y.given_norm = :given)")
        self._sel_candidates = Precompiled(text(candidates + " ORDER BY p.id").bindparams(
            bindparam("birth_date", type_=Date)), d)
        # Driven from the wanted keys, one unique-index probe each: a plain semi-join lets
        # the planner scan every key of the organization instead (measured on PostgreSQL
        # with fresh statistics: 600 keys read for 2 wanted). LIMIT 1 (the key is unique)
        # keeps the planner from flattening the LATERAL subquery back into that join.
        if pg:
            self._sel_keys = Precompiled(text(
                "SELECT w.authority, w.key_id, e.id, e.patient_id, e.status "
                "FROM unnest(CAST(:k_auth AS VARCHAR[]), CAST(:k_id AS VARCHAR[])) "
                "AS w(authority, key_id) CROSS JOIN LATERAL (SELECT k.event_id FROM event_key k "
                "WHERE k.org_id = :org_id AND k.authority = w.authority "
                "AND k.key_id = w.key_id LIMIT 1) AS k "
                "JOIN immunization_event e ON e.id = k.event_id FOR UPDATE OF e"), d)
        else:
            self._sel_keys = Precompiled(text(
                "SELECT k.authority, k.key_id, e.id, e.patient_id, e.status "
                "FROM event_key k JOIN immunization_event e ON e.id = k.event_id "
                f"WHERE k.org_id = :org_id AND (k.authority, k.key_id) IN ({keys})"), d)
        # SQLite: the log lookup, the candidate and key queries and the last patient and
        # event ids in one statement (rows tagged 0, 1, 2), not three statements and a
        # RETURNING per new row. The writer's transaction holds SQLite's write lock from
        # BEGIN IMMEDIATE, so nothing else inserts before this message does, and max(id) + 1
        # is the id SQLite itself would give the next row (no AUTOINCREMENT).
        self._sqlite_ahead = None if pg else Precompiled(text(
            "SELECT 0, l.content_sha256, l.response, (SELECT max(id) FROM patient), "
            "(SELECT max(id) FROM immunization_event), NULL, NULL, NULL, NULL, NULL, NULL "
            "FROM (SELECT 1) AS a LEFT OUTER JOIN message_log l "
            "ON l.sender = :sender AND l.replay_key = :key "
            "UNION ALL SELECT 1, * FROM (" + candidates + ") "
            "UNION ALL SELECT 2, k.authority, k.key_id, e.id, e.patient_id, e.status, NULL, "
            "NULL, NULL, NULL, NULL FROM event_key k "
            "JOIN immunization_event e ON e.id = k.event_id WHERE k.org_id = :org_id "
            "AND (k.authority, k.key_id) IN (SELECT json_extract(j.value, '$[0]'), "
            "json_extract(j.value, '$[1]') FROM json_each(:wanted) AS j) "
            "ORDER BY 1, 2").bindparams(bindparam("birth_date", type_=Date)), d)

    # --- planning (pipeline threads) ---

    def groups_of(self, cvx: str) -> frozenset[str]:
        found = self._groups.get(cvx)
        if found is None:
            found = self._groups[cvx] = (group_set(cvx, self.vaccine_groups(cvx)) if cvx
                                         else frozenset())
        return found

    def facts(self, v: domain.Vaccination, event_id: int = 0, order: int = 0) -> DoseFacts:
        signature = ""
        if v.kind is domain.EventKind.OBSERVATION:
            signature = "|".join(sorted(f"{o.code.code}={o.coded_value.code or o.value}"
                                        for o in v.observations))
        return DoseFacts(event_id, v.kind.value, v.administered_on, self.groups_of(v.cvx),
                         v.historical, bool(v.lot_numbers), order, signature)

    def event_values(self, v: domain.Vaccination) -> dict[str, Any]:
        """The immunization_event columns one order group fills (detail as JSON text)."""
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
            "detail": dumps({name: getattr(v, name) for name in EVENT_DETAIL}),
        }

    def plan(self, vxu: domain.Vxu, bounds: tuple[int, bool] | None = None) -> VxuPlan:
        """The message's rows, after engine.store.screen emptied or refused what no column
        of either backend can hold (its findings travel in the plan). `bounds`: the raw
        payload's `screen.raw_bounds`, which lets a plainly fine message skip the walk."""
        screened = self.screen.check(vxu, bounds)
        vxu = screened.vxu
        patient = vxu.patient
        legal = patient.legal_name
        family, given = normalise(legal.family), normalise(legal.given)
        values: dict[str, Any] = {a: getattr(patient, a) for a in _PATIENT_ATTRS}
        values.update(family_norm=family, given_norm=given)

        def rows(items: Sequence[Any], role: str | None) -> tuple[dict[str, Any], ...]:
            extra = {"role": role} if role else {}
            return tuple(dict(_flat(item), position=i, **extra) for i, item in enumerate(items))

        details: list[tuple[str, str, tuple[dict[str, Any], ...]]] = []
        for table, role, items in (
                ("patient_name", "patient", patient.names),
                ("patient_name", "mother_maiden", patient.mother_maiden_names),
                ("patient_address", "", patient.addresses),
                ("patient_phone", "", patient.phones),
                ("patient_code", "race", patient.races),
                ("patient_code", "ethnicity", patient.ethnicities)):
            if items:
                details.append((table, role, rows(items, role or None)))
        by_table: dict[str, tuple[dict[str, Any], ...]] = {}
        for table, _role, table_rows in details:
            by_table[table] = by_table.get(table, ()) + table_rows
        settings = vxu.settings
        setting = None
        if vxu.has_pd1 and settings:
            setting = {"publicity_code": settings.publicity.code,
                       "publicity": dumps(settings.publicity),
                       "publicity_date": settings.publicity_date,
                       "protection": settings.protection,
                       "protection_date": settings.protection_date,
                       "registry_status": settings.registry_status,
                       "registry_status_date": settings.registry_status_date}
        events = []
        for v in vxu.events:
            event_values = self.event_values(v)
            observations = tuple(
                {"position": i, "code": o.code.code[:64], "value_type": o.value_type[:8],
                 "value": o.value, "value_code": o.coded_value.code[:64],
                 "sub_id": o.sub_id[:64], "observed_on": o.observed_on,
                 "detail": dumps({"code": o.code, "coded_value": o.coded_value,
                                  "units": o.units, "method": o.method, "status": o.status})}
                for i, o in enumerate(v.observations))
            pg_row, pg_obs = "", tuple[str, ...]()
            if self._pg_events is not None:
                pg_row = _open_json(event_values)
                pg_obs = tuple(_open_json(o) for o in observations)
            events.append(EventPlan(
                v, not self.is_placeholder_key(v.key), (v.key.authority[:200], v.key.id[:200]),
                event_values, self.facts(v, order=_THIS_MESSAGE), observations, pg_row,
                pg_obs))
        keys = scoped_identifiers(patient, vxu.organization, self.registry_authority)
        pg = None
        if self._pg is not None:
            pg = self._pg_params(vxu, values, keys, details)
        return VxuPlan(
            organization=vxu.organization, patient=patient, keys=keys, pg=pg,
            family=family, given=given,
            lock_key=zlib.crc32(match_key(patient).encode("utf-8")),
            patient_values=values, details=tuple(details),
            detail_rows=tuple(by_table.items()),
            responsible=tuple({"position": i, "relationship_code": p.relationship.code,
                               "detail": dumps(p)} for i, p in enumerate(
                vxu.responsible_persons)),
            setting=setting, events=tuple(events), findings=tuple(screened.issues),
            rejected=screened.rejected)

    def _pg_params(self, vxu: domain.Vxu, values: dict[str, Any],
                   keys: Sequence[ScopedIdentifier],
                   details: Sequence[tuple[str, str, tuple[dict[str, Any], ...]]]
                   ) -> dict[str, Any]:
        """Parameters of engine.store.pgwrite's statements (JSON arrays, encoded here)."""
        part_of = {"patient_name": "names", "patient_address": "addresses",
                   "patient_phone": "phones", "patient_code": "codes"}
        parts: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in pgwrite.PARTS}
        roles: dict[str, list[str]] = {"names": [], "codes": []}
        for table, role, rows in details:
            parts[part_of[table]].extend(rows)
            if role:
                roles[part_of[table]].append(role)
        parts["nk1"] = [{"position": i, "relationship_code": p.relationship.code, "detail": p}
                        for i, p in enumerate(vxu.responsible_persons)]
        settings = vxu.settings
        setting = ([{"publicity_code": settings.publicity.code, "publicity": settings.publicity,
                     "publicity_date": settings.publicity_date,
                     "protection": settings.protection,
                     "protection_date": settings.protection_date,
                     "registry_status": settings.registry_status,
                     "registry_status_date": settings.registry_status_date}]
                   if vxu.has_pd1 and settings else [])
        params: dict[str, Any] = {name: dumps(rows) for name, rows in parts.items()}
        params.update(
            {c: values[c] for c in pgwrite.PATIENT_COLUMNS},
            idents=dumps(self._ident_rows(0, keys)), setting=dumps(setting),
            names_roles=roles["names"], codes_roles=roles["codes"],
            addresses_replace=bool(parts["addresses"]), phones_replace=bool(parts["phones"]),
            nk1_replace=bool(parts["nk1"]), authority=self.registry_authority)
        return params

    # --- the message log ---

    def replay(self, tx: Tx, sender: str, control_id: str,
               plan: VxuPlan | None = None) -> tuple[str, bytes] | None:
        """The logged (digest, response) of (sender, MSH-10), if any; on PostgreSQL also
        takes `plan`'s match-key lock, which `store` then relies on."""
        conn = tx.connection
        if self._lock_and_log is not None and plan is not None:
            logged = self._lock_and_log.send(conn, {"k": plan.lock_key, "sender": sender,
                                                    "key": control_id, "n": len(plan.events)})
            tx.notes[_LOCKED] = True
            # Sent now, read by `store` (or discarded by a retransmission): one round trip.
            ahead = self._ahead(conn, plan, self._org_ids.get(plan.organization), ids=False)
            row = logged.result().first()
            assert row is not None  # the lock's row, joined with the log's (if any)
            ahead.ids = (int(row[2]), list(row[3]))
            tx.notes[_AHEAD] = ahead
        elif self._sqlite_ahead is not None and plan is not None:
            row = self._sqlite_read_ahead(tx, plan, sender, control_id)
        else:
            row = self._sel_log.execute(conn, {"sender": sender, "key": control_id}).first()
        return (row[0], bytes(row[1])) if row is not None and row[0] is not None else None

    def _sqlite_read_ahead(self, tx: Tx, plan: VxuPlan, sender: str,
                           control_id: str) -> tuple[Any, ...]:
        """SQLite: run `_sqlite_ahead`, leave its answers for `store`; the log row."""
        assert self._sqlite_ahead is not None
        org_id = self._org_ids.get(plan.organization)
        wanted = sorted({e.key for e in plan.events if e.keyed}) if org_id is not None else []
        rows = self._sqlite_ahead.execute(tx.connection, {
            "sender": sender, "key": control_id, "birth_date": plan.patient.birth_date,
            "family": plan.family, "given": plan.given, "org_id": org_id,
            "keys": dumps([[k.scope, k.authority, k.type_code, k.value]
                                for k in plan.keys]),
            "wanted": dumps(wanted)}).fetchall()
        head = rows[0]
        last_event = head[4] or 0
        tx.notes[_AHEAD] = _Ahead(
            Rows([r[1:] for r in rows if r[0] == 1]),
            Rows([r[1:6] for r in rows if r[0] == 2]) if org_id is not None else None,
            ((head[3] or 0) + 1, list(range(last_event + 1,
                                            last_event + 1 + len(plan.events)))))
        return head[1:3]

    def log(self, conn: Connection, values: dict[str, Any]) -> None:
        """Insert one message_log row (IntegrityError when (sender, replay_key) is taken)."""
        self._ins_log.execute(conn, values)

    # --- storing (the writer thread) ---

    def org_id(self, tx: Tx, code: str, now: datetime) -> int:
        """The id of an organization, enrolling it on first sight (race-safe upsert)."""
        cached = self._org_ids.get(code)
        if cached is not None:
            return cached
        conn = tx.connection
        self._ins_org.execute(conn, {"code": code, "created_at": now})
        org_id = int(self._sel_org.execute(conn, {"code": code}).scalar_one())
        # Cache only ids that will survive: a rolled-back insert must not be remembered.
        tx.after_commit(lambda: self._org_ids.__setitem__(code, org_id))
        return org_id

    def store(self, tx: Tx, plan: VxuPlan, now: datetime) -> tuple[int, int, list[Issue]]:
        """Match/create the patient and apply the order groups: (org id, patient id, issues)."""
        org_id = self.org_id(tx, plan.organization, now)
        conn = tx.connection
        ahead = tx.notes.get(_AHEAD)
        if not isinstance(ahead, _Ahead):
            if self._lock is not None and not tx.notes.get(_LOCKED):
                # Separate statement: the candidate query must take its snapshot after it.
                self._lock.execute(conn, {"k": plan.lock_key})
            ahead = self._ahead(conn, plan, org_id)
        ids = ahead.ids
        patient_id, existed = self._patient(conn, plan, ahead, ids[0] if ids else None,
                                            org_id, now)
        known = (self._known_keys(conn, plan, org_id) if ahead.keys is None
                 else self._read_keys(ahead.keys))
        issues = self._events(conn, plan, patient_id, existed, org_id, now, known,
                              list(ids[1]) if ids else [])
        return org_id, patient_id, issues

    def _ahead(self, conn: Connection, plan: VxuPlan, org_id: int | None, *,
               ids: bool = True) -> _Ahead:
        keys = self._send_keys(conn, plan, org_id) if org_id is not None else None
        ahead = _Ahead(self._send_candidates(conn, plan), keys, None)
        if ids and self._ids is not None:
            row = self._ids.execute(conn, {"n": len(plan.events)}).first()
            assert row is not None
            ahead.ids = (int(row[0]), list(row[1]))
        return ahead

    def _send_candidates(self, conn: Connection, plan: VxuPlan) -> Pending | Rows:
        keys = plan.keys
        if self.dialect == "postgresql":
            params: dict[str, Any] = {
                "k_scope": [k.scope for k in keys], "k_auth": [k.authority for k in keys],
                "k_type": [k.type_code for k in keys], "k_value": [k.value for k in keys]}
        else:
            params = {"keys": dumps([[k.scope, k.authority, k.type_code, k.value]
                                          for k in keys])}
        params.update(birth_date=plan.patient.birth_date, family=plan.family,
                      given=plan.given)
        return self._sel_candidates.send(conn, params)

    @staticmethod
    def _read_candidates(sent: Pending | Rows) -> list[Candidate]:
        found: dict[int, tuple[Any, ...]] = {}
        idents: dict[int, list[ScopedIdentifier]] = {}
        for row in sent.result():
            found.setdefault(row[0], tuple(row[:6]))
            if row[6] is not None:
                idents.setdefault(row[0], []).append(ScopedIdentifier(*row[6:10]))
        out = []
        for pid, (_, fam, giv, born, sex, order) in found.items():
            if isinstance(born, str):
                born = date.fromisoformat(born)
            out.append(Candidate(pid, fam, giv, born, sex, order, tuple(idents.get(pid, ()))))
        return out

    def _patient(self, conn: Connection, plan: VxuPlan, ahead: _Ahead, new_id: int | None,
                 org_id: int, now: datetime) -> tuple[int, bool]:
        candidates = self._read_candidates(ahead.candidates)
        wanted = set(plan.keys)
        hits = [c for c in candidates if wanted.intersection(c.identifiers)]
        decision = decide(plan.patient, plan.keys, hits, [] if hits else candidates)
        values = plan.patient_values
        if self._pg is not None and plan.pg is not None and new_id is not None:
            return self._pg_patient(conn, plan.pg, decision.patient_id, new_id, values,
                                    org_id, now)
        if decision.patient_id is None and new_id is not None:
            patient_id = new_id
            self._ins_patient_id.execute(conn, dict(values, id=new_id, created_at=now,
                                                    updated_at=now, updated_by_org_id=org_id))
        elif decision.patient_id is None:
            patient_id = int(self._ins_patient.execute(conn, dict(
                values, created_at=now, updated_at=now, updated_by_org_id=org_id)).scalar_one())
        if decision.patient_id is None:
            # Our own registry id (PID-3 type SR) is the patient's primary key. No ON
            # CONFLICT for the sender's keys: a racing transaction that claimed one makes
            # this one fail and re-run, and the re-run matches instead of duplicating.
            self._ins_ident.insert_rows(conn, [
                {"patient_id": patient_id, "scope": GLOBAL_SCOPE,
                 "authority": self.registry_authority, "type_code": "SR",
                 "value": str(patient_id), "position": -1},
                *self._ident_rows(patient_id, plan.keys)])
            existed = False
        else:
            patient_id = decision.patient_id
            changes = {f"n_{a}": (None if values[a] == "" else values[a])
                       for a in _PATIENT_ATTRS}
            names = bool(plan.patient.names)
            self._upd_patient.execute(conn, dict(
                changes, pid=patient_id, now=now, org_id=org_id,
                n_family_norm=values["family_norm"] if names else None,
                n_given_norm=values["given_norm"] if names else None))
            held = next((c.identifiers for c in candidates if c.patient_id == patient_id), ())
            new_keys = [k for k in plan.keys if k not in held]
            if new_keys:
                self._add_ident.execute_many(conn, self._ident_rows(patient_id, plan.keys))
            existed = True
        if existed:
            for table, role, _rows in plan.details:
                self._del_detail[table, role].execute(conn, {"pid": patient_id})
        for table, rows in plan.detail_rows:
            self._ins_detail[table].insert_rows(
                conn, [dict(r, patient_id=patient_id) for r in rows])
        if plan.responsible:
            if existed:
                self._del_nk1.execute(conn, {"pid": patient_id})
            self._ins_nk1.insert_rows(conn, [dict(r, patient_id=patient_id)
                                              for r in plan.responsible])
        if plan.setting is not None:
            self._upsert_setting.execute(conn, dict(plan.setting, patient_id=patient_id,
                                                    org_id=org_id, updated_at=now))
        return patient_id, existed

    def _pg_patient(self, conn: Connection, params: dict[str, Any], matched: int | None,
                    new_id: int, values: dict[str, Any], org_id: int,
                    now: datetime) -> tuple[int, bool]:
        assert self._pg is not None
        if matched is None:
            self._pg.create.execute(conn, dict(params, new_id=new_id, org_id=org_id, now=now))
            return new_id, False
        names = params["names_roles"] and "patient" in params["names_roles"]
        changes = {a: (None if values[a] == "" else values[a]) for a in _PATIENT_ATTRS}
        self._pg.update.execute(conn, dict(
            params, **changes, pid=matched, org_id=org_id, now=now,
            family_norm=values["family_norm"] if names else None,
            given_norm=values["given_norm"] if names else None))
        return matched, True

    @staticmethod
    def _ident_rows(patient_id: int, keys: Sequence[ScopedIdentifier]) -> list[dict[str, Any]]:
        return [{"patient_id": patient_id, "scope": k.scope, "authority": k.authority,
                 "type_code": k.type_code, "value": k.value, "position": i}
                for i, k in enumerate(keys) if not (k.scope == GLOBAL_SCOPE and k.type_code == "SR")]

    def _known_keys(self, conn: Connection, plan: VxuPlan,
                    org_id: int) -> dict[tuple[str, str], _Known]:
        return self._read_keys(self._send_keys(conn, plan, org_id))

    def _send_keys(self, conn: Connection, plan: VxuPlan, org_id: int) -> Pending | Rows:
        wanted = sorted({e.key for e in plan.events if e.keyed})
        if not wanted:
            return Rows([])
        if self.dialect == "postgresql":
            params: dict[str, Any] = {"org_id": org_id, "k_auth": [a for a, _ in wanted],
                                      "k_id": [i for _, i in wanted]}
        else:
            params = {"org_id": org_id, "keys": dumps(wanted)}
        return self._sel_keys.send(conn, params)

    @staticmethod
    def _read_keys(sent: Pending | Rows) -> dict[tuple[str, str], _Known]:
        return {(r[0], r[1]): _Known(r[2], r[3], r[4]) for r in sent.result()}

    def _stored_facts(self, conn: Connection, plan: VxuPlan, patient_id: int,
                      org_id: int) -> dict[int, DoseFacts]:
        """The org's active events for this patient as de-duplication candidates."""
        params = {"pid": patient_id, "org_id": org_id}
        rows = self._sel_org_events.execute(conn, params).fetchall()
        signatures: dict[int, list[str]] = {}
        if any(r[1] == domain.EventKind.OBSERVATION.value for r in rows) and any(
                e.event.kind is domain.EventKind.OBSERVATION for e in plan.events):
            for eid, code, value, value_code in self._sel_org_observations.execute(conn, params):
                signatures.setdefault(eid, []).append(f"{code}={value_code or value}")
        out = {}
        for eid, kind, cvx, source, lot, on in rows:
            if isinstance(on, str):
                on = date.fromisoformat(on)
            out[eid] = DoseFacts(eid, kind, on, self.groups_of(cvx),
                                 bool(source) and source != "00", bool(lot), 0,
                                 "|".join(sorted(signatures.get(eid, ()))))
        return out

    def _events(self, conn: Connection, plan: VxuPlan, patient_id: int, existed: bool,
                org_id: int, now: datetime, known: dict[tuple[str, str], _Known],
                new_ids: list[int]) -> list[Issue]:
        """Apply the order groups; `new_ids` are ids for new events allocated ahead
        (PostgreSQL: nextval; SQLite: after the last id, under the write lock)."""
        if not plan.events:
            return []
        candidates = self._stored_facts(conn, plan, patient_id, org_id) if existed else {}
        new_keys: list[dict[str, Any]] = []
        observations: dict[int, EventPlan] = {}
        inserted: set[int] = set()
        # PostgreSQL with ids allocated ahead: new events wait here and go in one statement
        # with the keys and OBX; anything that may touch one of them flushes them first.
        together = self._pg_events is not None and bool(new_ids)
        waiting: list[str] = []
        # SQLite with ids read ahead: new events wait likewise, for one multi-row INSERT.
        rows_waiting: list[dict[str, Any]] = []

        def flush() -> None:
            if waiting:
                self._insert_together(conn, patient_id, org_id, now, waiting, [], {})
                waiting.clear()
            if rows_waiting:
                self._ins_event_id.insert_rows(conn, rows_waiting)
                rows_waiting.clear()

        issues: list[Issue] = []
        order = _THIS_MESSAGE

        def remember(event_id: int, ep: EventPlan) -> None:
            nonlocal order
            order += 1
            candidates[event_id] = dataclasses.replace(ep.facts, event_id=event_id,
                                                       reported_order=order)
            for k in known.values():
                if k.event_id == event_id:
                    k.patient_id, k.status = patient_id, ACTIVE
            observations[event_id] = ep

        def add_key(ep: EventPlan, event_id: int) -> None:
            new_keys.append({"org_id": org_id, "authority": ep.key[0], "key_id": ep.key[1],
                             "event_id": event_id})
            known[ep.key] = _Known(event_id, patient_id, ACTIVE)

        for ep in plan.events:
            event = ep.event
            found = known.get(ep.key) if ep.keyed else None
            target = found.event_id if found else None
            if target is None and (event.action is domain.Action.ADD or not ep.keyed):
                same_day = [f for f in candidates.values() if f.kind == ep.facts.kind
                            and f.administered_on == ep.facts.administered_on]
                dupe = find_duplicate(ep.facts, same_day)
                if dupe is not None:
                    target = dupe.event_id
                    if ep.keyed:
                        add_key(ep, target)
                    if event.action is domain.Action.ADD and not takes_precedence(ep.facts,
                                                                                 dupe):
                        continue
            if event.action is domain.Action.DELETE:
                if target is None:
                    issues.append(unknown_key(event))
                    continue
                if not (found and found.status == DELETED):
                    flush()
                    self._delete_event.execute(conn, {"eid": target, "now": now})
                    candidates.pop(target, None)
                    for k in known.values():
                        if k.event_id == target:
                            k.status = DELETED
                continue
            if target is None:
                if event.action is domain.Action.UPDATE:
                    issues.append(unknown_key(event))
                    continue
                if together:
                    event_id = new_ids.pop(0)
                    waiting.append(f'{ep.pg_row},"id":{event_id}}}')
                elif new_ids:
                    event_id = new_ids.pop(0)
                    rows_waiting.append(dict(
                        ep.values, id=event_id, patient_id=patient_id, org_id=org_id,
                        status=ACTIVE, created_at=now, updated_at=now, deleted_at=None,
                        version=1))
                else:
                    event_id = int(self._ins_event.execute(conn, dict(
                        ep.values, patient_id=patient_id, org_id=org_id, status=ACTIVE,
                        created_at=now, updated_at=now, deleted_at=None,
                        version=1)).scalar_one())
                inserted.add(event_id)
                if ep.keyed:
                    add_key(ep, event_id)
                remember(event_id, ep)
                continue
            # The addendum rule: the order group is the complete record, so replace it whole.
            flush()
            self._replace_event.execute(conn, dict(ep.values, eid=target,
                                                   patient_id=patient_id, updated_at=now))
            if target not in inserted:
                self._del_obs.execute(conn, {"eid": target})
            remember(target, ep)
        if together:
            self._insert_together(conn, patient_id, org_id, now, waiting, new_keys, observations)
            return issues
        flush()
        self._ins_key.insert_rows(conn, new_keys)
        self._ins_obs.insert_rows(conn, [dict(row, event_id=eid)
                                          for eid, ep in observations.items()
                                          for row in ep.observations])
        return issues

    def _insert_together(self, conn: Connection, patient_id: int, org_id: int, now: datetime,
                         events: list[str], keys: list[dict[str, Any]],
                         observations: dict[int, EventPlan]) -> None:
        """PostgreSQL: new events, keys and OBX rows in one statement (none: no statement)."""
        assert self._pg_events is not None
        obs = [f'{row},"event_id":{eid}}}' for eid, ep in observations.items()
               for row in ep.pg_observations]
        if not (events or keys or obs):
            return
        self._pg_events.insert.execute(conn, {
            "patient_id": patient_id, "org_id": org_id, "now": now,
            "events": f"[{','.join(events)}]", "observations": f"[{','.join(obs)}]",
            "keys": dumps([{"authority": k["authority"], "key_id": k["key_id"],
                            "event_id": k["event_id"]} for k in keys])})


def unknown_key(event: domain.Vaccination) -> Issue:
    location = (Location("ORC", event.orc_sequence, 3) if event.orc_sequence
                else Location("RXA", event.rxa_sequence or 1, 21))
    action = "delete" if event.action is domain.Action.DELETE else "update"
    return UnknownKeyIdentifier(
        f"Cannot {action} this immunization: its ORC-3 is not known for the sending "
        "organization; the order group was not stored", location).to_issue()
