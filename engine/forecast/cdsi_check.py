"""Runs CDC's CDSi test cases (JSON form, see ``/work/shared/cdsi/README.txt``) against the engine.

Usage: ``python -m engine.forecast.cdsi_check CASES.json [--json] [--failures]``.

How expectations are compared (documented here because the workbook leaves room):

* Evaluation: for every administered dose, the statuses the engine gives the dose for the
  antigens of the case's vaccine group are combined (all equal -> that status; otherwise
  Not Valid wins, then Valid, then Extraneous: a Tdap booster that is
  extraneous for pertussis but valid for tetanus and diphtheria is a valid DTaP/Tdap/Td dose). The status must equal the expected status
  (case-insensitive). A non-blank expected reason must be among the engine's reasons for
  the dose, after mapping CDC's labels ("Age: Too Young" -> "Too young", ...). A blank
  expected reason is not compared.
* Forecast: the series status must match (case-insensitive). When CDC expects a further dose
  ("Not complete"), the forecast dose number and the earliest, recommended and past-due dates
  must all match exactly; a blank expected past-due date means "no past-due date". When CDC
  expects no further dose, dose number and dates are blank/"-" in the workbook and are not
  compared.
* When a vaccine group has several vaccine group forecasts (risk and standard best series in
  non-equivalent series groups, or several standard series groups such as childhood and 50+
  pneumococcal), the one compared is chosen without looking at the expectation: an "Aged
  Out" forecast is set aside when another forecast of the group is not Aged Out (it only says
  that one path is closed); then risk forecasts supersede standard ones (the patient's
  condition drives the recommendation); among the rest, a "Not Complete" forecast with the
  earliest earliest date, otherwise the most conclusive status (Complete before Immune,
  Contraindicated, ..., Aged Out).
* A case passes only when its evaluation and its forecast both pass.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from engine.forecast.forecast import forecast
from engine.forecast.model import (
    AdministeredDose,
    EvaluationStatus,
    ForecastResult,
    Observation,
    PatientFacts,
    SeriesStatus,
    VaccineGroupForecast,
)
from engine.forecast.schedule import Schedule, default_schedule

__all__ = ["CaseResult", "CheckReport", "format_report", "main", "run_case", "run_cases"]

# CDC test-case vaccine group labels -> supporting-data vaccine group names.
GROUP_ALIASES: Mapping[str, str] = {
    "DTAP": "DTaP/Tdap/Td",
    "POL": "Polio",
    "IPOL": "Polio",
    "HIB": "Hib",
    "PCV": "Pneumococcal",
    "VAR": "Varicella",
    "ROTA": "Rotavirus",
    "MCV": "Meningococcal",
    "MENB": "Meningococcal B",
    "FLU": "Influenza",
    "YELLOW FEVER": "Yellow Fever",
}

REASON_ALIASES: Mapping[str, str] = {
    "age: too young": "too young",
    "age: too old": "too old",
    "interval: too soon": "too soon",
    "interval too soon": "too soon",
    "inadvertent vaccine": "inadvertent administration",
    "live virus conflict": "live virus conflict",
    "series already complete": "series already complete",
    "not a preferable or allowable vaccine": "not a preferable or allowable vaccine",
}


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one CDC test case."""

    case_id: str
    vaccine_group: str
    evaluation_ok: bool
    forecast_ok: bool
    details: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.evaluation_ok and self.forecast_ok


@dataclass(frozen=True)
class CheckReport:
    """Pass counts for a test-case file."""

    source: str
    results: tuple[CaseResult, ...] = field(default=())

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def evaluation_passed(self) -> int:
        return sum(1 for r in self.results if r.evaluation_ok)

    @property
    def forecast_passed(self) -> int:
        return sum(1 for r in self.results if r.forecast_ok)

    def by_group(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for r in self.results:
            row = table.setdefault(
                r.vaccine_group, {"total": 0, "passed": 0, "evaluation": 0, "forecast": 0}
            )
            row["total"] += 1
            row["passed"] += int(r.passed)
            row["evaluation"] += int(r.evaluation_ok)
            row["forecast"] += int(r.forecast_ok)
        return dict(sorted(table.items()))


def _date(text: str) -> date | None:
    return date.fromisoformat(text) if text and text != "-" else None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _group_name(label: str, schedule: Schedule) -> str:
    alias = GROUP_ALIASES.get(label.upper())
    if alias:
        return alias
    for group in schedule.vaccine_groups:
        if _norm(group.name) == _norm(label):
            return group.name
    return label


def _combined_status(statuses: Sequence[str]) -> str:
    if not statuses:
        return ""
    if len(set(statuses)) == 1:
        return statuses[0]
    for status in (EvaluationStatus.NOT_VALID, EvaluationStatus.VALID):
        if status in statuses:
            return status
    return statuses[0]


def _pick_forecast(forecasts: Sequence[VaccineGroupForecast]) -> VaccineGroupForecast | None:
    if not forecasts:
        return None
    # An Aged Out forecast says only that one path can no longer be followed; when another
    # forecast of the group still says something about the patient, that one is shown (the
    # rule the engine applies between series groups of the same type, extended across types).
    live = [f for f in forecasts if f.status != SeriesStatus.AGED_OUT]
    forecasts = live or forecasts
    risk = [f for f in forecasts if f.series_type == "Risk"]
    forecasts = risk or forecasts
    open_ = [f for f in forecasts if f.earliest is not None]
    if open_:
        return min(open_, key=lambda f: (f.earliest or date.max, f.series_type != "Risk"))
    rank = ["Complete", "Immune", "Contraindicated", "Not Recommended", "Aged Out"]
    return min(
        forecasts,
        key=lambda f: (f.series_type != "Risk", rank.index(f.status) if f.status in rank else 9),
    )


def run_case(case: Mapping[str, Any], schedule: Schedule) -> CaseResult:
    """Run one test case and compare it with CDC's expectations."""
    patient = PatientFacts(
        birth_date=date.fromisoformat(case["dob"]),
        gender=(case.get("gender") or "U")[:1].upper(),
        observations=tuple(
            Observation(o["code"], _date(o.get("date", ""))) for o in case.get("observations", [])
        ),
    )
    doses = [
        AdministeredDose(
            date_administered=date.fromisoformat(d["date_administered"]),
            cvx=str(d["cvx"]),
            mvx=d.get("mvx", "") or "",
            dose_id=str(d.get("dose", i + 1)),
        )
        for i, d in enumerate(case["doses"])
    ]
    assessment = date.fromisoformat(case["assessment_date"])
    result = forecast(patient, doses, assessment, schedule)
    group = _group_name(case["vaccine_group"], schedule)
    eval_details = _check_evaluation(case, result, group, schedule)
    forecast_details = _check_forecast(case, result, group)
    return CaseResult(
        case_id=case["id"],
        vaccine_group=case["vaccine_group"],
        evaluation_ok=not eval_details,
        forecast_ok=not forecast_details,
        details=tuple(eval_details + forecast_details),
    )


def _check_evaluation(
    case: Mapping[str, Any], result: ForecastResult, group: str, schedule: Schedule
) -> list[str]:
    antigens = (
        set(schedule.group_by_name[group].antigens) if group in schedule.group_by_name else set()
    )
    problems: list[str] = []
    for i, dose in enumerate(case["doses"]):
        expected = dose.get("expected_evaluation_status", "")
        if not expected:
            continue
        evals = [e for e in result.evaluations_for_dose(i) if e.antigen in antigens]
        if not evals:
            # A dose of another vaccine group (e.g. varicella in an MMR live-virus case) is
            # judged by its own antigens.
            evals = list(result.evaluations_for_dose(i))
        status = _combined_status([e.status for e in evals])
        reasons = {_norm(r) for e in evals for r in e.reasons}
        if _norm(status) != _norm(expected):
            problems.append(
                f"dose {i + 1} ({dose['cvx']} {dose['date_administered']}): status {status or '-'}"
                f" {sorted(reasons)} expected {expected} {dose.get('expected_evaluation_reason', '')}"
            )
            continue
        want = _norm(dose.get("expected_evaluation_reason", ""))
        if want and REASON_ALIASES.get(want, want) not in reasons:
            problems.append(
                f"dose {i + 1}: reasons {sorted(reasons)} expected {dose['expected_evaluation_reason']}"
            )
    return problems


def _check_forecast(case: Mapping[str, Any], result: ForecastResult, group: str) -> list[str]:
    expected = case["expected"]
    chosen = _pick_forecast(result.forecasts_for(group))
    status = chosen.status if chosen else ""
    problems: list[str] = []
    if _norm(status) != _norm(expected["series_status"]):
        problems.append(f"status {status or '-'} expected {expected['series_status']}")
        return problems
    if _norm(expected["series_status"]) != "not complete" or chosen is None:
        return problems
    number = str(chosen.forecast_dose_number or "")
    if (
        expected["forecast_dose_number"] not in ("", "-")
        and number != expected["forecast_dose_number"]
    ):
        problems.append(f"dose number {number} expected {expected['forecast_dose_number']}")
    for label, got in (
        ("earliest_date", chosen.earliest),
        ("recommended_date", chosen.recommended),
        ("past_due_date", chosen.past_due),
    ):
        want = _date(expected.get(label, ""))
        if got != want:
            problems.append(f"{label} {got} expected {want}")
    return problems


def run_cases(path: Path, schedule: Schedule | None = None) -> CheckReport:
    """Run every case of a CDC test-case JSON file."""
    sched = schedule if schedule is not None else default_schedule()
    cases = json.loads(path.read_text(encoding="utf-8"))
    return CheckReport(source=str(path), results=tuple(run_case(c, sched) for c in cases))


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def format_report(report: CheckReport, as_json: bool, failures: bool = False) -> str:
    """Human-readable or JSON summary of a report."""
    groups = report.by_group()
    if as_json:
        payload: dict[str, Any] = {
            "source": report.source,
            "passed": report.passed,
            "total": report.total,
            "evaluation_passed": report.evaluation_passed,
            "forecast_passed": report.forecast_passed,
            "groups": groups,
        }
        if failures:
            payload["failures"] = {
                r.case_id: list(r.details) for r in report.results if not r.passed
            }
        return json.dumps(payload, indent=2, sort_keys=True)
    lines = [
        f"{report.source}",
        f"passed {report.passed}/{report.total} ({_pct(report.passed, report.total)})"
        f"  evaluation {report.evaluation_passed}/{report.total}"
        f"  forecast {report.forecast_passed}/{report.total}",
        f"{'group':<24}{'passed':>10}{'evaluation':>12}{'forecast':>10}",
    ]
    for name, row in groups.items():
        lines.append(
            f"{name:<24}{row['passed']:>5}/{row['total']:<4}{row['evaluation']:>8}/{row['total']:<4}"
            f"{row['forecast']:>6}/{row['total']:<4}"
        )
    if failures:
        for r in report.results:
            if not r.passed:
                lines.append(f"FAIL {r.case_id} [{r.vaccine_group}] " + " | ".join(r.details))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [a for a in args if not a.startswith("--")]
    if len(paths) != 1:
        print(
            "usage: python -m engine.forecast.cdsi_check CASES.json [--json] [--failures]",
            file=sys.stderr,
        )
        return 2
    report = run_cases(Path(paths[0]))
    print(format_report(report, as_json="--json" in args, failures="--failures" in args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
