"""`serve` with several worker processes on one MLLP port (engine.workers), on both backends.

Real processes, a real socket, a real database: the supervisor binds the port and starts two
workers; messages arrive on several connections at once; the store's constraints, not any
shared memory, keep each message stored once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.cli import main
from tests.store.wire import EB, SB, Served, exchange, free_port, msa, start_serve, stop_serve, vxu


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    port, http_port = free_port(), free_port()
    proc = start_serve(database_url, "--workers", "2", "--port", str(port),
                       "--http-port", str(http_port))
    s = Served(port, http_port, proc, database_url)
    try:
        s.wait_ready()
        yield s
    finally:
        stop_serve(proc)


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


def _mllp_connections(pid: int, port: int) -> int:
    """TCP connections of process `pid` whose local port is `port` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] != "0A":  # not LISTEN
                inodes.add(cols[9])
    links = (os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)


@pytest.mark.timeout(180)
def test_connections_are_dealt_to_the_workers_in_turn(served: Served) -> None:
    """A burst of new connections is spread evenly, not left to whichever worker woke first."""
    workers = served.workers()
    conns = [socket.create_connection(("127.0.0.1", served.port), timeout=30)
             for _ in range(4)]
    try:
        for n, conn in enumerate(conns):  # one round trip each: every connection is adopted
            conn.sendall(SB + vxu(500 + n, f"DEAL-{n}") + EB)
            buf = b""
            while not buf.endswith(EB):
                buf += conn.recv(65536)
            assert msa(buf[1:-2]) == "AA"
        assert {pid: _mllp_connections(pid, served.port) for pid in workers} == dict.fromkeys(
            workers, 2)
    finally:
        for conn in conns:
            conn.close()


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
    proc = start_serve(unreachable, "--workers", "2", "--port", str(free_port()),
                       "--http-port", str(free_port()), stderr=subprocess.PIPE)
    try:
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert b"while starting" in err


@pytest.mark.timeout(180)
def test_mutual_tls_connections_are_adopted_by_the_workers(
        tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With TLS on, each worker does the handshake of the connections it is dealt; `send`
    speaks TLS with a client certificate."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "server:\n  tls:\n"
        f"    cert_file: {certs / 'server.pem'}\n    key_file: {certs / 'server.key'}\n"
        f"    ca_file: {certs / 'ca.pem'}\n    require_client_cert: true\n"
        "logging: {level: warning}\n", encoding="utf-8")
    port, http_port = free_port(), free_port()
    url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    proc = start_serve(url, "--config", str(config), "--workers", "2", "--port", str(port),
                       "--http-port", str(http_port))
    served = Served(port, http_port, proc, url)
    try:
        served.wait_ready()
        for n in range(4):
            (tmp_path / f"m{n}.hl7").write_bytes(vxu(700 + n, f"TLS-{n}"))
        status = main(["send", f"127.0.0.1:{port}", *(str(tmp_path / f"m{n}.hl7")
                                                      for n in range(4)),
                       "--json", "--concurrency", "4", "--tls-ca", str(certs / "ca.pem"),
                       "--tls-cert", str(certs / "client.pem"),
                       "--tls-key", str(certs / "client.key")])
        results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert status == 0
        assert sorted(r["msa"] for r in results) == ["AA"] * 4
        assert served.count("message_log") == 4
        # without a client certificate the handshake fails: nothing is answered or stored
        assert main(["send", f"127.0.0.1:{port}", str(tmp_path / "m0.hl7"),
                     "--tls-ca", str(certs / "ca.pem")]) != 0
        assert served.count("message_log") == 4
    finally:
        stop_serve(proc)
