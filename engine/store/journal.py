"""The message log as the pipeline's `Journal`: retransmission replay and AR records.

Rules (the store of record):

* A *processed* message (AA/AE, stored or not) is logged by the handler inside its own
  transaction with ``replay_key = MSH-10``; unique (sender, replay_key) makes the sender's
  control id single-use. A retransmission with the same content (SHA-256 of the segments,
  line endings normalised) gets the stored response bytes back and changes nothing; the same
  control id with other content is answered AE 205 and nothing is stored.
* A message answered *AR* did not consume its control id (the sender is expected to fix and
  resend it): it is logged with ``replay_key`` NULL, so it never blocks the resend.
* AR 207 ("store unavailable, retry") is not logged at all: the database is the thing that
  failed, and the sender's retry must be processed, not replayed.
* The sender is MSH-3 + MSH-4 as sent (the pair that owns a control-id sequence).

* Message types whose handler looks the log up itself, inside its own transaction
  (`replayed_by_handler`, VXU), are not looked up here a second time: that handler answers a
  retransmission from the log before writing anything, under the same unique constraint.
* AR rows go through the store's group-commit writer when there is one, so they share a
  commit (and, on SQLite, the single writer) with the accepted messages.

Replay lookups that fail because the database is unreachable return None: the handler then
fails the same way and answers AR 207, which is the right answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from engine.errors import DuplicateKeyIdentifier, Location
from engine.hl7.charset import Header
from engine.observability.logging import get_logger
from engine.store.db import read_only
from engine.store.repository import Repository
from engine.store.writer import BatchAborted, GroupCommitter, Tx

log = get_logger("engine.store.journal")


def sender_of(header: Header) -> str:
    return f"{header.sending_application}|{header.sending_facility}"[:400]


def content_hash(payload: bytes) -> str:
    """SHA-256 of the message with segment terminators normalised (CR, LF, CRLF all alike)."""
    lines = payload.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    return hashlib.sha256(b"\r".join(line for line in lines if line.strip())).hexdigest()


def duplicate_key(control_id: str) -> DuplicateKeyIdentifier:
    shown = control_id[:40] or "(empty)"
    return DuplicateKeyIdentifier(
        f"Message control id {shown} was already used by this sender for a different "
        "message; nothing was stored (send new content under a new MSH-10)",
        Location("MSH", 1, 10))


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


class StoreJournal:
    """`engine.pipeline.Journal` over the store's message_log table."""

    def __init__(self, repository: Repository, *, keep_payload: bool = True,
                 writer: GroupCommitter | None = None,
                 replayed_by_handler: Collection[str] = ()) -> None:
        self.repository = repository
        self.keep_payload = keep_payload
        self.writer = writer
        self.replayed_by_handler = frozenset(replayed_by_handler)

    def replay(self, header: Header, payload: bytes) -> bytes | None:
        if header.message_type in self.replayed_by_handler:
            return None
        try:
            with Session(read_only(self.repository.engine)) as session:
                found = self.repository.replay(session, sender_of(header), header.control_id)
        except SQLAlchemyError:
            log.warning("journal.replay_unavailable")
            return None
        if found is None:
            return None
        digest, response = found
        if digest != content_hash(payload):
            raise duplicate_key(header.control_id)
        return response

    def record(self, header: Header, payload: bytes, response: bytes, ack_code: str,
               codes: Sequence[str], received_at: datetime) -> None:
        if "207" in codes:
            return
        now = utc(received_at)
        row: dict[str, Any] = {
            "sender": sender_of(header), "control_id": header.control_id[:200],
            "replay_key": None, "content_sha256": content_hash(payload),
            "message_type": f"{header.message_type[:3]}^{header.trigger_event[:3]}",
            "org_id": None, "patient_id": None, "processing_ms": None,
            "received_at": now, "processed_at": utc(datetime.now(UTC)),
            "ack_code": ack_code[:8], "error_codes": ",".join(codes)[:400],
            "response": response, "payload": payload if self.keep_payload else None}
        try:
            if self.writer is not None:
                writer_log = self.repository.log_statement()

                def work(tx: Tx) -> None:
                    writer_log.execute(tx.connection, row)

                self.writer.submit(work)
                return
            with Session(self.repository.engine) as session, session.begin():
                self.repository.log_message(session, row)
        except (SQLAlchemyError, BatchAborted):
            log.warning("journal.record_unavailable", ack=ack_code)
