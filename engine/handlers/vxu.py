"""The VXU handler: one message, one database transaction, the ACK only after commit.

Flow for one VXU (see also engine.store.journal for the log rules):

1. Map the message with `mappings/vxu.yaml` (honouring validation's dropped segments and
   emptied fields). Validation's `rejected`, or a patient the mapper cannot store (PID-3/5/7
   missing: AE 101), stores nothing but the message log row.
2. In one transaction: insert the message-log row first (unique sender + MSH-10: a concurrent
   retransmission blocks here until the first commits, then is answered from the log), match
   or create the patient (`engine.matching`), attach scoped identifiers, replace NK1s, upsert
   this org's PD1 settings, then apply each order group:

   ========  ==========================  =============================================
   RXA-21    ORC-3 known for this org    ORC-3 unknown (or a placeholder such as 9999)
   ========  ==========================  =============================================
   A/empty   replace the whole event     de-duplicate within the org (engine.dedup),
                                         else insert; the ORC-3 becomes the event's key
   U         replace the whole event     AE 204 at ORC^n^3 (placeholder: de-dup match)
   D         mark deleted (kept)         AE 204 at ORC^n^3 (placeholder: de-dup match)
   ========  ==========================  =============================================

   "Replace the whole event" is the addendum rule: an order group is the complete record
   of that event, so OBX not resent are gone. A replaced or re-added event moves to the
   patient this message is about. A VXU is not the full history: events it does not mention
   are never touched. 204 is located at ORC-3 (the key that was not found; RXA^n^21 when a
   legacy group has no ORC); the rest of the message is still stored and answered AE.
3. Build the response with `respond(...)` inside the transaction and store its exact bytes in
   the log row; commit; return those bytes. Nothing is answered AA before the commit.

Failures: a unique-key race (two engines creating the same patient) retries the whole
transaction; any other database failure rolls back everything and answers AR 207 ("retry"),
and the handler keeps working — the connection pool reconnects when the database returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from engine import dedup, domain
from engine.errors import ApplicationInternalError, Issue, Location, UnknownKeyIdentifier
from engine.mapping import MappingResult, VxuMapper
from engine.matching import decide, match_key, normalise, scoped_identifiers
from engine.observability.logging import get_logger
from engine.pipeline import Request, Respond
from engine.store.journal import content_hash, duplicate_key, sender_of, utc
from engine.store.repository import DELETED, Repository

log = get_logger("engine.handlers.vxu")

STORE_UNAVAILABLE_TEXT = ("The registry store is unavailable; nothing was stored. Resend the "
                          "message later")
MAX_ATTEMPTS = 4


class _LogConflict(Exception):
    """The (sender, MSH-10) row exists: another copy of this message got there first."""


@dataclass(frozen=True, slots=True)
class StoreMetrics:
    """Store outcomes by a closed set of labels (no identifiers, no patient data)."""

    transactions: Counter

    @classmethod
    def create(cls, registry: object) -> StoreMetrics:
        return cls(Counter("iz_store_transactions", "VXU store transactions by outcome",
                           ["outcome"], registry=registry))  # type: ignore[arg-type]


class VxuHandler:
    """`engine.pipeline.MessageHandler` for VXU^V04."""

    def __init__(self, repository: Repository, mapper: VxuMapper, metrics: StoreMetrics, *,
                 keep_payload: bool = True) -> None:
        self.repository = repository
        self.mapper = mapper
        self.metrics = metrics
        self.keep_payload = keep_payload

    def handle(self, request: Request, respond: Respond) -> bytes:
        validation = request.validation
        mapped = self.mapper.map(request.message,
                                 validation.dropped_segments if validation else frozenset(),
                                 validation.emptied_fields if validation else frozenset())
        issues = list(validation.issues) if validation else []
        seen = {(i.code, i.location) for i in issues}
        # With a validator the mapper's own findings are usually already reported; keep only
        # the ones it did not (they are why something was not stored).
        issues += [i for i in mapped.issues if (i.code, i.location) not in seen]
        rejected = bool(validation and validation.rejected) or mapped.rejected

        for _attempt in range(MAX_ATTEMPTS):
            try:
                response = self._transaction(request, respond, mapped, issues, rejected)
            except _LogConflict:
                self.metrics.transactions.labels("replayed").inc()
                return self._replay(request, respond)
            except IntegrityError:
                # A concurrent transaction created the same patient/key first; run again
                # and this time match what it committed.
                self.metrics.transactions.labels("retried").inc()
                continue
            except SQLAlchemyError as exc:
                self.metrics.transactions.labels("unavailable").inc()
                log.warning("store.unavailable", error=type(exc).__name__,
                            control_id=request.header.control_id[:40])
                return self._unavailable(respond)
            self.metrics.transactions.labels("committed").inc()
            return response
        return self._unavailable(respond)

    def _unavailable(self, respond: Respond) -> bytes:
        issue = ApplicationInternalError(STORE_UNAVAILABLE_TEXT).to_issue()
        return respond([Issue(issue.code, issue.severity, issue.location, issue.text,
                              issue.application_code, "StoreError")], "AR")

    def _replay(self, request: Request, respond: Respond) -> bytes:
        try:
            with Session(self.repository.engine) as session:
                found = self.repository.replay(session, sender_of(request.header),
                                               request.header.control_id)
        except SQLAlchemyError:
            return self._unavailable(respond)
        if found is None:  # the first copy rolled back after all: the sender should retry
            return self._unavailable(respond)
        digest, response = found
        if digest != content_hash(request.payload):
            return respond([duplicate_key(request.header.control_id).to_issue()], "AE")
        return response

    # --- the transaction ---

    def _transaction(self, request: Request, respond: Respond, mapped: MappingResult,
                     issues: list[Issue], rejected: bool) -> bytes:
        started = time.perf_counter()
        header = request.header
        now = utc(request.received_at)
        repo = self.repository
        with Session(repo.engine, expire_on_commit=False) as session:
            with session.begin():
                try:
                    with session.begin_nested():
                        log_id = repo.log_message(session, {
                            "sender": sender_of(header), "control_id": header.control_id[:200],
                            "replay_key": header.control_id[:200],
                            "content_sha256": content_hash(request.payload),
                            "message_type": f"{header.message_type[:3]}^{header.trigger_event[:3]}",
                            "received_at": now, "ack_code": "", "error_codes": "",
                            "response": b"",
                            "payload": request.payload if self.keep_payload else None})
                except IntegrityError:
                    raise _LogConflict() from None
                found = list(issues)
                org_id = patient_id = None
                if not rejected and mapped.vxu is not None:
                    vxu = mapped.vxu
                    org_id = repo.org_id(session, vxu.organization, now)
                    patient_id = self._patient(session, vxu, org_id, now)
                    for event in vxu.events:
                        problem = self._event(session, event, patient_id, org_id, now)
                        if problem is not None:
                            found.append(problem)
                response = respond(found, None)
                ack = _msa_code(response)
                repo.finish_log(session, log_id, org_id=org_id, patient_id=patient_id,
                                processed_at=utc(datetime.now(now.tzinfo)),
                                processing_ms=round((time.perf_counter() - started) * 1000, 3),
                                ack_code=ack, error_codes=",".join(
                                    sorted({str(i.code) for i in found}))[:400],
                                response=response)
            repo.remember_committed(session)
        return response

    def _patient(self, session: Session, vxu: domain.Vxu, org_id: int, now: datetime) -> int:
        repo = self.repository
        patient = vxu.patient
        keys = scoped_identifiers(patient, vxu.organization, repo.registry_authority)
        hits = repo.by_identifiers(session, keys)
        legal = patient.legal_name
        family, given = normalise(legal.family), normalise(legal.given)
        candidates = []
        if not hits:
            repo.lock_match_key(session, match_key(patient))
            candidates = repo.by_demographics(session, family, given, patient.birth_date)
        decision = decide(patient, keys, hits, candidates)
        if decision.patient_id is None:
            patient_id = repo.create_patient(session, patient, family, given, org_id, now)
            # No ON CONFLICT here: a racing transaction that claimed the same key makes this
            # one fail and retry, and the retry matches instead of creating a duplicate.
            repo.claim_identifiers(session, patient_id, keys)
        else:
            patient_id = decision.patient_id
            repo.update_patient(session, patient_id, patient, family, given, org_id, now)
            repo.add_identifiers(session, patient_id, keys)
        repo.replace_responsible(session, patient_id, vxu.responsible_persons,
                                 existing=decision.patient_id is not None)
        if vxu.has_pd1 and vxu.settings:
            repo.upsert_setting(session, patient_id, org_id, vxu.settings, now)
        return patient_id

    def _event(self, session: Session, event: domain.Vaccination, patient_id: int,
               org_id: int, now: datetime) -> Issue | None:
        repo = self.repository
        keyed = not self.mapper.is_placeholder_key(event.key)
        found = repo.event_by_key(session, org_id, event.key) if keyed else None
        target: int | None = found[0] if found else None
        if target is None and (event.action is domain.Action.ADD or not keyed):
            new = repo.facts(event, order=1 << 30)
            candidates = repo.org_event_facts(session, patient_id, org_id, event.kind.value,
                                              event.administered_on)
            dupe = dedup.find_duplicate(new, [f for f, _ in candidates])
            if dupe is not None:
                target = dupe.event_id
                if event.action is domain.Action.ADD and not dedup.takes_precedence(new, dupe):
                    if keyed:
                        repo.add_key(session, org_id, event.key, target)
                    return None
                if keyed:
                    repo.add_key(session, org_id, event.key, target)

        if event.action is domain.Action.DELETE:
            if target is None:
                return _unknown_key(event)
            if not (found and found[2] == DELETED):
                repo.delete_event(session, target, now)
            return None
        if target is None:
            if event.action is domain.Action.UPDATE:
                return _unknown_key(event)
            event_id = repo.insert_event(session, patient_id, org_id, event, now)
            if keyed:
                repo.add_key(session, org_id, event.key, event_id)
            return None
        repo.replace_event(session, target, patient_id, event, now)
        return None


def _unknown_key(event: domain.Vaccination) -> Issue:
    location = (Location("ORC", event.orc_sequence, 3) if event.orc_sequence
                else Location("RXA", event.rxa_sequence or 1, 21))
    action = "delete" if event.action is domain.Action.DELETE else "update"
    return UnknownKeyIdentifier(
        f"Cannot {action} this immunization: its ORC-3 is not known for the sending "
        "organization; the order group was not stored", location).to_issue()


def _msa_code(response: bytes) -> str:
    start = response.find(b"MSA|")
    return response[start + 4:start + 6].decode("ascii", "replace") if start >= 0 else ""
