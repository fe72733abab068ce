"""PostgreSQL crashes mid-stream and comes back: a throwaway cluster the test owns.

The engine runs as `iz-engine serve` over a real MLLP socket against its own PostgreSQL
cluster (initdb in a temporary directory, on a free port), never the shared server. The
cluster is stopped with `pg_ctl -m immediate` — no shutdown checkpoint, as in a crash — while
the engine keeps receiving; then started again. What a registry must do:

- while the database is gone every message is answered AR 207 (the sender retries), promptly,
  and `/readyz` says 503 until the database answers again;
- nothing acknowledged before the crash is lost (crash recovery replays the WAL);
- nothing refused during the outage was half-written;
- once the database is back, the senders' retries are stored, each exactly once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from engine.store.migrate import upgrade
from tests.store.wire import Served, exchange, free_port, msa, start_serve, stop_serve, vxu

BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _as_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Cluster:
    """A private PostgreSQL cluster: initdb, start, stop (crash-like), start again."""

    def __init__(self, root: Path) -> None:
        self.bin = BINARIES[-1]
        self.data = root / "data"
        self.port = free_port()
        self.root = root
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-instructions", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(_as_owner([str(self.bin / tool), *args]), check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "log"),
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                  "start")

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not BINARIES or (os.geteuid() == 0 and shutil.which("runuser") is None):
        if os.environ.get("IZ_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are required")
        pytest.skip("no PostgreSQL server binaries to start a private cluster")
    root = Path(tempfile.mkdtemp(prefix="iz-pg-"))
    c = Cluster(root)
    try:
        c.start()
        admin = create_engine(c.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE registry"))
        admin.dispose()
        upgrade(c.url("registry"))
        yield c
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            c.crash()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(240)
def test_database_crash_mid_stream_loses_nothing_acknowledged(cluster: Cluster) -> None:
    url = cluster.url("registry")
    port, http_port = free_port(), free_port()
    proc = start_serve(url, "--port", str(port), "--http-port", str(http_port))
    served = Served(port, http_port, proc, url)
    try:
        served.wait_ready()
        before = exchange(port, [vxu(100 + i, f"BEFORE-{i}") for i in range(4)])
        assert [msa(a) for a in before] == ["AA"] * 4

        cluster.crash()
        during = [vxu(200 + i, f"DURING-{i}") for i in range(4)]
        refused = exchange(port, during)
        assert [msa(a) for a in refused] == ["AR"] * 4
        assert all(b"|207^" in a for a in refused)
        assert proc.poll() is None  # the engine stays up
        served.wait_status(503)  # and tells the load balancer its store is gone

        cluster.start()
        served.wait_status(200)
        retried = exchange(port, during)  # the senders retry what was refused
        after = exchange(port, [vxu(300 + i, f"AFTER-{i}") for i in range(4)])
        assert [msa(a) for a in retried + after] == ["AA"] * 8

        # Acknowledged before the crash, retried after it: 12 messages, each stored once.
        assert served.count("message_log") == 12
        assert served.count("patient") == 12
        assert served.count("immunization_event") == 12
    finally:
        stop_serve(proc)


@pytest.mark.timeout(240)
def test_a_worker_lost_while_the_database_is_down_comes_back_with_it(cluster: Cluster) -> None:
    """A crashed worker whose replacement cannot open the store (the database is down just
    then) is retried, not taken for a configuration error: the service stays up, says 503,
    and is whole again once the database returns."""
    url = cluster.url("registry")
    port, http_port = free_port(), free_port()
    proc = start_serve(url, "--workers", "2", "--port", str(port), "--http-port", str(http_port))
    served = Served(port, http_port, proc, url)
    try:
        served.wait_ready()
        victim = served.workers()[0]
        cluster.crash()
        os.kill(victim, signal.SIGKILL)
        served.wait_status(503)
        time.sleep(5)  # replacements fail to start meanwhile
        assert proc.poll() is None, "the supervisor gave up"
        cluster.start()
        served.wait_status(200, timeout=90)
        assert victim not in served.workers() and len(served.workers()) == 2
        answers = exchange(port, [vxu(400 + i, f"BACK-{i}") for i in range(4)])
        assert [msa(a) for a in answers] == ["AA"] * 4
    finally:
        stop_serve(proc)
