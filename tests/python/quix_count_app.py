"""A quixstreams application (run with the quixstreams venv's python, see requirements-quix.txt):
counts records per key with a state store and writes {"id", "n"} per input record, with
processing_guarantee="exactly-once". test_quixstreams.py kills it with SIGKILL and restarts it.

Usage: quix_count_app.py BOOTSTRAP GROUP INPUT OUTPUT STATE_DIR"""

import sys

from quixstreams import Application


def main() -> None:
    bootstrap, group, source, sink, state_dir = sys.argv[1:6]
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        processing_guarantee="exactly-once",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        commit_interval=0.5,
        loglevel="WARNING",
        # A killed instance's open transaction blocks read_committed readers until the coordinator
        # aborts it, and its group member holds partitions until its session ends: keep both short.
        producer_extra_config={"transaction.timeout.ms": 8000},
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    source_topic = app.topic(source, key_deserializer="str", value_deserializer="json")
    sink_topic = app.topic(sink, key_serializer="str", value_serializer="json")

    def count(value, state):
        n = state.get("n", 0) + 1
        state.set("n", n)
        return {"id": value["id"], "n": n}

    app.dataframe(source_topic).apply(count, stateful=True).to_topic(sink_topic)
    app.run()


if __name__ == "__main__":
    main()
