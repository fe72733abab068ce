"""Public value types of the forecasting engine: its inputs and results.

All are frozen dataclasses so that results can be cached, shared across threads and
compared in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

__all__ = [
    "AdministeredDose",
    "AntigenForecast",
    "DoseEvaluation",
    "EvaluationStatus",
    "ForecastResult",
    "Observation",
    "PatientFacts",
    "SeriesStatus",
    "VaccineGroupForecast",
]


class EvaluationStatus:
    """Evaluation statuses of table 3-1."""

    VALID = "Valid"
    NOT_VALID = "Not Valid"
    EXTRANEOUS = "Extraneous"
    SUBSTANDARD = "Sub-standard"


class SeriesStatus:
    """Patient series / vaccine group statuses of table 3-3."""

    NOT_COMPLETE = "Not Complete"
    COMPLETE = "Complete"
    IMMUNE = "Immune"
    CONTRAINDICATED = "Contraindicated"
    AGED_OUT = "Aged Out"
    NOT_RECOMMENDED = "Not Recommended"


@dataclass(frozen=True)
class Observation:
    """A coded CDSi observation (e.g. ``"160"``), optionally with the date it was observed."""

    code: str
    observed_on: date | None = None


@dataclass(frozen=True)
class PatientFacts:
    """What the engine needs to know about the patient."""

    birth_date: date
    gender: str = "U"
    observations: tuple[Observation, ...] = ()

    @staticmethod
    def with_codes(birth_date: date, gender: str, codes: Sequence[str]) -> PatientFacts:
        """Convenience constructor from bare observation codes."""
        return PatientFacts(birth_date, gender, tuple(Observation(code) for code in codes))


@dataclass(frozen=True)
class AdministeredDose:
    """One vaccine dose administered. ``substandard`` marks a known dose condition (6.1)."""

    date_administered: date
    cvx: str
    mvx: str = ""
    dose_id: str = ""
    substandard: bool = False


@dataclass(frozen=True)
class DoseEvaluation:
    """The evaluation of one administered dose for one antigen in its best patient series."""

    dose_index: int
    dose_id: str
    date_administered: date
    cvx: str
    antigen: str
    series_name: str
    status: str
    reasons: tuple[str, ...] = ()
    target_dose_number: int | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class AntigenForecast:
    """The forecast made from one best patient series of an antigen."""

    antigen: str
    series_name: str
    series_type: str
    status: str
    forecast_dose_number: int | None = None
    earliest: date | None = None
    recommended: date | None = None
    past_due: date | None = None
    latest: date | None = None
    recommended_cvx: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class VaccineGroupForecast:
    """A vaccine group forecast (chapter 9); ``series_type`` separates risk from standard."""

    vaccine_group: str
    series_type: str
    status: str
    forecast_dose_number: int | None = None
    earliest: date | None = None
    recommended: date | None = None
    past_due: date | None = None
    latest: date | None = None
    recommended_cvx: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    antigens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForecastResult:
    """Evaluations and forecasts for one patient at one assessment date."""

    assessment_date: date
    evaluations: tuple[DoseEvaluation, ...] = ()
    antigen_forecasts: tuple[AntigenForecast, ...] = ()
    vaccine_group_forecasts: tuple[VaccineGroupForecast, ...] = field(default=())

    def forecasts_for(self, vaccine_group: str) -> tuple[VaccineGroupForecast, ...]:
        """The vaccine group forecasts of one vaccine group (risk and/or standard)."""
        return tuple(f for f in self.vaccine_group_forecasts if f.vaccine_group == vaccine_group)

    def evaluations_for_dose(self, dose_index: int) -> tuple[DoseEvaluation, ...]:
        """Every antigen evaluation of the administered dose at ``dose_index``."""
        return tuple(e for e in self.evaluations if e.dose_index == dose_index)
