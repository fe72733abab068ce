"""One message in, exactly one standard response out: accept checks, bad input, the catch-all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import Issue, Location, Severity
from engine.pipeline import Request, Respond
from tests.conftest import needs_shared, shared_messages
from tests.support import err_triples, fixed_pipeline, msa, read

GOLDEN = Path(__file__).parent / "golden"

VXU = (
    b"MSH|^~\\&|EHR|CLINIC|CAIR2|CAIR2|20240101120000-0800||VXU^V04^VXU_V04|CTL-1|P|2.5.1|||ER|AL"
    b"|||||Z22^CDCPHINVS|CLINIC|CAIR2\r"
    b"PID|1||12345^^^CLINIC^MR||TEST^ANN||20200101|F\r"
    b"ORC|RE||9999^CLINIC\r"
    b"RXA|0|1|20240101|20240101|08^HepB^CVX|0.5|mL^mL^UCUM||00^New^NIP001\r"
)


def with_msh(field: int, value: bytes) -> bytes:
    """VXU with MSH-`field` replaced."""
    lines = VXU.split(b"\r")
    parts = lines[0].split(b"|")
    parts[field - 1] = value
    lines[0] = b"|".join(parts)
    return b"\r".join(lines)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (with_msh(9, b"ADT^A01^ADT_A01"), [("MSH^1^9^1^1", "200", "E")]),
        (with_msh(9, b"VXU^V99^VXU_V04"), [("MSH^1^9^1^2", "201", "E")]),
        (with_msh(11, b"X"), [("MSH^1^11", "202", "E")]),
        (with_msh(12, b"2.3.1"), [("MSH^1^12", "203", "E")]),
        (with_msh(12, b""), [("MSH^1^12", "203", "E")]),
        (b"garbage bytes", [("MSH^1", "100", "E")]),
        (b"", [("MSH^1", "100", "E")]),
        (b"PID|1||X\r", [("MSH^1", "100", "E")]),
        (VXU.replace(b"MSH|^~\\&", b"MSH|^~\\&amp;"), [("MSH^1^2", "102", "E")]),
        (VXU.replace(b"PID|1", b"pid|1"), [("", "100", "E")]),
        (with_msh(18, b"KLINGON"), [("MSH^1^18", "102", "E")]),
        (with_msh(18, b"ASCII").replace(b"TEST", b"T\xc9ST"), [("PID^1^5", "102", "E")]),
        (VXU.replace(b"TEST", b"T\xff\xfeST"), [("PID^1^5", "102", "E")]),
    ],
    ids=["unsupported-type", "unsupported-event", "processing-id", "version", "no-version",
         "garbage", "empty", "no-msh", "html-escaped-msh", "bad-segment-id", "unknown-charset",
         "non-ascii-in-ascii", "invalid-utf8"],
)
def test_accept_level_failures_answer_ar_with_location(
        payload: bytes, expected: list[tuple[str, str, str]]) -> None:
    """Messages failing the accept checks get one ACK with AR and the 0357 code at its location."""
    response = fixed_pipeline().process(payload)
    assert msa(response)[0] == "AR"
    assert err_triples(response) == expected


def test_an_unknown_message_type_gets_an_ack_not_silence() -> None:
    """An ADT^A01 is answered ACK^A01^ACK with AR 200 and its control id in MSA-2."""
    response = fixed_pipeline().process(with_msh(9, b"ADT^A01^ADT_A01"))
    ack = read(response)
    assert ack.msh.field(9) == "ACK^A01^ACK"
    assert msa(response) == ("AR", "CTL-1")


def test_without_a_handler_nothing_is_acknowledged_as_stored() -> None:
    """A valid VXU with no VXU handler configured is answered AR 207, never AA."""
    response = fixed_pipeline().process(VXU)
    assert msa(response) == ("AR", "CTL-1")
    assert err_triples(response) == [("MSH^1^9", "207", "E")]


def test_ack_header_swaps_sender_and_receiver_and_carries_z23() -> None:
    """The ACK's MSH swaps MSH-3/4 with MSH-5/6 and MSH-22/23, stamps a zone, says NE/NE and Z23."""
    msh = read(fixed_pipeline().process(with_msh(9, b"ADT^A01"))).msh
    assert (msh.field(3), msh.field(4), msh.field(5), msh.field(6)) == (
        "CAIR2", "CAIR2", "EHR", "CLINIC")
    assert msh.field(7) == "20261122103000-0800"
    assert (msh.field(15), msh.field(16)) == ("NE", "NE")
    assert msh.field(21) == "Z23^CDCPHINVS"
    assert (msh.field(22), msh.field(23)) == ("CAIR2", "CLINIC")


class _ExplodingHandler:
    def handle(self, request: Request, respond: Respond) -> bytes:
        raise RuntimeError("secret internal detail")


def test_an_unexpected_exception_is_answered_207_without_internals() -> None:
    """A handler crash becomes AR 207 with a fixed text; the exception text never reaches the peer."""
    response = fixed_pipeline({"VXU": _ExplodingHandler()}).process(VXU)
    assert msa(response)[0] == "AR"
    assert err_triples(response) == [("", "207", "E")]
    assert b"secret" not in response


class _WarningHandler:
    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = issues

    def handle(self, request: Request, respond: Respond) -> bytes:
        return respond(self.issues, None)


_W = Issue(103, Severity.WARNING, Location("RXR", 1, 2), "site not recognised", 5, "valueset")
_I = Issue(0, Severity.INFORMATION, Location("ZZ1", 1), "segment ignored", 8, "zsegment")
_E = Issue(101, Severity.ERROR, Location("PID", 1, 5), "PID-5 is required", 7, "usage.R")


@pytest.mark.parametrize(
    ("issues", "code"),
    [([], "AA"), ([_I], "AA"), ([_W], "AE"), ([_W, _I], "AE"), ([_E, _W], "AE")],
    ids=["clean", "information-only", "warning", "warning-and-info", "error"],
)
def test_msa_follows_the_ack_policy(issues: list[Issue], code: str) -> None:
    """MSA-1 is AA when clean or informational, AE for warnings (NIST default) and errors."""
    response = fixed_pipeline({"VXU": _WarningHandler(issues)}).process(VXU)
    assert msa(response)[0] == code
    assert len(err_triples(response)) == len(issues)


def test_err_segment_renders_every_part() -> None:
    """ERR carries location, 0357 code^text^HL70357, severity, 0533 code^text^HL70533, user text."""
    response = fixed_pipeline({"VXU": _WarningHandler([_E])}).process(VXU)
    err = read(response).first("ERR")
    assert err is not None
    assert err.raw == ("ERR||PID^1^5|101^Required field missing^HL70357|E|"
                       "7^Required data missing^HL70533|||PID-5 is required")


def test_responses_are_byte_reproducible_golden() -> None:
    """With a fixed clock and id generator the ACK is byte-for-byte the golden file."""
    response = fixed_pipeline({"VXU": _WarningHandler([_W])}).process(VXU)
    assert response == (GOLDEN / "ack_warning.hl7").read_bytes()


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_any_bytes_get_exactly_one_readable_ack(payload: bytes) -> None:
    """Whatever bytes arrive, the answer is one parseable ACK with MSA-1 AR."""
    response = fixed_pipeline().process(payload)
    ack = read(response)
    assert len(ack.all("MSH")) == 1
    assert msa(response)[0] == "AR"


@needs_shared()
@pytest.mark.parametrize("path", shared_messages(), ids=lambda p: p.name)
def test_every_public_message_gets_one_wellformed_response(path: Path) -> None:
    """Each real message in ../shared/messages is answered with exactly one readable ACK."""
    response = fixed_pipeline().process(path.read_bytes())
    ack = read(response)
    assert [s.id for s in ack][:2] == ["MSH", "MSA"]
    assert ack.msh.field(21) == "Z23^CDCPHINVS"


def test_non_ascii_sender_names_are_echoed_intact() -> None:
    """A UTF-8 MSH-4 comes back in MSH-6 as the same characters, not double-encoded."""
    payload = with_msh(4, "Clínica Niño".encode()).replace(b"CTL-1", "CTL-ñ".encode())
    ack = read(fixed_pipeline().process(payload))
    assert ack.msh.field(6) == "Clínica Niño"
    msa_seg = ack.first("MSA")
    assert msa_seg is not None and msa_seg.value(2) == "CTL-ñ"


@pytest.mark.parametrize(
    ("charset", "sender", "declared"),
    [(b"8859/1", "Clínica".encode("latin-1"), "8859/1"),
     (b"ISO-8859-1", "Clínica".encode("latin-1"), "8859/1"),
     (b"ASCII", b"Clinica", "ASCII"),
     (b"UNICODE UTF-8", "Clínica".encode(), ""),
     (b"", "Clínica".encode(), "")])
def test_a_response_in_another_character_set_says_which(charset: bytes, sender: bytes,
                                                        declared: str) -> None:
    """The ACK is encoded in the request's character set, so its MSH-18 names it whenever a
    reader could not take it for UTF-8 (found by the pipeline fuzz test: a Latin-1 byte in
    MSH-3 came back undeclared, unreadable as UTF-8); an alias is answered by its table 0211
    name, and the echoed sender reads back as sent."""
    payload = with_msh(18, charset).replace(b"|EHR|", b"|" + sender + b"|")
    ack = read(fixed_pipeline().process(payload))
    assert ack.msh.field(18) == declared
    assert ack.msh.field(5).encode("latin-1" if declared else "utf-8") == sender


# -- the caches on the hot path must not change a byte ------------------------------------

def test_timestamp_follows_the_clock_across_seconds_and_zones() -> None:
    """MSH-7 is cached per second and zone: each ACK still carries its own clock reading."""
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from engine.config import IdentityConfig
    from engine.hl7.charset import peek_header
    from engine.responses import ResponseBuilder, format_ts

    west, east = timezone(timedelta(hours=-8)), timezone(timedelta(hours=5, minutes=30))
    base = datetime(2026, 3, 8, 1, 59, 59, 999_000, tzinfo=west)
    moments = [base, base + timedelta(microseconds=500), base + timedelta(milliseconds=1),
               base.astimezone(east), base + timedelta(seconds=1), base - timedelta(seconds=1),
               base, datetime(2026, 3, 8, 1, 59, 59, tzinfo=ZoneInfo("America/Los_Angeles")),
               datetime(2026, 3, 8, 3, 0, 0, tzinfo=ZoneInfo("America/Los_Angeles"))]
    clock = iter(moments)
    builder = ResponseBuilder(IdentityConfig(), clock=lambda: next(clock), ids=lambda: "ID1")
    header = peek_header(VXU)
    for moment in moments:
        assert read(builder.ack(header, []).encode()).msh.field(7) == format_ts(moment)


def test_msh_cache_keeps_each_sender_its_own_addressing() -> None:
    """Responses to different senders, interleaved, are addressed to each one."""
    a = fixed_pipeline().process(VXU)
    pipeline = fixed_pipeline()
    other = with_msh(4, b"OTHER").replace(b"|P|2.5.1|", b"|T|2.5.1|")
    first, second, third = (pipeline.process(VXU), pipeline.process(other),
                            pipeline.process(VXU))
    assert first == a
    assert read(second).msh.field(6) == "OTHER" and read(second).msh.field(11) == "T"
    assert read(third).msh.field(6) == "CLINIC" and read(third).msh.field(10) == "ACK00003"


def test_system_clock_is_local_time_with_its_zone() -> None:
    """The cached-zone clock reads the same as datetime.now().astimezone()."""
    from datetime import datetime

    from engine.responses import format_ts, system_clock

    before = datetime.now().astimezone()
    now = system_clock()
    after = datetime.now().astimezone()
    assert before <= now <= after
    assert now.utcoffset() == after.utcoffset() and now.tzname() == after.tzname()
    assert format_ts(now)[-5:] == format_ts(after)[-5:]
