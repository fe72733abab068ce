"""Inputs that once made the segment shape regex backtrack exponentially are answered at once.

Runs of empty optional fields can each be matched two ways; a mismatch late in the segment
(an over-long or escaped ORC-21) used to make the fast-path regex retry every combination of
the earlier fields — minutes of CPU for one message. The fast path now matches each field on
its own (plan.SegmentPlan.fields); these inputs stay as a guard. The timeout mark is a hang
guard, not a speed target.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from engine.hl7 import decode, parse
from engine.validation import Validator

SAMPLE = Path(__file__).resolve().parents[2] / "sample_messages" / "vxu_child_dtap_new.hl7"
ORC = b"ORC|RE||SMP-IMM-0001^DE-001234"
EMPTY_RUN = b"||||||||||||||||||"


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "orc",
    [ORC + EMPTY_RUN + b"C" * 200, ORC + EMPTY_RUN + b"Clinic\\F\\X",
     ORC + b"|||||||||^Pediatric^Mary" + b"|" * 9 + b"Clinic\\F\\X"],
    ids=["over-long-orc21", "escaped-orc21", "orc12-and-escaped-orc21"],
)
def test_late_mismatch_after_empty_fields_is_answered_promptly(orc: bytes) -> None:
    """A late ORC mismatch after many empty fields is validated without runaway backtracking."""
    data = SAMPLE.read_bytes().replace(ORC, orc, 1)
    assert data != SAMPLE.read_bytes()
    result = Validator.load().validate(parse(decode(data)), date(2026, 11, 22))
    assert result.profile == "Z22"
