"""Orchestrates one message from bytes to exactly one response; holds the only catch-all.

    bytes ─► header peek ─► decode (MSH-18) ─► parse ─► accept checks (MSH-9/11/12)
          ─► validation ─► handler (VXU / QBP) ─► response bytes

Every stage failure becomes `Issue`s and a response: accept-level failures answer AR; a
handler that is not configured answers AR 207 (never AA for data that was not stored); any
unexpected exception answers AR 207 with a fixed text and is logged without message content.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from engine.config import AcceptConfig, Config
from engine.errors import (
    ApplicationInternalError,
    HL7Error,
    Issue,
    Location,
    MessageParseError,
    UnsupportedEventCode,
    UnsupportedMessageType,
    UnsupportedProcessingId,
    UnsupportedVersionId,
)
from engine.hl7.charset import Header, decode, peek_header, response_codec
from engine.hl7.er7 import Message, parse
from engine.observability.logging import get_logger
from engine.observability.metrics import Metrics
from engine.responses import ResponseBuilder

if TYPE_CHECKING:
    from engine.validation import ValidationResult, Validator

log = get_logger("engine.pipeline")

INTERNAL_ERROR_TEXT = "The message could not be processed because of an internal error; resend it later"


@dataclass(frozen=True, slots=True)
class Request:
    """One accepted, parsed message on its way to a handler."""

    payload: bytes
    header: Header
    message: Message
    validation: ValidationResult | None
    received_at: datetime
    peer: str = ""


Respond = Callable[[Sequence[Issue], str | None], bytes]
"""Builds the response bytes for the request's findings (+ an explicit MSA-1, or None)."""


class Journal(Protocol):
    """The message log: retransmission replay and a record of every answered message."""

    def replay(self, header: Header, payload: bytes) -> bytes | None:
        """The stored response when (sender, MSH-10) was seen with the same content.

        Raises DuplicateKeyIdentifier (205) when the control id was used for other content.
        """
        ...

    def record(self, header: Header, payload: bytes, response: bytes, ack_code: str,
               codes: Sequence[str], received_at: datetime) -> None:
        """Log a message answered AR (accept-level, 207, no handler).

        A no-op when the handler already logged it in its own transaction; never raises
        for a message the log cannot take (the peer still gets its answer).
        """
        ...


class MessageHandler(Protocol):
    """Processes one request of its message type and returns the full response bytes.

    A handler that stores data builds the response with `respond` *inside* its transaction
    (so the message log can keep the exact bytes) and returns only after commit.
    """

    def handle(self, request: Request, respond: Respond) -> bytes: ...


def accept_issues(header: Header, accept: AcceptConfig) -> list[Issue]:
    """Accept-level checks on MSH-9, MSH-11 and MSH-12 (IG 3.3.1: answered AR)."""
    types = {t.split("^")[0] for t in accept.message_types}
    full = f"{header.message_type}^{header.trigger_event}"
    if header.message_type not in types:
        shown = header.message_type[:10] or "(empty)"
        return [UnsupportedMessageType(f"Message type {shown} is not supported",
                                       Location("MSH", 1, 9, 1, 1)).to_issue()]
    if full not in accept.message_types:
        shown = header.trigger_event[:10] or "(empty)"
        return [UnsupportedEventCode(
            f"Event {shown} is not supported for {header.message_type}",
            Location("MSH", 1, 9, 1, 2)).to_issue()]
    issues: list[Issue] = []
    if header.processing_id not in accept.processing_ids:
        shown = header.processing_id[:10] or "(empty)"
        issues.append(UnsupportedProcessingId(
            f"Processing id {shown} is not accepted here (accepted: "
            f"{', '.join(accept.processing_ids)})", Location("MSH", 1, 11)).to_issue())
    if header.version not in accept.versions:
        shown = header.version[:10] or "(empty)"
        issues.append(UnsupportedVersionId(
            f"Version {shown} is not supported; send {', '.join(accept.versions)}",
            Location("MSH", 1, 12)).to_issue())
    return issues


class Pipeline:
    """Turns one frame payload into one response payload. `process` never raises."""

    def __init__(self, *, accept: AcceptConfig, responses: ResponseBuilder, metrics: Metrics,
                 validator: Validator | None = None,
                 handlers: Mapping[str, MessageHandler] | None = None,
                 today: Callable[[], date] | None = None,
                 max_frame_bytes: int = 4 * 1024 * 1024,
                 journal: Journal | None = None) -> None:
        self.accept = accept
        self.responses = responses
        self.metrics = metrics
        self.validator = validator
        self.handlers = dict(handlers or {})
        self.journal = journal
        self._stage_hist = {stage: metrics.stage_seconds.labels(stage) for stage in
                            ("decode", "parse", "accept", "validate", "handle", "respond")}
        self._observe = {stage: hist.observe for stage, hist in self._stage_hist.items()}
        self._observe_respond = self._observe["respond"]
        # Labelled metric children, looked up once per label set (label values come from
        # closed sets, so these stay small).
        self._message_counters: dict[tuple[str, str], Callable[[], None]] = {}
        self._error_counters: dict[tuple[int, str], Callable[[], None]] = {}
        # Accept-level fast path: a header that passes every check needs no Issue building.
        self._accepted_types = frozenset(accept.message_types)
        self._type_names = frozenset(t.split("^")[0] for t in accept.message_types)
        self._processing_ids = frozenset(accept.processing_ids)
        self._versions = frozenset(accept.versions)
        self.max_frame_label = f"{max_frame_bytes} byte"
        self.today = today or (lambda: responses.clock().date())

    def _timed(self, stage: str, started: float) -> float:
        """Record a stage's latency; returns now, the next stage's start."""
        now = perf_counter()
        self._observe[stage](now - started)
        return now

    def _count_message(self, type_label: str, outcome: str) -> None:
        key = (type_label, outcome)
        inc = self._message_counters.get(key)
        if inc is None:
            inc = self._message_counters[key] = self.metrics.messages.labels(*key).inc
        inc()

    def _accept_issues(self, header: Header) -> list[Issue]:
        if (f"{header.message_type}^{header.trigger_event}" in self._accepted_types
                and header.message_type in self._type_names
                and header.processing_id in self._processing_ids
                and header.version in self._versions):
            return []
        return accept_issues(header, self.accept)

    def _encode(self, text: str, header: Header) -> bytes:
        return text.encode(response_codec(header.charset, header.component_sep),
                           errors="replace")

    def _answer(self, header: Header, issues: Sequence[Issue], ack_code: str | None) -> bytes:
        started = perf_counter()
        response = self._encode(self.responses.ack(header, issues, ack_code), header)
        self._observe_respond(perf_counter() - started)
        return response

    def process(self, payload: bytes, peer: str = "") -> bytes:
        """Exactly one response for one message; every failure is answered, never raised."""
        started = perf_counter()
        header = peek_header(payload)
        outcome = "AR"
        codes: list[str] = []
        try:
            response, outcome, codes = self._process(payload, header, peer)
        except Exception:  # the one catch-all: answer 207, never leak internals to the peer
            # The logging chain (observability.logging.scrub) keeps only the exception's type
            # and frames: its text can quote message content.
            log.exception("message.internal_error", control_id=header.control_id[:40],
                          message_type=header.message_type[:3],
                          sender=header.sending_facility[:40])
            issue = ApplicationInternalError(INTERNAL_ERROR_TEXT).to_issue()
            response = self._answer(header, [issue], "AR")
            outcome, codes = "AR", ["207"]
        self._count_message(self._type_label(header), outcome)
        log.info("message.answered", control_id=header.control_id[:40],
                 message_type=f"{header.message_type[:3]}^{header.trigger_event[:3]}",
                 sender=header.sending_facility[:40], ack=outcome, errors=codes,
                 ms=round((perf_counter() - started) * 1000, 3))
        return response

    def _type_label(self, header: Header) -> str:
        """Bounded metric label: a configured message type, or "other"."""
        full = f"{header.message_type}^{header.trigger_event}"
        return full if full in self._accepted_types else "other"

    def _count(self, issues: Sequence[Issue]) -> list[str]:
        codes = []
        counters = self._error_counters
        for issue in issues:
            code = str(issue.code)
            key = (issue.code, issue.severity.value)
            inc = counters.get(key)
            if inc is None:
                inc = counters[key] = self.metrics.errors.labels(code, key[1]).inc
            inc()
            codes.append(code)
        return codes

    def _process(self, payload: bytes, header: Header, peer: str) -> tuple[bytes, str, list[str]]:
        received_at = self.responses.clock()
        if self.journal is None:
            return self._run(payload, header, peer, received_at)
        try:
            stored = self.journal.replay(header, payload)
        except HL7Error as exc:  # 205: same control id, other content; nothing is stored
            issues = [exc.to_issue()]
            return self._answer(header, issues, "AE"), "AE", self._count(issues)
        if stored is not None:
            return stored, "replay", []
        response, code, codes = self._run(payload, header, peer, received_at)
        if code == "AR":  # accepted messages are journaled inside the handler's transaction
            try:
                self.journal.record(header, payload, response, code, codes, received_at)
            except Exception:  # the log is down too: the AR already tells the sender to retry
                log.warning("journal.unavailable", control_id=header.control_id[:40])
        return response, code, codes

    def _run(self, payload: bytes, header: Header, peer: str,
             received_at: datetime) -> tuple[bytes, str, list[str]]:
        t = perf_counter()
        try:
            text = decode(payload, header)
            t = self._timed("decode", t)
            message = parse(text)
            t = self._timed("parse", t)
        except HL7Error as exc:
            issues = [exc.to_issue()]
            return self._answer(header, issues, "AR"), "AR", self._count(issues)

        issues = self._accept_issues(header)
        t = self._timed("accept", t)
        if issues:
            return self._answer(header, issues, "AR"), "AR", self._count(issues)

        validation = None
        if self.validator is not None:
            validation = self.validator.validate(message, self.today())
            t = self._timed("validate", t)

        handler = self.handlers.get(header.message_type)
        if handler is None:
            issues = [*(validation.issues if validation else ()),
                      ApplicationInternalError(
                          f"{header.message_type} messages cannot be processed yet: the "
                          f"{header.message_type} handler is not available; nothing was stored",
                          Location("MSH", 1, 9)).to_issue()]
            return self._answer(header, issues, "AR"), "AR", self._count(issues)

        request = Request(payload, header, message, validation, received_at, peer)
        # Each `respond` call is remembered by the bytes it built: a handler may call it more
        # than once (a group-commit batch re-runs its messages), and only the answer actually
        # returned is counted. An answer `respond` never built is a stored one being replayed.
        built: list[tuple[bytes, str, list[Issue]]] = []

        def respond(found: Sequence[Issue], ack_code: str | None) -> bytes:
            applied = self.responses.policy.apply(found)
            code = ack_code or self.responses.policy.ack_code(applied)
            answer = self._answer(header, applied, code)
            built.append((answer, code, applied))
            return answer

        response = handler.handle(request, respond)
        self._timed("handle", t)
        for answer, code, applied in reversed(built):
            if answer is response:
                return response, code, self._count(applied)
        return response, "replay", []

    def reject_oversize(self, head: bytes, size: int) -> bytes | None:
        """AR for a frame over the size limit, when its MSH can still be read."""
        header = peek_header(head)
        if not header.readable:
            return None
        issue = MessageParseError(
            f"Message of {size} bytes exceeds the {self.max_frame_label} limit and was not "
            "processed", Location("MSH", 1), code=102).to_issue()
        self._count_message(self._type_label(header), "AR")
        return self._answer(header, [issue], "AR")


def build_pipeline(config: Config, metrics: Metrics, responses: ResponseBuilder | None = None,
                   handlers: Mapping[str, MessageHandler] | None = None,
                   validator: Validator | None = None,
                   journal: Journal | None = None) -> Pipeline:
    """The pipeline for a configuration (the CLI's `serve` and `validate` use this)."""
    return Pipeline(accept=config.accept,
                    responses=responses or ResponseBuilder(config.identity),
                    metrics=metrics, validator=validator, handlers=handlers,
                    max_frame_bytes=config.server.max_frame_bytes, journal=journal)
