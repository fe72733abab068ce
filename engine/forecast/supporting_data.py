"""Parser of CDC's CDSi supporting-data XML release into :class:`~engine.forecast.schedule.Schedule`.

Owns the mapping from CDC's XML vocabulary (``AntigenSupportingData- <Antigen>-508.xml`` and
``ScheduleSupportingData.xml``) to the engine's dataclasses, including the normalisation of
CDC's spelling variants (``Yes``/``Y``, ``Vaccine Count By Age``...).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from engine.forecast.dates import parse_offset, parse_xml_date
from engine.forecast.schedule import (
    AgeRule,
    AllowableInterval,
    Antigen,
    AntigenSeries,
    BirthDateImmunity,
    Condition,
    ConditionalSkip,
    ConditionSet,
    ContraindicatedVaccine,
    Contraindication,
    CvxAntigen,
    CvxMapping,
    Indication,
    Interval,
    LiveVirusConflict,
    ObservationDef,
    Schedule,
    SeriesDose,
    VaccineGroup,
    VaccineRule,
)

__all__ = ["antigen_files", "parse_antigen", "parse_release", "parse_schedule_file"]


def _text(elem: ET.Element | None, tag: str) -> str:
    if elem is None:
        return ""
    child = elem.find(tag)
    if child is None or child.text is None:
        return ""
    value = child.text.strip()
    return "" if value.lower() == "n/a" else value


def _flag(value: str) -> bool:
    return value.strip().lower() in {"y", "yes", "true"}


def _codes(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in re.split(r"[;,]", value) if part.strip())


def _int_or_none(value: str) -> int | None:
    digits = re.sub(r"\D", "", value)
    return int(digits) if digits else None


def _age(elem: ET.Element) -> AgeRule:
    return AgeRule(
        abs_min_age=parse_offset(_text(elem, "absMinAge")),
        min_age=parse_offset(_text(elem, "minAge")),
        earliest_rec_age=parse_offset(_text(elem, "earliestRecAge")),
        latest_rec_age=parse_offset(_text(elem, "latestRecAge")),
        max_age=parse_offset(_text(elem, "maxAge")),
        effective_date=parse_xml_date(_text(elem, "effectiveDate")),
        cessation_date=parse_xml_date(_text(elem, "cessationDate")),
    )


def _has_content(elem: ET.Element) -> bool:
    return any((child.text or "").strip() or len(child) for child in elem)


def _interval(elem: ET.Element) -> Interval:
    obs = elem.find("fromRelevantObs")
    return Interval(
        from_previous=_flag(_text(elem, "fromPrevious")),
        from_target_dose=_int_or_none(_text(elem, "fromTargetDose")),
        from_most_recent=_codes(_text(elem, "fromMostRecent")),
        from_relevant_obs=_text(obs, "code") or None,
        abs_min_int=parse_offset(_text(elem, "absMinInt")),
        min_int=parse_offset(_text(elem, "minInt")),
        earliest_rec_int=parse_offset(_text(elem, "earliestRecInt")),
        latest_rec_int=parse_offset(_text(elem, "latestRecInt")),
        # CDC encodes the spec's "interval priority flag = Y" as the word "override".
        priority=_text(elem, "intervalPriority").lower() in {"override", "y", "yes"},
        effective_date=parse_xml_date(_text(elem, "effectiveDate")),
        cessation_date=parse_xml_date(_text(elem, "cessationDate")),
    )


def _allowable_interval(elem: ET.Element) -> AllowableInterval:
    return AllowableInterval(
        from_previous=_flag(_text(elem, "fromPrevious")),
        from_target_dose=_int_or_none(_text(elem, "fromTargetDose")),
        abs_min_int=parse_offset(_text(elem, "absMinInt")),
        effective_date=parse_xml_date(_text(elem, "effectiveDate")),
        cessation_date=parse_xml_date(_text(elem, "cessationDate")),
    )


def _vaccine(elem: ET.Element) -> VaccineRule:
    return VaccineRule(
        cvx=_text(elem, "cvx"),
        vaccine_type=_text(elem, "vaccineType"),
        begin_age=parse_offset(_text(elem, "beginAge")),
        end_age=parse_offset(_text(elem, "endAge")),
        trade_name=_text(elem, "tradeName"),
        mvx=_text(elem, "mvx"),
        volume=_text(elem, "volume"),
        forecast=_flag(_text(elem, "forecastVaccineType")),
    )


def _condition(elem: ET.Element) -> Condition:
    return Condition(
        condition_type=" ".join(_text(elem, "conditionType").lower().split()),
        condition_id=_text(elem, "conditionID"),
        start_date=parse_xml_date(_text(elem, "startDate")),
        end_date=parse_xml_date(_text(elem, "endDate")),
        begin_age=parse_offset(_text(elem, "beginAge")),
        end_age=parse_offset(_text(elem, "endAge")),
        interval=parse_offset(_text(elem, "interval")),
        dose_count=_int_or_none(_text(elem, "doseCount")),
        dose_type=_text(elem, "doseType").lower(),
        dose_count_logic=_text(elem, "doseCountLogic").lower(),
        vaccine_types=_codes(_text(elem, "vaccineTypes")),
        series_groups=_codes(_text(elem, "seriesGroups")),
    )


def _conditional_skip(elem: ET.Element) -> ConditionalSkip | None:
    context = _text(elem, "context")
    if not context:
        return None
    sets = tuple(
        ConditionSet(
            set_id=_text(set_elem, "setID"),
            description=_text(set_elem, "setDescription"),
            condition_logic=(_text(set_elem, "conditionLogic") or "AND").upper(),
            effective_date=parse_xml_date(_text(set_elem, "effectiveDate")),
            cessation_date=parse_xml_date(_text(set_elem, "cessationDate")),
            conditions=tuple(_condition(c) for c in set_elem.findall("condition")),
        )
        for set_elem in elem.findall("set")
    )
    return ConditionalSkip(
        context=context.lower(), set_logic=(_text(elem, "setLogic") or "OR").upper(), sets=sets
    )


def _series_dose(elem: ET.Element) -> SeriesDose:
    season = elem.find("seasonalRecommendation")
    skips = [_conditional_skip(e) for e in elem.findall("conditionalSkip")]
    return SeriesDose(
        dose_number=_int_or_none(_text(elem, "doseNumber")) or 0,
        ages=tuple(_age(e) for e in elem.findall("age") if _has_content(e)),
        intervals=tuple(_interval(e) for e in elem.findall("interval") if _has_content(e)),
        allowable_intervals=tuple(
            _allowable_interval(e) for e in elem.findall("allowableInterval") if _has_content(e)
        ),
        preferable_vaccines=tuple(
            _vaccine(e) for e in elem.findall("preferableVaccine") if _text(e, "cvx")
        ),
        allowable_vaccines=tuple(
            _vaccine(e) for e in elem.findall("allowableVaccine") if _text(e, "cvx")
        ),
        inadvertent_vaccines=tuple(
            _vaccine(e) for e in elem.findall("inadvertentVaccine") if _text(e, "cvx")
        ),
        conditional_skips=tuple(skip for skip in skips if skip is not None),
        recurring=_flag(_text(elem, "recurringDose")),
        season_start=parse_xml_date(_text(season, "startDate")),
        season_end=parse_xml_date(_text(season, "endDate")),
    )


def _indications(elems: Iterable[ET.Element]) -> tuple[Indication, ...]:
    out: list[Indication] = []
    for elem in elems:
        code = _text(elem.find("observationCode"), "code")
        if not code:
            continue
        out.append(
            Indication(
                observation_code=code,
                description=_text(elem, "description"),
                begin_age=parse_offset(_text(elem, "beginAge")),
                end_age=parse_offset(_text(elem, "endAge")),
                guidance=_text(elem, "guidance"),
            )
        )
    return tuple(out)


def _series(elem: ET.Element) -> AntigenSeries:
    select = elem.find("selectSeries")
    genders = tuple(
        (g.text or "").strip() for g in elem.findall("requiredGender") if (g.text or "").strip()
    )
    guidance = tuple(
        (g.text or "").strip()
        for g in elem.findall("seriesAdminGuidance")
        if (g.text or "").strip()
    )
    return AntigenSeries(
        name=_text(elem, "seriesName"),
        target_disease=_text(elem, "targetDisease"),
        vaccine_group=_text(elem, "vaccineGroup"),
        series_type=_text(elem, "seriesType"),
        equivalent_series_groups=_codes(_text(elem, "equivalentSeriesGroups")),
        required_genders=genders,
        default_series=_flag(_text(select, "defaultSeries")),
        product_path=_flag(_text(select, "productPath")),
        series_group_name=_text(select, "seriesGroupName"),
        series_group=_text(select, "seriesGroup"),
        priority=_text(select, "seriesPriority") or "A",
        preference=_int_or_none(_text(select, "seriesPreference")) or 1,
        min_age_to_start=parse_offset(_text(select, "minAgeToStart")),
        max_age_to_start=parse_offset(_text(select, "maxAgeToStart")),
        admin_guidance=guidance,
        indications=_indications(elem.findall("indication")),
        doses=tuple(_series_dose(e) for e in elem.findall("seriesDose")),
    )


def _contraindication(elem: ET.Element) -> Contraindication:
    return Contraindication(
        observation_code=_text(elem, "observationCode"),
        title=_text(elem, "observationTitle"),
        text=_text(elem, "contraindicationText"),
        guidance=_text(elem, "contraindicationGuidance"),
        begin_age=parse_offset(_text(elem, "beginAge")),
        end_age=parse_offset(_text(elem, "endAge")),
        vaccines=tuple(
            ContraindicatedVaccine(
                cvx=_text(v, "cvx"),
                vaccine_type=_text(v, "vaccineType"),
                begin_age=parse_offset(_text(v, "beginAge")),
                end_age=parse_offset(_text(v, "endAge")),
            )
            for v in elem.findall("contraindicatedVaccine")
        ),
    )


def parse_antigen(path: Path) -> Antigen:
    """Parse one ``AntigenSupportingData`` XML file."""
    root = ET.parse(path).getroot()
    series = tuple(_series(e) for e in root.findall("series"))
    immunity = root.find("immunity")
    codes: list[str] = []
    birth: list[BirthDateImmunity] = []
    if immunity is not None:
        codes = [
            _text(e, "guidelineCode")
            for e in immunity.findall("clinicalHistory")
            if _text(e, "guidelineCode")
        ]
        for e in immunity.findall("dateOfBirth"):
            when = parse_xml_date(_text(e, "immunityBirthDate"))
            if when is None:
                continue
            birth.append(
                BirthDateImmunity(
                    immunity_birth_date=when,
                    birth_country=_text(e, "birthCountry"),
                    exclusion_codes=tuple(
                        _text(x, "exclusionCode") for x in e.findall("exclusion")
                    ),
                )
            )
    contra = root.find("contraindications")
    antigen_level = contra.find("vaccineGroup") if contra is not None else None
    vaccine_level = contra.find("vaccine") if contra is not None else None
    name = series[0].target_disease if series else path.stem
    return Antigen(
        name=name,
        immunity_codes=tuple(codes),
        birth_date_immunity=tuple(birth),
        antigen_contraindications=tuple(
            _contraindication(e)
            for e in (
                antigen_level.findall("contraindication") if antigen_level is not None else []
            )
        ),
        vaccine_contraindications=tuple(
            _contraindication(e)
            for e in (
                vaccine_level.findall("contraindication") if vaccine_level is not None else []
            )
        ),
        series=series,
    )


def parse_schedule_file(
    path: Path,
) -> tuple[
    tuple[LiveVirusConflict, ...],
    tuple[VaccineGroup, ...],
    tuple[CvxMapping, ...],
    tuple[ObservationDef, ...],
]:
    """Parse ``ScheduleSupportingData.xml``."""
    root = ET.parse(path).getroot()
    conflicts = tuple(
        LiveVirusConflict(
            previous_cvx=_text(e.find("previous"), "cvx"),
            current_cvx=_text(e.find("current"), "cvx"),
            begin=parse_offset(_text(e, "conflictBeginInterval")),
            min_end=parse_offset(_text(e, "minConflictEndInterval")),
            end=parse_offset(_text(e, "conflictEndInterval")),
        )
        for e in root.iterfind("liveVirusConflicts/liveVirusConflict")
    )
    full = {
        _text(e, "name"): _flag(_text(e, "administerFullVaccineGroup"))
        for e in root.iterfind("vaccineGroups/vaccineGroup")
    }
    groups = tuple(
        VaccineGroup(
            name=_text(e, "name"),
            administer_full=full.get(_text(e, "name"), False),
            antigens=tuple((a.text or "").strip() for a in e.findall("antigen")),
        )
        for e in root.iterfind("vaccineGroupToAntigenMap/vaccineGroupMap")
    )
    cvx_map = tuple(
        CvxMapping(
            cvx=_text(e, "cvx"),
            description=_text(e, "shortDescription"),
            associations=tuple(
                CvxAntigen(
                    antigen=_text(a, "antigen"),
                    begin_age=parse_offset(_text(a, "associationBeginAge")),
                    end_age=parse_offset(_text(a, "associationEndAge")),
                )
                for a in e.findall("association")
            ),
        )
        for e in root.iterfind("cvxToAntigenMap/cvxMap")
    )
    observations = tuple(
        ObservationDef(
            code=_text(e, "observationCode"),
            title=_text(e, "observationTitle"),
            group=_text(e, "group"),
            indication_text=_text(e, "indicationText"),
            contraindication_text=_text(e, "contraindicationText"),
        )
        for e in root.iterfind("observations/observation")
    )
    return conflicts, groups, cvx_map, observations


def antigen_files(src_dir: Path) -> list[Path]:
    """The antigen XML files of a release folder, in a stable order."""
    return sorted(src_dir.glob("AntigenSupportingData*.xml"))


def parse_release(src_dir: Path, source_version: str) -> Schedule:
    """Parse a whole CDC supporting-data XML folder."""
    antigens = tuple(parse_antigen(path) for path in antigen_files(src_dir))
    if not antigens:
        raise FileNotFoundError(f"no AntigenSupportingData*.xml files in {src_dir}")
    conflicts, groups, cvx_map, observations = parse_schedule_file(
        src_dir / "ScheduleSupportingData.xml"
    )
    return Schedule(
        source_version=source_version,
        antigens=antigens,
        vaccine_groups=groups,
        cvx_map=cvx_map,
        live_virus_conflicts=conflicts,
        observations=observations,
    )
