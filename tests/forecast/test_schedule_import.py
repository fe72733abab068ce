"""Import of CDC's supporting-data XML into the compiled schedule form."""

from __future__ import annotations

import textwrap
from datetime import date
from pathlib import Path

import pytest

from engine.forecast.dates import Offset
from engine.forecast.schedule import default_schedule, load_schedule
from engine.forecast.schedule_import import import_release

ANTIGEN_XML = """\
<antigenSupportingData>
<immunity><clinicalHistory><guidelineCode>999</guidelineCode><guidelineTitle>t</guidelineTitle></clinicalHistory></immunity>
<contraindications><vaccineGroup/><vaccine/></contraindications>
<series>
<seriesName>Demo 2-dose series</seriesName><targetDisease>Demo</targetDisease><vaccineGroup>Demo</vaccineGroup>
<seriesAdminGuidance/><seriesType>Standard</seriesType><equivalentSeriesGroups/><requiredGender/>
<selectSeries><defaultSeries>Yes</defaultSeries><productPath>No</productPath><seriesGroupName>Standard</seriesGroupName>
<seriesGroup>1</seriesGroup><seriesPriority>A</seriesPriority><seriesPreference>1</seriesPreference>
<minAgeToStart/><maxAgeToStart/></selectSeries>
<indication/>
<seriesDose><doseNumber>Dose 1</doseNumber>
<age><absMinAge>12 months - 4 days</absMinAge><minAge>12 months</minAge><earliestRecAge/><latestRecAge/>
<maxAge/><effectiveDate/><cessationDate/></age>
<interval/><allowableInterval/>
<preferableVaccine><vaccineType>Demo</vaccineType><cvx>998</cvx><beginAge/><endAge/><tradeName/><mvx/>
<volume/><forecastVaccineType>Y</forecastVaccineType></preferableVaccine>
<allowableVaccine/><inadvertentVaccine/><conditionalSkip/><recurringDose>No</recurringDose>
<seasonalRecommendation/></seriesDose>
</series>
</antigenSupportingData>
"""

SCHEDULE_XML = """\
<scheduleSupportingData>
<liveVirusConflicts/>
<vaccineGroups><vaccineGroup><name>Demo</name><administerFullVaccineGroup/></vaccineGroup></vaccineGroups>
<vaccineGroupToAntigenMap><vaccineGroupMap><name>Demo</name><antigen>Demo</antigen></vaccineGroupMap></vaccineGroupToAntigenMap>
<cvxToAntigenMap><cvxMap><cvx>998</cvx><shortDescription>demo</shortDescription>
<association><antigen>Demo</antigen><associationBeginAge/><associationEndAge/></association></cvxMap></cvxToAntigenMap>
<observations/>
</scheduleSupportingData>
"""


@pytest.fixture
def release(tmp_path: Path) -> Path:
    src = tmp_path / "supporting-data-9.99-508" / "xml"
    src.mkdir(parents=True)
    (src / "AntigenSupportingData- Demo-508.xml").write_text(textwrap.dedent(ANTIGEN_XML))
    (src / "ScheduleSupportingData.xml").write_text(SCHEDULE_XML)
    return src


def test_import_records_source_version_and_counts(release: Path, tmp_path: Path) -> None:
    """Importing a release reports what it compiled and records the release version."""
    summary = import_release(release, tmp_path / "out.json.gz")
    assert (summary.source_version, summary.antigens, summary.series) == ("9.99-508", 1, 1)
    assert load_schedule(tmp_path / "out.json.gz").source_version == "9.99-508"


def test_import_round_trips_series_dose_fields(release: Path, tmp_path: Path) -> None:
    """Ages, vaccines and flags survive the XML -> compiled -> dataclass round trip."""
    import_release(release, tmp_path / "out.json")
    schedule = load_schedule(tmp_path / "out.json")
    dose = schedule.antigen_by_name["Demo"].series[0].doses[0]
    assert dose.ages[0].abs_min_age == Offset(0, 12, -4)
    assert dose.preferable_vaccines[0].cvx == "998"
    assert dose.preferable_vaccines[0].forecast is True
    assert schedule.antigen_by_name["Demo"].immunity_codes == ("999",)


def test_import_is_reproducible(release: Path, tmp_path: Path) -> None:
    """Two imports of the same release produce byte-identical compiled files."""
    import_release(release, tmp_path / "a.json.gz")
    import_release(release, tmp_path / "b.json.gz")
    assert (tmp_path / "a.json.gz").read_bytes() == (tmp_path / "b.json.gz").read_bytes()


def test_packaged_schedule_is_release_4_64() -> None:
    """The packaged compiled schedule is CDC's 4.64 release with all 30 antigens."""
    schedule = default_schedule()
    assert schedule.source_version.startswith("4.64")
    assert len(schedule.antigens) == 30
    assert schedule.antigen_by_name["HepA"].series[0].doses[1].ages[0].effective_date is None
    assert any(
        age.cessation_date == date(2016, 12, 15) or age.effective_date is not None
        for antigen in schedule.antigens
        for series in antigen.series
        for dose in series.doses
        for age in dose.ages
    )
