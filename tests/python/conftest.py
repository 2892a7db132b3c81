"""Fixtures that run a real `spate broker` process for the end-to-end tests.

`broker` starts one broker on a free loopback port with a fresh data directory and stops it at
teardown; `broker_factory` starts brokers with extra flags or environment. The broker's stdout and
stderr go to `broker.log` beside its data directory and are attached to the report of a failing test.

The binary comes from `$SPATE_BIN` (scripts/test.sh sets it); without it the usual cargo target
directories are tried.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pgserver import PgServer
from spatecluster import Cluster

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long a broker may take to accept connections after it is started (a debug build that recovers
# a data directory included).
STARTUP_TIMEOUT_S = 20.0
# How long a SIGTERM'd broker may take to exit before it is SIGKILL'd.
STOP_TIMEOUT_S = 10.0
# How many times to pick a new port when the broker could not bind the one it was given.
BIND_ATTEMPTS = 5


def broker_command(binary: str, data_dir: Path, port: int, extra_args: list[str]) -> list[str]:
    """The one place that knows the broker's command line."""
    return [binary, "broker", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", *extra_args]


def spate_binary() -> str:
    explicit = os.environ.get("SPATE_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RuntimeError(f"SPATE_BIN={explicit} is not an executable file")
        return explicit
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "spate")
    candidates += [Path("/work/spate-target/debug/spate"), REPO_ROOT / "target" / "debug" / "spate"]
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(
        "no spate binary: set SPATE_BIN or run ./scripts/test.sh, which builds it (looked in "
        + ", ".join(str(c) for c in candidates)
        + ")"
    )


def free_port() -> int:
    """A port that was free a moment ago; the broker may still lose a race for it (then we retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except FileNotFoundError:
            pass
    return inodes


def owns_listener(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on `port`: a connect alone could reach some other
    process that grabbed the port after free_port() let go of it."""
    wanted = {f"socket:[{inode}]" for inode in listening_socket_inodes(port)}
    if not wanted:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except OSError:
            continue
    return False


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    """One `spate broker` process, restartable on the same data directory and port."""

    def __init__(self, binary: str, workdir: Path, extra_args: list[str], env: dict[str, str]):
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "broker.log"
        self.extra_args = list(extra_args)
        # A command the broker runs under, e.g. ["prlimit", "--fsize=N", "--"]; [] for none.
        self.wrapper: list[str] = []
        self.env = {**os.environ, "RUST_BACKTRACE": "1", "NO_COLOR": "1", **env}
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # Set when we stopped or killed it on purpose; teardown treats any other exit as a crash.
        self.stopped_on_purpose = False
        # Set when SIGTERM did not end it within STOP_TIMEOUT_S.
        self.ignored_sigterm = False

    @property
    def bootstrap(self) -> str:
        assert self.port is not None, "broker was never started"
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no broker log>"

    def start(self) -> "Broker":
        """Starts the broker and waits until its port accepts connections. Keeps the port of a
        previous run when it can, so that a restart looks like the same broker to clients."""
        assert not self.alive(), "broker already running"
        last_error = ""
        for attempt in range(BIND_ATTEMPTS):
            port = self.port if (self.port is not None and attempt == 0) else free_port()
            ok, last_error = self._start_once(port)
            if ok:
                self.port = port
                return self
        raise RuntimeError(
            f"spate broker did not start after {BIND_ATTEMPTS} attempts: {last_error}\n"
            f"--- broker log ({self.log_path}) ---\n{self.log_text()}"
        )

    def _start_once(self, port: int) -> tuple[bool, str]:
        self.starts += 1
        self.stopped_on_purpose = False
        cmd = self.wrapper + broker_command(self.binary, self.data_dir, port, self.extra_args)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=self.workdir
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                # Exited before listening: most likely the port was taken between free_port() and bind.
                return False, f"broker exited with status {code} before accepting connections on port {port}"
            if owns_listener(self.proc.pid, port) and port_accepts(port):
                return True, ""
            time.sleep(0.05)
        self._terminate()
        if listening_socket_inodes(port):
            # Someone else holds the port and the broker waits for it: try another one.
            return False, f"port {port} is held by another process"
        raise RuntimeError(
            f"spate broker did not accept connections on 127.0.0.1:{port} within {STARTUP_TIMEOUT_S}s\n"
            f"--- broker log ({self.log_path}) ---\n{self.log_text()}"
        )

    def _terminate(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.stopped_on_purpose = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.ignored_sigterm = True
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        return self.proc.returncode

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Returns the exit status."""
        return self._terminate()

    def kill9(self) -> None:
        """Kills the broker with SIGKILL: no chance to flush or close anything."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.stopped_on_purpose = True
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> "Broker":
        """Stops the broker if it still runs (gracefully) and starts it again on the same data
        directory, on the same port when that is still free."""
        self.stop()
        return self.start()


@pytest.fixture
def broker_factory(tmp_path, request):
    """Returns `make(extra_args=(), env=None) -> Broker`, started; every broker made is stopped at
    teardown and its log attached to the report of a failing test."""
    binary = spate_binary()
    made: list[Broker] = []
    request.node._spate_brokers = made

    def make(extra_args=(), env=None, wrapper=()) -> Broker:
        broker = Broker(binary, tmp_path / f"broker{len(made)}", list(extra_args), dict(env or {}))
        broker.wrapper = list(wrapper)
        made.append(broker)
        return broker.start()

    yield make
    problems = []
    for i, broker in enumerate(made):
        if broker.proc is not None and broker.proc.poll() is not None and not broker.stopped_on_purpose:
            problems.append(f"broker {i} exited on its own with status {broker.proc.returncode} during the test")
        broker.stop()
        if broker.ignored_sigterm:
            problems.append(f"broker {i} ignored SIGTERM for {STOP_TIMEOUT_S}s and was killed")
    if problems:
        logs = "\n".join(f"--- broker {i} log ---\n{b.log_text()[-10000:]}" for i, b in enumerate(made))
        pytest.fail("; ".join(problems) + "\n" + logs)


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.fixture
def cluster_factory(tmp_path, request):
    """Returns `make(size=3, settings=None, node_settings=None, extra_args=(), env=None, proxied=False,
    start=True) -> Cluster` (spatecluster.py): `size` brokers with ids 1..size forming one controller
    quorum, started and ready unless start=False. Every cluster is stopped at teardown (paused brokers
    resumed first) and its brokers' logs are attached to the report of a failing test."""
    binary = spate_binary()
    made: list[Cluster] = []
    request.node._spate_clusters = made

    def make(size=3, settings=None, node_settings=None, extra_args=(), env=None, proxied=False, start=True):
        cluster = Cluster(
            binary,
            tmp_path / f"cluster{len(made)}",
            size=size,
            settings=settings,
            node_settings=node_settings,
            extra_args=list(extra_args),
            env=dict(env or {}),
            proxied=proxied,
        )
        made.append(cluster)
        return cluster.start() if start else cluster

    yield make
    problems = []
    for c in made:
        problems += c.close()
    if problems:
        pytest.fail("; ".join(problems) + "\n" + "\n".join(c.logs(10000) for c in made))


@pytest.fixture
def cluster(cluster_factory) -> Cluster:
    """Three brokers with spatecluster.FAST_SETTINGS, ready."""
    return cluster_factory()


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: starts a multi-broker spate cluster")
    config.addinivalue_line("markers", "slow: takes more than about 20 s (deselect with -m 'not slow')")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, broker in enumerate(getattr(item, "_spate_brokers", [])):
            text = broker.log_text()
            if len(text) > 20000:
                text = "... (earlier lines cut)\n" + text[-20000:]
            state = "alive" if broker.alive() else f"exited with {broker.proc.returncode if broker.proc else None}"
            report.sections.append((f"spate broker {i} log ({state}, {broker.log_path})", text))
        for c, cluster in enumerate(getattr(item, "_spate_clusters", [])):
            for node in cluster.nodes.values():
                state = "paused" if node.paused else ("alive" if node.alive() else "down")
                report.sections.append(
                    (f"cluster {c} broker {node.node_id} log ({state}, {node.log_path})", node.log_tail(20000))
                )
        # Streams example processes (test_streams.py).
        for i, proc in enumerate(getattr(item, "_spate_streams", [])):
            text = proc.log_text()
            if len(text) > 20000:
                text = "... (earlier lines cut)\n" + text[-20000:]
            report.sections.append((f"streams example {proc.name} #{i} log ({proc.log_path})", text))
        # Other helper processes (test_connect.py's Connect workers): anything with `label`, `log_path`
        # and `log_text()`.
        for proc in getattr(item, "_spate_processes", []):
            text = proc.log_text()
            if len(text) > 20000:
                text = "... (earlier lines cut)\n" + text[-20000:]
            report.sections.append((f"{proc.label} log ({proc.log_path})", text))


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the whole session (pgserver.py); tests make their own
    database with `postgres.create_database(name)`."""
    server = PgServer()
    try:
        yield server
    finally:
        server.close()
