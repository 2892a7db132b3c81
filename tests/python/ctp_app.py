"""A consume-transform-produce application with confluent-kafka, exactly once by transactions:
each batch of input records becomes output records and the input's next offsets, written in one
transaction (send_offsets_to_transaction). test_transactions.py runs it as a process and kills it
with SIGKILL at random points, then checks that the output holds each input exactly once.

It assigns itself every input partition and resumes from the group's committed offsets: one
instance at a time, fenced by its transactional.id (InitProducerId bumps the epoch and aborts the
previous instance's open transaction). init_transactions runs before the consumer fetches its
committed offsets, so those never include a dead instance's pending ones.

Prints `ready <seconds since start>` once it consumes, then after each commit `committed <records
this instance committed> <seconds since start> <[(partition, next offset)] committed>`.

Usage: ctp_app.py BOOTSTRAP GROUP INPUT OUTPUT PARTITIONS TRANSACTIONAL_ID SEED"""

import random
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

# Records per transaction at most.
BATCH = 100


def main() -> None:
    bootstrap, group, source, sink, partitions, transactional_id, seed = sys.argv[1:8]
    rng = random.Random(int(seed))
    started = time.monotonic()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 10_000,
            "linger.ms": 2,
        }
    )
    producer.init_transactions(30)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # librdkafka answers one request per connection at a time: a ListOffsets for a
            # partition without a committed offset waits behind the fetch long poll.
            "fetch.wait.max.ms": 100,
        }
    )
    # No offset given: each partition starts at the group's committed offset.
    consumer.assign([TopicPartition(source, p) for p in range(int(partitions))])
    print(f"ready {time.monotonic() - started:.3f}", flush=True)
    committed = 0
    while True:
        messages = consumer.consume(num_messages=BATCH, timeout=0.2)
        for m in messages:
            if m.error() and m.error().code() != KafkaError._PARTITION_EOF:
                raise KafkaException(m.error())
        messages = [m for m in messages if not m.error()]
        if not messages:
            continue
        producer.begin_transaction()
        for m in messages:
            producer.produce(sink, key=m.key(), value=b"out-" + m.value(), partition=m.partition())
        # Work between the sends and the commit (the records go out meanwhile): most kills then
        # land inside a transaction whose records the broker already holds.
        time.sleep(rng.uniform(0.0, 0.01))
        # A partition this instance has not consumed from has no position (OFFSET_INVALID).
        positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        committed += len(messages)
        print(f"committed {committed} {time.monotonic() - started:.3f} {[(tp.partition, tp.offset) for tp in positions]}", flush=True)


if __name__ == "__main__":
    main()
