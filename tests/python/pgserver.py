"""A throwaway PostgreSQL server for the connector tests: `initdb` into a temp dir, `postgres` on a
free loopback port with `wal_level=logical` (the CDC source needs it) and trust authentication for
the superuser `spate`, stopped (fast shutdown) and deleted at the end. The same as the Rust fixture in
connect/tests/common/postgres.rs.

The binaries come from `$SPATE_PG_BIN` (a directory), else `initdb` on PATH, else the newest
`/usr/lib/postgresql/*/bin` (Debian's layout; scripts/test.sh installs the `postgresql` package).
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user (`setpriv`
execs in place, so signals reach the server itself) and the data directory is handed to that user.

`conftest.py` exposes one server per test session as the `postgres` fixture; tests make their own
database with `postgres.create_database(name)`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_USER = "spate"
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def pg_bin_dir() -> Path:
    explicit = os.environ.get("SPATE_PG_BIN")
    if explicit:
        return Path(explicit)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        # Follow links (/usr/local/bin/initdb → /usr/lib/postgresql/15/bin) so psql comes from the
        # same installation.
        return Path(os.path.realpath(initdb)).parent
    found = []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        for d in root.iterdir():
            if d.name.isdigit() and (d / "bin" / "initdb").is_file():
                found.append((int(d.name), d / "bin"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
            "run ./scripts/test.sh setup, which installs Debian's postgresql package"
        )
    return max(found)[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]
    return cmd


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        self.bin = pg_bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="spate-pg-"))
        self.proc: subprocess.Popen | None = None
        self.port = 0
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        out = subprocess.run(
            _as_postgres_user(
                [str(self.bin / "initdb"), "--auth=trust", "--encoding=UTF8", "--no-sync", "-U", PG_USER, "-D", str(self.data)]
            ),
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            self.close()
            raise RuntimeError(f"initdb failed:\n{out.stdout}{out.stderr}")
        self.log_path = self.dir / "postgres.log"
        for attempt in range(5):
            self.port = _free_port()
            with open(self.log_path, "w") as log:
                if os.geteuid() == 0:
                    shutil.chown(self.log_path, "postgres", "postgres")
                self.proc = subprocess.Popen(
                    _as_postgres_user(
                        [
                            str(self.bin / "postgres"), "-D", str(self.data),
                            "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                            "-c", f"unix_socket_directories={self.dir}",
                            # Logical decoding for the CDC source; tests run several slots.
                            "-c", "wal_level=logical", "-c", "max_replication_slots=64", "-c", "max_wal_senders=64",
                            "-c", "max_connections=200",
                            # Tests kill workers, never the server: its own durability is not under
                            # test, speed is.
                            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                        ]
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            text = self.log()
            self._stop_server()
            if attempt == 4 or "could not bind" not in text:
                self.close()
                raise RuntimeError(f"postgres did not start on port {self.port}:\n{text}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                self.psql("postgres", "SELECT 1")
                return True
            except RuntimeError:
                time.sleep(0.1)
        return False

    def url(self, db: str) -> str:
        """`postgresql://spate@127.0.0.1:PORT/DB`, what `connection.url` takes."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{db}"

    def psql(self, db: str, sql: str) -> str:
        """Runs SQL through psql (unaligned, tuples only) and returns its stdout."""
        out = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-U", PG_USER, "-p", str(self.port), "-d", db, "-c", sql],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str) -> str:
        """Creates database `name` and returns its URL."""
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _stop_server(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self._stop_server()
        shutil.rmtree(self.dir, ignore_errors=True)
