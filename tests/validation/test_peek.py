"""`validator._peek` (a field read from the segment text without splitting it) agrees with
`Segment.fields` on every field number, including absent and empty fields."""

from __future__ import annotations

from engine.hl7.er7 import Segment
from engine.validation.validator import _peek


def test_peek_matches_split_fields() -> None:
    texts = ("OBX|1|CE|64994-7^Funding^LN|1|V02^VFC^HL70064||||||F", "NK1|1", "NK1|", "NK1",
             "RXR|||", "PD1||||||||||", "OBX|||x|", "ORC|RE||x\\F\\y^EHR")
    for text in texts:
        fields = Segment(text).fields
        for n in range(1, len(fields) + 3):
            assert _peek(text, n) == (fields[n] if n < len(fields) else ""), (text, n)
