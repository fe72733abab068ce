"""No patient data in logs or metric labels, ever: names, birth dates, addresses, phones, raw text."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from engine.observability import logging as obs_logging
from engine.pipeline import Request, Respond
from tests.support import fixed_pipeline

PHI = ["ZEBULON", "QUIXOTE", "19870412", "742 EVERGREEN", "SPRINGFIELD", "5559876", "MAIDENX"]

VXU = (
    "MSH|^~\\&|EHR|CLINIC|CAIR2|CAIR2|20240101120000-0800||VXU^V04^VXU_V04|CTL-PHI|P|2.5.1|||ER|AL"
    "|||||Z22^CDCPHINVS\r"
    "PID|1||12345^^^CLINIC^MR||QUIXOTE^ZEBULON||19870412|M|||742 EVERGREEN^^SPRINGFIELD^CA^95814"
    "||^PRN^PH^^^916^5559876|||||||||||MAIDENX\r"
    "ORC|RE||9999^CLINIC\r"
    "RXA|0|1|20240101|20240101|08^HepB^CVX|0.5|mL^mL^UCUM||00^New^NIP001\r"
).encode("ascii")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    obs_logging.configure("json", "debug", stream=stream)
    yield stream
    obs_logging.configure("console", "info")


class _Crash:
    def handle(self, request: Request, respond: Respond) -> bytes:
        raise ValueError(request.payload.decode())  # an exception carrying the whole message


@pytest.mark.parametrize(
    "payload",
    [VXU, VXU.replace(b"VXU^V04", b"ADT^A01"), VXU.replace(b"|2.5.1|", b"|2.3|"),
     VXU.replace(b"PID|", b"pid|"), VXU.replace(b"QUIXOTE", b"QUIX\xffOTE")],
    ids=["no-handler", "unsupported-type", "bad-version", "parse-error", "decode-error"],
)
def test_logs_and_metrics_carry_no_patient_data(log_stream: io.StringIO, payload: bytes) -> None:
    """Whatever the outcome, log lines and metric exposition contain none of the PHI values."""
    pipeline = fixed_pipeline()
    pipeline.process(payload, peer="127.0.0.1:5000")
    logged = log_stream.getvalue()
    exposed = generate_latest(pipeline.metrics.registry).decode()
    assert "CTL-PHI" in logged  # the control id is logged: the test really sees the log
    for value in PHI:
        assert value not in logged
        assert value not in exposed


def test_a_crash_carrying_the_message_does_not_leak_it_into_logs(log_stream: io.StringIO) -> None:
    """Even an exception whose text is the raw message is logged without that text."""
    fixed_pipeline({"VXU": _Crash()}).process(VXU)
    logged = log_stream.getvalue()
    assert "internal_error" in logged
    for value in PHI:
        assert value not in logged


def test_log_exception_keeps_only_the_error_type_and_frames(log_stream: io.StringIO) -> None:
    """A module calling log.exception cannot leak the exception text: only its type and frames."""
    log = obs_logging.get_logger("test")
    try:
        raise ValueError("QUIXOTE^ZEBULON born 19870412")
    except ValueError:
        log.exception("boom", control_id="C1")
    logged = log_stream.getvalue()
    assert "ValueError" in logged and "test_no_phi.py" in logged
    for value in PHI:
        assert value not in logged


def test_module_loggers_follow_a_later_configuration() -> None:
    """Loggers obtained before `configure` (module level) write where the latest one says."""
    log = obs_logging.get_logger("test.late")
    first, second = io.StringIO(), io.StringIO()
    try:
        obs_logging.configure("json", "info", stream=first)
        log.info("one", control_id="C1")
        obs_logging.configure("json", "warning", stream=second)
        log.info("two", control_id="C2")
        log.warning("three", control_id="C3")
    finally:
        obs_logging.configure("console", "info")
    assert '"event": "one"' in first.getvalue() and "three" not in first.getvalue()
    assert "two" not in second.getvalue() and '"event": "three"' in second.getvalue()


def test_console_renderer_renders_what_structlogs_renders() -> None:
    """The cheaper console columns produce byte-for-byte structlog's ConsoleRenderer output."""
    import structlog

    stock, ours = structlog.dev.ConsoleRenderer(colors=False), obs_logging.console_renderer()
    values: list[object] = ["", "x", "two words", "a=b", 'q"uote', "it's", "tab\there", "nl\n",
                            "VXU^V04", "Ñandú", 0, 1.5, None, True, [], ["101", "207"],
                            {"k": "v"}, "x" * 80]
    events: list[dict[str, object]] = []
    for i, value in enumerate(values):
        events.append({"event": value, "level": "info", "timestamp": "2026-01-01T00:00:00Z",
                       "control_id": value, "errors": [value], "ms": i})
        events.append({"event": "message.answered", "logger": value, "level": "warning",
                       "zeta": value, "alpha": value})
        events.append({"event": "message.answered" * 3, "logger_name": "engine.pipeline",
                       "level": "debug", "stack": "frames", "exception": "Traceback"})
        events.append({"event": value, "level": "custom-level", "timestamp": value})
    for event in events:
        assert ours(None, "info", dict(event)) == stock(None, "info", dict(event))
