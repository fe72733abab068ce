"""The VXU handler: one message, all-or-nothing, the ACK only after the commit.

Flow for one VXU (see also engine.store.journal for the log rules):

1. On the pipeline thread: map the message with `mappings/vxu.yaml` (honouring validation's
   dropped segments and emptied fields) and plan its rows (`engine.store.intake`). Validation's
   `rejected`, or a patient the mapper cannot store (PID-3/5/7 missing: AE 101), stores
   nothing but the message log row. So does a value no store column can hold (too long for
   its column, or containing NUL) in a field the message cannot be stored without (AE, E 102
   at its location); in any other field such a value is left out and the ACK warns (W 102) —
   the same answer on SQLite and PostgreSQL (engine.store.screen).
2. On the store's group-commit writer (`engine.store.writer`), in this message's own
   savepoint of a batch transaction: look up (sender, MSH-10) in the log — a retransmission
   is answered from it and writes nothing (same content: the stored bytes; other content:
   AE 205) — then match or create the patient (`engine.matching`), attach scoped
   identifiers, replace NK1s, upsert this org's PD1 settings, and apply each order group:

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
3. Build the response with `respond(...)` and insert the log row with its exact bytes (unique
   sender + MSH-10: a copy committed meanwhile by another engine makes this insert fail and
   the message re-run, and the re-run answers from the log). The response is returned only
   after the batch's COMMIT: nothing is answered AA before it is durable.

Failures: a unique-key race (two engines creating the same patient) re-runs the message in
its savepoint; any other database failure of this message rolls back its savepoint and
answers AR 207 ("retry"); a batch that cannot commit answers AR 207 to every message in it.
The handler keeps working — the connection pool reconnects when the database returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter, Histogram
from sqlalchemy.exc import DataError, SQLAlchemyError

from engine.errors import ApplicationInternalError, Issue, Location, Severity
from engine.mapping import VxuMapper
from engine.observability.logging import get_logger
from engine.pipeline import Request, Respond
from engine.store.intake import IntakeStore, VxuPlan
from engine.store.journal import content_hash, duplicate_key, sender_of, utc
from engine.store.screen import INVALID_VALUE, RULE, raw_bounds
from engine.store.writer import BatchAborted, GroupCommitter, Tx

log = get_logger("engine.handlers.vxu")

VALUE_REJECTED_TEXT = ("A value is longer than the registry stores or contains a NUL byte; "
                       "nothing was stored. Correct the message before resending it")
STORE_UNAVAILABLE_TEXT = ("The registry store is unavailable; nothing was stored. Resend the "
                          "message later")


@dataclass(frozen=True, slots=True)
class StoreMetrics:
    """Store outcomes by a closed set of labels (no identifiers, no patient data)."""

    transactions: Counter
    batch_messages: Histogram

    @classmethod
    def create(cls, registry: object) -> StoreMetrics:
        return cls(
            Counter("iz_store_transactions", "VXU store transactions by outcome",
                    ["outcome"], registry=registry),  # type: ignore[arg-type]
            Histogram("iz_store_batch_messages", "Messages committed together (group commit)",
                      buckets=(1, 2, 4, 8, 16, 32, 64),
                      registry=registry))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _Outcome:
    response: bytes
    label: str  # "committed" | "replayed"


class VxuHandler:
    """`engine.pipeline.MessageHandler` for VXU^V04."""

    def __init__(self, intake: IntakeStore, writer: GroupCommitter, mapper: VxuMapper,
                 metrics: StoreMetrics, *, keep_payload: bool = True) -> None:
        self.intake = intake
        self.writer = writer
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
        plan = None
        if not rejected and mapped.vxu is not None:
            d = request.message.delimiters
            plan = self.intake.plan(mapped.vxu, raw_bounds(request.payload, d.field,
                                                           d.repetition, d.escape))
        if plan is not None and plan.findings:
            # A value no column can hold: emptied (W 102) or, when the message cannot be
            # stored without it, the whole message refused (E 102, nothing stored) — decided
            # here, so both backends answer alike (engine.store.screen).
            issues += plan.findings
            if plan.rejected:
                plan = None
        header = request.header
        sender, control_id = sender_of(header), header.control_id[:200]
        message_type = f"{header.message_type[:3]}^{header.trigger_event[:3]}"
        refused = _nul_in_header(sender, control_id, message_type)
        if refused:
            # PostgreSQL cannot hold NUL in the log's text columns: the message is refused
            # on both backends, and logged (so a resend is replayed) with NUL shown as U+FFFD.
            issues += refused
            plan = None
            sender, control_id, message_type = (
                v.replace("\x00", "\ufffd") for v in (sender, control_id, message_type))
        log_row = {
            "sender": sender, "control_id": control_id, "replay_key": control_id,
            "content_sha256": content_hash(request.payload),
            "message_type": message_type,
            "received_at": utc(request.received_at),
            "payload": request.payload if self.keep_payload else None}

        def work(tx: Tx) -> _Outcome:
            if tx.attempt:
                self.metrics.transactions.labels("retried").inc()
            return self._store(tx, plan, issues, log_row, respond)

        try:
            outcome = self.writer.submit(work)
        except DataError as exc:
            # Safety net: engine.store.screen refuses such values before the database sees
            # them; anything it misses that the database still refuses (over its column
            # length, a NUL byte) is AE for the sender to fix, not AR 207 "retry".
            self.metrics.transactions.labels("rejected_value").inc()
            log.warning("store.value_rejected", error=type(exc).__name__,
                        control_id=header.control_id[:40])
            return respond([*issues, Issue(102, Severity.ERROR, Location(), VALUE_REJECTED_TEXT,
                                           4, "store.value")], "AE")
        except (SQLAlchemyError, BatchAborted) as exc:
            self.metrics.transactions.labels("unavailable").inc()
            log.warning("store.unavailable", error=type(exc).__name__,
                        control_id=header.control_id[:40])
            return self._unavailable(respond)
        self.metrics.transactions.labels(outcome.label).inc()
        return outcome.response

    def _unavailable(self, respond: Respond) -> bytes:
        issue = ApplicationInternalError(STORE_UNAVAILABLE_TEXT).to_issue()
        return respond([Issue(issue.code, issue.severity, issue.location, issue.text,
                              issue.application_code, "StoreError")], "AR")

    # --- the unit of work (runs on the writer, inside this message's savepoint) ---

    def _store(self, tx: Tx, plan: VxuPlan | None, issues: list[Issue],
               log_row: dict[str, object], respond: Respond) -> _Outcome:
        started = time.perf_counter()
        conn = tx.connection
        stored = self.intake.replay(tx, str(log_row["sender"]), str(log_row["replay_key"]),
                                    plan)
        if stored is not None:
            digest, response = stored
            if digest != log_row["content_sha256"]:
                control_id = str(log_row["control_id"])
                response = respond([duplicate_key(control_id).to_issue()], "AE")
            return _Outcome(response, "replayed")
        now: datetime = log_row["received_at"]  # type: ignore[assignment]
        found = list(issues)
        org_id = patient_id = None
        if plan is not None:
            org_id, patient_id, problems = self.intake.store(tx, plan, now)
            found += problems
        response = respond(found, None)
        self.intake.log(conn, dict(
            log_row, org_id=org_id, patient_id=patient_id,
            processed_at=utc(datetime.now(now.tzinfo)),
            processing_ms=round((time.perf_counter() - started) * 1000, 3),
            ack_code=_msa_code(response),
            error_codes=",".join(sorted({str(i.code) for i in found}))[:400],
            response=response))
        return _Outcome(response, "committed")


def _nul_in_header(sender: str, control_id: str, message_type: str) -> list[Issue]:
    """E 102 for each MSH field the message log keys on that contains NUL."""
    found = []
    for value, fields, location in ((sender, "MSH-3/MSH-4", Location("MSH", 1, 3)),
                                    (control_id, "MSH-10", Location("MSH", 1, 10)),
                                    (message_type, "MSH-9", Location("MSH", 1, 9))):
        if "\x00" in value:
            found.append(Issue(102, Severity.ERROR, location, f"{fields} contains a NUL "
                               "character; nothing was stored. Correct the value before "
                               "resending the message", INVALID_VALUE, RULE))
    return found


def _msa_code(response: bytes) -> str:
    start = response.find(b"MSA|")
    return response[start + 4:start + 6].decode("ascii", "replace") if start >= 0 else ""
