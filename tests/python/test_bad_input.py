"""Hostile and broken bytes on raw sockets against a spate broker: garbage, absurd length prefixes,
truncated frames, unknown API keys and versions. After each, the broker must still be alive, must not
have allocated what the peer asked for, and must serve a normal client on another connection."""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import pytest

from spatetest import consume_assigned, create_topic, produce, unique_topic

pytestmark = pytest.mark.timeout(60)

API_VERSIONS = 18
PRODUCE = 0
UNSUPPORTED_VERSION = 35
# A broker that buffered a 2 GiB frame would blow far past this.
MAX_BROKER_RSS_BYTES = 1 << 30


def request_v1(api_key: int, api_version: int, correlation_id: int, body: bytes = b"", client_id=b"bad-input") -> bytes:
    """A request with header v1 (non-flexible): api_key, api_version, correlation_id, client_id."""
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def request_v2(api_key: int, api_version: int, correlation_id: int, body: bytes = b"", client_id=b"bad-input") -> bytes:
    """A request with header v2 (flexible): header v1 plus an empty tagged-field section."""
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id + b"\x00"
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def connect(broker) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_frame(sock: socket.socket, timeout_s: float = 10.0) -> bytes | None:
    """The next response frame's payload, or None when the broker closed the connection."""
    sock.settimeout(timeout_s)
    try:
        size = recv_exact(sock, 4)
        if size is None:
            return None
        (n,) = struct.unpack(">i", size)
        assert 0 <= n < 10 << 20, f"absurd response size {n}"
        return recv_exact(sock, n)
    except ConnectionResetError:
        return None


def parse_api_versions_v0(payload: bytes) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """correlation_id, error_code, {api_key: (min, max)} of an ApiVersions v0 response."""
    correlation_id, error_code, count = struct.unpack_from(">ihi", payload, 0)
    pos = 10
    versions = {}
    for _ in range(count):
        key, lo, hi = struct.unpack_from(">hhh", payload, pos)
        versions[key] = (lo, hi)
        pos += 6
    assert pos == len(payload), f"{len(payload) - pos} trailing bytes in an ApiVersions v0 response"
    return correlation_id, error_code, versions


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def assert_broker_healthy(broker) -> None:
    """The broker process lives, is not bloated, and serves a real client on a new connection."""
    assert broker.alive(), f"broker died:\n{broker.log_text()[-5000:]}"
    assert rss_bytes(broker.pid) < MAX_BROKER_RSS_BYTES
    topic = unique_topic("sanity")
    create_topic(broker.bootstrap, topic, partitions=1)
    delivered = produce(broker.bootstrap, topic, [(0, b"k", b"still works", [("h", b"1")])], acks="all")
    assert [m.offset() for m in delivered] == [0]
    msgs = consume_assigned(broker.bootstrap, topic, [0], expected=1, timeout_s=20)
    assert [(m.key(), m.value(), m.headers()) for m in msgs] == [(b"k", b"still works", [("h", b"1")])]
    assert broker.alive()


def assert_closed_or_answered(sock: socket.socket, correlation_id: int | None = None) -> None:
    """A broken request must not leave the connection hanging: the broker closes it, or (for a
    well-framed request it cannot serve) answers with the same correlation id."""
    payload = recv_frame(sock)
    if payload is None:
        return
    if correlation_id is None:
        raise AssertionError(f"broker answered garbage with {payload[:32]!r}")
    (got,) = struct.unpack_from(">i", payload, 0)
    assert got == correlation_id


def test_api_versions_v0_and_v3_answer(broker):
    """The positive control for the raw encoding used below."""
    with connect(broker) as s:
        s.sendall(request_v1(API_VERSIONS, 0, 7))
        correlation_id, error_code, versions = parse_api_versions_v0(recv_frame(s))
        assert (correlation_id, error_code) == (7, 0)
        assert versions[API_VERSIONS] == (0, 3)
        assert versions[PRODUCE] == (3, 9)

        # v3: header v2; the body holds compact strings (varint length + 1) client_software_name and
        # client_software_version, then an empty tagged-field section.
        body = b"\x06spate" + b"\x060.1.0" + b"\x00"
        s.sendall(request_v2(API_VERSIONS, 3, 8, body))
        payload = recv_frame(s)
        # Response header v0 (ApiVersions responses never use the flexible header) then error_code.
        assert struct.unpack_from(">ih", payload, 0) == (8, 0)


def test_api_versions_unsupported_version_gets_kip511_answer(broker):
    with connect(broker) as s:
        body = b"\x06spate" + b"\x060.1.0" + b"\x00"
        s.sendall(request_v2(API_VERSIONS, 99, 1234, body))
        payload = recv_frame(s)
        assert payload is not None, "broker closed the connection instead of answering ApiVersions v99"
        correlation_id, error_code, versions = parse_api_versions_v0(payload)
        assert correlation_id == 1234
        assert error_code == UNSUPPORTED_VERSION
        assert versions.get(API_VERSIONS) == (0, 3), versions
        assert PRODUCE in versions
        # The connection stays usable: a supported version now succeeds.
        s.sendall(request_v1(API_VERSIONS, 0, 1235))
        assert parse_api_versions_v0(recv_frame(s))[:2] == (1235, 0)
    assert_broker_healthy(broker)


BAD_FRAMES = {
    # An HTTP request: "GET " read as a length prefix is over a gigabyte.
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    # The largest positive length prefix, then a little data.
    "2gib-length": struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 64,
    # A negative length prefix.
    "negative-length": struct.pack(">i", -5) + b"\x00" * 16,
    # A plausible length, then random bytes for a header (api key 0x7f7f exists in no Kafka).
    "random-header": struct.pack(">i", 64) + b"\x7f\x7f" + random.Random(1).randbytes(62),
    # A header whose client_id length runs past the end of the frame.
    "client-id-overrun": struct.pack(">i", 10) + struct.pack(">hhih", API_VERSIONS, 0, 5, 1000),
    # A Produce v9 header with no body at all.
    "produce-without-body": request_v2(PRODUCE, 9, 6),
    # Produce v9 whose body claims a huge topic array.
    "produce-huge-array": request_v2(PRODUCE, 9, 9, b"\x00\x00\xff\xff\xff\x0f" + b"\x00" * 8),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_frame_is_refused_and_broker_survives(broker, name):
    with connect(broker) as s:
        s.sendall(BAD_FRAMES[name])
        correlation_id = None
        if name.startswith("produce"):
            correlation_id = struct.unpack_from(">i", BAD_FRAMES[name], 8)[0]
        assert_closed_or_answered(s, correlation_id)
    assert_broker_healthy(broker)


def test_truncated_frame_does_not_block_other_connections(broker):
    # Promise 100 bytes, send 10, and keep the connection open while another client works.
    stalled = connect(broker)
    try:
        stalled.sendall(struct.pack(">i", 100) + b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00")
        assert_broker_healthy(broker)
        # Then end the stream mid-frame: the broker must just close its side.
        stalled.shutdown(socket.SHUT_WR)
        assert recv_frame(stalled) is None
    finally:
        stalled.close()
    assert_broker_healthy(broker)


def test_unknown_api_key(broker):
    with connect(broker) as s:
        s.sendall(request_v1(9999, 0, 42, b"\x00" * 16))
        assert_closed_or_answered(s, 42)
    with connect(broker) as s:
        s.sendall(request_v1(-1, 0, 43))
        assert_closed_or_answered(s, 43)
    assert_broker_healthy(broker)


def test_unoffered_api_gets_an_error_answer_and_the_connection_stays(broker):
    """An API Spate does not offer but whose response has an error code is answered (UNSUPPORTED_VERSION;
    ILLEGAL_SASL_STATE for SASL on a PLAINTEXT listener, as Kafka) instead of closing the connection."""
    with connect(broker) as s:
        # DescribeClientQuotas v0 (key 48): components [] , strict false. Answer: throttle, error_code.
        s.sendall(request_v1(48, 0, 7, struct.pack(">ib", 0, 0)))
        payload = recv_frame(s)
        assert payload is not None, "connection closed"
        correlation_id, _throttle, code = struct.unpack(">iih", payload[:10])
        assert (correlation_id, code) == (7, UNSUPPORTED_VERSION)
        # SaslHandshake v1 (key 17): mechanism "PLAIN". Answer: error_code, mechanisms.
        s.sendall(request_v1(17, 1, 8, struct.pack(">h", 5) + b"PLAIN"))
        payload = recv_frame(s)
        assert payload is not None, "connection closed"
        assert struct.unpack(">ih", payload[:6]) == (8, 34)
        # The same connection still serves ApiVersions.
        s.sendall(request_v1(18, 0, 9))
        payload = recv_frame(s)
        assert payload is not None and struct.unpack(">i", payload[:4])[0] == 9
    assert_broker_healthy(broker)


def test_many_bad_connections_in_a_row(broker):
    """A burst of garbage connections (bounded: 200) leaves no lasting damage."""
    for i in range(200):
        with connect(broker) as s:
            s.sendall(os.urandom(1 + i % 50))
    # Give the broker a moment to reap them, then check it still serves.
    time.sleep(0.5)
    assert_broker_healthy(broker)
