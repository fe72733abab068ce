"""`serve` with several worker processes on one MLLP port (engine.workers), on both backends.

Real processes, a real socket, a real database: the supervisor binds the port and starts two
workers; messages arrive on several connections at once; the store's constraints, not any
shared memory, keep each message stored once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import REPO

SB, EB = b"\x0b", b"\x1c\x0d"


@dataclass
class Served:
    port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    url: str

    def workers(self) -> list[int]:
        """Pids of the supervisor's worker processes."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def ready(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz",
                                        timeout=2) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}"
            if self.ready() == 200:
                return
            time.sleep(0.1)
        raise AssertionError("the workers did not become ready")

    def metric_total(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                    timeout=5) as reply:
            lines = reply.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith(name + "{"))

    def count(self, table: str) -> int:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
        finally:
            engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(url: str, *extra: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--database-url", url, *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
        env={**os.environ, "IZ_ENGINE_DATABASE_URL": ""})


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    port, http_port = _free_port(), _free_port()
    proc = _serve(database_url, "--workers", "2", "--port", str(port),
                  "--http-port", str(http_port))
    s = Served(port, http_port, proc, database_url)
    try:
        s.wait_ready()
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def vxu(n: int, control_id: str) -> bytes:
    """A clean VXU (one historical dose) for a new patient (distinct per n)."""
    letters = "".join(chr(65 + int(d)) for d in str(n))
    segs = [
        "MSH|^~\\&|EHR|CLINIC1|IIS|CAIR2|20240115120000-0800||VXU^V04^VXU_V04|"
        f"{control_id}|P|2.5.1|||ER|AL|||||Z22^CDCPHINVS|CLINIC1",
        f"PID|1||W{n}^^^CLINIC1^MR||Fam{letters}^Giv{letters}^^^^^L||20150304|F|||"
        "1 Main St^^Town^CA^90001^USA^H||^PRN^PH^^^555^5550100",
        f"ORC|RE||W{n}-1^CLINIC1",
        "RXA|0|1|20240115||08^HepB^CVX|999|||01^Historical Administration^NIP001|||||||||||"
        "CP|A",
    ]
    return ("\r".join(segs) + "\r").encode()


def exchange(port: int, messages: list[bytes]) -> list[bytes]:
    """Send messages one after another on one MLLP connection; their responses."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        for message in messages:
            conn.sendall(SB + message + EB)
            buf = b""
            while not buf.endswith(EB):
                chunk = conn.recv(65536)
                assert chunk, "connection closed before the response"
                buf += chunk
            out.append(buf[1:-2])
    return out


def msa(response: bytes) -> str:
    start = response.index(b"MSA|") + 4
    return response[start:start + 2].decode()


@pytest.mark.timeout(180)
def test_messages_on_many_connections_are_each_stored_once(served: Served) -> None:
    assert len(served.workers()) == 2
    batches = [[vxu(c * 100 + i, f"W-{c}-{i}") for i in range(10)] for c in range(6)]
    with ThreadPoolExecutor(len(batches)) as pool:
        answers = [r for rs in pool.map(lambda b: exchange(served.port, b), batches) for r in rs]
    assert [msa(a) for a in answers] == ["AA"] * 60
    assert served.count("message_log") == 60
    assert served.count("patient") == 60
    assert served.count("immunization_event") == 60
    # /metrics on the supervisor sums what both workers counted
    assert served.metric_total("iz_messages_total") == 60


@pytest.mark.timeout(180)
def test_concurrent_retransmissions_across_workers_store_one_record(served: Served) -> None:
    message = vxu(7, "RETRY-1")
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: exchange(served.port, [message])[0], range(5)))
    assert len(set(answers)) == 1 and msa(answers[0]) == "AA"
    assert served.count("message_log") == 1
    assert served.count("patient") == 1


@pytest.mark.timeout(180)
def test_a_dead_worker_is_replaced_and_service_continues(served: Served) -> None:
    victim = served.workers()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = served.workers()
        if len(pids) == 2 and victim not in pids and served.ready() == 200:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the killed worker was not replaced")
    answers = exchange(served.port, [vxu(900 + i, f"AFTER-{i}") for i in range(5)])
    assert [msa(a) for a in answers] == ["AA"] * 5
    assert served.proc.poll() is None


@pytest.mark.timeout(120)
def test_sigterm_stops_the_supervisor_and_every_worker(served: Served) -> None:
    workers = served.workers()
    assert exchange(served.port, [vxu(1, "BEFORE-STOP")])
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_start_stops_serve_with_status_2(tmp_path: Path) -> None:
    """Restarting cannot cure configuration: a store that cannot be opened ends serve."""
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    proc = _serve(unreachable, "--workers", "2", "--port", str(_free_port()),
                  "--http-port", str(_free_port()), stderr=subprocess.PIPE)
    try:
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert b"while starting" in err
