"""The iz-engine command line, end to end: serve + send over a real socket, validate, db, cdsi."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cli import main
from tests.conftest import MESSAGES, REPO, SHARED, needs_shared
from tests.store.wire import stop_serve

SAMPLES = REPO / "sample_messages"
EXPECTED = json.loads((SAMPLES / "expected.json").read_text(encoding="utf-8"))
CLI = [sys.executable, "-m", "engine.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("serve did not start listening")


@pytest.fixture
def engine_server(tmp_path: Path) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    """`iz-engine serve` on config.yaml with its own ports and a temporary SQLite file."""
    port, http_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--http-port", str(http_port),
         "--database-url", f"sqlite:///{tmp_path / 'registry.sqlite3'}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "IZ_ENGINE_DATABASE_URL": ""})
    try:
        _wait_for_port(port, proc)
        yield port, http_port, proc
    finally:
        stop_serve(proc)


def _send(port: int, *paths: Path) -> list[dict[str, object]]:
    done = subprocess.run([*CLI, "send", f"127.0.0.1:{port}", *map(str, paths), "--json",
                           "--concurrency", "4"], cwd=REPO, capture_output=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def _key(result: dict[str, object]) -> str:
    path = Path(str(result["file"]))
    return f"{path.relative_to(SAMPLES).as_posix()}#{result['index']}"


@pytest.mark.timeout(180)
def test_serve_answers_every_sample_as_recorded(
        engine_server: tuple[int, int, subprocess.Popen[bytes]]) -> None:
    """Each sample message sent over MLLP gets exactly the MSA-1 and ERRs in expected.json."""
    port, _http, _proc = engine_server
    results = _send(port, SAMPLES)
    seen = {_key(r): r for r in results}
    with_msh = {k: v for k, v in EXPECTED.items() if not k.startswith("bad/no_msh")}
    assert set(seen) == set(with_msh)
    for key, expected in with_msh.items():
        errors = seen[key]["errors"]
        assert isinstance(errors, list)
        got = [[e["location"], e["code"], e["severity"]] for e in errors]
        assert (seen[key]["msa"], got) == (expected["msa"], expected["errors"]), key


@needs_shared()
@pytest.mark.timeout(300)
def test_serve_answers_every_public_message_and_stays_up(
        engine_server: tuple[int, int, subprocess.Popen[bytes]]) -> None:
    """Every message in ../shared/messages gets one well-formed response; metrics count them."""
    port, http_port, proc = engine_server
    expected = sum(path.read_bytes().replace(b"\n", b"\r").count(b"\rMSH|") +
                   path.read_bytes().startswith(b"MSH|")
                   for path in MESSAGES.rglob("*.hl7"))
    results = _send(port, MESSAGES)
    assert len(results) == expected
    assert all(r["error"] is None and r["msa"] in ("AA", "AE", "AR") for r in results)
    assert proc.poll() is None
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as reply:
        exposition = reply.read().decode()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                  if line.startswith("iz_messages_total{"))
    assert counted == expected


@pytest.mark.timeout(120)
def test_sigterm_stops_serve_cleanly(
        engine_server: tuple[int, int, subprocess.Popen[bytes]]) -> None:
    """SIGTERM ends serve with exit status 0."""
    _port, _http, proc = engine_server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_validate_prints_the_recorded_responses(capsys: pytest.CaptureFixture[str]) -> None:
    """`validate --json` gives each sample the MSA-1 and ERRs recorded in expected.json."""
    status = main(["validate", "--json", str(SAMPLES)])
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = {}
    for r in results:
        errors = [seg.split("|") for seg in r["response"] if seg.startswith("ERR|")]
        got[_key(r)] = {"msa": r["msa"], "errors": [[e[2], e[3].split("^")[0], e[4]]
                                                    for e in errors]}
    assert got == EXPECTED
    assert status == 1  # some samples are deliberately bad


def test_validate_reports_rule_and_location(capsys: pytest.CaptureFixture[str]) -> None:
    """The readable report names the rule, location and value of each finding."""
    bad = SAMPLES / "vxu_child_dtap_new.hl7"
    text = bad.read_bytes().replace(b"20^DTaP^CVX", b"XYZ^Nonsense^CVX")
    target = Path(os.environ.get("TMPDIR", "/tmp")) / f"iz-validate-{os.getpid()}.hl7"
    target.write_bytes(text)
    try:
        assert main(["validate", str(target)]) == 1
    finally:
        target.unlink()
    out = capsys.readouterr().out
    assert "MSA|AE|SMP-VXU-0001" in out
    assert "RXA^1^5" in out and "XYZ" in out


def test_db_upgrade_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`db upgrade` creates the schema on a new SQLite file and is a no-op the second time."""
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert "up to date" in capsys.readouterr().err


def test_bad_configuration_lists_every_problem(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """serve with a broken config exits 2 and prints each problem."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text("server: {port: x, bogus: 1}\nlogging: {format: xml}\n", encoding="utf-8")
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "server.port" in err and "server.bogus" in err and "logging.format" in err


@needs_shared()
def test_cdsi_check_reports_pass_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cdsi-check --json` over a slice of the CDC cases prints passed/total and groups."""
    cases = json.loads((SHARED / "cdsi/test-cases/healthy-v4.45.json").read_text("utf-8"))
    subset = tmp_path / "cases.json"
    subset.write_text(json.dumps(cases[:40]), encoding="utf-8")
    assert main(["cdsi-check", str(subset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 40 and 0 < report["passed"] <= 40


@needs_shared()
def test_schedule_import_reproduces_the_packaged_schedule(tmp_path: Path) -> None:
    """Importing CDC's 4.64 XML gives byte-for-byte the compiled schedule the engine ships."""
    dest = tmp_path / "schedule.json.gz"
    src = SHARED / "cdsi/supporting-data-4.64-508/xml"
    assert main(["schedule", "import", str(src), "--dest", str(dest)]) == 0
    packaged = REPO / "engine/forecast/data/schedule-4.64.json.gz"
    assert dest.read_bytes() == packaged.read_bytes()
