"""Talking to a running `iz-engine serve` over a real MLLP socket (the multi-process tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.conftest import REPO

SB, EB = b"\x0b", b"\x1c\x0d"


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
        self.wait_status(200, timeout)

    def wait_status(self, status: int, timeout: float = 60) -> None:
        """Poll /readyz until it answers `status`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}"
            if self.ready() == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"/readyz did not answer {status}")

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(url: str, *extra: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--database-url", url, *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
        env={**os.environ, "IZ_ENGINE_DATABASE_URL": ""})


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful), then kill if it has not exited within 30 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
