"""`spate connect` (Kafka-Connect-compatible workers) as real processes against a real `spate broker`,
driven by clients we did not write: `curl` and kafka-connect-py on the REST API, confluent-kafka and
kcat on the topics.

Every test starts its own broker and its own workers on free loopback ports, with their files in the
test's temporary directory, and stops every process it started. A worker's log is attached to the
report of a failing test.

Delivery from the file source is at-least-once: after a kill -9 the lines read since the last offset
flush (offset.flush.interval.ms, 200 ms here) are read again, so a line may appear twice within that
window; no line may be missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from kafka_connect import KafkaConnect

from conftest import REPO_ROOT, free_port, spate_binary
from spatetest import DUMMY_GROUP, client_config, create_topic, kcat, terminate, unique_topic, wait_until, watermarks

pytestmark = pytest.mark.timeout(150)

# The first rebalance of a new group starts at once (Kafka waits 3 s for more members).
BROKER_ARGS = ["--set", "group.initial.rebalance.delay.ms=0"]
# Offsets are flushed often, so that a kill -9 repeats little; a killed worker leaves the group after
# 6 s (the broker's minimum session timeout) rather than Kafka's default 10 s.
WORKER_SETTINGS = {
    "offset.flush.interval.ms": "200",
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "500",
}
# How long a worker may take to listen after it is started (a debug build).
WORKER_STARTUP_S = 30.0
# How long a SIGTERM'd worker may take to stop its tasks, store offsets and exit.
WORKER_STOP_S = 20.0
# How long a connector may take to be RUNNING after it was created (the group forms first).
RUNNING_TIMEOUT_S = 30.0
LISTENING_LINE = "spate connect worker listening on"
PLUGINS_DIR = REPO_ROOT / "plugins"


class ConnectWorker:
    """One `spate connect` process, restartable on the same REST port."""

    def __init__(self, binary: str, bootstrap: str, workdir: Path, group_id: str, settings: dict, files):
        self.binary = binary
        self.bootstrap = bootstrap
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "connect.log"
        self.label = f"connect worker {workdir.name}"
        self.group_id = group_id
        self.settings = dict(settings)
        self.files = [str(f) for f in files]
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # Set when we stopped or killed it on purpose; teardown treats any other exit as a failure.
        self.stopped_on_purpose = False
        self.ignored_sigterm = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"

    def command(self, port: int) -> list[str]:
        cmd = [
            self.binary, "connect",
            "--bootstrap-server", self.bootstrap,
            "--listen", f"127.0.0.1:{port}",
            "--group-id", self.group_id,
            "--plugin-path", str(PLUGINS_DIR),
        ]
        for key, value in self.settings.items():
            cmd += ["--set", f"{key}={value}"]
        return cmd + self.files

    def start(self) -> "ConnectWorker":
        """Starts the worker and waits until its REST API answers; keeps the port of a previous run
        (the worker id is its URL) and picks another only when the first bind fails."""
        assert not self.alive(), "worker already running"
        errors = []
        for attempt in range(5):
            port = self.port if (self.port is not None and attempt == 0) else free_port()
            error = self._start_once(port)
            if error is None:
                self.port = port
                return self
            errors.append(error)
        raise AssertionError(f"spate connect did not start: {errors}\n--- log ---\n{self.log_text()[-5000:]}")

    def _start_once(self, port: int) -> str | None:
        self.starts += 1
        self.stopped_on_purpose = False
        cmd = self.command(port)
        env = {**os.environ, "RUST_BACKTRACE": "1", "NO_COLOR": "1"}
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            start_offset = log.tell()
            # The repository root is the current directory, so that `plugins/transforms/…` scripts
            # resolve as the docs write them.
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT
            )
        deadline = time.monotonic() + WORKER_STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with status {self.proc.returncode} before listening on {port}"
            with open(self.log_path, "rb") as log:
                log.seek(start_offset)
                if LISTENING_LINE.encode() in log.read():
                    try:
                        if requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                            return None
                    except requests.RequestException:
                        pass
            time.sleep(0.1)
        self.kill9()
        raise AssertionError(
            f"spate connect did not answer GET / on port {port} within {WORKER_STARTUP_S}s\n"
            f"--- log ---\n{self.log_text()[-5000:]}"
        )

    def kill9(self) -> None:
        """SIGKILL: no offset flush, no leaving the group."""
        self.stopped_on_purpose = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=WORKER_STOP_S)

    def stop(self) -> int | None:
        """SIGTERM (tasks stop, offsets are stored, the worker leaves its group), SIGKILL after
        WORKER_STOP_S. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.stopped_on_purpose = True
        code, ignored = terminate(self.proc, WORKER_STOP_S)
        self.ignored_sigterm = self.ignored_sigterm or ignored
        return code


@pytest.fixture
def connect_broker(broker_factory):
    return broker_factory(extra_args=BROKER_ARGS)


@pytest.fixture
def connect_worker(tmp_path, request):
    """Returns `start(bootstrap, group_id="connect-e2e", files=(), **settings) -> ConnectWorker`,
    started. At teardown every worker still running gets SIGTERM and must exit 0; one that exited by
    itself fails the test."""
    binary = spate_binary()
    started: list[ConnectWorker] = []
    request.node._spate_processes = started

    def start(bootstrap: str, group_id: str = "connect-e2e", files=(), **settings) -> ConnectWorker:
        merged = {**WORKER_SETTINGS, **{k.replace("_", "."): str(v) for k, v in settings.items()}}
        worker = ConnectWorker(binary, bootstrap, tmp_path / f"worker{len(started)}", group_id, merged, files)
        started.append(worker)
        return worker.start()

    yield start
    problems = []
    for i, w in enumerate(started):
        if w.proc is not None and not w.alive() and not w.stopped_on_purpose:
            problems.append(f"worker {i} exited by itself with status {w.proc.returncode}")
        if w.alive():
            code = w.stop()
            if w.ignored_sigterm:
                problems.append(f"worker {i} ignored SIGTERM for {WORKER_STOP_S}s and was killed")
            elif code != 0:
                problems.append(f"worker {i} exited with status {code} on SIGTERM")
    if problems:
        pytest.fail("; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# REST helpers


def curl(method: str, url: str, body=None) -> tuple[int, object]:
    """Runs curl and returns (HTTP status, the body parsed as JSON, or the raw text when it is not
    JSON, or None when empty)."""
    cmd = ["curl", "-s", "-S", "-X", method, "-w", "%{http_code}", "--max-time", "30"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    cmd.append(url)
    proc = subprocess.run(cmd, capture_output=True, timeout=40)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()}"
    out = proc.stdout.decode()
    status, text = int(out[-3:]), out[:-3]
    if not text.strip():
        return status, None
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def status_of(url: str, name: str) -> dict | None:
    response = requests.get(f"{url}/connectors/{name}/status", timeout=10)
    return response.json() if response.status_code == 200 else None


def wait_for_state(url: str, name: str, state: str, tasks: int = 1, timeout_s: float = RUNNING_TIMEOUT_S) -> dict:
    """Waits until the connector and all of its `tasks` tasks are in `state`; returns the status."""
    seen = {}

    def check():
        seen["status"] = status_of(url, name)
        s = seen["status"]
        # A FAILED task does not recover by itself: fail at once, with its trace.
        for t in (s or {}).get("tasks", []):
            assert state == "FAILED" or t["state"] != "FAILED", (
                f"waiting for {name} {state}: task {t['id']} FAILED: {t.get('trace')}"
            )
        return (
            s
            if s
            and s["connector"]["state"] == state
            and len(s["tasks"]) == tasks
            and all(t["state"] == state for t in s["tasks"])
            else None
        )

    return wait_until(check, timeout_s, f"connector {name} {state} with {tasks} task(s)",
                      describe=lambda: seen.get("status"))


def no_failed_task(url: str, name: str):
    """A guard for waits: fails at once, with the trace, when a task of `name` is FAILED."""

    def guard():
        s = status_of(url, name)
        for t in (s or {}).get("tasks", []):
            assert t["state"] != "FAILED", f"task {name}-{t['id']} FAILED: {t.get('trace')}"

    return guard


def create_connector(url: str, name: str, config: dict) -> dict:
    """POST /connectors, retrying while the group is still forming (Kafka answers 409 then)."""
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    while True:
        response = requests.post(f"{url}/connectors", json={"name": name, "config": config}, timeout=30)
        if response.status_code == 201:
            return response.json()
        if response.status_code in (409, 500, 503) and time.monotonic() < deadline:
            time.sleep(0.3)
            continue
        raise AssertionError(f"creating {name} answered {response.status_code}: {response.text}")


def file_source(path, topic: str, **extra) -> dict:
    """A FileStreamSource config: scans often, so that tests need not wait for a second."""
    return {
        "connector.class": "FileStreamSource",
        "tasks.max": "1",
        "file": str(path),
        "topic": topic,
        "scan.interval.ms": "100",
        **extra,
    }


# ---------------------------------------------------------------------------------------------------
# Topic helpers


class TopicReader:
    """Follows partition 0 (or `partitions`) of a topic from the beginning with an assigned
    confluent-kafka consumer; keeps every message. consume() is called with a short timeout: it
    waits for num_messages or the timeout, whichever is first."""

    def __init__(self, bootstrap: str, topic: str, partitions=(0,), **config):
        self.topic = topic
        self.consumer = Consumer(
            client_config(
                bootstrap,
                **{
                    "group.id": DUMMY_GROUP,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": 100,
                    "fetch.message.max.bytes": 16 * 1024 * 1024,
                    **config,
                },
            )
        )
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.messages = []

    def poll(self, timeout_s: float = 0.2) -> list:
        for msg in self.consumer.consume(num_messages=10000, timeout=timeout_s):
            if msg.error():
                # A topic the connector creates later reports "unknown topic" until it exists.
                if "UNKNOWN_TOPIC" in str(msg.error()) or "Unknown topic" in str(msg.error()):
                    continue
                raise AssertionError(f"consumer error on {self.topic}: {msg.error()}")
            self.messages.append(msg)
        return self.messages

    def values(self) -> list[str]:
        return [m.value().decode(errors="replace") if m.value() is not None else None for m in self.messages]

    def wait_for_values(
        self, expected: list[str], timeout_s: float = 30.0, what: str | None = None, guard=None
    ) -> list[str]:
        """Waits until every value in `expected` was read (in any order, duplicates allowed); calls
        `guard()` (which may raise, e.g. on a FAILED task) while it waits."""
        want = set(expected)

        def check():
            if guard is not None:
                guard()
            self.poll()
            return want <= set(self.values())

        wait_until(check, timeout_s, what or f"{len(want)} values on {self.topic}", interval_s=0,
                   describe=lambda: f"missing {sorted(want - set(self.values()))[:10]}, "
                                    f"read {len(self.messages)}: {self.values()[-5:]}")
        return self.values()

    def wait_for_count(self, n: int, timeout_s: float = 30.0) -> list:
        wait_until(lambda: len(self.poll()) >= n, timeout_s, f"{n} messages on {self.topic}", interval_s=0,
                   describe=lambda: f"read {len(self.messages)}: {self.values()[-5:]}")
        return self.messages

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def topic_reader():
    readers: list[TopicReader] = []

    def make(bootstrap: str, topic: str, partitions=(0,)) -> TopicReader:
        reader = TopicReader(bootstrap, topic, partitions)
        readers.append(reader)
        return reader

    yield make
    for r in readers:
        r.close()


def headers_of(msg) -> dict[str, str]:
    return {k: (v.decode(errors="replace") if v is not None else None) for k, v in (msg.headers() or [])}


def append(path: Path, lines, fh=None) -> None:
    data = "".join(f"{line}\n" for line in lines).encode()
    if fh is not None:
        fh.write(data)
        fh.flush()
        return
    with open(path, "ab") as f:
        f.write(data)


def start_line_writer(log: Path, total: int, filler: str) -> tuple[threading.Thread, threading.Event]:
    """Appends `line NNNNNN <filler * 40>` lines 0..total to `log` in chunks of 500, 40 ms apart, on
    a thread; the event is set when all are written."""
    done = threading.Event()

    def writer():
        with open(log, "ab") as f:
            for start in range(0, total, 500):
                f.write("".join(f"line {i:06d} {filler * 40}\n" for i in range(start, start + 500)).encode())
                f.flush()
                time.sleep(0.04)
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    return thread, done


def high_watermark(bootstrap: str, topic: str) -> int:
    return watermarks(bootstrap, topic, 0)[1]


# ---------------------------------------------------------------------------------------------------
# 1. The REST API with curl


def test_rest_api_with_curl(connect_broker, connect_worker, topic_reader, tmp_path):
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("curl")
    create_topic(bootstrap, topic)
    log = tmp_path / "curl.log"
    lines = [f"curl line {i}" for i in range(3)]
    append(log, lines)
    worker = connect_worker(bootstrap)
    url = worker.url

    status, info = curl("GET", f"{url}/")
    assert status == 200, info
    assert {"version", "commit", "kafka_cluster_id"} <= set(info), info

    status, plugins = curl("GET", f"{url}/connector-plugins")
    assert status == 200, plugins
    classes = [p["class"] for p in plugins]
    assert any("FileStreamSource" in c for c in classes) and any("FileStreamSink" in c for c in classes), classes

    # Create: 201 with the connector's info.
    config = file_source(log, topic)
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    while True:
        status, created = curl("POST", f"{url}/connectors", {"name": "curl-src", "config": config})
        if status != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status == 201, created
    assert created["name"] == "curl-src" and created["type"] == "source", created
    assert created["config"]["file"] == str(log), created
    # Creating it again is a conflict.
    status, body = curl("POST", f"{url}/connectors", {"name": "curl-src", "config": config})
    assert status == 409 and body["error_code"] == 409, (status, body)

    running = wait_for_state(url, "curl-src", "RUNNING")
    assert running["type"] == "source" and running["tasks"][0]["id"] == 0, running
    status, names = curl("GET", f"{url}/connectors")
    assert status == 200 and names == ["curl-src"], (status, names)
    status, expanded = curl("GET", f"{url}/connectors?expand=status&expand=info")
    assert status == 200, expanded
    assert expanded["curl-src"]["status"]["connector"]["state"] == "RUNNING", expanded
    assert expanded["curl-src"]["info"]["config"]["topic"] == topic, expanded
    status, cfg = curl("GET", f"{url}/connectors/curl-src/config")
    assert status == 200 and cfg["file"] == str(log) and cfg["name"] == "curl-src", cfg
    status, tasks = curl("GET", f"{url}/connectors/curl-src/tasks")
    assert status == 200 and tasks[0]["id"] == {"connector": "curl-src", "task": 0}, tasks
    reader = topic_reader(bootstrap, topic)
    reader.wait_for_values(lines)

    # Pause, resume, restart.
    status, body = curl("PUT", f"{url}/connectors/curl-src/pause")
    assert status == 202, (status, body)
    wait_for_state(url, "curl-src", "PAUSED")
    status, body = curl("PUT", f"{url}/connectors/curl-src/resume")
    assert status == 202, (status, body)
    wait_for_state(url, "curl-src", "RUNNING")
    status, body = curl("POST", f"{url}/connectors/curl-src/restart")
    assert status == 204, (status, body)
    status, body = curl("POST", f"{url}/connectors/curl-src/restart?includeTasks=true")
    assert status == 202, (status, body)
    assert body["name"] == "curl-src" and body["connector"]["state"] in ("RESTARTING", "RUNNING"), body
    wait_for_state(url, "curl-src", "RUNNING")
    status, body = curl("POST", f"{url}/connectors/curl-src/tasks/0/restart")
    assert status == 204, (status, body)
    wait_for_state(url, "curl-src", "RUNNING")

    # Validate a bad config: 200 with the field's error.
    bad = {**config, "name": "curl-bad", "batch.size": "abc"}
    status, validation = curl("PUT", f"{url}/connector-plugins/FileStreamSource/config/validate", bad)
    assert status == 200, (status, validation)
    assert validation["error_count"] >= 1, validation
    by_name = {c["value"]["name"]: c["value"] for c in validation["configs"]}
    assert by_name["batch.size"]["errors"], by_name.get("batch.size")
    assert not by_name["topic"]["errors"], by_name.get("topic")
    # Creating it: 400 with Kafka's error JSON naming the field.
    status, body = curl("POST", f"{url}/connectors", {"name": "curl-bad", "config": bad})
    assert status == 400, (status, body)
    assert body["error_code"] == 400 and "batch.size" in body["message"], body
    status, body = curl("GET", f"{url}/connectors/curl-bad")
    assert status == 404 and body["error_code"] == 404 and body["message"], (status, body)
    status, body = curl("GET", f"{url}/connectors/no-such-connector/status")
    assert status == 404 and body["error_code"] == 404, (status, body)

    # Stop, then the offsets: one partition, the file's fingerprint, at the end of the file.
    status, body = curl("PUT", f"{url}/connectors/curl-src/stop")
    assert status == 204, (status, body)  # Kafka: void handler (pause and resume answer 202)
    wait_for_state(url, "curl-src", "STOPPED", tasks=0)
    size = log.stat().st_size
    status, offsets = curl("GET", f"{url}/connectors/curl-src/offsets")
    assert status == 200, (status, offsets)
    assert len(offsets["offsets"]) == 1, offsets
    partition, offset = offsets["offsets"][0]["partition"], offsets["offsets"][0]["offset"]
    assert re.fullmatch(r"[0-9a-f]{16}", partition["fingerprint"]), partition
    assert offset["position"] == size, (offset, size)

    # Alter the offset back to the start: after resuming the lines are read again.
    status, body = curl("PATCH", f"{url}/connectors/curl-src/offsets",
                        {"offsets": [{"partition": partition, "offset": {**offset, "position": 0}}]})
    assert status == 200 and body["message"], (status, body)
    status, offsets = curl("GET", f"{url}/connectors/curl-src/offsets")
    assert offsets["offsets"][0]["offset"]["position"] == 0, offsets
    status, body = curl("PUT", f"{url}/connectors/curl-src/resume")
    assert status == 202, (status, body)
    wait_for_state(url, "curl-src", "RUNNING")
    reader.wait_for_count(2 * len(lines))
    assert Counter(reader.values()) == Counter(lines * 2), reader.values()

    # Reset (delete) the offsets of the stopped connector.
    status, body = curl("PUT", f"{url}/connectors/curl-src/stop")
    assert status == 204, (status, body)
    wait_for_state(url, "curl-src", "STOPPED", tasks=0)
    # Altering a running connector's offsets is refused; a stopped one's are deleted.
    status, body = curl("DELETE", f"{url}/connectors/curl-src/offsets")
    assert status == 200 and body["message"], (status, body)
    status, offsets = curl("GET", f"{url}/connectors/curl-src/offsets")
    assert status == 200 and offsets["offsets"] == [], offsets

    status, body = curl("DELETE", f"{url}/connectors/curl-src")
    assert status == 204, (status, body)
    wait_until(lambda: curl("GET", f"{url}/connectors/curl-src")[0] == 404, 10, "the deleted connector to be gone")
    status, names = curl("GET", f"{url}/connectors")
    assert status == 200 and names == [], names


def test_rest_api_errors_and_edge_cases(connect_broker, connect_worker, tmp_path):
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("alter")
    create_topic(bootstrap, topic)
    log = tmp_path / "a.log"
    append(log, ["one"])
    worker = connect_worker(bootstrap)
    create_connector(worker.url, "running-src", file_source(log, topic))
    wait_for_state(worker.url, "running-src", "RUNNING")
    status, body = curl("PATCH", f"{worker.url}/connectors/running-src/offsets",
                        {"offsets": [{"partition": {"fingerprint": "0" * 16}, "offset": {"position": 0}}]})
    # Kafka: 400 "Connectors must be in the STOPPED state before their offsets can be modified".
    assert status == 400 and body["error_code"] == 400 and "STOPPED" in body["message"], (status, body)
    status, body = curl("DELETE", f"{worker.url}/connectors/running-src/offsets")
    assert status == 400 and body["error_code"] == 400, (status, body)
    # Unknown paths and methods answer Kafka's JSON errors too.
    status, body = curl("GET", f"{worker.url}/no/such/path")
    assert status == 404 and body["error_code"] == 404, (status, body)
    status, body = curl("DELETE", f"{worker.url}/connector-plugins")
    assert status == 405 and body["error_code"] == 405, (status, body)

    url = worker.url
    # Kafka's answers to bad requests: 400 with error_code and message.
    for bad_body, why in [
        ({"name": "x", "config": {"connector.class": "NoSuchConnector", "topic": topic}}, "an unknown class"),
        ({"name": "x", "config": {"topic": topic, "file": str(log)}}, "no connector.class"),
        ({"name": "x", "config": {**file_source(log, topic), "name": "y"}}, "a config name that differs"),
        ({"config": file_source(log, topic)}, "no name"),
    ]:
        status, body = curl("POST", f"{url}/connectors", bad_body)
        assert status == 400 and body["error_code"] == 400 and body["message"], (why, status, body)
    status, body = curl("POST", f"{url}/connectors", "not an object")
    assert status in (400, 415, 422) and body["error_code"] == status, (status, body)
    # Unknown connectors and tasks: 404.
    for method, path in [
        ("PUT", "/connectors/nope/pause"),
        ("PUT", "/connectors/nope/resume"),
        ("POST", "/connectors/nope/restart"),
        ("DELETE", "/connectors/nope"),
        ("GET", "/connectors/nope/offsets"),
        ("GET", "/connectors/running-src/tasks/7/status"),
    ]:
        status, body = curl(method, url + path)
        assert status == 404 and body["error_code"] == 404, (method, path, status, body)
    # PUT /connectors/NAME/config creates (201), then updates (200).
    put_topic = unique_topic("put")
    create_topic(bootstrap, put_topic)
    put_log = tmp_path / "put.log"
    put_log.touch()
    put_config = file_source(put_log, put_topic)
    status, body = curl("PUT", f"{url}/connectors/put-src/config", put_config)
    assert status == 201 and body["name"] == "put-src", (status, body)
    status, body = curl("PUT", f"{url}/connectors/put-src/config", {**put_config, "batch.size": "7"})
    assert status == 200 and body["config"]["batch.size"] == "7", (status, body)
    wait_for_state(url, "put-src", "RUNNING")
    status, info = curl("GET", f"{url}/connectors/put-src")
    assert status == 200 and info["tasks"] == [{"connector": "put-src", "task": 0}] and info["type"] == "source", info
    # Plugins: connector classes by default; transforms and predicates with connectorsOnly=false.
    status, everything = curl("GET", f"{url}/connector-plugins?connectorsOnly=false")
    assert status == 200, everything
    kinds = Counter(p["type"] for p in everything)
    assert all(kinds[k] >= 1 for k in ("source", "sink", "transformation", "predicate")), kinds
    assert any(p["class"].endswith("Filter") for p in everything), everything
    status, keys = curl("GET", f"{url}/connector-plugins/FileStreamSource/config")
    assert status == 200 and {"file", "topic", "batch.size"} <= {k["name"] for k in keys}, keys
    status, body = curl("GET", f"{url}/connector-plugins/NoSuchConnector/config")
    assert status == 404 and body["error_code"] == 404, (status, body)


DELETE_DELAYS_S = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_deleted_connector_recreated_at_once_runs_from_its_offsets(
    connect_broker, connect_worker, topic_reader, tmp_path
):
    """DELETE, then at once POST the same name again (a redeploy script): the new connector runs,
    and since a deleted connector's offsets are kept (as Kafka does), it resumes where the old one
    was rather than reading the file again. Several rounds, each with one new line, each while an
    update of another connector makes the group rebalance."""
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("recreate")
    create_topic(bootstrap, topic)
    log = tmp_path / "r.log"
    append(log, ["line 0"])
    worker = connect_worker(bootstrap)
    url = worker.url
    create_connector(url, "re-src", file_source(log, topic))
    wait_for_state(url, "re-src", "RUNNING")
    reader = topic_reader(bootstrap, topic)
    reader.wait_for_values(["line 0"])
    # Another connector whose updates make the group rebalance while re-src is deleted.
    other_topic = unique_topic("other")
    create_topic(bootstrap, other_topic)
    other_log = tmp_path / "other.log"
    other_log.touch()
    create_connector(url, "other-src", file_source(other_log, other_topic))
    wait_for_state(url, "other-src", "RUNNING")
    for round_ in range(1, len(DELETE_DELAYS_S) + 1):
        # Refused offset changes on the running connector must leave nothing behind.
        status, _ = curl("PATCH", f"{url}/connectors/re-src/offsets",
                         {"offsets": [{"partition": {"fingerprint": "0" * 16}, "offset": {"position": 0}}]})
        assert status == 400
        status, _ = curl("DELETE", f"{url}/connectors/re-src/offsets")
        assert status == 400
        status, _ = curl("PUT", f"{url}/connectors/other-src/config",
                         file_source(other_log, other_topic, **{"batch.size": str(100 + round_)}))
        assert status == 200
        # The delete lands at different points of the rebalance the update started.
        time.sleep(DELETE_DELAYS_S[round_ - 1])
        status, _ = curl("DELETE", f"{url}/connectors/re-src")
        assert status == 204
        wait_until(lambda: curl("GET", f"{url}/connectors/re-src")[0] == 404, 10, "re-src to be gone")
        append(log, [f"line {round_}"])
        create_connector(url, "re-src", file_source(log, topic))
        wait_for_state(url, "re-src", "RUNNING", timeout_s=15)
        reader.wait_for_values([f"line {round_}"])
    time.sleep(0.5)
    reader.poll()
    assert reader.values() == [f"line {i}" for i in range(len(DELETE_DELAYS_S) + 1)], reader.values()


# ---------------------------------------------------------------------------------------------------
# 2. The REST API with kafka-connect-py


def test_rest_api_with_kafka_connect_py(connect_broker, connect_worker, topic_reader, tmp_path):
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("kcpy")
    create_topic(bootstrap, topic)
    log = tmp_path / "kcpy.log"
    append(log, ["py 1", "py 2"])
    worker = connect_worker(bootstrap)
    kc = KafkaConnect(url=worker.url)

    assert "version" in kc.get_cluster_info()
    assert any("FileStreamSource" in p["class"] for p in kc.list_connector_plugins())
    config = file_source(log, topic)
    # The group may still be forming: kafka-connect-py raises on the 409, so retry as a user would.
    created = wait_until(lambda: _try(lambda: kc.create_connector({"name": "py-src", "config": config})),
                         RUNNING_TIMEOUT_S, "kafka-connect-py to create the connector")
    assert created["name"] == "py-src", created

    def state():
        s = kc.get_connector_status("py-src")
        return (s["connector"]["state"], [t["state"] for t in s["tasks"]])

    wait_until(lambda: state() == ("RUNNING", ["RUNNING"]), RUNNING_TIMEOUT_S, "RUNNING", describe=state)
    topic_reader(bootstrap, topic).wait_for_values(["py 1", "py 2"])
    assert kc.list_connectors() == ["py-src"]
    listed = kc.list_connectors(expand="status")
    assert listed["py-src"]["status"]["connector"]["state"] == "RUNNING", listed
    assert kc.get_connector("py-src")["config"]["topic"] == topic
    assert kc.list_connector_tasks("py-src")[0]["id"]["task"] == 0
    assert kc.get_connector_task_status("py-src", 0)["state"] == "RUNNING"
    assert topic in kc.list_connector_topics("py-src")["py-src"]["topics"]

    kc.pause_connector("py-src")
    wait_until(lambda: state() == ("PAUSED", ["PAUSED"]), 15, "PAUSED", describe=state)
    kc.resume_connector("py-src")
    wait_until(lambda: state() == ("RUNNING", ["RUNNING"]), 15, "RUNNING", describe=state)
    # kafka-connect-py sends includeTasks=False&onlyFailed=False (Python's spelling of booleans).
    kc.restart_connector("py-src")
    restarted = kc.restart_connector("py-src", include_tasks=True)
    assert restarted["name"] == "py-src", restarted
    kc.restart_connector_task("py-src", 0)
    wait_until(lambda: state() == ("RUNNING", ["RUNNING"]), 15, "RUNNING after restarts", describe=state)

    validation = kc.validate_connector_config("FileStreamSource", {**config, "batch.size": "abc"})
    assert validation["error_count"] >= 1, validation
    errors = {c["value"]["name"]: c["value"]["errors"] for c in validation["configs"]}
    assert errors["batch.size"], errors
    # Kafka validates `name` too: a config without it has that one error.
    unnamed = kc.validate_connector_config("FileStreamSource", config)
    assert [c["value"]["name"] for c in unnamed["configs"] if c["value"]["errors"]] == ["name"], unnamed
    good = kc.validate_connector_config("FileStreamSource", {**config, "name": "py-src"})
    assert good["error_count"] == 0, good

    updated = kc.update_connector("py-src", {**config, "batch.size": "10"})
    assert updated["config"]["batch.size"] == "10", updated
    assert kc.get_connector_config("py-src")["batch.size"] == "10"
    wait_until(lambda: state() == ("RUNNING", ["RUNNING"]), 15, "RUNNING after the update", describe=state)

    with pytest.raises(requests.HTTPError) as bad:
        kc.create_connector({"name": "py-bad", "config": {**config, "batch.size": "abc"}})
    assert bad.value.response.status_code == 400

    kc.delete_connector("py-src")
    wait_until(lambda: kc.list_connectors() == [], 10, "the connector list to be empty")


def _try(action):
    try:
        return action()
    except requests.HTTPError as e:
        if e.response is not None and e.response.status_code in (409, 500):
            return None
        raise


# ---------------------------------------------------------------------------------------------------
# 3. The file source's data path


def test_file_source_lines_headers_rotation_truncation(connect_broker, connect_worker, topic_reader, tmp_path):
    """Appends, rename+create rotation (lines written to the renamed file are still read),
    copytruncate, deletion and re-creation, each on its own connector in one worker."""
    bootstrap = connect_broker.bootstrap
    worker = connect_worker(bootstrap)
    url = worker.url
    topics = {name: unique_topic(name) for name in ("append", "rotate", "trunc", "recreate")}
    for t in topics.values():
        create_topic(bootstrap, t)
    logs = tmp_path / "logs"
    logs.mkdir()
    paths = {name: logs / f"{name}.log" for name in topics}
    for name in topics:
        append(paths[name], [f"{name} first"])
        create_connector(url, f"src-{name}", file_source(paths[name], topics[name], host="e2e-host"))
    for name in topics:
        wait_for_state(url, f"src-{name}", "RUNNING")
    readers = {name: topic_reader(bootstrap, t) for name, t in topics.items()}

    # Appends: values and headers file/offset/host.
    appended = [f"append {i}" for i in range(100)]
    append(paths["append"], appended)
    readers["append"].wait_for_values(appended)
    msgs = readers["append"].messages
    assert [m.value().decode() for m in msgs] == ["append first", *appended], readers["append"].values()[:5]
    offset = 0
    for m in msgs:
        h = headers_of(m)
        assert h.get("file") == str(paths["append"]) and h.get("host") == "e2e-host", h
        assert h.get("offset") == str(offset), (m.value(), h, offset)
        offset += len(m.value()) + 1

    # Rename + create: a writer that keeps its file open writes to the renamed file, then a new file
    # takes the name.
    rotate = paths["rotate"]
    with open(rotate, "ab") as old:
        append(rotate, [f"rotate before {i}" for i in range(20)], fh=old)
        readers["rotate"].wait_for_values([f"rotate before {i}" for i in range(20)])
        rotate.rename(logs / "rotate.log.1")
        append(rotate, [f"rotate after rename {i}" for i in range(20)], fh=old)
        append(rotate, [f"rotate new file {i}" for i in range(20)])
        append(rotate, [f"rotate late old {i}" for i in range(5)], fh=old)
    expected = (["rotate first"] + [f"rotate before {i}" for i in range(20)]
                + [f"rotate after rename {i}" for i in range(20)] + [f"rotate new file {i}" for i in range(20)]
                + [f"rotate late old {i}" for i in range(5)])
    readers["rotate"].wait_for_values(expected)
    # Allow a moment for any duplicates, then each line exactly once.
    time.sleep(1.0)
    readers["rotate"].poll()
    counts = Counter(readers["rotate"].values())
    assert all(counts[line] == 1 for line in expected) and len(counts) == len(expected), counts

    # copytruncate: the content is copied away and the file truncated in place; the writer goes on
    # from offset 0 with shorter content than before.
    trunc = paths["trunc"]
    long_lines = [f"trunc long line number {i} {'x' * 50}" for i in range(50)]
    append(trunc, long_lines)
    readers["trunc"].wait_for_values(long_lines)
    shutil.copy(trunc, logs / "trunc.log.1")
    with open(trunc, "r+b") as f:
        f.truncate(0)
    append(trunc, ["after truncate 1", "after truncate 2"])
    readers["trunc"].wait_for_values(["after truncate 1", "after truncate 2"])

    # Deleted, then re-created with a new first line: a new file, read from its start.
    recreate = paths["recreate"]
    append(recreate, [f"recreate old {i}" for i in range(5)])
    readers["recreate"].wait_for_values([f"recreate old {i}" for i in range(5)])
    recreate.unlink()
    time.sleep(0.5)
    assert status_of(url, "src-recreate")["tasks"][0]["state"] == "RUNNING"
    append(recreate, ["recreated first", "recreated second"])
    readers["recreate"].wait_for_values(["recreated first", "recreated second"])

    for name in topics:
        s = status_of(url, f"src-{name}")
        assert s["tasks"][0]["state"] == "RUNNING", s


def test_file_source_glob_fingerprints_and_multiline(connect_broker, connect_worker, topic_reader, tmp_path):
    bootstrap = connect_broker.bootstrap
    worker = connect_worker(bootstrap)
    glob_topic, ml_topic = unique_topic("glob"), unique_topic("multiline")
    create_topic(bootstrap, glob_topic)
    create_topic(bootstrap, ml_topic)
    gdir = tmp_path / "glob"
    gdir.mkdir()
    # Two files with the same first line (a header) but different content within the fingerprint's
    # 256 bytes: two files, both read in full.
    header = "# app log v1 (identical first line)"
    a_lines = [header] + [f"a line {i:03d} {'a' * 20}" for i in range(20)]
    b_lines = [header] + [f"b line {i:03d} {'b' * 20}" for i in range(20)]
    append(gdir / "a.log", a_lines)
    append(gdir / "b.log", b_lines)
    append(gdir / "ignored.txt", ["not matched by the glob"])
    create_connector(worker.url, "src-glob", file_source(gdir / "*.log", glob_topic))
    ml = tmp_path / "multi.log"
    create_connector(
        worker.url,
        "src-multiline",
        file_source(ml, ml_topic, **{"multiline.start.pattern": r"^\d{4}-\d{2}-\d{2} ", "multiline.timeout.ms": "300"}),
    )
    wait_for_state(worker.url, "src-glob", "RUNNING")
    wait_for_state(worker.url, "src-multiline", "RUNNING")

    glob_reader = topic_reader(bootstrap, glob_topic)
    glob_reader.wait_for_count(len(a_lines) + len(b_lines))
    # A new file matching the glob is picked up.
    c_lines = [f"c line {i}" for i in range(10)]
    append(gdir / "c.log", c_lines)
    glob_reader.wait_for_values(c_lines)
    time.sleep(0.5)
    glob_reader.poll()
    counts = Counter(glob_reader.values())
    assert counts[header] == 2, counts
    for line in a_lines[1:] + b_lines[1:] + c_lines:
        assert counts[line] == 1, (line, counts)
    assert "not matched by the glob" not in counts
    # The host header defaults to this machine's hostname.
    assert {headers_of(m)["host"] for m in glob_reader.messages} == {socket.gethostname()}
    by_file = Counter(headers_of(m)["file"] for m in glob_reader.messages)
    assert by_file == {str(gdir / "a.log"): 21, str(gdir / "b.log"): 21, str(gdir / "c.log"): 10}, by_file

    # Multiline: continuation lines join the event that a start line opened; the last event is
    # complete after multiline.timeout.ms without more lines.
    append(ml, [
        "2026-12-02 10:00:00 ERROR boom",
        "java.lang.IllegalStateException: bad",
        "    at com.example.Foo.bar(Foo.java:10)",
        "    at com.example.Main.main(Main.java:3)",
        "2026-12-02 10:00:01 INFO fine",
        "2026-12-02 10:00:02 WARN last",
        "  continued",
    ])
    ml_reader = topic_reader(bootstrap, ml_topic)
    expected = [
        "2026-12-02 10:00:00 ERROR boom\njava.lang.IllegalStateException: bad\n"
        "    at com.example.Foo.bar(Foo.java:10)\n    at com.example.Main.main(Main.java:3)",
        "2026-12-02 10:00:01 INFO fine",
        "2026-12-02 10:00:02 WARN last\n  continued",
    ]
    ml_reader.wait_for_count(3, timeout_s=15)
    assert ml_reader.values() == expected, ml_reader.values()

    # Invalid UTF-8: replaced by U+FFFD with encoding=utf8 (the default), kept with encoding=bytes.
    raw_line = b"caf\xe9 \xff\xfe end"
    for encoding in ("utf8", "bytes"):
        enc_topic = unique_topic(f"enc-{encoding}")
        create_topic(bootstrap, enc_topic)
        enc_log = tmp_path / f"enc-{encoding}.log"
        enc_log.write_bytes(raw_line + b"\nplain\n")
        create_connector(worker.url, f"src-{encoding}", file_source(enc_log, enc_topic, encoding=encoding))
        enc_reader = topic_reader(bootstrap, enc_topic)
        enc_reader.wait_for_count(2)
        got = enc_reader.messages[0].value()
        want = raw_line if encoding == "bytes" else raw_line.decode("utf-8", errors="replace").encode()
        assert got == want, (encoding, got)


BIG_LINE = b"0123456789" * (1024 * 1024)  # 10 MiB


def write_big_line_file(log: Path) -> None:
    with open(log, "wb") as f:
        f.write(b"before the big line\n" + BIG_LINE + b"\nafter the big line\n")


@pytest.mark.parametrize("max_line", [None, 64 * 1024], ids=["default-max-line-bytes", "64KiB"])
def test_file_source_huge_line_goes_to_the_dead_letter_topic(
    connect_broker, connect_worker, topic_reader, tmp_path, max_line
):
    """A 10 MiB line with max.line.action=dlq: cut to max.line.bytes (its default, 1 MiB, and a
    smaller one) and sent to the dead-letter topic; the lines around it flow."""
    bootstrap = connect_broker.bootstrap
    worker = connect_worker(bootstrap)
    topic, dlq = unique_topic("big"), unique_topic("big-dlq")
    create_topic(bootstrap, topic)
    log = tmp_path / "big.log"
    limit = {} if max_line is None else {"max.line.bytes": str(max_line)}
    max_line = max_line or 1_000_000  # the default max.line.bytes
    write_big_line_file(log)
    create_connector(worker.url, "src-big", file_source(log, topic, **limit, **{
        "max.line.action": "dlq",
        "errors.tolerance": "all",
        "errors.deadletterqueue.topic.name": dlq,
        "errors.deadletterqueue.context.headers.enable": "true",
    }))
    wait_for_state(worker.url, "src-big", "RUNNING")
    guard = no_failed_task(worker.url, "src-big")
    reader = topic_reader(bootstrap, topic)
    reader.wait_for_values(["before the big line", "after the big line"], guard=guard)
    append(log, ["later line"])
    reader.wait_for_values(["later line"], guard=guard)
    assert reader.values() == ["before the big line", "after the big line", "later line"], [
        v[:40] for v in reader.values()
    ]
    dlq_reader = topic_reader(bootstrap, dlq)
    dlq_reader.wait_for_count(1)
    time.sleep(0.5)
    dlq_reader.poll()
    assert len(dlq_reader.messages) == 1, len(dlq_reader.messages)
    msg = dlq_reader.messages[0]
    assert len(msg.value()) == max_line and msg.value() == BIG_LINE[:max_line]
    h = headers_of(msg)
    assert h.get("__connect.errors.connector.name") == "src-big", h.keys()
    assert h.get("__connect.errors.stage") == "TASK_POLL", h.get("__connect.errors.stage")
    assert h.get("file") == str(log), h.get("file")
    assert status_of(worker.url, "src-big")["tasks"][0]["state"] == "RUNNING"


def test_file_source_huge_line_truncated_by_default(connect_broker, connect_worker, topic_reader, tmp_path):
    """A 10 MiB line with the defaults (max.line.bytes 1 MiB, max.line.action=truncate): its first
    1 MiB is the record, and the lines around it flow."""
    bootstrap = connect_broker.bootstrap
    worker = connect_worker(bootstrap)
    topic = unique_topic("big-trunc")
    create_topic(bootstrap, topic)
    log = tmp_path / "big.log"
    write_big_line_file(log)
    create_connector(worker.url, "src-big", file_source(log, topic))
    wait_for_state(worker.url, "src-big", "RUNNING")
    reader = topic_reader(bootstrap, topic)
    reader.wait_for_values(["before the big line", "after the big line"], guard=no_failed_task(worker.url, "src-big"))
    values = [m.value() for m in reader.messages]
    assert len(values) == 3 and values[1] == BIG_LINE[:1_000_000], [(len(v), v[:20]) for v in values]


# ---------------------------------------------------------------------------------------------------
# 4. kill -9 mid-stream


@pytest.mark.slow
def test_kill_9_mid_stream_loses_no_line(connect_broker, connect_worker, tmp_path):
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("kill")
    create_topic(bootstrap, topic)
    log = tmp_path / "stream.log"
    log.touch()
    total = 50_000
    worker = connect_worker(bootstrap)
    create_connector(worker.url, "src-kill", file_source(log, topic))
    wait_for_state(worker.url, "src-kill", "RUNNING")

    # 50 000 lines in chunks of 500, about 4 s of writing.
    thread, done = start_line_writer(log, total, "p")
    wait_until(lambda: high_watermark(bootstrap, topic) >= 8000, 30, "8000 lines in the topic before the kill",
               interval_s=0.1)
    worker.kill9()
    killed_at = high_watermark(bootstrap, topic)
    time.sleep(0.5)
    worker.start()
    thread.join(timeout=60)
    assert done.is_set(), "the writer did not finish"
    wait_until(lambda: high_watermark(bootstrap, topic) >= total, 60, f"at least {total} records",
               interval_s=0.5, describe=lambda: high_watermark(bootstrap, topic))
    time.sleep(1.0)
    reader = TopicReader(bootstrap, topic)
    try:
        end = high_watermark(bootstrap, topic)
        wait_until(lambda: len(reader.poll()) >= end, 30, "the whole topic read back")
        values = reader.values()
    finally:
        reader.close()
    counts = Counter(values)
    expected = {f"line {i:06d} {'p' * 40}" for i in range(total)}
    missing = expected - set(counts)
    extra = set(counts) - expected
    duplicates = len(values) - len(counts)
    print(f"kill -9 at {killed_at} records: {len(values)} records for {total} lines, {duplicates} duplicates")
    assert not missing, f"{len(missing)} lines missing, e.g. {sorted(missing)[:5]}"
    assert not extra, f"unexpected records: {sorted(extra)[:5]}"
    # Only what was read since the last offset flush (200 ms) may come again.
    assert duplicates < total // 10, f"{duplicates} duplicates"
    # The duplicates are one contiguous window re-read after the restart.
    dup_lines = sorted(v for v, c in counts.items() if c > 1)
    if dup_lines:
        first, last = int(dup_lines[0].split()[1]), int(dup_lines[-1].split()[1])
        assert last - first + 1 == len(dup_lines), f"duplicates not one window: {first}..{last}, {len(dup_lines)}"


def test_exactly_once_source_killed_three_times_repeats_and_loses_nothing(connect_broker, connect_worker, tmp_path):
    """KIP-618: with `exactly.once.source.support=enabled` a source task writes its records and the
    file position they reach in one transaction. Killed with SIGKILL three times while lines keep
    arriving, the worker resumes each time from the last committed position: a read_committed
    consumer sees every line exactly once (the same kills without it repeat lines, see
    test_kill_9_mid_stream_loses_no_line)."""
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("eos")
    create_topic(bootstrap, topic)
    log = tmp_path / "stream.log"
    log.touch()
    total = 60_000
    worker = connect_worker(bootstrap, exactly_once_source_support="enabled")
    create_connector(worker.url, "src-eos", file_source(log, topic, **{"exactly.once.support": "required"}))
    wait_for_state(worker.url, "src-eos", "RUNNING")

    # 60 000 lines in chunks of 500, about 5 s of writing.
    thread, done = start_line_writer(log, total, "q")
    killed_at = []
    for threshold in (8_000, 25_000, 45_000):
        wait_until(lambda: high_watermark(bootstrap, topic) >= threshold, 60, f"{threshold} offsets before a kill",
                   interval_s=0.05)
        worker.kill9()
        killed_at.append((high_watermark(bootstrap, topic), done.is_set()))
        time.sleep(0.3)
        worker.start()
    thread.join(timeout=60)
    assert done.is_set(), "the writer did not finish"
    assert any(not writer_done for _, writer_done in killed_at), f"no kill landed mid-stream: {killed_at}"
    reader = TopicReader(bootstrap, topic, **{"isolation.level": "read_committed"})
    try:
        wait_until(lambda: len(reader.poll()) >= total, 120, f"{total} committed records",
                   interval_s=0.2, describe=lambda: len(reader.messages))
        # Anything extra would show up now.
        time.sleep(1.5)
        reader.poll()
        values = reader.values()
    finally:
        reader.close()
    counts = Counter(values)
    expected = {f"line {i:06d} {'q' * 40}" for i in range(total)}
    missing = expected - set(counts)
    duplicates = {v: c for v, c in counts.items() if c > 1}
    print(f"kills at {killed_at}: {len(values)} committed records for {total} lines")
    assert not missing, f"{len(missing)} lines missing, e.g. {sorted(missing)[:5]}"
    assert set(counts) == expected, f"unexpected records: {sorted(set(counts) - expected)[:5]}"
    assert not duplicates, f"{len(duplicates)} lines repeated, e.g. {sorted(duplicates.items())[:5]}"
    # Each line in file order: one task, one partition, transactions in sequence.
    assert values == sorted(values), "lines out of order"
    no_failed_task(worker.url, "src-eos")()


def test_exactly_once_source_config_is_checked(connect_broker, connect_worker, tmp_path):
    """`exactly.once.support=required` on a worker without exactly-once support, and
    `transaction.boundary=connector` (no Spate connector defines its own), fail the task with a
    message naming the key; a value outside the allowed ones is refused at creation."""
    bootstrap = connect_broker.bootstrap
    log = tmp_path / "in.log"
    log.touch()
    plain = connect_worker(bootstrap)
    # A cluster of its own: other internal topics, so the two workers do not share connectors.
    eos = connect_worker(
        bootstrap,
        group_id="connect-eos",
        exactly_once_source_support="enabled",
        **{f"{kind}.storage.topic": f"connect-eos-{kind}" for kind in ("config", "offset", "status")},
    )

    def failure_of(url: str, name: str, config: dict) -> str:
        create_connector(url, name, file_source(log, unique_topic(name), **config))

        def failed_task():
            tasks = (status_of(url, name) or {}).get("tasks") or []
            return tasks[0] if tasks and tasks[0]["state"] == "FAILED" else None

        # The connector itself stays RUNNING, as in Kafka Connect: its task failed.
        return wait_until(failed_task, RUNNING_TIMEOUT_S, f"task of {name} FAILED").get("trace", "")

    trace = failure_of(plain.url, "needs-eos", {"exactly.once.support": "required"})
    assert "exactly.once.support" in trace and "exactly.once.source.support disabled" in trace, trace
    trace = failure_of(eos.url, "own-boundaries", {"transaction.boundary": "connector"})
    assert "transaction.boundary" in trace, trace
    # A value outside the allowed ones is refused when the connector is created (400).
    response = requests.post(
        f"{eos.url}/connectors",
        json={"name": "bad-support", "config": file_source(log, "t", **{"exactly.once.support": "maybe"})},
        timeout=30,
    )
    assert response.status_code == 400 and "exactly.once.support" in response.text, response.text


# ---------------------------------------------------------------------------------------------------
# 5. Two workers in a group


@pytest.mark.slow
def test_two_workers_share_tasks_survive_kill_and_restart(connect_broker, connect_worker, topic_reader, tmp_path):
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("pair")
    create_topic(bootstrap, topic)
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, [f"a {i}" for i in range(10)])
    append(b, [f"b {i}" for i in range(10)])
    w1 = connect_worker(bootstrap, group_id="pair")
    w2 = connect_worker(bootstrap, group_id="pair")
    config = {
        "connector.class": "FileStreamSource",
        "tasks.max": "2",
        "files": f"{a},{b}",
        "topic": topic,
        "scan.interval.ms": "100",
    }
    create_connector(w1.url, "pair-src", config)
    # A paused connector: its state must survive the restart of both workers.
    paused_topic = unique_topic("paused")
    create_topic(bootstrap, paused_topic)
    c = tmp_path / "c.log"
    append(c, ["c 0"])
    create_connector(w2.url, "pair-paused", file_source(c, paused_topic))
    ports = {str(w1.port): w1, str(w2.port): w2}

    def task_workers():
        s = status_of(w2.url, "pair-src")
        if not s or len(s["tasks"]) != 2 or any(t["state"] != "RUNNING" for t in s["tasks"]):
            return None
        return {t["worker_id"] for t in s["tasks"]}

    spread = wait_until(lambda: (w := task_workers()) and len(w) == 2 and w, RUNNING_TIMEOUT_S,
                        "the two tasks running on two workers", describe=lambda: status_of(w1.url, "pair-src"))
    assert all(any(p in wid for p in ports) for wid in spread), (spread, ports)
    reader = topic_reader(bootstrap, topic)
    reader.wait_for_values([f"a {i}" for i in range(10)] + [f"b {i}" for i in range(10)])
    paused_reader = topic_reader(bootstrap, paused_topic)
    paused_reader.wait_for_values(["c 0"])
    rest_status, _ = curl("PUT", f"{w1.url}/connectors/pair-paused/pause")
    assert rest_status == 202
    wait_for_state(w2.url, "pair-paused", "PAUSED")

    # kill -9 the worker that is not the connector's: the survivor takes both tasks.
    s = status_of(w1.url, "pair-src")
    victim = w2 if str(w1.port) in s["connector"]["worker_id"] else w1
    survivor = w1 if victim is w2 else w2
    victim.kill9()
    append(a, [f"a after kill {i}" for i in range(10)])
    append(b, [f"b after kill {i}" for i in range(10)])

    def all_on_survivor():
        st = status_of(survivor.url, "pair-src")
        if not st or len(st["tasks"]) != 2:
            return False
        ids = {st["connector"]["worker_id"]} | {t["worker_id"] for t in st["tasks"]}
        states = {st["connector"]["state"]} | {t["state"] for t in st["tasks"]}
        return len(ids) == 1 and str(survivor.port) in ids.pop() and states == {"RUNNING"}

    wait_until(all_on_survivor, 45, "both tasks moved to the survivor",
               describe=lambda: status_of(survivor.url, "pair-src"))
    reader.wait_for_values([f"a after kill {i}" for i in range(10)] + [f"b after kill {i}" for i in range(10)])

    # Stop both (gracefully), start both again: config, offsets and statuses survive.
    survivor.stop()
    time.sleep(1.0)
    reader.poll()
    before_restart = len(reader.messages)
    assert before_restart == high_watermark(bootstrap, topic)
    w1.start()
    w2.start()
    names = wait_until(lambda: _get_json(f"{w2.url}/connectors") or None, RUNNING_TIMEOUT_S, "the connector list")
    assert sorted(names) == ["pair-paused", "pair-src"], names
    wait_for_state(w1.url, "pair-src", "RUNNING", tasks=2, timeout_s=45)
    wait_for_state(w1.url, "pair-paused", "PAUSED")
    append(c, ["c while paused"])
    assert json.loads(_connectors_cli(w2.url, "config", "pair-src"))["files"] == f"{a},{b}"
    append(a, ["a after restart"])
    append(b, ["b after restart"])
    reader.wait_for_values(["a after restart", "b after restart"])
    time.sleep(1.0)
    reader.poll()
    new = reader.values()[before_restart:]
    assert sorted(new) == ["a after restart", "b after restart"], f"re-read after a graceful restart: {new[:10]}"
    listing = _connectors_cli(w1.url, "list")
    assert "pair-src" in listing and "RUNNING" in listing and "PAUSED" in listing, listing
    paused_reader.poll()
    assert paused_reader.values() == ["c 0"], paused_reader.values()
    assert status_of(w2.url, "pair-paused")["connector"]["state"] == "PAUSED"


def _get_json(url: str):
    try:
        response = requests.get(url, timeout=5)
    except requests.RequestException:
        return None
    return response.json() if response.status_code == 200 else None


def _connectors_cli(url: str, *args: str) -> str:
    proc = subprocess.run([spate_binary(), "connectors", "--url", url, *args], capture_output=True, timeout=30)
    assert proc.returncode == 0, f"spate connectors {' '.join(args)}: {proc.returncode}\n{proc.stderr.decode()}"
    return proc.stdout.decode()


# ---------------------------------------------------------------------------------------------------
# 6. File sink fed by kcat


def test_file_sink_from_kcat(connect_broker, connect_worker, tmp_path):
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("sink")
    create_topic(bootstrap, topic)
    lines = [f"kcat line {i}" for i in range(50)]
    kcat(["-b", bootstrap, "-P", "-t", topic, "-p", "0", "-K", ":"],
         input_bytes="".join(f"k{i}:{line}\n" for i, line in enumerate(lines)).encode())
    out, out_json, out_roll = tmp_path / "out.txt", tmp_path / "out.jsonl", tmp_path / "roll" / "out.txt"
    out_roll.parent.mkdir()
    # Connector files on the worker's command line (the standalone habit): JSON and TOML.
    text_file, json_file, roll_file = tmp_path / "sink-text.json", tmp_path / "sink-json.toml", tmp_path / "roll.toml"
    text_file.write_text(json.dumps(
        {"name": "sink-text", "config": {"connector.class": "FileStreamSink", "topics": topic, "file": str(out)}}
    ))
    json_file.write_text(
        'name = "sink-json"\n[config]\n"connector.class" = "FileStreamSink"\n'
        f'"topics.regex" = {json.dumps(re.escape(topic))}\n"file" = {json.dumps(str(out_json))}\n"format" = "json"\n'
    )
    # And one made with `spate connectors create`: rolls its file every 200 bytes.
    roll_file.write_text(
        f'name = "sink-roll"\n"connector.class" = "FileStreamSink"\ntopics = {json.dumps(topic)}\n'
        f'file = {json.dumps(str(out_roll))}\n"file.roll.bytes" = 200\n'
    )
    worker = connect_worker(bootstrap, files=[text_file, json_file])
    _connectors_cli(worker.url, "create", str(roll_file))
    wait_for_state(worker.url, "sink-text", "RUNNING")
    wait_for_state(worker.url, "sink-json", "RUNNING")
    wait_for_state(worker.url, "sink-roll", "RUNNING")

    def file_lines(path):
        return path.read_text().splitlines() if path.exists() else []

    wait_until(lambda: len(file_lines(out)) >= len(lines), 30, "the sink file", describe=lambda: file_lines(out)[-3:])
    assert file_lines(out) == lines
    wait_until(lambda: len(file_lines(out_json)) >= len(lines), 30, "the json sink file")
    records = [json.loads(line) for line in file_lines(out_json)]
    assert [r["value"] for r in records] == lines, records[:2]
    assert [r["key"] for r in records] == [f"k{i}" for i in range(len(lines))], records[:2]
    assert [r["offset"] for r in records] == list(range(len(lines))), records[:2]
    assert all(r["topic"] == topic and r["partition"] == 0 for r in records), records[:2]

    # More records keep flowing.
    kcat(["-b", bootstrap, "-P", "-t", topic, "-p", "0"], input_bytes=b"late 1\nlate 2\n")
    wait_until(lambda: file_lines(out)[-2:] == ["late 1", "late 2"], 30, "late records in the sink file",
               describe=lambda: file_lines(out)[-3:])

    # The rolled files: none above 200 bytes, together every line once, in order.
    def rolled():
        files = sorted(out_roll.parent.iterdir(), key=lambda p: (p.name == out_roll.name, p.name))
        return files, [line for f in files for line in f.read_text().splitlines()]

    wait_until(lambda: rolled()[1][-2:] == ["late 1", "late 2"], 30, "every line in the rolled files",
               describe=lambda: [(p.name, p.stat().st_size) for p in rolled()[0]])
    files, rolled_lines = rolled()
    assert rolled_lines == lines + ["late 1", "late 2"], rolled_lines

    # A sink's offsets are its consumer group's (Kafka's kafka_topic/kafka_partition/kafka_offset):
    # moved back by 2 on the stopped connector, the last two records are written again.
    status, _ = curl("PUT", f"{worker.url}/connectors/sink-text/stop")
    assert status == 204
    wait_for_state(worker.url, "sink-text", "STOPPED", tasks=0)
    status, offsets = curl("GET", f"{worker.url}/connectors/sink-text/offsets")
    partition = {"kafka_topic": topic, "kafka_partition": 0}
    assert status == 200, offsets
    assert offsets == {"offsets": [{"partition": partition, "offset": {"kafka_offset": len(lines) + 2}}]}, offsets
    status, body = curl("PATCH", f"{worker.url}/connectors/sink-text/offsets", {"offsets": [{
        "partition": {"kafka_topic": topic, "kafka_partition": 0}, "offset": {"kafka_offset": len(lines)}}]})
    assert status == 200, (status, body)
    curl("PUT", f"{worker.url}/connectors/sink-text/resume")
    wait_until(lambda: len(file_lines(out)) >= len(lines) + 4, 30, "the two records written again",
               describe=lambda: file_lines(out)[-5:])
    assert file_lines(out) == lines + ["late 1", "late 2"] * 2, file_lines(out)[-6:]

    # The worker restarted with the same connector files: they are updated, not reset, so
    # nothing is written twice.
    assert worker.stop() == 0
    kcat(["-b", bootstrap, "-P", "-t", topic, "-p", "0"], input_bytes=b"while down\n")
    worker.start()
    wait_for_state(worker.url, "sink-text", "RUNNING")
    wait_until(lambda: file_lines(out)[-1:] == ["while down"], 30, "the record produced while the worker was down",
               describe=lambda: file_lines(out)[-3:])
    time.sleep(0.5)
    assert file_lines(out) == lines + ["late 1", "late 2"] * 2 + ["while down"], file_lines(out)[-6:]
    assert [r["value"] for r in map(json.loads, file_lines(out_json))] == lines + ["late 1", "late 2", "while down"]
    total_bytes = sum(len(line) + 1 for line in rolled_lines)
    sizes = [(p.name, p.stat().st_size) for p in files]
    assert len(files) >= -(-total_bytes // 200) and all(size <= 200 for _, size in sizes), sizes


# ---------------------------------------------------------------------------------------------------
# 7. Transforms: a chain with a predicate and a Rhai script; Rhai limits


ACCESS_LINES = [
    '203.0.113.7 - alice [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://ex.com/" "Mozilla/4.08"',
    '198.51.100.2 - - [02/Dec/2026:10:00:00 +0000] "POST /api/v1/items HTTP/1.1" 201 17 "-" "curl/8.5"',
    '192.0.2.1 - - [02/Dec/2026:10:00:01 +0000] "GET /missing HTTP/1.1" 404 - "-" "-"',
]


def test_transform_chain_with_predicate_and_rhai(connect_broker, connect_worker, tmp_path):
    bootstrap = connect_broker.bootstrap
    access, debug, dlq = unique_topic("web-access"), unique_topic("web-debug"), unique_topic("web-dlq")
    create_topic(bootstrap, access)
    create_topic(bootstrap, debug)
    access_input = [ACCESS_LINES[0], "this is not an access log line", *ACCESS_LINES[1:]]
    kcat(["-b", bootstrap, "-P", "-t", access, "-p", "0"], input_bytes="".join(f"{x}\n" for x in access_input).encode())
    kcat(["-b", bootstrap, "-P", "-t", debug, "-p", "0"], input_bytes=b"debug noise 1\ndebug noise 2\n")
    worker = connect_worker(bootstrap)
    out = tmp_path / "access.jsonl"
    create_connector(worker.url, "web-sink", {
        "connector.class": "FileStreamSink",
        "topics": f"{access},{debug}",
        "file": str(out),
        "transforms": "dropDebug,nginx,tag",
        "transforms.dropDebug.type": "Filter",
        "transforms.dropDebug.predicate": "isDebug",
        "transforms.nginx.type": "Rhai",
        "transforms.nginx.script": "plugins/transforms/nginx_access.rhai",
        "transforms.tag.type": "org.apache.kafka.connect.transforms.InsertField$Value",
        "transforms.tag.static.field": "pipeline",
        "transforms.tag.static.value": "e2e",
        "transforms.tag.predicate": "isDebug",
        "transforms.tag.negate": "true",
        "predicates": "isDebug",
        "predicates.isDebug.type": "TopicNameMatches",
        "predicates.isDebug.pattern": "web-debug-.*",
        "errors.tolerance": "all",
        "errors.deadletterqueue.topic.name": dlq,
        "errors.deadletterqueue.context.headers.enable": "true",
    })
    wait_for_state(worker.url, "web-sink", "RUNNING")

    def rows():
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    wait_until(lambda: len(rows()) >= 3, 30, "three access-log records in the sink file", describe=rows)
    time.sleep(0.5)
    got = rows()
    assert len(got) == 3, got
    assert [r["path"] for r in got] == ["/a.gif", "/api/v1/items", "/missing"], got
    assert got[0]["status"] == 200 and got[0]["body_bytes_sent"] == 2326 and got[0]["remote_user"] == "alice", got[0]
    assert got[0]["method"] == "GET" and got[0]["http_user_agent"] == "Mozilla/4.08", got[0]
    assert got[1]["method"] == "POST" and got[1]["status"] == 201 and got[1]["remote_user"] is None, got[1]
    assert got[2]["status"] == 404 and got[2]["body_bytes_sent"] == 0, got[2]
    assert all(r["pipeline"] == "e2e" for r in got), got

    # The line the script refuses went to the dead-letter topic with its context.
    dlq_reader = TopicReader(bootstrap, dlq)
    try:
        dlq_reader.wait_for_values(["this is not an access log line"])
        h = headers_of(dlq_reader.messages[0])
    finally:
        dlq_reader.close()
    assert h.get("__connect.errors.topic") == access and h.get("__connect.errors.offset") == "1", h
    assert h.get("__connect.errors.stage") == "TRANSFORMATION", h
    assert "access-log" in h.get("__connect.errors.exception.message", ""), h
    assert status_of(worker.url, "web-sink")["tasks"][0]["state"] == "RUNNING"


RUNAWAY_SCRIPT = """
fn transform(record) {
    if record.value == "LOOP" {
        loop { }
    }
    if record.value == "BIG" {
        let s = "0123456789";
        loop { s += s; }
    }
    record.value = "ok:" + record.value;
    record
}
"""


def test_rhai_limits_send_records_to_the_dead_letter_topic(connect_broker, connect_worker, topic_reader, tmp_path):
    bootstrap = connect_broker.bootstrap
    topic, dlq = unique_topic("rhai"), unique_topic("rhai-dlq")
    create_topic(bootstrap, topic)
    log = tmp_path / "rhai.log"
    append(log, ["one", "LOOP", "two", "BIG", "three"])
    worker = connect_worker(bootstrap)
    create_connector(worker.url, "rhai-src", file_source(log, topic, **{
        "transforms": "script",
        "transforms.script.type": "Rhai",
        "transforms.script.source": RUNAWAY_SCRIPT,
        "transforms.script.timeout.ms": "1000",
        "transforms.script.max.string.bytes": "1048576",
        "errors.tolerance": "all",
        "errors.deadletterqueue.topic.name": dlq,
        "errors.deadletterqueue.context.headers.enable": "true",
    }))
    wait_for_state(worker.url, "rhai-src", "RUNNING")
    reader = topic_reader(bootstrap, topic)
    reader.wait_for_values(["ok:one", "ok:two", "ok:three"])
    dlq_reader = topic_reader(bootstrap, dlq)
    dlq_reader.wait_for_values(["LOOP", "BIG"])
    stages = {m.value().decode(): headers_of(m) for m in dlq_reader.messages}
    for value, h in stages.items():
        assert h.get("__connect.errors.stage") == "TRANSFORMATION", (value, h)
        assert h.get("__connect.errors.exception.message"), (value, h)
    assert status_of(worker.url, "rhai-src")["tasks"][0]["state"] == "RUNNING"
    # The task keeps running: later lines flow.
    append(log, ["four", "LOOP", "five"])
    reader.wait_for_values(["ok:four", "ok:five"])
    dlq_reader.wait_for_count(3)
    time.sleep(0.3)
    reader.poll()
    assert reader.values() == ["ok:one", "ok:two", "ok:three", "ok:four", "ok:five"], reader.values()
    s = status_of(worker.url, "rhai-src")
    assert s["connector"]["state"] == "RUNNING" and s["tasks"][0]["state"] == "RUNNING", s

    # The wall-clock limit alone (operations practically unbounded) stops `loop {}` too.
    timeout_topic, timeout_dlq = unique_topic("rhai-timeout"), unique_topic("rhai-timeout-dlq")
    create_topic(bootstrap, timeout_topic)
    timeout_log = tmp_path / "timeout.log"
    append(timeout_log, ["LOOP", "after"])
    create_connector(worker.url, "rhai-timeout", file_source(timeout_log, timeout_topic, **{
        "transforms": "script",
        "transforms.script.type": "Rhai",
        "transforms.script.source": RUNAWAY_SCRIPT,
        "transforms.script.max.operations": "1000000000000",
        "transforms.script.timeout.ms": "300",
        "errors.tolerance": "all",
        "errors.deadletterqueue.topic.name": timeout_dlq,
    }))
    topic_reader(bootstrap, timeout_topic).wait_for_values(
        ["ok:after"], guard=no_failed_task(worker.url, "rhai-timeout")
    )
    topic_reader(bootstrap, timeout_dlq).wait_for_values(["LOOP"])

    # Without errors.tolerance a runaway record fails its task, with the reason in the trace.
    failing_topic = unique_topic("rhai-fail")
    create_topic(bootstrap, failing_topic)
    failing_log = tmp_path / "failing.log"
    append(failing_log, ["LOOP", "never"])
    create_connector(worker.url, "rhai-fail", file_source(failing_log, failing_topic, **{
        "transforms": "script",
        "transforms.script.type": "Rhai",
        "transforms.script.source": RUNAWAY_SCRIPT,
    }))
    def task_failed():
        st = status_of(worker.url, "rhai-fail")
        return st if st and st["tasks"] and st["tasks"][0]["state"] == "FAILED" else None

    failed = wait_until(task_failed, RUNNING_TIMEOUT_S, "the task without errors.tolerance to fail",
                        describe=lambda: status_of(worker.url, "rhai-fail"))
    assert failed["tasks"][0]["trace"], failed
    assert failed["connector"]["state"] == "RUNNING", failed
    rest_status, body = curl("POST", f"{worker.url}/connectors/rhai-fail/restart?includeTasks=true&onlyFailed=true")
    assert rest_status == 202 and body["tasks"][0]["state"] == "RESTARTING", (rest_status, body)
    assert high_watermark(bootstrap, failing_topic) == 0


def as_text(value) -> str | None:
    """A fixture's value as record bytes: a string is the text itself, other data its JSON."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def test_every_plugin_script_in_a_worker(connect_broker, connect_worker, tmp_path):
    """Every script in plugins/transforms/ runs in a real worker against its fixtures: the
    `<name>.in.jsonl` records are produced with confluent-kafka (a string value as its text,
    structured data as JSON text; the worker's StringConverter), a FileStreamSink with the script
    writes format=json, and what comes out
    matches `<name>.out.jsonl`; the records the script fails are in the dead-letter topic."""
    bootstrap = connect_broker.bootstrap
    scripts = sorted((PLUGINS_DIR / "transforms").glob("*.rhai"))
    assert scripts, f"no scripts in {PLUGINS_DIR / 'transforms'}"
    cases = {}
    for script in scripts:
        name = script.stem
        inputs = [json.loads(line) for line in script.with_suffix(".in.jsonl").read_text().splitlines() if line.strip()]
        expected = [
            json.loads(line) for line in script.with_suffix(".out.jsonl").read_text().splitlines() if line.strip()
        ]
        # The script's own name in front of the fixture's topic: two fixtures may use the same one,
        # and scripts that route keep the rest of the name.
        renames = {t: f"{name}.{t}" for t in {r.get("topic", "in") for r in inputs}}
        for topic in renames.values():
            create_topic(bootstrap, topic)
        producer = Producer(client_config(bootstrap))
        for r in inputs:
            headers = [
                (k, v if v is None or isinstance(v, str) else json.dumps(v)) for k, v in r.get("headers", {}).items()
            ]
            kwargs = {"timestamp": r["timestamp"]} if "timestamp" in r else {}
            producer.produce(
                renames[r.get("topic", "in")],
                value=as_text(r.get("value")),
                key=as_text(r.get("key")),
                partition=0,
                headers=headers,
                **kwargs,
            )
        assert producer.flush(30) == 0
        cases[name] = (renames, expected, tmp_path / f"{name}.jsonl", f"{name}.dlq")
    worker = connect_worker(bootstrap)
    for name, (renames, _, out, dlq) in cases.items():
        create_connector(worker.url, f"plugin-{name}", {
            "connector.class": "FileStreamSink",
            "topics": ",".join(renames.values()),
            "file": str(out),
            "format": "json",
            "transforms": "script",
            "transforms.script.type": "Rhai",
            "transforms.script.script": f"plugins/transforms/{name}.rhai",
            "errors.tolerance": "all",
            "errors.deadletterqueue.topic.name": dlq,
            "errors.deadletterqueue.context.headers.enable": "true",
        })
    for name in cases:
        wait_for_state(worker.url, f"plugin-{name}", "RUNNING")

    problems = []
    for name, (renames, expected, out, dlq) in cases.items():
        passed = [e for e in expected if "failed" not in e]
        failed = [e["failed"] for e in expected if "failed" in e]

        def rows(out=out):
            return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

        try:
            wait_until(lambda: len(rows()) >= len(passed), 30, f"{name}: {len(passed)} records in {out.name}",
                       describe=rows, interval_s=0.1)
        except AssertionError as e:
            problems.append(str(e))
            continue
        got = rows()
        if len(got) != len(passed):
            problems.append(f"{name}: {len(got)} records out, {len(passed)} expected: {got}")
            continue
        for i, (g, e) in enumerate(zip(got, passed)):
            topic = e["topic"]
            for original, renamed in renames.items():
                if topic == original or topic.startswith(original + "."):
                    topic = renamed + topic[len(original):]
                    break
            actual = {
                "topic": g["topic"],
                "value": g["value"],
                "headers": {h["key"]: h["value"] for h in g["headers"]},
            }
            want = {"topic": topic, "value": e["value"], "headers": e.get("headers", {})}
            if "key" in e:
                actual["key"], want["key"] = g["key"], e["key"]
            if "timestamp" in e:
                actual["timestamp"], want["timestamp"] = g["timestamp"], e["timestamp"]
            if actual != want:
                problems.append(f"{name} record {i + 1}:\n  got      {actual}\n  expected {want}")
        if failed:
            reader = TopicReader(bootstrap, dlq)
            try:
                reader.wait_for_count(len(failed), timeout_s=20)
                messages = list(reader.messages)
            except AssertionError as e:
                problems.append(f"{name}: {e}")
                continue
            finally:
                reader.close()
            reasons = [headers_of(m).get("__connect.errors.exception.message", "") for m in messages]
            for part, reason in zip(failed, reasons):
                if part not in reason:
                    problems.append(f"{name}: dead-letter reason {reason!r} lacks {part!r}")
    assert not problems, "\n".join(problems)


def run_connectors_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([spate_binary(), "connectors", "--url", url, *args], capture_output=True, timeout=30)


def test_spate_connectors_cli(connect_broker, connect_worker, topic_reader, tmp_path):
    """`spate connectors` against a worker: create from TOML, status, pause/resume, restart, stop,
    offsets (get, --alter, --reset), validate, plugins, delete."""
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("cli")
    create_topic(bootstrap, topic)
    log = tmp_path / "cli.log"
    append(log, ["cli 1", "cli 2"])
    # read.from=end: the lines already there are skipped, later ones read.
    spec = tmp_path / "cli.toml"
    spec.write_text(
        f'name = "cli-src"\n"connector.class" = "FileStreamSource"\nfile = {json.dumps(str(log))}\n'
        f'topic = {json.dumps(topic)}\n"scan.interval.ms" = 100\n"read.from" = "end"\n'
    )
    worker = connect_worker(bootstrap)
    url = worker.url
    created = wait_until(lambda: run_connectors_cli(url, "create", str(spec)).returncode == 0, RUNNING_TIMEOUT_S,
                         "spate connectors create to succeed")
    assert created
    wait_for_state(url, "cli-src", "RUNNING")
    reader = topic_reader(bootstrap, topic)
    time.sleep(0.5)
    append(log, ["cli 3"])
    reader.wait_for_values(["cli 3"])
    assert reader.values() == ["cli 3"], reader.values()

    out = _connectors_cli(url, "status", "cli-src")
    assert "cli-src" in out and "RUNNING" in out, out
    assert json.loads(_connectors_cli(url, "config", "cli-src"))["read.from"] == "end"
    assert "FileStreamSource" in _connectors_cli(url, "plugins")
    _connectors_cli(url, "pause", "cli-src")
    wait_for_state(url, "cli-src", "PAUSED")
    _connectors_cli(url, "resume", "cli-src")
    wait_for_state(url, "cli-src", "RUNNING")
    _connectors_cli(url, "restart", "cli-src", "--include-tasks")
    wait_for_state(url, "cli-src", "RUNNING")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "config": {
        "connector.class": "FileStreamSource", "file": str(log), "topic": topic, "batch.size": "abc"}}))
    refused = run_connectors_cli(url, "validate", str(bad))
    assert refused.returncode != 0 and b"batch.size" in refused.stdout + refused.stderr, refused
    refused = run_connectors_cli(url, "create", str(bad))
    assert refused.returncode != 0 and b"batch.size" in refused.stdout + refused.stderr, refused
    refused = run_connectors_cli(url, "status", "no-such-connector")
    assert refused.returncode != 0, refused

    _connectors_cli(url, "stop", "cli-src")
    wait_for_state(url, "cli-src", "STOPPED", tasks=0)
    offsets = json.loads(_connectors_cli(url, "offsets", "cli-src"))
    assert len(offsets["offsets"]) == 1 and offsets["offsets"][0]["offset"]["position"] == log.stat().st_size, offsets
    # Back to the start of the file: all three lines come again.
    entry = offsets["offsets"][0]
    alter = tmp_path / "alter.json"
    # Only the position (the documented form; see the next test for a copy of the whole offset).
    alter.write_text(json.dumps({"offsets": [{"partition": entry["partition"], "offset": {"position": 0}}]}))
    _connectors_cli(url, "offsets", "cli-src", "--alter", str(alter))
    _connectors_cli(url, "resume", "cli-src")
    reader.wait_for_values(["cli 1", "cli 2"])
    reader.wait_for_count(4)
    assert reader.values() == ["cli 3", "cli 1", "cli 2", "cli 3"], reader.values()
    _connectors_cli(url, "stop", "cli-src")
    wait_for_state(url, "cli-src", "STOPPED", tasks=0)
    _connectors_cli(url, "offsets", "cli-src", "--reset")
    assert json.loads(_connectors_cli(url, "offsets", "cli-src"))["offsets"] == []
    _connectors_cli(url, "delete", "cli-src")
    wait_until(lambda: _get_json(f"{url}/connectors") == [], 10, "no connectors left")


def test_altered_position_is_honoured_with_read_from_end(connect_broker, connect_worker, topic_reader, tmp_path):
    """KIP-875 as users do it: GET the offsets of the stopped connector, change `position` to 0,
    PATCH the result back, resume: the file is read again from its start. (The offset also holds
    fields the user did not touch, e.g. a checksum of the file's head up to the old position.)"""
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("alter-end")
    create_topic(bootstrap, topic)
    log = tmp_path / "end.log"
    append(log, ["old 1", "old 2"])
    worker = connect_worker(bootstrap)
    url = worker.url
    create_connector(url, "end-src", file_source(log, topic, **{"read.from": "end"}))
    wait_for_state(url, "end-src", "RUNNING")
    reader = topic_reader(bootstrap, topic)
    time.sleep(0.5)
    append(log, ["new 3"])
    reader.wait_for_values(["new 3"])
    rest_status, _ = curl("PUT", f"{url}/connectors/end-src/stop")
    assert rest_status == 204
    wait_for_state(url, "end-src", "STOPPED", tasks=0)
    _, offsets = curl("GET", f"{url}/connectors/end-src/offsets")
    entry = offsets["offsets"][0]
    rest_status, body = curl("PATCH", f"{url}/connectors/end-src/offsets",
                             {"offsets": [{"partition": entry["partition"],
                                           "offset": {**entry["offset"], "position": 0}}]})
    # Either the altered offset is honoured, or the request is refused: never accepted and then ignored.
    assert rest_status == 200, (rest_status, body)
    _, altered = curl("GET", f"{url}/connectors/end-src/offsets")
    assert altered["offsets"][0]["offset"]["position"] == 0, altered
    curl("PUT", f"{url}/connectors/end-src/resume")
    wait_for_state(url, "end-src", "RUNNING")
    reader.wait_for_values(["old 1", "old 2"], timeout_s=10,
                           what="the lines before the altered position (0) read again after resume")


@pytest.mark.slow
def test_file_sink_kill_9_loses_no_record(connect_broker, connect_worker, tmp_path):
    """A FileStreamSink killed with -9 while a producer streams: after the restart the file holds
    every record; the ones written but not committed before the kill may appear twice, and no line
    is torn."""
    bootstrap = connect_broker.bootstrap
    topic = unique_topic("sink-kill")
    create_topic(bootstrap, topic)
    total = 30_000
    out = tmp_path / "sink.txt"
    worker = connect_worker(bootstrap)
    # Kafka's per-connector client override, so that the killed task's consumer leaves its group
    # after 6 s rather than the consumer default of 45 s.
    create_connector(worker.url, "sink-kill", {
        "connector.class": "FileStreamSink", "topics": topic, "file": str(out),
        "consumer.override.session.timeout.ms": "6000", "consumer.override.heartbeat.interval.ms": "500",
    })
    wait_for_state(worker.url, "sink-kill", "RUNNING")

    done = threading.Event()
    errors = []

    def producer_thread():
        producer = Producer(client_config(bootstrap, **{"linger.ms": 5}))
        for start in range(0, total, 300):
            for i in range(start, start + 300):
                producer.produce(topic, value=f"record {i:06d}", partition=0,
                                 on_delivery=lambda err, _m: err and errors.append(err))
            producer.poll(0)
            time.sleep(0.03)
        if producer.flush(30) != 0:
            errors.append("undelivered records")
        done.set()

    thread = threading.Thread(target=producer_thread, daemon=True)
    thread.start()

    def line_count():
        try:
            with open(out, "rb") as f:
                return f.read().count(b"\n")
        except FileNotFoundError:
            return 0

    wait_until(lambda: line_count() >= 6000, 30, "6000 lines in the sink file before the kill", interval_s=0.05)
    worker.kill9()
    at_kill = line_count()
    killed_at = time.monotonic()
    worker.start()
    wait_until(lambda: line_count() > at_kill, 60, "the sink to write again after the restart", interval_s=0.1)
    resumed_s = time.monotonic() - killed_at
    thread.join(timeout=60)
    assert done.is_set() and not errors, errors[:3]
    expected = {f"record {i:06d}" for i in range(total)}

    def complete():
        return expected <= set(out.read_text(errors="replace").splitlines())

    wait_until(complete, 60, "every record in the sink file", interval_s=0.5,
               describe=lambda: f"{line_count()} lines")
    time.sleep(1.0)
    lines = out.read_text(errors="replace").splitlines()
    counts = Counter(lines)
    torn = [line for line in counts if line not in expected]
    duplicates = len(lines) - len(counts)
    print(f"sink kill -9 at {at_kill} lines: {len(lines)} lines for {total} records, {duplicates} duplicates, "
          f"writing again {resumed_s:.1f}s after the kill")
    assert not torn, f"lines that are no record (torn by the kill?): {torn[:5]}"
    assert duplicates < total // 10, f"{duplicates} duplicates"
    # With the override the new task's consumer joins once the killed one's 6 s session expired.
    assert resumed_s < 30, (
        f"the sink wrote again only {resumed_s:.1f}s after the kill: consumer.override.session.timeout.ms=6000 "
        "was not applied (the consumer default is 45 s)"
    )
