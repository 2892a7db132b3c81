"""Cluster administration through admin clients we did not write (issue 15): confluent-kafka's
AdminClient and kafka-python's KafkaAdminClient against `spate broker` — DescribeCluster,
DeleteRecords (durable across a restart, copied by followers), DescribeLogDirs, ElectLeaders
(preferred and unclean), the legacy AlterConfigs, and the clean refusals of what needs
authentication (DescribeAcls, DescribeUserScramCredentials); partition reassignment, and a
broker-only node joining, taking partitions and being unregistered."""

from __future__ import annotations

import json
import struct
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, ElectionType, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from kafka import KafkaAdminClient
from kafka import TopicPartition as KTopicPartition
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType
from kafka.errors import SecurityDisabledError

from conftest import spate_binary
import spatecluster
from spatecluster import FAST_SETTINGS
from spatetest import client_config, consume_assigned, create_topic, produce, unique_topic, wait_until, watermarks

pytestmark = pytest.mark.timeout(120)


class BackgroundProducer:
    """An idempotent acks=all confluent-kafka producer writing `v<i>` values on a thread until
    stopped; `acked` and `errors` collect the delivery reports."""

    def __init__(self, bootstrap: str, topic: str, partitions: int | None = None):
        self.errors: list = []
        self.acked: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(bootstrap, topic, partitions), daemon=True)
        self._thread.start()

    def _run(self, bootstrap: str, topic: str, partitions: int | None) -> None:
        producer = Producer(client_config(bootstrap, **{
            "acks": "all", "enable.idempotence": True, "linger.ms": 5,
            "message.timeout.ms": 60000, "topic.metadata.refresh.interval.ms": 1000,
        }))

        def on_delivery(err, msg):
            (self.errors if err is not None else self.acked).append(err or msg.value())

        i = 0
        while not self._stop.is_set():
            extra = {} if partitions is None else {"partition": i % partitions}
            producer.produce(topic, value=f"v{i}".encode(), on_delivery=on_delivery, **extra)
            producer.poll(0.002)
            i += 1
        assert producer.flush(60) == 0

    def wait_for_more(self, count: int, what: str) -> None:
        start = len(self.acked)
        wait_until(lambda: len(self.acked) > start + count, 30, what)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        assert not self.errors, self.errors[:5]


def kafka_python_admin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)


def fill(bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    produce(
        bootstrap,
        topic,
        [(p, None, f"{p}-{i}".encode(), None) for p in range(partitions) for i in range(per_partition)],
        acks="all",
    )


def test_describe_cluster_with_both_admin_clients(broker):
    admin = AdminClient(client_config(broker.bootstrap))
    cluster = admin.describe_cluster(request_timeout=10).result(timeout=15)
    assert cluster.cluster_id
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(1, "127.0.0.1", broker.port)]
    assert cluster.controller is not None and cluster.controller.id == 1

    client = kafka_python_admin(broker.bootstrap)
    try:
        described = client.describe_cluster()
        assert described["cluster_id"] == cluster.cluster_id
        assert [(b["broker_id"], b["port"], b["is_fenced"]) for b in described["brokers"]] == [(1, broker.port, False)]
        assert described["controller_id"] == 1
    finally:
        client.close()


def test_delete_records_moves_the_log_start_durably(broker):
    topic = unique_topic("delrec")
    create_topic(broker.bootstrap, topic, partitions=2)
    fill(broker.bootstrap, topic, 2, 100)
    admin = AdminClient(client_config(broker.bootstrap))

    futures = admin.delete_records([TopicPartition(topic, 0, 40), TopicPartition(topic, 1, -1)])
    by_partition = {tp.partition: f.result(timeout=15) for tp, f in futures.items()}
    assert by_partition[0].low_watermark == 40
    # -1 deletes everything up to the high watermark.
    assert by_partition[1].low_watermark == 100
    assert watermarks(broker.bootstrap, topic, 0) == (40, 100)
    assert watermarks(broker.bootstrap, topic, 1) == (100, 100)

    # Beyond the high watermark: refused, nothing moves.
    bad = admin.delete_records([TopicPartition(topic, 0, 101)])
    with pytest.raises(Exception, match="OFFSET_OUT_OF_RANGE|out of range"):
        next(iter(bad.values())).result(timeout=15)
    # An earlier offset than the current start changes nothing.
    again = admin.delete_records([TopicPartition(topic, 0, 10)])
    assert next(iter(again.values())).result(timeout=15).low_watermark == 40

    values = sorted(int(m.value().split(b"-")[1]) for m in consume_assigned(broker.bootstrap, topic, [0], 60))
    assert values == list(range(40, 100))

    # The new log start survives a restart (it was checkpointed before any file went).
    broker.restart()
    assert watermarks(broker.bootstrap, topic, 0) == (40, 100)

    # kafka-python's delete_records on the same partition.
    client = kafka_python_admin(broker.bootstrap)
    try:
        result = client.delete_records({KTopicPartition(topic, 0): 75})
        low = next(iter(result.values()))
        assert (low["low_watermark"] if isinstance(low, dict) else low) == 75
    finally:
        client.close()
    assert watermarks(broker.bootstrap, topic, 0) == (75, 100)


def test_describe_log_dirs_reports_partition_sizes(broker):
    topic = unique_topic("logdirs")
    create_topic(broker.bootstrap, topic, partitions=2)
    fill(broker.bootstrap, topic, 2, 50)
    client = kafka_python_admin(broker.bootstrap)
    try:
        described = client.describe_log_dirs()
    finally:
        client.close()
    text = repr(described)
    assert topic in text, text[:2000]
    # One log dir (the data dir), no error, both partitions with a positive size.
    dirs = described if isinstance(described, list) else [described]
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") == topic or node.get("topic") == topic:
                for p in node.get("partitions", []):
                    found[p.get("partition_index", p.get("partition"))] = p.get("partition_size", p.get("size"))
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(dirs)
    assert set(found) == {0, 1}, text[:2000]
    assert all(size > 0 for size in found.values()), found

    # AlterReplicaLogDirs (no Python client sends it; raw v1): the dir kafka-python was told about
    # already holds the replicas (NONE); any other dir does not exist here (LOG_DIR_NOT_FOUND).
    paths = []

    def find_paths(node):
        if isinstance(node, dict):
            for key in ("log_dir", "path"):
                if isinstance(node.get(key), str):
                    paths.append(node[key])
            for v in node.values():
                find_paths(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                find_paths(v)

    find_paths(dirs)
    assert paths, text[:2000]

    def alter(path: str) -> list[tuple[str, int, int]]:
        body = struct.pack(">i", 1) + spatecluster._string(path) + struct.pack(">i", 1)
        body += spatecluster._string(topic) + struct.pack(">iii", 2, 0, 1)
        r = spatecluster.call(int(broker.bootstrap.rsplit(":", 1)[1]), 34, 1, body)
        r.i32()  # throttle_time_ms
        out = []
        for name, partitions in r.array(lambda: (r.string(), r.array(lambda: (r.i32(), r.i16())))):
            out += [(name, p, code) for p, code in partitions]
        return out

    assert alter(paths[0]) == [(topic, 0, 0), (topic, 1, 0)]
    assert alter("/nowhere/else") == [(topic, 0, 57), (topic, 1, 57)]
    assert str(broker.data_dir) in text


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_legacy_alter_configs_replaces_overrides(broker):
    topic = unique_topic("altercfg")
    create_topic(broker.bootstrap, topic, config={"retention.ms": "3600000", "cleanup.policy": "delete"})
    admin = AdminClient(client_config(broker.bootstrap))
    resource = ConfigResource("topic", topic)

    def describe():
        return admin.describe_configs([resource])[resource].result(timeout=15)

    # confluent-kafka's alter_configs is the legacy AlterConfigs: the named configs become the
    # whole override set, so retention.ms (not named) goes back to its default.
    legacy = ConfigResource("topic", topic, set_config={"segment.bytes": "1048576"})
    admin.alter_configs([legacy])[legacy].result(timeout=15)
    configs = describe()
    assert configs["segment.bytes"].value == "1048576" and not configs["segment.bytes"].is_default
    assert configs["retention.ms"].is_default

    # kafka-python's legacy path reads the current overrides and sends them along with the change.
    client = kafka_python_admin(broker.bootstrap)
    try:
        client.alter_configs(
            [KConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "7200000"})],
            incremental=False,
        )
        # An invalid value is refused with INVALID_CONFIG and changes nothing.
        refused = client.alter_configs(
            [KConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "soon"})],
            incremental=False,
        )
        assert "Error 40" in repr(refused) and "not a number" in repr(refused), refused
    finally:
        client.close()
    configs = describe()
    assert configs["retention.ms"].value == "7200000"
    assert configs["segment.bytes"].value == "1048576"


def test_spate_configs_describes_and_alters_like_kafka_configs(broker):
    """`spate configs` (kafka-configs.sh's flags): its changes are what confluent-kafka's AdminClient
    describes, a list value goes in brackets, deleting returns a key to its default, and broker configs
    (static in Spate) are described but refused for alteration."""
    topic = unique_topic("configs")
    create_topic(broker.bootstrap, topic)
    base = ["configs", "--bootstrap-server", broker.bootstrap]
    out = run_spate(*base, "--alter", "--entity-type", "topics", "--entity-name", topic,
                    "--add-config", "retention.ms=3600000,cleanup.policy=[compact,delete]").stdout
    assert f"Completed updating config for topic {topic}" in out
    admin = AdminClient(client_config(broker.bootstrap))
    resource = ConfigResource("topic", topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=15)
    assert configs["retention.ms"].value == "3600000" and not configs["retention.ms"].is_default
    assert configs["cleanup.policy"].value == "compact,delete"

    described = run_spate(*base, "--describe", "--topic", topic).stdout.splitlines()
    assert described[0] == f"Dynamic configs for topic {topic} are:"
    assert sorted(line.split()[0] for line in described[1:]) == ["cleanup.policy=compact,delete", "retention.ms=3600000"]
    everything = run_spate(*base, "--describe", "--topic", topic, "--all").stdout
    assert "segment.bytes=" in everything and "DEFAULT_CONFIG" in everything

    run_spate(*base, "--alter", "--topic", topic, "--delete-config", "retention.ms")
    configs = admin.describe_configs([resource])[resource].result(timeout=15)
    assert configs["retention.ms"].is_default and configs["cleanup.policy"].value == "compact,delete"

    brokers = run_spate(*base, "--describe", "--entity-type", "brokers", "--all").stdout
    assert brokers.startswith("All configs for broker 1 are:") and "log.segment.bytes=" in brokers
    refused = run_spate(*base, "--alter", "--broker", "1", "--add-config", "log.retention.ms=1", check=False)
    assert refused.returncode != 0 and "static" in refused.stderr, refused.stderr
    bad = run_spate(*base, "--alter", "--topic", topic, "--add-config", "retention.ms=soon", check=False)
    assert bad.returncode != 0 and "retention.ms" in bad.stderr, bad.stderr


def test_authentication_apis_are_refused_cleanly(broker):
    client = kafka_python_admin(broker.bootstrap)
    try:
        acl_filter = ACLFilter(
            principal=None,
            host="*",
            operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.TOPIC, None, ACLResourcePatternType.ANY),
        )
        with pytest.raises(SecurityDisabledError):
            client.describe_acls(acl_filter)
        assert client.describe_user_scram_credentials() == {}
        named = client.describe_user_scram_credentials(["alice"])
        assert named["alice"]["error"]
        # The connection survived both: a normal request still works.
        assert client.describe_cluster()["brokers"]
    finally:
        client.close()


def election_errors(futures_result) -> dict:
    return {(tp.topic, tp.partition): err for tp, err in futures_result.items()}


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_elect_leaders_and_followers_copy_deleted_log_start(cluster_factory):
    # Preferred leadership must come back only when asked.
    cluster = cluster_factory(settings={**FAST_SETTINGS, "auto.leader.rebalance.enable": "false"})
    topic = unique_topic("elect")
    cluster.create_topic(topic, partitions=1, replication_factor=3)
    cluster.wait_full_isr(topic, 1)
    preferred = cluster.partition_view(topic, 0).replicas[0]
    assert cluster.leader_of(topic, 0) == preferred

    admin = AdminClient(client_config(cluster.bootstrap))
    tp = TopicPartition(topic, 0)
    # Already led by the preferred replica: ELECTION_NOT_NEEDED.
    errors = election_errors(admin.elect_leaders(ElectionType.PREFERRED, [tp]).result(timeout=30))
    assert errors[(topic, 0)] is not None and "ELECTION_NOT_NEEDED" in str(errors[(topic, 0)].name())

    fill(cluster.bootstrap, topic, 1, 100)
    # DeleteRecords on the leader; followers copy the new log start from their fetches.
    low = next(iter(admin.delete_records([TopicPartition(topic, 0, 30)]).values())).result(timeout=15)
    assert low.low_watermark == 30

    # The preferred leader dies: leadership moves; back in sync it stays a follower until a
    # preferred election is asked for.
    cluster.kill(preferred)
    other = cluster.wait_leader(topic, 0, exclude=(preferred,))
    # The new leader starts where the old one deleted up to: the followers copied it.
    live = cluster.up_bootstrap()

    def low_watermark():
        # librdkafka may have sent the request to the killed broker on metadata from a broker
        # that had not yet seen it fenced, and then drops that broker's handle mid-request
        # (_DESTROY_BROKER): the client's transient state, so ask again.
        try:
            return (watermarks(live, topic, 0)[0],)
        except KafkaException as e:
            print(f"watermarks: {e}, asking again")
            return None

    assert wait_until(low_watermark, 20, "the new leader's watermarks")[0] == 30
    fill(live, topic, 1, 10)
    cluster.restart(preferred)
    cluster.wait_isr(topic, 0, 3, timeout_s=60, includes=(preferred,))
    time.sleep(1.0)
    assert cluster.leader_of(topic, 0) == other

    admin = AdminClient(client_config(cluster.bootstrap))
    errors = election_errors(admin.elect_leaders(ElectionType.PREFERRED, [tp]).result(timeout=30))
    assert errors[(topic, 0)] is None, errors
    wait_until(lambda: cluster.leader_of(topic, 0) == preferred, 20, "the preferred replica leading again")

    # kafka-python: unclean election where a live leader exists is not needed.
    client = kafka_python_admin(cluster.bootstrap)
    try:
        result = client.elect_leaders(1, {topic: [0]}, raise_errors=False)
        assert "ElectionNotNeeded" in repr(result) or "84" in repr(result), result
    finally:
        client.close()
    # Everything acknowledged after the deletion is readable from the preferred leader.
    values = consume_assigned(cluster.bootstrap, topic, [0], 80)
    assert len(values) == 80


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_sigterm_moves_leadership_before_the_broker_exits(cluster_factory):
    # A long session timeout: without a controlled shutdown, leadership would stay on the stopped
    # broker for 20 s; with it, it has moved by the time the process exits.
    settings = {**FAST_SETTINGS, "broker.session.timeout.ms": "20000", "auto.leader.rebalance.enable": "false"}
    cluster = cluster_factory(settings=settings)
    topic = unique_topic("ctlshut")
    cluster.create_topic(topic, partitions=3, replication_factor=3)
    cluster.wait_full_isr(topic, 3)
    victim = cluster.leader_of(topic, 0)
    producer = BackgroundProducer(cluster.bootstrap, topic)
    producer.wait_for_more(200, "the producer under way")
    stopped_at = time.monotonic()
    cluster.stop(victim)  # SIGTERM, waits for the exit
    exit_s = time.monotonic() - stopped_at
    log = cluster.node(victim).log_text()
    assert "controlled shutdown: leaderships moved" in log, log[-3000:]
    # Leadership is elsewhere right away, far sooner than the 20 s session timeout.
    for p in range(3):
        cluster.wait_leader(topic, p, timeout_s=3.0, exclude=(victim,))
    assert exit_s < 10, exit_s
    producer.wait_for_more(200, "the producer going on without the stopped broker")
    producer.stop()
    # Every acknowledged record is there, once.
    values = consume_assigned(cluster.up_bootstrap(), topic, range(3), len(producer.acked))
    assert sorted(m.value() for m in values) == sorted(producer.acked)


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_reassignment_moves_partitions_while_producing(cluster_factory):
    """KIP-455 through kafka-python's admin: an RF=1 partition moves off its broker onto the two
    others (RF 2) while an idempotent acks=all producer writes to it; nothing acknowledged is
    lost, the producer carries on, and the old replica's files go."""
    cluster = cluster_factory(settings={**FAST_SETTINGS, "min.insync.replicas": "1"})
    topic = unique_topic("reassign")
    cluster.create_topic(topic, partitions=2, replication_factor=1)
    p0 = cluster.partition_view(topic, 0)
    old = p0.replicas[0]
    others = [b for b in (1, 2, 3) if b != old]
    producer = BackgroundProducer(cluster.bootstrap, topic, partitions=2)
    producer.wait_for_more(300, "the producer under way")

    client = kafka_python_admin(cluster.bootstrap)
    try:
        result = client.alter_partition_reassignments({KTopicPartition(topic, 0): others})
        assert all(v is None for v in result.values()), result
        # Cancelling what is not moving is refused per partition.
        refused = client.alter_partition_reassignments({KTopicPartition(topic, 1): None})
        assert "NoReassignmentInProgress" in repr(refused), refused

        def done():
            ongoing = client.list_partition_reassignments()
            view = cluster.partition_view(topic, 0)
            return not ongoing and view is not None and sorted(view.replicas) == sorted(others)

        wait_until(done, 60, "the reassignment to finish", describe=lambda: repr(client.list_partition_reassignments()))
    finally:
        client.close()
    view = cluster.partition_view(topic, 0)
    assert view.replicas == others and view.leader in others, view
    wait_until(lambda: sorted(cluster.isr_of(topic, 0)) == sorted(others), 30, "both new replicas in sync")
    # The old broker no longer holds the partition's files.
    old_dir = cluster.node(old).data_dir / f"{topic}-0"
    wait_until(lambda: not old_dir.exists(), 20, f"{old_dir} removed")

    producer.wait_for_more(300, "the producer going on after the move")
    producer.stop()
    values = consume_assigned(cluster.up_bootstrap(), topic, range(2), len(producer.acked))
    assert sorted(m.value() for m in values) == sorted(producer.acked)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_spate_reassign_generate_execute_verify(cluster_factory, tmp_path):
    cluster = cluster_factory(settings={**FAST_SETTINGS, "min.insync.replicas": "1"})
    topic = unique_topic("cli-reassign")
    cluster.create_topic(topic, partitions=3, replication_factor=1)
    fill(cluster.bootstrap, topic, 3, 50)
    spate = spate_binary()

    def run(*args, check=True):
        proc = subprocess.run([spate, "reassign", "--bootstrap-server", cluster.bootstrap, *args],
                              capture_output=True, text=True, timeout=60)
        if check:
            assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc

    plan = json.loads(run("--generate", "--topics", topic, "--brokers", "2,3").stdout)
    assert plan["version"] == 1
    assert sorted(p["partition"] for p in plan["partitions"]) == [0, 1, 2]
    assert all(len(p["replicas"]) == 1 and p["replicas"][0] in (2, 3) for p in plan["partitions"])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    assert "Successfully started partition reassignment" in run("--execute", str(plan_file)).stdout
    wait_until(lambda: run("--verify", str(plan_file), check=False).returncode == 0, 60, "spate reassign --verify")
    assert run("--verify", str(plan_file)).stdout.count("is completed") == 3
    for p in plan["partitions"]:
        assert cluster.partition_view(topic, p["partition"]).replicas == p["replicas"]
    # Every record is still there.
    assert len(consume_assigned(cluster.bootstrap, topic, range(3), 150)) == 150
    # Nothing in progress: cancel has nothing to do.
    assert "No reassignment" in run("--cancel", str(plan_file)).stdout


def run_spate(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([spate_binary(), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_broker_only_node_joins_takes_partitions_and_is_unregistered(cluster_factory):
    """A broker-only node (`process.roles=broker`) joins a running two-voter cluster as an observer
    of the metadata quorum, takes partitions by reassignment (kafka-python's admin) while an
    idempotent acks=all producer writes, serves clients and topic creation, and survives a restart.
    `spate cluster unregister` refuses it while it runs or holds replicas; once its partitions are
    moved back and it is stopped, the cluster forgets it (confluent-kafka's describe_cluster)."""
    settings = {
        **FAST_SETTINGS,
        "min.insync.replicas": "1",
        "default.replication.factor": "2",
        "offsets.topic.replication.factor": "2",
    }
    cluster = cluster_factory(size=2, settings=settings)
    topic = unique_topic("observer")
    cluster.create_topic(topic, partitions=2, replication_factor=1)
    producer = BackgroundProducer(cluster.bootstrap, topic, partitions=2)
    producer.wait_for_more(200, "the producer under way")

    node = cluster.add_broker_only(4)
    cluster.wait_ready()
    assert 4 not in cluster.voter_ids

    def broker_ids(bootstrap: str) -> list[int]:
        admin = AdminClient(client_config(bootstrap))
        return sorted(n.id for n in admin.describe_cluster(request_timeout=15).result(timeout=30).nodes)

    assert broker_ids(node.bootstrap) == [1, 2, 4]

    def reassign(targets: dict[int, list[int]]) -> None:
        client = kafka_python_admin(cluster.bootstrap)
        try:
            result = client.alter_partition_reassignments({KTopicPartition(topic, p): r for p, r in targets.items()})
            assert all(v is None for v in result.values()), result

            def done():
                if client.list_partition_reassignments():
                    return False
                return all(
                    (v := cluster.partition_view(topic, p)) is not None and v.replicas == r and sorted(v.isr) == sorted(r)
                    for p, r in targets.items()
                )

            wait_until(done, 90, f"the reassignment to {targets}", describe=cluster.describe)
        finally:
            client.close()

    # Onto the new node while producing: partition 0 moves there, partition 1 gains a replica there.
    p1_home = cluster.partition_view(topic, 1).replicas[0]
    reassign({0: [4], 1: [p1_home, 4]})
    assert (node.data_dir / f"{topic}-0").is_dir()
    producer.wait_for_more(200, "the producer going on after the move")

    # Requests through the observer are forwarded to the quorum leader; placement uses it too.
    spread = unique_topic("observer-spread")
    admin = AdminClient(client_config(node.bootstrap))
    admin.create_topics([NewTopic(spread, 3, 3)])[spread].result(timeout=30)
    wait_until(lambda: cluster.partition_view(spread, 2) is not None, 20, "the new topic's metadata")
    assert all(sorted(cluster.partition_view(spread, p).replicas) == [1, 2, 4] for p in range(3))

    # A restart rejoins from its own directory and catches up.
    cluster.restart(4)
    cluster.wait_ready()
    wait_until(lambda: 4 in cluster.isr_of(topic, 1), 30, "the restarted node back in sync", describe=cluster.describe)

    refused = run_spate("cluster", "unregister", "--bootstrap-server", cluster.bootstrap_of([1, 2]), "--id", "4",
                        check=False)
    assert refused.returncode != 0 and "running" in refused.stderr, refused.stderr

    # Decommission: move everything back, stop it, forget it.
    reassign({0: [p1_home], 1: [p1_home]})
    admin.delete_topics([spread])[spread].result(timeout=30)
    producer.wait_for_more(100, "the producer going on after the move back")
    producer.stop()
    cluster.stop(4)
    wait_until(lambda: 4 not in cluster.metadata(1).brokers, 20, "the stopped node out of the live brokers")
    out = run_spate("cluster", "unregister", "--bootstrap-server", cluster.bootstrap_of([1, 2]), "--id", "4")
    assert "no longer registered" in out.stdout
    assert broker_ids(cluster.bootstrap_of([1, 2])) == [1, 2]
    again = run_spate("cluster", "unregister", "--bootstrap-server", cluster.bootstrap_of([1, 2]), "--id", "4",
                      check=False)
    assert again.returncode != 0 and "not registered" in again.stderr, again.stderr

    values = consume_assigned(cluster.bootstrap_of([1, 2]), topic, range(2), len(producer.acked))
    assert sorted(m.value() for m in values) == sorted(producer.acked)


def dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.log")) if path.is_dir() else 0


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_reassignment_throttle_limits_the_move_until_lifted(cluster_factory, tmp_path):
    """`spate reassign --execute --throttle` sets `leader.` and `follower.replication.throttled.rate`
    (dynamic broker configs, described by confluent-kafka's AdminClient) on the sending and receiving
    brokers: the new replica fills at about that rate; raising them with `spate configs` lets the
    move finish, and `--verify` removes the throttles once the reassignment is complete."""
    cluster = cluster_factory(size=2, settings={**FAST_SETTINGS, "min.insync.replicas": "1"})
    topic = unique_topic("throttle")
    cluster.create_topic(topic, partitions=1, replication_factor=1)
    old = cluster.partition_view(topic, 0).replicas[0]
    new = 3 - old
    value = b"x" * 1000
    produce(cluster.bootstrap, topic, [(0, None, value, None)] * 6000, acks="all", **{"linger.ms": 20})
    source_bytes = dir_bytes(cluster.node(old).data_dir / f"{topic}-0")
    assert source_bytes > 5_000_000, source_bytes

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [{"topic": topic, "partition": 0, "replicas": [old, new]}]}))
    base = ["--bootstrap-server", cluster.bootstrap]
    rate = 400_000
    out = run_spate("reassign", *base, "--execute", str(plan), "--throttle", str(rate)).stdout
    assert "Successfully started partition reassignment" in out, out

    admin = AdminClient(client_config(cluster.bootstrap))
    resource = ConfigResource("broker", str(new))
    entry = admin.describe_configs([resource])[resource].result(timeout=15)["follower.replication.throttled.rate"]
    assert entry.value == str(rate) and not entry.is_default and not entry.is_read_only
    sender = ConfigResource("broker", str(old))
    entry = admin.describe_configs([sender])[sender].result(timeout=15)["leader.replication.throttled.rate"]
    assert entry.value == str(rate) and not entry.is_default

    # About 400 kB/s: after 4 s the new copy holds at most the first second's budget, four more
    # seconds and one fetch (1 MiB) of overshoot — far from the 6 MB an unthrottled move copies
    # in well under a second.
    started = time.monotonic()
    target_dir = cluster.node(new).data_dir / f"{topic}-0"
    time.sleep(4)
    copied = dir_bytes(target_dir)
    elapsed = time.monotonic() - started
    assert copied <= rate * (elapsed + 1) + (1 << 20) + 200_000, (copied, elapsed)
    assert run_spate("reassign", *base, "--verify", str(plan), check=False).returncode != 0

    for broker_id in (old, new):
        run_spate("configs", *base, "--alter", "--broker", str(broker_id), "--add-config",
                  "leader.replication.throttled.rate=1000000000,follower.replication.throttled.rate=1000000000")
    wait_until(lambda: run_spate("reassign", *base, "--verify", str(plan), check=False).returncode == 0, 60,
               "the reassignment to finish once the throttle is raised")
    # The successful --verify removed the throttles.
    for r in (resource, sender):
        configs = admin.describe_configs([r])[r].result(timeout=15)
        assert configs["follower.replication.throttled.rate"].is_default, configs
        assert configs["leader.replication.throttled.rate"].is_default, configs
    assert len(consume_assigned(cluster.bootstrap_of([new]), topic, [0], 6000)) == 6000


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_throttled_reassignment_cancelled_midway_goes_back(cluster_factory, tmp_path):
    """A reassignment slowed by a throttle is cancelled mid-way with `spate reassign --cancel`: the
    partition goes back to its old replica alone, the partly copied replica is deleted, and every
    record is still there."""
    cluster = cluster_factory(size=2, settings={**FAST_SETTINGS, "min.insync.replicas": "1"})
    topic = unique_topic("cancel")
    cluster.create_topic(topic, partitions=1, replication_factor=1)
    old = cluster.partition_view(topic, 0).replicas[0]
    new = 3 - old
    produce(cluster.bootstrap, topic, [(0, None, b"y" * 1000, None)] * 4000, acks="all", **{"linger.ms": 20})
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [{"topic": topic, "partition": 0, "replicas": [old, new]}]}))
    base = ["--bootstrap-server", cluster.bootstrap]
    run_spate("reassign", *base, "--execute", str(plan), "--throttle", "200000")
    target_dir = cluster.node(new).data_dir / f"{topic}-0"
    wait_until(lambda: dir_bytes(target_dir) > 0, 20, "the new replica to start copying")
    assert cluster.partition_view(topic, 0).replicas == [old, new]

    out = run_spate("reassign", *base, "--cancel", str(plan)).stdout
    assert "Successfully cancelled partition reassignment" in out, out
    wait_until(lambda: cluster.partition_view(topic, 0).replicas == [old], 30, "the partition back on its old replica",
               describe=cluster.describe)
    wait_until(lambda: not target_dir.exists(), 30, f"{target_dir} removed")
    client = kafka_python_admin(cluster.bootstrap)
    try:
        assert not client.list_partition_reassignments()
    finally:
        client.close()
    assert run_spate("reassign", *base, "--verify", str(plan), check=False).returncode != 0
    assert len(consume_assigned(cluster.bootstrap, topic, [0], 4000)) == 4000


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_controller_voters_change_at_run_time(cluster_factory):
    """KIP-853 through `spate cluster`: a broker-only node becomes a voter of the metadata quorum
    (`add-controller`, AddRaftVoter) and an original voter leaves it (`remove-controller`,
    RemoveRaftVoter), `spate cluster quorum` (DescribeQuorum) showing each step. Then two of the
    three original voters stop: {3, 4} is a majority of the new voters {2, 3, 4}, so confluent-kafka
    can still create a topic and produce to it — node 4 votes. Restarted, node 4 is still a voter
    (the membership lives in the metadata log, not in its `process.roles=broker` config)."""
    cluster = cluster_factory(settings={**FAST_SETTINGS, "min.insync.replicas": "1"})
    node = cluster.add_broker_only(4)
    cluster.wait_ready()

    def quorum(node_ids) -> dict:
        base = ["--bootstrap-server", cluster.bootstrap_of(node_ids)]
        return json.loads(run_spate("cluster", "quorum", *base, "--json").stdout)

    def ids(members) -> list[int]:
        return sorted(m["id"] for m in members)

    def admin_cmd(*args, node_ids=(1, 2, 3, 4)):
        return run_spate("cluster", *args, "--bootstrap-server", cluster.bootstrap_of(node_ids), check=False)

    q = quorum([1, 2, 3])
    assert ids(q["voters"]) == [1, 2, 3] and ids(q["observers"]) == [4], q
    assert q["leader_id"] in (1, 2, 3) and q["high_watermark"] > 0, q

    # The observer may still be catching up: the controller refuses until it has (and says so).
    def promoted() -> bool:
        out = admin_cmd("add-controller", "--id", "4")
        # An attempt that timed out on the client may have committed: the next one says so.
        return out.returncode == 0 or "already a voter" in out.stderr

    wait_until(promoted, 30, "node 4 to become a voter")
    q = quorum([4])
    assert ids(q["voters"]) == [1, 2, 3, 4] and q["observers"] == [], q
    four = next(m for m in q["voters"] if m["id"] == 4)
    assert four["controller_listener"] == f"127.0.0.1:{node.controller_port}", q
    again = admin_cmd("add-controller", "--id", "4")
    assert again.returncode != 0 and "already a voter" in again.stderr, again.stderr
    nobody = admin_cmd("add-controller", "--id", "9")
    assert nobody.returncode != 0 and "process.roles=broker" in nobody.stderr, nobody.stderr

    out = admin_cmd("remove-controller", "--id", "1")
    assert out.returncode == 0, out.stderr
    q = quorum([2, 3, 4])
    assert ids(q["voters"]) == [2, 3, 4] and ids(q["observers"]) == [1], q
    gone = admin_cmd("remove-controller", "--id", "1")
    assert gone.returncode != 0 and "not a voter" in gone.stderr, gone.stderr
    text = run_spate("cluster", "quorum", "--bootstrap-server", cluster.bootstrap).stdout
    assert "CurrentVoters: [2,3,4]" in text and "CurrentObservers: [1]" in text, text

    # Two of the three original voters go: the quorum {2, 3, 4} still has 3 and 4.
    cluster.stop(1)
    cluster.stop(2)
    survivors = cluster.bootstrap_of([3, 4])
    topic = unique_topic("newquorum")
    admin = AdminClient(client_config(survivors))
    admin.create_topics([NewTopic(topic, 2, 2)])[topic].result(timeout=60)
    wait_until(lambda: all(cluster.partition_view(topic, p) is not None for p in range(2)), 30, "the topic's metadata")
    produce(survivors, topic, [(p, None, f"v{p}-{i}".encode(), None) for p in range(2) for i in range(50)], acks="all")
    assert quorum([3, 4])["leader_id"] in (3, 4)

    # Restarted with its broker-only config, node 4 is still a voter and still needed to commit.
    cluster.restart(4)
    wait_until(lambda: admin_cmd("quorum", node_ids=(3, 4)).returncode == 0, 30, "the quorum to answer again")
    assert ids(quorum([3, 4])["voters"]) == [2, 3, 4]
    # Broker 3 answers the quorum question alone; node 4 must also be registered again before a
    # topic with two replicas can be placed.
    cluster.wait_ready()
    later = unique_topic("afterrestart")
    admin = AdminClient(client_config(survivors))
    admin.create_topics([NewTopic(later, 1, 2)])[later].result(timeout=60)
    values = consume_assigned(survivors, topic, range(2), 100)
    assert len(values) == 100


class BackgroundGroupConsumer:
    """A confluent-kafka group member (auto commit) reading `topic` on a thread until stopped;
    `seen` collects every value it received."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.seen: list = []
        self.errors: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(bootstrap, topic, group), daemon=True)
        self._thread.start()

    def _run(self, bootstrap: str, topic: str, group: str) -> None:
        consumer = Consumer(client_config(bootstrap, **{
            "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": True,
            "topic.metadata.refresh.interval.ms": 1000,
        }))
        consumer.subscribe([topic])
        try:
            while not self._stop.is_set():
                for m in consumer.consume(num_messages=500, timeout=0.2):
                    if m.error() is None:
                        self.seen.append(m.value())
                    elif m.error().code() != KafkaError._PARTITION_EOF and not m.error().retriable():
                        # Transport errors while a broker is down are retried by the client.
                        self.errors.append(m.error())
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_rf3_topic_spreads_onto_a_new_broker_under_load_and_a_stale_copy_goes(cluster_factory, tmp_path):
    """Issue 15's second reassignment case: an RF=3 topic on brokers 1-3 is spread across 4 brokers
    (a broker-only node added for it) with `spate reassign --generate/--execute/--verify` while an
    idempotent acks=all producer and a confluent-kafka group consumer run: nothing acknowledged is
    lost or duplicated in the log and the group consumer sees every acknowledged record. Then a
    broker is stopped and reassigned away from while down (kafka-python's admin): on restart it
    removes its stale copy."""
    cluster = cluster_factory(settings={**FAST_SETTINGS, "min.insync.replicas": "2"})
    topic = unique_topic("spread")
    cluster.create_topic(topic, partitions=4, replication_factor=3)
    cluster.wait_full_isr(topic, 4)
    producer = BackgroundProducer(cluster.bootstrap, topic, partitions=4)
    consumer = BackgroundGroupConsumer(cluster.bootstrap, topic, unique_topic("spread-group"))
    producer.wait_for_more(300, "the producer under way")

    cluster.add_broker_only(4)
    cluster.wait_ready()
    base = ["reassign", "--bootstrap-server", cluster.bootstrap]
    plan = json.loads(run_spate(*base, "--generate", "--topics", topic, "--brokers", "1,2,3,4").stdout)
    assert all(len(p["replicas"]) == 3 for p in plan["partitions"]), plan
    assert any(4 in p["replicas"] for p in plan["partitions"]), plan
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    assert "Successfully started" in run_spate(*base, "--execute", str(plan_file)).stdout
    wait_until(lambda: run_spate(*base, "--verify", str(plan_file), check=False).returncode == 0, 90,
               "spate reassign --verify", describe=cluster.describe)
    assert run_spate(*base, "--verify", str(plan_file)).stdout.count("is completed") == 4
    for p in plan["partitions"]:
        view = cluster.partition_view(topic, p["partition"])
        assert sorted(view.replicas) == sorted(p["replicas"]), view
    producer.wait_for_more(300, "the producer going on after the move")

    # A broker down while a partition is moved off it drops its copy when it comes back.
    moved = 0
    victim = next(r for r in cluster.partition_view(topic, moved).replicas if r != cluster.leader_of(topic, moved))
    cluster.stop(victim)
    targets = sorted(b for b in (1, 2, 3, 4) if b != victim)
    client = kafka_python_admin(cluster.up_bootstrap())
    try:
        result = client.alter_partition_reassignments({KTopicPartition(topic, moved): targets})
        assert all(v is None for v in result.values()), result
        wait_until(lambda: not client.list_partition_reassignments()
                   and sorted(cluster.partition_view(topic, moved).isr) == targets, 90,
                   "the move off the stopped broker", describe=cluster.describe)
    finally:
        client.close()
    stale = cluster.node(victim).data_dir / f"{topic}-{moved}"
    assert stale.is_dir()
    cluster.restart(victim)
    cluster.wait_ready()
    wait_until(lambda: not stale.exists(), 30, f"broker {victim} to remove its stale copy")

    producer.wait_for_more(200, "the producer going on")
    producer.stop()
    acked = set(producer.acked)
    wait_until(lambda: acked <= set(consumer.seen), 60, "the group consumer to see every acknowledged record",
               describe=lambda: f"{len(acked - set(consumer.seen))} missing")
    consumer.stop()
    assert not consumer.errors, consumer.errors[:5]
    values = consume_assigned(cluster.up_bootstrap(), topic, range(4), len(producer.acked))
    assert sorted(m.value() for m in values) == sorted(producer.acked), "lost or duplicated in the log"


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_throttled_replicas_topic_configs_choose_what_a_throttle_slows(cluster_factory):
    """Kafka's `leader.`/`follower.replication.throttled.replicas` topic configs (set as
    kafka-reassign-partitions.sh does, here through confluent-kafka's incremental_alter_configs)
    decide which replicas the broker rates apply to: a topic that lists none moves at full speed
    under a 20 kB/s throttle, one that lists its new replica is held to it."""
    cluster = cluster_factory(size=2, settings={**FAST_SETTINGS, "min.insync.replicas": "1"})
    admin = AdminClient(client_config(cluster.bootstrap))
    free, held = unique_topic("unlisted"), unique_topic("listed")
    for topic in (free, held):
        cluster.create_topic(topic, partitions=1, replication_factor=1)
    old = cluster.partition_view(free, 0).replicas[0]
    new = 3 - old
    for topic in (free, held):
        client = kafka_python_admin(cluster.bootstrap)
        try:
            client.alter_partition_reassignments({KTopicPartition(topic, 0): [old]})
        finally:
            client.close()
        wait_until(lambda t=topic: cluster.partition_view(t, 0).replicas == [old], 30, "both topics on one broker")
        produce(cluster.bootstrap, topic, [(0, None, b"z" * 1000, None)] * 3000, acks="all", **{"linger.ms": 20})

    def set_lists(topic: str, leader: str, follower: str):
        resource = ConfigResource("topic", topic, incremental_configs=[
            ConfigEntry("leader.replication.throttled.replicas", leader,
                        incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("follower.replication.throttled.replicas", follower,
                        incremental_operation=AlterConfigOpType.SET),
        ])
        return admin.incremental_alter_configs([resource])[resource]

    set_lists(free, "", "").result(timeout=15)
    set_lists(held, f"0:{old}", f"0:{new}").result(timeout=15)
    with pytest.raises(KafkaException, match="partition:broker"):
        set_lists(held, "0", "*").result(timeout=15)
    described = admin.describe_configs([ConfigResource("topic", held)])
    entries = next(iter(described.values())).result(timeout=15)
    assert entries["follower.replication.throttled.replicas"].value == f"0:{new}"
    assert not entries["follower.replication.throttled.replicas"].is_default

    base = ["--bootstrap-server", cluster.bootstrap]
    for broker_id in (old, new):
        run_spate("configs", *base, "--alter", "--broker", str(broker_id), "--add-config",
                  "leader.replication.throttled.rate=20000,follower.replication.throttled.rate=20000")
    client = kafka_python_admin(cluster.bootstrap)
    try:
        client.alter_partition_reassignments({KTopicPartition(free, 0): [old, new], KTopicPartition(held, 0): [old, new]})
        # 3 MB at 20 kB/s would take minutes: the unlisted topic is not slowed at all.
        wait_until(lambda: sorted(cluster.isr_of(free, 0)) == sorted([old, new]), 30, "the unlisted topic's move")
        copied = dir_bytes(cluster.node(new).data_dir / f"{held}-0")
        assert copied < 1_500_000, copied
        assert {tp.topic for tp in client.list_partition_reassignments()} == {held}
        for broker_id in (old, new):
            run_spate("configs", *base, "--alter", "--broker", str(broker_id), "--delete-config",
                      "leader.replication.throttled.rate,follower.replication.throttled.rate")
        wait_until(lambda: not client.list_partition_reassignments(), 30, "the listed topic's move once lifted")
    finally:
        client.close()
    assert len(consume_assigned(cluster.bootstrap_of([new]), held, [0], 3000)) == 3000
