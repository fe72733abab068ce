"""Compile a CDC CDSi supporting-data XML release into the engine's packaged JSON form.

Usage: ``python -m engine.forecast.schedule_import SRC_DIR DEST``.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.forecast.schedule import schedule_to_json
from engine.forecast.supporting_data import parse_release

__all__ = ["ImportSummary", "detect_version", "import_release", "main"]


@dataclass(frozen=True)
class ImportSummary:
    """What an import produced."""

    source_version: str
    dest: Path
    antigens: int
    series: int
    vaccine_groups: int
    cvx_codes: int
    live_virus_conflicts: int
    observations: int


def detect_version(src_dir: Path) -> str:
    """Guess the release version from the folder path (e.g. ``supporting-data-4.64-508``)."""
    for part in reversed(src_dir.resolve().parts):
        match = re.search(r"(\d+\.\d+)(-508)?", part)
        if match:
            return match.group(0)
    return "unknown"


def import_release(src_dir: Path, dest: Path, source_version: str | None = None) -> ImportSummary:
    """Parse the XML release in ``src_dir`` and write the compiled form to ``dest``."""
    version = source_version or detect_version(src_dir)
    schedule = parse_release(src_dir, version)
    payload = json.dumps(schedule_to_json(schedule), separators=(",", ":"), sort_keys=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = payload.encode("utf-8")
    if dest.suffix == ".gz":
        # mtime=0 keeps the compiled artefact byte-for-byte reproducible.
        data = gzip.compress(data, mtime=0)
    dest.write_bytes(data)
    return ImportSummary(
        source_version=version,
        dest=dest,
        antigens=len(schedule.antigens),
        series=sum(len(a.series) for a in schedule.antigens),
        vaccine_groups=len(schedule.vaccine_groups),
        cvx_codes=len(schedule.cvx_map),
        live_virus_conflicts=len(schedule.live_virus_conflicts),
        observations=len(schedule.observations),
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(
            "usage: python -m engine.forecast.schedule_import SRC_DIR DEST [VERSION]",
            file=sys.stderr,
        )
        return 2
    summary = import_release(Path(args[0]), Path(args[1]), args[2] if len(args) == 3 else None)
    print(
        f"imported CDSi supporting data {summary.source_version}: {summary.antigens} antigens, "
        f"{summary.series} series, {summary.vaccine_groups} vaccine groups, "
        f"{summary.cvx_codes} CVX codes, {summary.live_virus_conflicts} live-virus conflicts, "
        f"{summary.observations} observations -> {summary.dest}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
