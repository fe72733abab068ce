"""Fuzzing the whole core path with real messages: mutated bytes still get exactly one answer.

Hypothesis mutates real public messages (byte flips, deletions, insertions of delimiters and
control bytes, truncation) and runs them through decode → parse → accept → validation → the
validate command's dry-run VXU handler → ACK. Every input must produce one parseable ACK whose
MSA-2 echoes a control id when one was readable; nothing may raise or hang.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import DryRunVxuHandler
from engine.config import AcceptConfig
from engine.observability.metrics import Metrics
from engine.pipeline import Pipeline
from engine.validation import Validator
from tests.conftest import shared_messages
from tests.support import fixed_builder, read

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sample_messages").glob("*.hl7"))
CORPUS = [p.read_bytes() for p in (shared_messages() or SAMPLES) if b"MSH|" in p.read_bytes()]
VALIDATOR = Validator.load()
SPECIAL = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\x0b", b"\x1c", b"\x00", b"\xff",
           b"\xc3", b"MSH|", b"\\X0D\\", b"99999999999999", b""]


def _pipeline() -> Pipeline:
    return Pipeline(accept=AcceptConfig(), responses=fixed_builder(), metrics=Metrics(),
                    validator=VALIDATOR, handlers={"VXU": DryRunVxuHandler()})


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif action == "delete":
            del data[pos:pos + draw(st.integers(1, 20))]
        elif action == "insert":
            data[pos:pos] = draw(st.sampled_from(SPECIAL))
        else:
            del data[pos:]
    return bytes(data)


@pytest.mark.skipif(not CORPUS, reason="no messages to mutate")
@given(mutated())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_real_messages_always_get_one_ack(payload: bytes) -> None:
    """Any mutation of a real message is answered with exactly one readable ACK."""
    ack = read(_pipeline().process(payload))
    assert [s.id for s in ack][:2] == ["MSH", "MSA"]
    msa = ack.first("MSA")
    assert msa is not None and msa.value(1) in ("AA", "AE", "AR")
