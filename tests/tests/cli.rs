//! The `spate` command against a real broker: `topics`, `produce` and `consume` as a user runs
//! them.

use std::process::{Command, Stdio};

use spate_e2e::{spate, spate_bin, spate_ok, TestBroker};

#[test]
fn topics_create_list_describe_alter_delete() {
    let broker = TestBroker::start(&[]).unwrap();
    let out = spate_ok(
        &broker,
        &["topics", "--create", "--topic", "events", "--partitions", "3", "--config", "retention.ms=3600000"],
    );
    assert!(out.contains("Created topic events"), "{out}");

    let again = spate(&broker, &["topics", "--create", "--topic", "events", "--partitions", "3"]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("TOPIC_ALREADY_EXISTS"), "the broker's error is shown: {stderr}");
    spate_ok(&broker, &["topics", "--create", "--topic", "events", "--if-not-exists"]);

    assert_eq!(spate_ok(&broker, &["topics", "--list"]).lines().collect::<Vec<_>>(), vec!["events"]);

    let described = spate_ok(&broker, &["topics", "--describe", "--topic", "events"]);
    let lines: Vec<&str> = described.lines().collect();
    assert_eq!(lines.len(), 4, "{described}");
    assert!(lines[0].starts_with("Topic: events\tTopicId: "), "{described}");
    assert!(lines[0].contains("PartitionCount: 3\tReplicationFactor: 1\tConfigs: retention.ms=3600000"), "{described}");
    for (p, line) in lines[1..].iter().enumerate() {
        assert!(line.contains(&format!("Partition: {p}\tLeader: ")), "{described}");
        assert!(line.contains("Replicas: ") && line.contains("Isr: "), "{described}");
    }

    spate_ok(
        &broker,
        &[
            "topics",
            "--alter",
            "--topic",
            "events",
            "--partitions",
            "4",
            "--config",
            "segment.bytes=1048576",
            "--delete-config",
            "retention.ms",
        ],
    );
    let described = spate_ok(&broker, &["topics", "--describe"]);
    assert!(
        described.contains("PartitionCount: 4\tReplicationFactor: 1\tConfigs: segment.bytes=1048576\n"),
        "{described}"
    );
    assert_eq!(described.lines().count(), 5, "{described}");

    let shrink = spate(&broker, &["topics", "--alter", "--topic", "events", "--partitions", "2"]);
    assert!(!shrink.status.success());
    assert!(String::from_utf8_lossy(&shrink.stderr).contains("INVALID_PARTITIONS"));

    assert!(spate_ok(&broker, &["topics", "--delete", "--topic", "events"]).contains("Deleted topic events"));
    assert_eq!(spate_ok(&broker, &["topics", "--list"]), "");
    let gone = spate(&broker, &["topics", "--delete", "--topic", "events"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("UNKNOWN_TOPIC_OR_PARTITION"));

    // Exactly one action; --create needs a topic.
    assert!(!spate(&broker, &["topics", "--list", "--describe"]).status.success());
    assert!(!spate(&broker, &["topics", "--create"]).status.success());
}

#[test]
fn produce_a_file_then_consume_it_back() {
    let broker = TestBroker::start(&[]).unwrap();
    spate_ok(&broker, &["topics", "--create", "--topic", "lines", "--partitions", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    let lines: Vec<String> = (0..2000).map(|i| format!("key-{}:value {i} with: colons", i % 37)).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();

    let produced = spate(
        &broker,
        &[
            "produce",
            "--topic",
            "lines",
            "--file",
            input.to_str().unwrap(),
            "--key-separator",
            ":",
            "--header",
            "source=e2e",
            "--compression",
            "lz4",
        ],
    );
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    assert!(String::from_utf8_lossy(&produced.stderr).contains("2000 records sent"));

    let out = spate_ok(
        &broker,
        &[
            "consume",
            "--topic",
            "lines",
            "--from-beginning",
            "--max-messages",
            "2000",
            "--format",
            "kv",
            "--key-separator",
            ":",
        ],
    );
    let mut got: Vec<&str> = out.lines().collect();
    let mut want: Vec<&str> = lines.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);

    let out = spate_ok(
        &broker,
        &["consume", "--topic", "lines", "--from-beginning", "--max-messages", "2000", "--format", "json"],
    );
    let mut per_partition_offsets: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["topic"], "lines");
        let key = v["key"].as_str().unwrap();
        let value = v["value"].as_str().unwrap();
        assert!(lines.contains(&format!("{key}:{value}")), "{line}");
        assert_eq!(v["headers"], serde_json::json!([{ "key": "source", "value": "e2e" }]));
        assert!(v["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
        per_partition_offsets.entry(v["partition"].as_i64().unwrap()).or_default().push(v["offset"].as_i64().unwrap());
    }
    assert_eq!(per_partition_offsets.values().map(Vec::len).sum::<usize>(), 2000);
    for (p, offsets) in per_partition_offsets {
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "partition {p} in offset order");
    }

    // One partition from an offset, stopping when idle.
    let out = spate_ok(
        &broker,
        &["consume", "--topic", "lines", "--partition", "1", "--offset", "5", "--timeout-ms", "1500"],
    );
    let all_of_p1 = spate_ok(
        &broker,
        &["consume", "--topic", "lines", "--partition", "1", "--offset", "earliest", "--timeout-ms", "1500"],
    );
    assert!(all_of_p1.lines().count() > 5);
    assert_eq!(out.lines().collect::<Vec<_>>(), all_of_p1.lines().skip(5).collect::<Vec<_>>());

    // From the end: nothing old shows up before the timeout.
    assert_eq!(spate_ok(&broker, &["consume", "--topic", "lines", "--timeout-ms", "1000"]), "");
}

#[test]
fn produce_reads_stdin_and_reports_failures() {
    let broker = TestBroker::start(&[]).unwrap();
    spate_ok(&broker, &["topics", "--create", "--topic", "stdin", "--partitions", "1"]);
    let mut child = Command::new(spate_bin())
        .args(["produce", "--topic", "stdin", "--acks", "1", "--bootstrap-server", &broker.bootstrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"one\r\ntwo\n\nthree").unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = spate_ok(&broker, &["consume", "--topic", "stdin", "--from-beginning", "--max-messages", "4"]);
    assert_eq!(out, "one\ntwo\n\nthree\n");

    // A line without the key separator is an error with its line number.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.txt");
    std::fs::write(&input, "a:1\nno separator\n").unwrap();
    let bad =
        spate(&broker, &["produce", "--topic", "stdin", "--file", input.to_str().unwrap(), "--key-separator", ":"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn bench_produce_then_consume_writes_figures() {
    let broker = TestBroker::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let produce_json = dir.path().join("produce.json");
    let out = spate_ok(
        &broker,
        &[
            "bench",
            "produce",
            "--topic",
            "b",
            "--records",
            "5000",
            "--record-size",
            "50",
            "--partitions",
            "3",
            "--producers",
            "2",
            "--acks",
            "1",
            "--json",
            produce_json.to_str().unwrap(),
        ],
    );
    assert!(out.contains("5000 records sent"), "{out}");
    let figures: serde_json::Value = serde_json::from_slice(&std::fs::read(&produce_json).unwrap()).unwrap();
    assert_eq!(figures["records"], 5000);
    assert_eq!(figures["failed"], 0);
    assert!(figures["msgs_per_sec"].as_f64().unwrap() > 0.0);
    assert!(figures["latency_ms_max"].as_f64().unwrap() >= figures["latency_ms_p50"].as_f64().unwrap());
    assert!(figures["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(spate_ok(&broker, &["topics", "--describe", "--topic", "b"]).contains("PartitionCount: 3"));

    let consume_json = dir.path().join("consume.json");
    let out = spate_ok(
        &broker,
        &["bench", "consume", "--topic", "b", "--consumers", "2", "--json", consume_json.to_str().unwrap()],
    );
    assert!(out.contains("5000 records"), "{out}");
    let figures: serde_json::Value = serde_json::from_slice(&std::fs::read(&consume_json).unwrap()).unwrap();
    assert_eq!(figures["records"], 5000);
    assert_eq!(figures["bytes"], 5000 * 50);
}

#[test]
fn broker_check_config_validates_and_exits_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |extra: &[&str]| {
        Command::new(spate_bin())
            .args(["broker", "--check-config", "--data-dir", data.to_str().unwrap()])
            .args(extra)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let ok = run(&["--set", "num.partitions=3", "--set", "metrics.listener=127.0.0.1:9464"]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("\"num.partitions\" = 3"), "{stdout}");
    assert!(stdout.contains("\"metrics.listener\" = \"127.0.0.1:9464\""), "{stdout}");
    // Nothing was started: no data directory was made.
    assert!(!data.exists());

    let bad = run(&["--set", "num.partitions=0"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("num.partitions"), "{stderr}");
    // Written to a pipe, errors and logs carry no terminal colour codes.
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    let unknown = run(&["--set", "no.such.key=1"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no.such.key"));
}

#[test]
fn delete_records_and_leader_election_commands() {
    let broker = TestBroker::start(&[]).unwrap();
    spate_ok(&broker, &["topics", "--create", "--topic", "purge", "--partitions", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, (0..50).map(|i| format!("r{i}\n")).collect::<String>()).unwrap();
    for p in ["0", "1"] {
        spate_ok(&broker, &["produce", "--topic", "purge", "--partition", p, "--file", input.to_str().unwrap()]);
    }

    // kafka-delete-records.sh's file: partition 0 below 20, partition 1 up to its high watermark.
    let json = dir.path().join("delete.json");
    std::fs::write(
        &json,
        r#"{"partitions": [{"topic": "purge", "partition": 0, "offset": 20},
                           {"topic": "purge", "partition": 1, "offset": -1}], "version": 1}"#,
    )
    .unwrap();
    let out = spate_ok(&broker, &["delete-records", "--offset-json-file", json.to_str().unwrap()]);
    assert!(out.contains("partition: purge-0\tlow_watermark: 20"), "{out}");
    assert!(out.contains("partition: purge-1\tlow_watermark: 50"), "{out}");
    let left = spate_ok(
        &broker,
        &["consume", "--topic", "purge", "--from-beginning", "--max-messages", "30", "--timeout-ms", "5000"],
    );
    assert_eq!(left.lines().count(), 30, "{left}");
    assert!(left.lines().all(|l| l != "r0" && l != "r19"), "deleted records came back: {left}");

    // Past the high watermark: the error is named and the command fails.
    std::fs::write(&json, r#"{"partitions": [{"topic": "purge", "partition": 0, "offset": 999}]}"#).unwrap();
    let bad = spate(&broker, &["delete-records", "--offset-json-file", json.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("OFFSET_OUT_OF_RANGE"), "{bad:?}");

    // One broker leads everything already: nothing to elect.
    let out = spate_ok(&broker, &["leader-election", "--election-type", "PREFERRED", "--all-topic-partitions"]);
    assert!(out.contains("Valid replica already elected for all partitions"), "{out}");
    let out =
        spate_ok(&broker, &["leader-election", "--election-type", "preferred", "--topic", "purge", "--partition", "1"]);
    assert!(out.contains("Valid replica already elected for partitions purge-1"), "{out}");
    let missing =
        spate(&broker, &["leader-election", "--election-type", "UNCLEAN", "--topic", "nope", "--partition", "0"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stdout).contains("UNKNOWN_TOPIC_OR_PARTITION"), "{missing:?}");
}
