//! `spate bench e2e` against a real broker: a short run at a low rate whose `--json` figures are
//! present and consistent. No timed assertions: latencies are checked for order, not size.

use std::process::{Command, Stdio};

use spate_e2e::{spate_bin, TestBroker};

#[test]
fn bench_e2e_writes_consistent_figures() {
    let broker = TestBroker::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("e2e.json");
    let output = Command::new(spate_bin())
        .args(["bench", "e2e", "--topic", "e2e-smoke", "--partitions", "3", "--rate", "200", "--records", "100"])
        .args(["--warmup-s", "1", "--acks", "all", "--bootstrap-server", &broker.bootstrap()])
        .arg("--json")
        .arg(&json_path)
        .stdin(Stdio::null())
        .output()
        .expect("spate runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench e2e failed with {}:\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("end-to-end (scheduled send to consumed): p50 "), "{stdout}");
    assert!(stdout.contains("produce ack (scheduled send to acknowledged): p50 "), "{stdout}");

    let figures: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(figures["topic"], "e2e-smoke");
    assert_eq!(figures["partitions"], 3);
    assert_eq!(figures["acks"], -1);
    assert_eq!(figures["target_msgs_per_sec"], 200);
    // The 200 warm-up records are sent and consumed but not counted.
    assert_eq!(figures["records"], 100);
    assert_eq!(figures["received"], 100);
    assert_eq!(figures["failed"], 0);
    assert!(figures["achieved_msgs_per_sec"].as_f64().unwrap() > 0.0, "{figures}");
    for which in ["e2e_latency", "ack_latency"] {
        let l = &figures[which];
        assert_eq!(l["samples"], 100, "{which}: {l}");
        let at = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{which}.{k} missing: {l}"));
        assert!(at("ms_p50") > 0.0, "{which}: {l}");
        assert!(
            at("ms_p50") <= at("ms_p90")
                && at("ms_p90") <= at("ms_p99")
                && at("ms_p99") <= at("ms_p999")
                && at("ms_p999") <= at("ms_max"),
            "{which} percentiles are ordered: {l}"
        );
    }
    assert!(figures["peak_rss_bytes"].as_u64().unwrap() > 0, "{figures}");
}
