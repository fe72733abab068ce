"""Evaluation and forecast behaviours of the CDSi engine, one rule per test."""

from __future__ import annotations

from datetime import date

import pytest

from engine.forecast import (
    AdministeredDose,
    EvaluationStatus,
    ForecastResult,
    Observation,
    PatientFacts,
    SeriesStatus,
    VaccineGroupForecast,
    forecast,
)

BORN = date(2025, 1, 1)


def _run(
    doses: list[tuple[date, str]],
    assessed: date,
    born: date = BORN,
    codes: tuple[str, ...] = (),
) -> ForecastResult:
    patient = PatientFacts(born, "F", tuple(Observation(code) for code in codes))
    return forecast(patient, [AdministeredDose(d, cvx) for d, cvx in doses], assessed)


def _group(result: ForecastResult, name: str) -> VaccineGroupForecast:
    (first, *_rest) = result.forecasts_for(name)
    return first


def test_newborn_is_due_hepb_dose_one_at_birth() -> None:
    """A newborn with no history is due HepB dose 1 immediately."""
    hepb = _group(_run([], BORN), "HepB")
    assert (hepb.status, hepb.forecast_dose_number, hepb.earliest) == (
        SeriesStatus.NOT_COMPLETE,
        1,
        BORN,
    )


def test_dtap_dose_one_is_forecast_at_six_weeks_with_two_month_recommendation() -> None:
    """DTaP dose 1: earliest at 6 weeks, recommended at 2 months, past due at 3 months + 4 weeks - 1 day."""
    dtap = _group(_run([], BORN), "DTaP/Tdap/Td")
    assert (dtap.earliest, dtap.recommended, dtap.past_due) == (
        date(2025, 2, 12),
        date(2025, 3, 1),
        date(2025, 4, 28),
    )


@pytest.mark.parametrize(
    ("given", "status", "reason"),
    [
        pytest.param(date(2025, 2, 7), EvaluationStatus.NOT_VALID, "Too young", id="before 6w-4d"),
        pytest.param(date(2025, 2, 8), EvaluationStatus.VALID, "Grace period", id="at 6w-4d"),
        pytest.param(date(2025, 2, 12), EvaluationStatus.VALID, None, id="at 6 weeks"),
    ],
)
def test_dose_age_uses_absolute_minimum_with_four_day_grace(
    given: date, status: str, reason: str | None
) -> None:
    """A dose before the absolute minimum age is not valid; within the grace period it is valid."""
    result = _run([(given, "20")], date(2025, 6, 1))
    (evaluation,) = [e for e in result.evaluations if e.antigen == "Diphtheria"]
    assert evaluation.status == status
    assert (reason in evaluation.reasons) if reason else not evaluation.reasons


def test_dose_too_soon_after_previous_is_not_valid_and_resets_interval() -> None:
    """A HepB dose 2 a week after dose 1 is too soon, and the next interval counts from it."""
    result = _run([(BORN, "08"), (date(2025, 1, 8), "08")], date(2025, 3, 1))
    statuses = [e.status for e in result.evaluations if e.antigen == "HepB"]
    assert statuses == [EvaluationStatus.VALID, EvaluationStatus.NOT_VALID]
    assert _group(result, "HepB").earliest == date(2025, 2, 5)


def test_live_virus_conflict_invalidates_varicella_within_28_days_of_mmr() -> None:
    """Varicella given 10 days after MMR conflicts with it and is not valid."""
    born = date(2020, 1, 1)
    result = _run([(date(2021, 1, 5), "03"), (date(2021, 1, 15), "21")], date(2021, 3, 1), born)
    (var,) = [e for e in result.evaluations if e.antigen == "Varicella"]
    assert (var.status, var.reasons) == (EvaluationStatus.NOT_VALID, ("Live Virus Conflict",))


def test_dose_after_completed_series_is_extraneous() -> None:
    """A third HepA dose after a complete 2-dose series is extraneous."""
    born = date(2015, 1, 1)
    doses = [(date(2016, 1, 1), "83"), (date(2016, 7, 1), "83"), (date(2017, 1, 1), "83")]
    result = _run(doses, date(2018, 1, 1), born)
    statuses = [e.status for e in result.evaluations if e.antigen == "HepA"]
    assert statuses[-1] == EvaluationStatus.EXTRANEOUS
    assert _group(result, "HepA").status == SeriesStatus.COMPLETE


def test_rotavirus_ages_out_after_maximum_age() -> None:
    """A child past 8 months with no rotavirus doses has aged out of the series."""
    assert _group(_run([], date(2025, 10, 1)), "Rotavirus").status == SeriesStatus.AGED_OUT


def test_birth_before_1957_is_evidence_of_measles_immunity() -> None:
    """Born before 1957 means immune to measles, so the MMR group is Immune."""
    result = _run([], date(2025, 1, 1), date(1950, 6, 1))
    assert _group(result, "MMR").status == SeriesStatus.IMMUNE


def test_adverse_reaction_contraindicates_the_vaccine_group() -> None:
    """An adverse reaction to a vaccine component (observation 080) contraindicates DTaP."""
    result = _run([], date(2025, 4, 1), codes=("080",))
    assert _group(result, "DTaP/Tdap/Td").status == SeriesStatus.CONTRAINDICATED


def test_results_are_frozen() -> None:
    """Results are immutable values."""
    result = _run([], BORN)
    with pytest.raises(AttributeError):
        result.assessment_date = date(2000, 1, 1)  # type: ignore[misc]


def test_doses_after_assessment_date_are_ignored() -> None:
    """A dose dated after the assessment date is not part of the history being assessed."""
    result = _run([(date(2025, 6, 1), "08")], BORN)
    assert not [e for e in result.evaluations if e.antigen == "HepB"]


def test_aged_out_higher_priority_risk_series_does_not_shut_out_a_lower_one() -> None:
    """An adult at risk in a meningococcal outbreak (070) is due the priority-B 1-dose series.

    The priority-A infant series (2-23 month, Hib-MenCY-TT) are aged out, so they do not keep
    the 1-dose series from being scored (SELECTSCORE-2 compared with SELECTB-24).
    """
    result = _run([], date(2016, 8, 30), born=date(1956, 3, 7), codes=("070",))
    men = [f for f in result.forecasts_for("Meningococcal") if f.series_type == "Risk"]
    assert [(f.status, f.forecast_dose_number, f.earliest) for f in men] == [
        (SeriesStatus.NOT_COMPLETE, 1, date(1958, 3, 7))
    ]


def test_higher_priority_risk_series_in_process_wins_over_lower_priority() -> None:
    """A 74-year-old dialysis patient (032) follows the priority-A dialysis series, not the
    priority-B 60+ series, even when the 60+ series is already complete."""
    doses = [
        (date(2021, 12, 1), "43"),
        (date(2021, 12, 29), "43"),
        (date(2022, 1, 26), "43"),
        (date(2022, 5, 26), "43"),
    ]
    result = _run(doses, date(2022, 5, 26), born=date(1947, 2, 13), codes=("032",))
    hepb = [f for f in result.forecasts_for("HepB") if f.series_type == "Risk"]
    assert [(f.status, f.forecast_dose_number, f.earliest) for f in hepb] == [
        (SeriesStatus.NOT_COMPLETE, 5, date(2023, 5, 26))
    ]
