"""Ratchet on CDC's public CDSi test cases: pass counts may only go up.

The recorded counts live in ``ratchet.json`` beside this file; raise them when the engine
improves. Cases CDC is believed to get wrong are listed in ``cdc_disagreements.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.forecast.cdsi_check import format_report, run_cases

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CASES = SHARED / "cdsi" / "test-cases"
RATCHET = json.loads((Path(__file__).parent / "ratchet.json").read_text())


@pytest.mark.slow
@pytest.mark.skipif(not CASES.is_dir(), reason="../shared/cdsi is not present")
@pytest.mark.parametrize("suite", sorted(RATCHET), ids=lambda name: name.removesuffix(".json"))
def test_cdc_suite_does_not_regress(suite: str) -> None:
    """The engine passes at least the recorded number of CDC cases, overall and per part."""
    report = run_cases(CASES / suite)
    floor = RATCHET[suite]
    got = {
        "passed": report.passed,
        "evaluation": report.evaluation_passed,
        "forecast": report.forecast_passed,
    }
    assert all(got[key] >= floor[key] for key in floor), format_report(
        report, as_json=False, failures=True
    )
