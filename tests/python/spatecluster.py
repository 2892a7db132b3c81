"""A replicated Spate cluster of real `spate broker` processes on loopback, for the replication and
fault-injection tests (test_replication.py).

`Cluster` starts N brokers in combined mode (broker and controller in one process), each with its own
data directory, Kafka port and controller (Raft RPC) port, all chosen at run time. It kills (SIGKILL),
restarts (same directory and ports), pauses (SIGSTOP) and resumes (SIGCONT) single brokers, and reads
the cluster's state from each broker separately with a tiny Kafka-protocol client (Metadata v7,
FindCoordinator v1, Produce v3): librdkafka decides itself which broker it asks, while a fault test
needs to know what *this* broker believes.

With `proxied=True` all broker-to-broker traffic passes fault-injecting TCP proxies (`FaultNet`), so
that one broker can be cut off from the others while clients still reach every broker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# How long every broker of a cluster may take to accept connections after being started.
STARTUP_TIMEOUT_S = 20.0
# How long the brokers may take to form the quorum and see each other (wait_ready's default).
READY_TIMEOUT_S = 20.0
# How long SIGTERM'd brokers may take to exit before they are SIGKILL'd.
STOP_TIMEOUT_S = 10.0
# Whole-cluster start attempts: a broker that loses a race for a port it was given makes the cluster
# start again on fresh ports (every broker must know every controller port up front).
START_ATTEMPTS = 3
# One raw request (Metadata, FindCoordinator) to one broker: short, so a paused broker costs little.
REQUEST_TIMEOUT_S = 2.0

# Broker settings that make failure detection and recovery fast enough for tests.
FAST_SETTINGS = {
    "broker.session.timeout.ms": "2000",
    "broker.heartbeat.interval.ms": "200",
    "replica.lag.time.max.ms": "2000",
    "min.insync.replicas": "2",
    "default.replication.factor": "3",
    "offsets.topic.replication.factor": "3",
    "group.initial.rebalance.delay.ms": "0",
}

# Kafka error codes the tests name.
NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7
COORDINATOR_NOT_AVAILABLE = 15
NOT_ENOUGH_REPLICAS = 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20


def set_args(settings: dict[str, str]) -> list[str]:
    args = []
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def reserve_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (all held open together, so distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tcp_table() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every IPv4/IPv6 TCP socket."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode))
        except FileNotFoundError:
            pass
    return rows


def _socket_inodes_of(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def owns_listener(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on `port` (a connect alone could reach another
    process that took the port after reserve_ports() let go of it)."""
    wanted = {inode for lport, _, state, inode in _tcp_table() if state == "0A" and lport == port}
    return bool(wanted) and bool(wanted & _socket_inodes_of(pid))


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.1, describe=None):
    """Polls `condition` until it returns something truthy and returns that; fails naming `what` (and
    what `describe()` says about the state) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            state = ""
            if describe is not None:
                try:
                    state = f"\nstate: {describe()}"
                except Exception as e:  # the description is best effort
                    state = f"\nstate: <describe failed: {e!r}>"
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{state}")
        time.sleep(interval_s)


# --- a minimal Kafka protocol client: one request to one broker ----------------------------------------


class ProtocolError(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"response truncated at byte {self.pos} (wanted {n} more of {len(self.data)})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def i8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def i64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def nullable_string(self) -> str | None:
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def string(self) -> str:
        s = self.nullable_string()
        if s is None:
            raise ProtocolError("null where a string was expected")
        return s

    def array(self, item) -> list:
        n = self.i32()
        return [] if n < 0 else [item() for _ in range(n)]


def _string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


_correlation = [0]


def call(port: int, api_key: int, api_version: int, body: bytes, timeout_s: float = REQUEST_TIMEOUT_S) -> _Reader:
    """Sends one request (non-flexible header v1) to 127.0.0.1:`port` and returns a reader positioned
    after the response header."""
    _correlation[0] += 1
    correlation_id = _correlation[0]
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + _string("spate-e2e-cluster")
    frame = header + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.settimeout(timeout_s)
        s.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        if size < 4 or size > 64 << 20:
            raise ProtocolError(f"response frame of {size} bytes")
        reader = _Reader(_recv_exact(s, size))
    if reader.i32() != correlation_id:
        raise ProtocolError("correlation id mismatch")
    return reader


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


@dataclass
class PartitionView:
    partition: int
    error: int
    leader: int
    leader_epoch: int
    replicas: list[int]
    isr: list[int]
    offline: list[int]


@dataclass
class TopicView:
    name: str
    error: int
    partitions: dict[int, PartitionView]


@dataclass
class MetadataView:
    """What one broker answered to a Metadata request."""

    node_id: int  # the broker that answered
    brokers: dict[int, tuple[str, int]]
    cluster_id: str | None
    controller_id: int
    topics: dict[str, TopicView]

    def partition(self, topic: str, partition: int) -> PartitionView | None:
        t = self.topics.get(topic)
        if t is None or t.error != NONE:
            return None
        return t.partitions.get(partition)


def metadata_request(port: int, node_id: int, topics: list[str] | None = None) -> MetadataView:
    """Metadata v7 (leader epochs and offline replicas, still non-flexible) from one broker."""
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics)) + b"".join(_string(t) for t in topics)
    body += struct.pack(">b", 0)  # allow_auto_topic_creation
    r = call(port, 3, 7, body)
    r.i32()  # throttle_time_ms
    brokers = {}
    for node, host, bport, _rack in r.array(lambda: (r.i32(), r.string(), r.i32(), r.nullable_string())):
        brokers[node] = (host, bport)
    cluster_id = r.nullable_string()
    controller_id = r.i32()

    def partition():
        return PartitionView(
            error=r.i16(),
            partition=r.i32(),
            leader=r.i32(),
            leader_epoch=r.i32(),
            replicas=r.array(r.i32),
            isr=r.array(r.i32),
            offline=r.array(r.i32),
        )

    def topic():
        error, name, _internal = r.i16(), r.string(), r.i8()
        return TopicView(name=name, error=error, partitions={p.partition: p for p in r.array(partition)})

    return MetadataView(
        node_id=node_id,
        brokers=brokers,
        cluster_id=cluster_id,
        controller_id=controller_id,
        topics={t.name: t for t in r.array(topic)},
    )


def find_coordinator_request(port: int, group: str) -> tuple[int, int]:
    """FindCoordinator v1 for a group: (error_code, coordinator node id)."""
    r = call(port, 10, 1, _string(group) + struct.pack(">b", 0))
    r.i32()  # throttle_time_ms
    error = r.i16()
    r.nullable_string()  # error_message
    node = r.i32()
    return error, node


def produce_request(
    port: int, topic: str, partition: int, values: list[bytes], acks: int = -1, timeout_ms: int = 5000
) -> tuple[int, int]:
    """One Produce v3 request with a fresh non-idempotent batch of `values`: (error_code, base_offset).
    For talking to one particular broker, whatever the clients' metadata says."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    now_ms = int(time.time() * 1000)
    for i, value in enumerate(values):
        builder.append(i, timestamp=now_ms, key=None, value=value, headers=[])
    batch = bytes(builder.build())
    body = (
        _string(None)  # transactional_id
        + struct.pack(">hi", acks, timeout_ms)
        + struct.pack(">i", 1)
        + _string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">ii", partition, len(batch))
        + batch
    )
    r = call(port, 0, 3, body, timeout_s=timeout_ms / 1000 + REQUEST_TIMEOUT_S)
    for _name, parts in r.array(lambda: (r.string(), r.array(lambda: (r.i32(), r.i16(), r.i64(), r.i64())))):
        for index, error, base_offset, _append_time in parts:
            if index == partition:
                return error, base_offset
    raise ProtocolError(f"produce response without {topic}/{partition}")


# --- processes -----------------------------------------------------------------------------------------


class ClusterNode:
    """One `spate broker` process of a cluster, restartable on the same data directory and ports."""

    def __init__(self, node_id: int, workdir: Path):
        self.node_id = node_id
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "broker.log"
        self.kafka_port: int | None = None
        self.controller_port: int | None = None
        self.command: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.paused = False
        # Set when we stopped or killed it on purpose; teardown treats any other exit as a crash.
        self.stopped_on_purpose = False
        self.ignored_sigterm = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def up(self) -> bool:
        """Running and not paused: expected to answer requests."""
        return self.alive() and not self.paused

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no broker log>"

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_text()
        return text if len(text) <= chars else "... (earlier lines cut)\n" + text[-chars:]

    def spawn(self, env: dict[str, str]) -> None:
        assert not self.alive(), f"broker {self.node_id} already running"
        self.starts += 1
        self.stopped_on_purpose = False
        self.paused = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(self.command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
            )

    def listening(self) -> bool:
        return (
            self.proc is not None
            and owns_listener(self.proc.pid, self.kafka_port)
            and port_accepts(self.kafka_port)
        )

    def kill9(self) -> None:
        if self.alive():
            self.stopped_on_purpose = True
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.paused = False

    def pause(self) -> None:
        assert self.alive(), f"broker {self.node_id} is not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def send_term(self) -> None:
        if self.alive():
            self.stopped_on_purpose = True
            if self.paused:
                self.resume()
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, deadline: float) -> None:
        """Waits for a SIGTERM'd broker until `deadline`, then SIGKILLs it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.ignored_sigterm = True
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        self.send_term()
        self.wait_exit(time.monotonic() + STOP_TIMEOUT_S)


class Cluster:
    """N brokers with ids 1..N forming one controller quorum (combined mode).

    `settings` are broker configs passed as `--set key=value` to every broker (FAST_SETTINGS by
    default); `node_settings` adds per-node ones. With `proxied=True` every broker's controller port
    and Kafka port sit behind a `FaultNet` proxy that other brokers go through (clients also reach the
    proxies, through the advertised listeners, and are never cut)."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        size: int = 3,
        settings: dict[str, str] | None = None,
        node_settings: dict[int, dict[str, str]] | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        proxied: bool = False,
    ):
        assert size >= 1
        self.binary = binary
        self.workdir = workdir
        self.settings = dict(FAST_SETTINGS if settings is None else settings)
        self.node_settings = node_settings or {}
        self.extra_args = list(extra_args or [])
        self.env = {**os.environ, "RUST_BACKTRACE": "1", "NO_COLOR": "1", **(env or {})}
        self.nodes: dict[int, ClusterNode] = {i: ClusterNode(i, workdir / f"node{i}") for i in range(1, size + 1)}
        # The metadata quorum's voters; nodes added later with add_broker_only are observers.
        self.voter_ids: list[int] = list(self.nodes)
        self.net: FaultNet | None = FaultNet(self) if proxied else None

    # -- addresses ----------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Every broker, for clients (`bootstrap.servers` / kcat -b)."""
        return ",".join(n.bootstrap for n in self.nodes.values())

    def bootstrap_of(self, node_ids) -> str:
        return ",".join(self.nodes[i].bootstrap for i in node_ids)

    def up_ids(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.up()]

    def up_bootstrap(self) -> str:
        return self.bootstrap_of(self.up_ids())

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id]

    def _commands(self) -> None:
        if self.net is None:
            voters = {i: n.controller_port for i, n in self.nodes.items()}
        else:
            voters = {i: self.net.controller_proxy_port(i) for i in self.nodes}
        quorum = ",".join(f"{i}@127.0.0.1:{port}" for i, port in sorted(voters.items()) if i in self.voter_ids)
        for i, n in self.nodes.items():
            if i not in self.voter_ids:
                continue
            cmd = [
                self.binary,
                "broker",
                "--node-id",
                str(i),
                "--listen",
                f"127.0.0.1:{n.kafka_port}",
                "--controller-quorum",
                quorum,
                "--data-dir",
                str(n.data_dir),
            ]
            if self.net is not None:
                cmd += ["--controller-listen", f"127.0.0.1:{n.controller_port}"]
                cmd += ["--advertised-listener", f"127.0.0.1:{self.net.kafka_proxy_port(i)}"]
            cmd += set_args({**self.settings, **self.node_settings.get(i, {})})
            cmd += self.extra_args
            n.command = cmd

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> "Cluster":
        """Starts every broker, waits until each accepts connections, then until they form a cluster
        (wait_ready). Fails within seconds when a broker exits (its log tail is in the message)."""
        last = ""
        for attempt in range(START_ATTEMPTS):
            ports = reserve_ports(2 * len(self.nodes))
            for k, n in enumerate(self.nodes.values()):
                n.kafka_port, n.controller_port = ports[2 * k], ports[2 * k + 1]
            if self.net is not None:
                self.net.start()
            self._commands()
            for n in self.nodes.values():
                n.spawn(self.env)
            ok, last = self._wait_listening(list(self.nodes.values()))
            if ok:
                self.wait_ready(ready_timeout_s)
                return self
            # A port was lost to another process between reserving and binding: start over.
            for n in self.nodes.values():
                n.kill9()
                shutil.rmtree(n.data_dir, ignore_errors=True)
            if self.net is not None:
                self.net.stop()
        raise RuntimeError(f"cluster did not start after {START_ATTEMPTS} attempts: {last}\n{self.logs()}")

    def add_broker_only(self, node_id: int, settings: dict[str, str] | None = None) -> ClusterNode:
        """Starts a broker-only node (`process.roles=broker`): it follows the voters' metadata quorum as an
        observer and takes partitions like any broker. Waits until it accepts connections (not until the
        others list it: see wait_ready)."""
        assert node_id not in self.nodes and self.net is None
        n = ClusterNode(node_id, self.workdir / f"node{node_id}")
        quorum = ",".join(f"{i}@127.0.0.1:{self.nodes[i].controller_port}" for i in sorted(self.voter_ids))
        for _ in range(START_ATTEMPTS):
            n.kafka_port, n.controller_port = reserve_ports(2)
            n.command = [
                self.binary, "broker", "--node-id", str(node_id),
                "--listen", f"127.0.0.1:{n.kafka_port}",
                "--controller-quorum", quorum,
                "--controller-listen", f"127.0.0.1:{n.controller_port}",
                "--data-dir", str(n.data_dir),
            ] + set_args({**self.settings, **(settings or {}), "process.roles": "broker"}) + self.extra_args
            self.nodes[node_id] = n
            n.spawn(self.env)
            ok, why = self._wait_listening([n])
            if ok:
                return n
            del self.nodes[node_id]
            n.kill9()
        raise RuntimeError(f"broker-only node {node_id} did not start: {why}\n{self.logs()}")

    def _wait_listening(self, nodes: list[ClusterNode]) -> tuple[bool, str]:
        """(True, "") once every node accepts on its Kafka port; (False, why) when one lost its port;
        raises (with logs) for any other failure."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = list(nodes)
        while pending:
            for n in list(pending):
                code = n.proc.poll()
                if code is not None:
                    log = n.log_text()
                    if "in use" in log.rsplit("=== start #", 1)[-1].lower():
                        return False, f"broker {n.node_id} could not bind a port (exit {code})"
                    logs = self.logs()
                    self._abort()
                    raise RuntimeError(f"broker {n.node_id} exited with status {code} while starting\n{logs}")
                if n.listening():
                    pending.remove(n)
            if pending and time.monotonic() > deadline:
                ids = [n.node_id for n in pending]
                logs = self.logs()
                self._abort()
                raise RuntimeError(f"brokers {ids} did not accept connections within {STARTUP_TIMEOUT_S}s\n{logs}")
            time.sleep(0.05)
        return True, ""

    def _abort(self) -> None:
        """Kills every broker after a failed start, so that teardown reports only the start failure."""
        for n in self.nodes.values():
            n.kill9()
            n.stopped_on_purpose = True

    def kill(self, node_id: int) -> None:
        """SIGKILL: a crash, nothing flushed or closed."""
        self.nodes[node_id].kill9()

    def stop(self, node_id: int) -> None:
        """SIGTERM (graceful), SIGKILL after STOP_TIMEOUT_S."""
        self.nodes[node_id].stop()

    def restart(self, node_id: int) -> None:
        """Starts a broker again on its data directory and ports (stopping it gracefully first if it
        still runs) and waits until it accepts connections. Not wait_ready: a test may restart a
        broker while others are down."""
        n = self.nodes[node_id]
        if n.alive():
            n.stop()
        n.spawn(self.env)
        ok, why = self._wait_listening([n])
        if not ok:
            raise RuntimeError(f"broker {node_id} could not restart on its ports: {why}\n{self.logs()}")

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the process is frozen, its sockets stay open (a GC pause, a hung VM)."""
        self.nodes[node_id].pause()

    def resume(self, node_id: int) -> None:
        self.nodes[node_id].resume()

    def close(self) -> list[str]:
        """Stops everything: SIGCONT the paused, SIGTERM all at once, SIGKILL what lingers. Returns
        problems seen (brokers that died on their own or ignored SIGTERM)."""
        problems = []
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is not None and not n.stopped_on_purpose:
                problems.append(f"broker {n.node_id} exited on its own with status {n.proc.returncode}")
        for n in self.nodes.values():
            n.resume()
        for n in self.nodes.values():
            n.send_term()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for n in self.nodes.values():
            n.wait_exit(deadline)
            if n.ignored_sigterm:
                problems.append(f"broker {n.node_id} ignored SIGTERM for {STOP_TIMEOUT_S}s and was killed")
        if self.net is not None:
            self.net.stop()
        return problems

    def logs(self, chars: int = 6000) -> str:
        parts = []
        for n in self.nodes.values():
            if n.paused:
                state = "paused"
            else:
                state = "alive" if n.alive() else f"exited {n.proc.returncode if n.proc else None}"
            parts.append(f"--- broker {n.node_id} log ({state}, {n.log_path}) ---\n{n.log_tail(chars)}")
        return "\n".join(parts)

    # -- state ----------------------------------------------------------------------------------------

    def metadata(self, node_id: int, topics: list[str] | None = None) -> MetadataView:
        """What broker `node_id` itself answers to Metadata (raises when it does not answer)."""
        return metadata_request(self.nodes[node_id].kafka_port, node_id, topics)

    def views(self, topics: list[str] | None = None) -> dict[int, MetadataView]:
        """Metadata from every up broker that answers."""
        out = {}
        for i in self.up_ids():
            try:
                out[i] = self.metadata(i, topics)
            except (OSError, ProtocolError):
                pass
        return out

    def describe(self, topics: list[str] | None = None) -> str:
        """A one-line-per-broker summary for failure messages."""
        lines = []
        for i, v in self.views(topics).items():
            parts = []
            for t in v.topics.values():
                for p in t.partitions.values():
                    parts.append(f"{t.name}/{p.partition}: leader {p.leader} epoch {p.leader_epoch} isr {p.isr}")
            lines.append(f"broker {i}: brokers {sorted(v.brokers)} controller {v.controller_id}; " + "; ".join(parts))
        down = [i for i in self.nodes if i not in self.up_ids()]
        return "\n".join(lines) + (f"\n(down or paused: {down})" if down else "")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Waits until every up broker answers Metadata listing every up broker and a controller that is
        up."""
        def ready():
            want = set(self.up_ids())
            views = self.views()
            if set(views) != want:
                return False
            return all(want <= set(v.brokers) and v.controller_id in want for v in views.values())

        wait_until(ready, timeout_s, f"brokers {self.up_ids()} to form a cluster", describe=self.describe)

    def partition_view(self, topic: str, partition: int) -> PartitionView | None:
        """The newest view of a partition among the up brokers: the one with the highest leader epoch,
        and among those the leader's own (it knows its ISR best)."""
        best = None
        for i, v in self.views([topic]).items():
            p = v.partition(topic, partition)
            if p is None:
                continue
            key = (p.leader_epoch, p.leader == i)
            if best is None or key > best[0]:
                best = (key, p)
        return best[1] if best else None

    def leader_of(self, topic: str, partition: int) -> int:
        """The current leader's id (-1 when none)."""
        p = self.partition_view(topic, partition)
        return p.leader if p else -1

    def wait_leader(self, topic: str, partition: int, timeout_s: float = 20.0, exclude=()) -> int:
        """Waits for a leader that is up and not in `exclude` and returns its id."""
        def leader():
            p = self.partition_view(topic, partition)
            if p and p.leader in self.up_ids() and p.leader not in exclude:
                return p.leader
            return None

        return wait_until(
            leader,
            timeout_s,
            f"a leader of {topic}/{partition} (not {list(exclude)})",
            describe=lambda: self.describe([topic]),
        )

    def isr_of(self, topic: str, partition: int) -> list[int]:
        p = self.partition_view(topic, partition)
        return sorted(p.isr) if p else []

    def wait_isr(
        self, topic: str, partition: int, size: int, timeout_s: float = 20.0, includes=(), excludes=()
    ) -> list[int]:
        """Waits until the partition's ISR has `size` members, with `includes` in it and `excludes` out."""
        def isr():
            members = self.isr_of(topic, partition)
            ok = len(members) == size and set(includes) <= set(members) and not set(excludes) & set(members)
            return members if ok else None

        return wait_until(
            isr,
            timeout_s,
            f"ISR of {topic}/{partition} to have {size} members (with {list(includes)}, without {list(excludes)})",
            describe=lambda: self.describe([topic]),
        )

    def wait_full_isr(self, topic: str, partitions: int, timeout_s: float = 30.0) -> None:
        """Waits until every partition has every replica in sync (all brokers caught up)."""
        deadline = time.monotonic() + timeout_s
        for p in range(partitions):
            self.wait_isr(topic, p, len(self.nodes), max(1.0, deadline - time.monotonic()))

    def controller_id(self) -> int:
        """The controller most up brokers report (-1 when none does)."""
        votes: dict[int, int] = {}
        for v in self.views([]).values():
            if v.controller_id >= 0:
                votes[v.controller_id] = votes.get(v.controller_id, 0) + 1
        return max(votes, key=votes.get) if votes else -1

    def coordinator_of(self, group: str, timeout_s: float = 20.0) -> int:
        """The group coordinator's node id (FindCoordinator, asked of the up brokers in turn)."""
        def find():
            for i in self.up_ids():
                try:
                    error, node = find_coordinator_request(self.nodes[i].kafka_port, group)
                except (OSError, ProtocolError):
                    continue
                if error == NONE and node in self.up_ids():
                    return node
            return None

        return wait_until(find, timeout_s, f"a coordinator for group {group}")

    def create_topic(
        self, topic: str, partitions: int = 1, replication_factor: int = 3, config: dict | None = None
    ) -> None:
        """Creates a topic through the up brokers and waits until every up broker knows every
        partition's leader."""
        from confluent_kafka.admin import AdminClient, NewTopic

        client = AdminClient({"bootstrap.servers": self.up_bootstrap(), "broker.address.family": "v4"})
        futures = client.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor, config=config or {})],
            operation_timeout=15,
            request_timeout=20,
        )
        futures[topic].result(timeout=30)
        self.wait_topic(topic, partitions)

    def wait_topic(self, topic: str, partitions: int, timeout_s: float = 20.0) -> None:
        def known_everywhere():
            views = self.views([topic])
            if set(views) != set(self.up_ids()):
                return False
            for v in views.values():
                ps = [v.partition(topic, p) for p in range(partitions)]
                if any(p is None or p.leader < 0 for p in ps):
                    return False
            return True

        wait_until(
            known_everywhere,
            timeout_s,
            f"every up broker to know {topic}'s {partitions} partitions and leaders",
            describe=lambda: self.describe([topic]),
        )


# --- fault injection on the network ---------------------------------------------------------------------


class FaultNet:
    """TCP proxies in front of every broker's controller port and Kafka port. Brokers reach each other
    only through them (the quorum lists the controller proxies, the advertised listeners are the Kafka
    proxies). Each accepted connection is classified by the process that owns its client end (found in
    /proc): `cut(n)` closes every broker-to-broker connection from or to broker n and refuses new ones,
    while connections from clients (this test process, kcat) always pass. `heal(n)` lets traffic flow
    again. With `blackhole=True` a cut holds connections open and drops their bytes instead (what a real
    partition looks like: timeouts rather than resets). `cut_link(a, b)` cuts only the Kafka-port traffic
    between brokers a and b (replication), leaving the controller quorum and every other pair whole."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.proxies: dict[tuple[int, str], _Proxy] = {}
        self.isolated: set[int] = set()
        self.cut_links: set[frozenset[int]] = set()
        self.blackhole = False
        self.lock = threading.Lock()

    def start(self) -> None:
        self.stop()
        for i in self.cluster.nodes:
            for kind in ("controller", "kafka"):
                self.proxies[(i, kind)] = _Proxy(self, i, kind)

    def stop(self) -> None:
        for p in self.proxies.values():
            p.close()
        self.proxies = {}

    def controller_proxy_port(self, node_id: int) -> int:
        return self.proxies[(node_id, "controller")].port

    def kafka_proxy_port(self, node_id: int) -> int:
        return self.proxies[(node_id, "kafka")].port

    def target_port(self, node_id: int, kind: str) -> int:
        n = self.cluster.nodes[node_id]
        return n.controller_port if kind == "controller" else n.kafka_port

    def owner_of(self, client_port: int, server_port: int) -> int | None:
        """The broker whose process owns the client end (local port `client_port`, connected to
        `server_port`) of a loopback connection; None for anything else (a client)."""
        inodes = {
            inode for lport, rport, _state, inode in _tcp_table() if lport == client_port and rport == server_port
        }
        if not inodes:
            return None
        for i, n in self.cluster.nodes.items():
            if n.pid is not None and inodes & _socket_inodes_of(n.pid):
                return i
        return None

    def blocked(self, source: int | None, dest: int, kind: str) -> bool:
        with self.lock:
            if source is None or source == dest:
                return False
            return bool({source, dest} & self.isolated) or (
                kind == "kafka" and frozenset((source, dest)) in self.cut_links
            )

    def cut(self, node_id: int, blackhole: bool = False) -> None:
        with self.lock:
            self.isolated.add(node_id)
            self.blackhole = blackhole
        for p in list(self.proxies.values()):
            p.enforce()

    def heal(self, node_id: int) -> None:
        with self.lock:
            self.isolated.discard(node_id)

    def cut_link(self, a: int, b: int) -> None:
        """Closes the Kafka-port connections between brokers a and b (either direction) and refuses new
        ones; the controller links and every other pair keep working."""
        with self.lock:
            self.cut_links.add(frozenset((a, b)))
        for p in list(self.proxies.values()):
            p.enforce()

    def heal_link(self, a: int, b: int) -> None:
        with self.lock:
            self.cut_links.discard(frozenset((a, b)))


class _Proxy:
    def __init__(self, net: FaultNet, node_id: int, kind: str):
        self.net = net
        self.node_id = node_id
        self.kind = kind
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.links: list[_Link] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept_loop, name=f"proxy-{kind}-{node_id}", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, (_host, client_port) = self.listener.accept()
            except OSError:
                return
            source = self.net.owner_of(client_port, self.port)
            if self.net.blocked(source, self.node_id, self.kind) and not self.net.blackhole:
                client.close()
                continue
            try:
                upstream = socket.create_connection(
                    ("127.0.0.1", self.net.target_port(self.node_id, self.kind)), timeout=2
                )
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(self, source, client, upstream)
            with self.lock:
                self.links = [l for l in self.links if not l.done] + [link]
            link.start()

    def enforce(self) -> None:
        with self.lock:
            links = list(self.links)
        for link in links:
            if self.net.blocked(link.source, self.node_id, self.kind) and not self.net.blackhole:
                link.close()

    def close(self) -> None:
        self.closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            links = list(self.links)
        for link in links:
            link.close()


class _Link:
    """One proxied connection: two pumping threads."""

    def __init__(self, proxy: _Proxy, source: int | None, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.source = source
        self.client = client
        self.upstream = upstream
        self.done = False

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(self.client, self.upstream), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.upstream, self.client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.proxy.net.blocked(self.source, self.proxy.node_id, self.proxy.kind):
                    # Blackholed (a reset cut closes the link instead): the bytes vanish.
                    continue
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
