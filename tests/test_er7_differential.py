"""Our parser agrees with python-hl7 on every real public message in ../shared/messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hl7
import pytest

from engine.hl7 import decode, parse
from tests.conftest import needs_shared, shared_messages


def _tree(container: Any, unescape: Any) -> list[list[list[str]]]:
    """python-hl7's irregular Field/Repetition/Component nesting, as our regular tree."""
    if isinstance(container, str):
        return [[[unescape(container)]]]
    reps: list[list[list[str]]] = []
    items = list(container)
    if items and all(isinstance(i, str) for i in items):  # a plain field: one rep, one comp
        return [[[unescape(i)] for i in items]] if len(items) > 1 else [[[unescape(items[0])]]]
    for rep in items:
        if isinstance(rep, str):
            reps.append([[unescape(rep)]])
            continue
        comps: list[list[str]] = []
        for comp in rep:
            if isinstance(comp, str):
                comps.append([unescape(comp)])
            else:
                comps.append([unescape(str(s)) for s in comp])
        reps.append(comps)
    return reps


@needs_shared()
@pytest.mark.parametrize("path", shared_messages(), ids=lambda p: p.name)
def test_field_values_agree_with_python_hl7(path: Path) -> None:
    """Every field of every segment has the same values (after unescaping) as python-hl7 reads."""
    text = decode(path.read_bytes())
    if not text.startswith("MSH"):  # IG fragments: bare segments, some elided as "RXA..."
        kept = [line for line in text.split("\r") if line and "..." not in line[:6]]
        text = "MSH|^~\\&|FRAGMENT\r" + "\r".join(kept)
    ours = parse(text)
    theirs = hl7.parse(text.replace("\n", "\r").strip("\r"))
    assert [s.id for s in ours] == [str(s[0]) for s in theirs]
    for seg_ours, seg_theirs in zip(ours, theirs, strict=True):
        first = 3 if seg_ours.id == "MSH" else 1
        assert seg_ours.field_count == len(seg_theirs) - 1, seg_ours.id
        for number in range(first, seg_ours.field_count + 1):
            expected = _tree(seg_theirs[number], theirs.unescape)
            assert seg_ours.field_tree(number) == expected, f"{seg_ours.id}-{number}"


@needs_shared()
def test_the_corpus_is_not_empty() -> None:
    """The differential test really runs over the public corpus."""
    assert len(shared_messages()) >= 60
