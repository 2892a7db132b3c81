"""The broker's Prometheus endpoint (`metrics.listener`, issue 15), scraped while confluent-kafka
produces and consumes: counters only grow and equal what was produced, request counts and time
histograms cover the APIs used, group lag follows commits, and the Grafana dashboard in
examples/ parses and asks only for metrics the endpoint exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from conftest import free_port
from spatetest import client_config, create_topic, produce, unique_topic, wait_until

pytestmark = pytest.mark.timeout(120)

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "spate-broker-dashboard.json"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$")


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        samples[(m.group(1), labels)] = float(m.group(4))
    return samples


def value(samples, name: str, **labels) -> float:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    assert found, f"no sample {name} {labels}; have {sorted({n for n, _ in samples})}"
    return sum(found)


@pytest.fixture
def metrics_broker(broker_factory):
    port = free_port()
    broker = broker_factory(["--set", f"metrics.listener=127.0.0.1:{port}"])
    broker.metrics_port = port
    return broker


def test_metrics_follow_produce_consume_and_group_lag(metrics_broker):
    broker, port = metrics_broker, metrics_broker.metrics_port
    topic = unique_topic("metrics")
    create_topic(broker.bootstrap, topic, partitions=2)
    before = scrape(port)

    produced = 0
    previous = before
    for round_ in range(3):
        records = [(i % 2, None, f"r{round_}-{i}".encode() * 3, None) for i in range(500)]
        produce(broker.bootstrap, topic, records, acks="all")
        produced += len(records)
        now = scrape(port)
        # Exactly the records produced, and nothing ever goes down.
        assert value(now, "kafka_server_brokertopicmetrics_messagesin_total", topic=topic) == produced
        for (name, labels), v in previous.items():
            if name.endswith("_total") or name.endswith("_count") or name.endswith("_sum"):
                assert now.get((name, labels), 0) >= v, f"{name} {dict(labels)} went down"
        previous = now

    assert value(now, "kafka_server_brokertopicmetrics_bytesin_total", topic=topic) > produced * 6
    assert value(now, "kafka_network_requestmetrics_requests_total", request="Produce") >= 3
    assert value(now, "kafka_network_requestmetrics_totaltime_seconds_count", request="Produce") >= 3
    assert value(now, "kafka_log_logflushstats_logflush_seconds_count") >= 1
    assert value(now, "kafka_log_log_logendoffset", topic=topic) == produced
    assert value(now, "kafka_cluster_partition_highwatermark", topic=topic) == produced
    assert value(now, "kafka_log_log_size", topic=topic) > 0
    assert value(now, "kafka_server_replicamanager_underreplicatedpartitions") == 0
    assert value(now, "kafka_controller_kafkacontroller_offlinepartitionscount") == 0
    assert value(now, "kafka_server_replicamanager_leadercount") >= 2

    # A group reads everything and commits: its lag is 0; more records make it that many.
    group = unique_topic("metrics-group")
    consumer = Consumer(client_config(broker.bootstrap, **{
        "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
    }))
    try:
        consumer.subscribe([topic])
        seen = 0
        while seen < produced:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert not msg.error(), msg.error()
                seen += 1
        consumer.commit(asynchronous=False)
        wait_until(
            lambda: value(scrape(port), "kafka_consumergroup_current_offset", consumergroup=group) == produced,
            20, "the group's committed offsets in the metrics",
        )
        assert value(scrape(port), "kafka_consumergroup_lag", consumergroup=group) == 0
        assert value(scrape(port), "kafka_server_brokertopicmetrics_bytesout_total", topic=topic) > 0
        produce(broker.bootstrap, topic, [(0, None, b"late", None)] * 7, acks="all")
        assert value(scrape(port), "kafka_consumergroup_lag", consumergroup=group, topic=topic) == 7
    finally:
        consumer.close()


def test_grafana_dashboard_uses_exported_metrics(metrics_broker):
    broker, port = metrics_broker, metrics_broker.metrics_port
    topic = unique_topic("dash")
    create_topic(broker.bootstrap, topic)
    produce(broker.bootstrap, topic, [(0, None, b"x", None)] * 10, acks="all")
    consumer = Consumer(client_config(broker.bootstrap, **{"group.id": unique_topic("dash-g"), "enable.auto.commit": False}))
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    finally:
        consumer.close()
    exported = {name for name, _ in scrape(port)}

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "the dashboard has no panels"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    promql_words = {"sum", "by", "rate", "max", "histogram_quantile", "le", "topic", "partition", "request",
                    "instance", "consumergroup"}
    for expr in exprs:
        names = {w for w in re.findall(r"[a-z_][a-z0-9_]*", expr) if w not in promql_words and "_" in w}
        assert names, expr
        missing = names - exported
        assert not missing, f"dashboard query {expr!r} names metrics the broker does not export: {missing}"
