//! The PostgreSQL CDC source against a real server, driven through the connector API: the
//! snapshot, every kind of change in Debezium's shape and in commit order, restarts that lose
//! nothing, and a slot that moves only on `commit`.

#[path = "common/postgres.rs"]
mod postgres;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use spate_connect::config::Props;
use spate_connect::connector::{OffsetReader, SourceTask, SourceTaskContext};
use spate_connect::record::{ConnectRecord, Value};
use spate_connect::registry::Registry;

#[derive(Default)]
struct Offsets(Mutex<Vec<(Json, Json)>>);

impl OffsetReader for Offsets {
    fn offsets(&self) -> Vec<(Json, Json)> {
        self.0.lock().unwrap().clone()
    }
}

fn props(url: &str, prefix: &str, slot: &str, extra: &[(&str, &str)]) -> Props {
    let mut p: Props = [
        ("name", "cdc"),
        ("connector.class", "io.debezium.connector.postgresql.PostgresConnector"),
        ("connection.url", url),
        ("topic.prefix", prefix),
        ("slot.name", slot),
        ("poll.interval.ms", "50"),
        ("max.batch.size", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        p.insert((*k).to_owned(), (*v).to_owned());
    }
    p
}

fn start(p: &Props, stored: Option<Json>) -> Box<dyn SourceTask> {
    let plugin = Registry::builtin().find(&p["connector.class"]).expect("registered");
    assert!(plugin.validate(p).is_empty(), "{:?}", plugin.validate(p));
    let configs = plugin.task_configs(p, 4).unwrap();
    assert_eq!(configs.len(), 1, "one task per slot");
    let offsets = Offsets::default();
    if let Some(o) = stored {
        offsets.0.lock().unwrap().push((json!({"server": p["topic.prefix"]}), o));
    }
    let mut task = plugin.source_task().unwrap();
    let ctx = SourceTaskContext { connector: "cdc".into(), task_id: 0, offsets: Arc::new(offsets) };
    task.start(&configs[0], &ctx).unwrap();
    task
}

/// Polls until `n` records (tombstones included) arrived; returns them with the offsets of
/// each batch (in order).
fn poll_n(task: &mut dyn SourceTask, n: usize) -> (Vec<ConnectRecord>, Vec<Json>) {
    poll(task, n, true)
}

/// Polls until at least `n` records arrived; with `exact`, checks that no more come.
fn poll(task: &mut dyn SourceTask, n: usize, exact: bool) -> (Vec<ConnectRecord>, Vec<Json>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    let mut offsets = Vec::new();
    while records.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} records: {records:#?}", records.len());
        if let Some(b) = task.poll(Duration::from_millis(100)).unwrap() {
            assert!(b.failed.is_empty(), "{:?}", b.failed);
            assert!(b.records.len() <= 3, "max.batch.size");
            records.extend(b.records);
            offsets.extend(b.offsets.into_iter().map(|(_, o)| o));
        }
    }
    if !exact {
        return (records, offsets);
    }
    // Nothing more (and let an offset-only batch come through).
    let quiet = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet {
        if let Some(b) = task.poll(Duration::from_millis(50)).unwrap() {
            assert!(b.records.is_empty(), "unexpected extra records: {:#?}", b.records);
            offsets.extend(b.offsets.into_iter().map(|(_, o)| o));
        }
    }
    (records, offsets)
}

fn value(r: &ConnectRecord) -> &Json {
    match &r.value {
        Some(Value::Json(j)) => j,
        other => panic!("not a JSON value: {other:?}"),
    }
}

fn key(r: &ConnectRecord) -> Json {
    match &r.key {
        Some(Value::Json(j)) => j.clone(),
        None => Json::Null,
        other => panic!("not a JSON key: {other:?}"),
    }
}

fn ops(records: &[ConnectRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.value.as_ref().map_or("tombstone".to_owned(), |_| value(r)["op"].as_str().unwrap().to_owned()))
        .collect()
}

fn confirmed(pg: &postgres::PgServer, db: &str, slot: &str) -> u64 {
    let out = pg
        .psql(db, &format!("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = '{slot}'"))
        .unwrap();
    out.trim().parse().unwrap()
}

#[test]
fn snapshot_then_every_change_in_debezium_shape_and_commit_order() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("shop");
    pg.psql(
        "shop",
        "CREATE TABLE users (id int PRIMARY KEY, name text, score numeric(10,2), born date, seen timestamp, \
         data jsonb, ok boolean); \
         CREATE TABLE items (sku text PRIMARY KEY, qty bigint); ALTER TABLE items REPLICA IDENTITY FULL; \
         CREATE TABLE skipped (x int); \
         INSERT INTO users VALUES (1, 'ann', 1.50, '1970-01-02', '1970-01-01 00:00:01', '{\"a\": 1}', true), \
         (2, 'bob', NULL, NULL, NULL, NULL, false); INSERT INTO items VALUES ('a', 5); INSERT INTO skipped VALUES (1)",
    )
    .unwrap();
    let p = props(&url, "srv", "s1", &[("table.exclude.list", "public\\.skip.*")]);
    let mut task = start(&p, None);

    // The snapshot: op r for every row, the last one marked "last".
    let (snap, offsets) = poll_n(task.as_mut(), 3);
    assert_eq!(ops(&snap), ["r", "r", "r"]);
    assert_eq!(&*snap[0].topic, "srv.public.items");
    let users: Vec<&ConnectRecord> = snap.iter().filter(|r| &*r.topic == "srv.public.users").collect();
    let ann = value(users[0]);
    assert_eq!(
        ann["after"],
        json!({"id": 1, "name": "ann", "score": "1.50", "born": 1, "seen": 1_000_000, "data": "{\"a\": 1}", "ok": true})
    );
    assert_eq!(key(users[0]), json!({"id": 1}));
    assert_eq!(ann["source"]["snapshot"], "true");
    assert_eq!(ann["source"]["connector"], "postgresql");
    assert_eq!(ann["source"]["db"], "shop");
    assert_eq!(ann["source"]["name"], "srv");
    assert_eq!(value(snap.last().unwrap())["source"]["snapshot"], "last");
    assert_eq!(users[0].value_schema.as_deref().unwrap()["name"], "srv.public.users.Envelope");
    assert_eq!(offsets.last().unwrap()["last_snapshot_record"], true);

    // One multi-statement transaction, then others; each arrives whole and in commit order.
    pg.psql(
        "shop",
        "BEGIN; INSERT INTO users (id, name) VALUES (3, 'cy'); UPDATE users SET name = 'ann2' WHERE id = 1; \
         DELETE FROM users WHERE id = 2; COMMIT; \
         UPDATE items SET qty = 6 WHERE sku = 'a'; \
         UPDATE users SET id = 10 WHERE id = 3; \
         INSERT INTO skipped VALUES (2); \
         TRUNCATE items",
    )
    .unwrap();
    let (changes, offsets) = poll_n(task.as_mut(), 9);
    assert_eq!(ops(&changes), ["c", "u", "d", "tombstone", "u", "d", "tombstone", "c", "t"], "{changes:#?}");
    let c = value(&changes[0]);
    assert_eq!(c["after"]["name"], "cy");
    assert_eq!(c["before"], Json::Null);
    assert_eq!(c["source"]["snapshot"], "false");
    assert!(c["source"]["txId"].as_i64().unwrap() > 0);
    let tx = c["source"]["txId"].clone();
    assert_eq!(value(&changes[1])["source"]["txId"], tx, "same transaction");
    // Each change carries its own LSN (below its commit's end); sequence = [last commit, lsn].
    let (l0, l1) = (c["source"]["lsn"].as_u64().unwrap(), value(&changes[1])["source"]["lsn"].as_u64().unwrap());
    assert!(l0 < l1, "{l0} {l1}");
    assert!(l1 < offsets[0]["lsn"].as_u64().unwrap(), "{l1} {offsets:?}");
    let seq: Vec<Json> = serde_json::from_str(value(&changes[1])["source"]["sequence"].as_str().unwrap()).unwrap();
    assert_eq!(seq[1], json!(l1.to_string()));
    assert_eq!(value(&changes[1])["after"]["name"], "ann2");
    // REPLICA IDENTITY DEFAULT: a delete's before holds the key only.
    let d = value(&changes[2]);
    assert_eq!(d["before"]["id"], 2);
    assert_eq!(d["before"]["name"], Json::Null);
    assert_eq!(d["after"], Json::Null);
    assert_eq!(key(&changes[3]), json!({"id": 2}));
    // REPLICA IDENTITY FULL: the whole old row.
    let u = value(&changes[4]);
    assert_eq!(u["before"], json!({"sku": "a", "qty": 5}));
    assert_eq!(u["after"], json!({"sku": "a", "qty": 6}));
    // A primary key change: delete + tombstone for the old key, create for the new.
    assert_eq!(key(&changes[5]), json!({"id": 3}));
    assert_eq!(key(&changes[7]), json!({"id": 10}));
    assert_eq!(&*changes[8].topic, "srv.public.items");
    assert_eq!(key(&changes[8]), Json::Null);
    // LSNs grow in commit order; offsets only at transaction ends, increasing.
    let lsns: Vec<u64> = offsets.iter().map(|o| o["lsn"].as_u64().unwrap()).collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");
    assert!(offsets.iter().filter(|o| o.get("txId").is_some()).count() >= 2, "{offsets:?}");
    task.stop();
}

#[test]
fn the_slot_moves_only_on_commit_and_a_restart_loses_nothing() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("app");
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    let p = props(&url, "app", "s2", &[("snapshot.mode", "never")]);
    let mut task = start(&p, None);
    let slot_start = confirmed(&pg, "app", "s2");
    for i in 0..6 {
        pg.psql("app", &format!("INSERT INTO t VALUES ({i}, 'v{i}')")).unwrap();
    }
    let (records, offsets) = poll_n(task.as_mut(), 6);
    let ids: Vec<i64> = records.iter().map(|r| value(r)["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [0, 1, 2, 3, 4, 5]);
    assert_eq!(confirmed(&pg, "app", "s2"), slot_start, "no commit yet: the slot stays");
    // The runtime stored the offset after the third transaction, then the worker died before
    // commit() and before the rest was acknowledged.
    let stored = offsets[0].clone();
    let stored_lsn = stored["lsn"].as_u64().unwrap();
    // Sequential transactions: a change at or after the stored commit end is a later
    // transaction's (a change's own LSN; the first one of the next transaction starts there).
    let mut expected: Vec<i64> = records
        .iter()
        .filter(|r| value(r)["source"]["lsn"].as_u64().unwrap() >= stored_lsn)
        .map(|r| value(r)["after"]["id"].as_i64().unwrap())
        .collect();
    assert!(!expected.is_empty() && expected.len() < 6, "{expected:?} {offsets:?}");
    expected.push(6);
    task.stop();
    drop(task);
    assert_eq!(confirmed(&pg, "app", "s2"), slot_start);

    // A new task resumes after the stored offset: transactions 3..6 again, nothing lost.
    pg.psql("app", "INSERT INTO t VALUES (6, 'v6')").unwrap();
    let mut task = start(&p, Some(stored.clone()));
    // Start confirms what the stored offset says is acknowledged.
    assert_eq!(confirmed(&pg, "app", "s2"), stored["lsn"].as_u64().unwrap());
    let (records, offsets) = poll_n(task.as_mut(), expected.len());
    let ids: Vec<i64> = records.iter().map(|r| value(r)["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, expected);
    // commit() moves the slot to the committed transaction's end, not further.
    let last = offsets.last().unwrap().clone();
    task.commit(&[(json!({"server": "app"}), offsets[0].clone())]).unwrap();
    assert_eq!(confirmed(&pg, "app", "s2"), offsets[0]["lsn"].as_u64().unwrap());
    task.commit(&[(json!({"server": "app"}), last.clone())]).unwrap();
    assert_eq!(confirmed(&pg, "app", "s2"), last["lsn"].as_u64().unwrap());
    // After a confirmed position the stream goes on with new changes only.
    pg.psql("app", "UPDATE t SET v = 'x' WHERE id = 0").unwrap();
    let (records, _) = poll_n(task.as_mut(), 1);
    assert_eq!(value(&records[0])["op"], "u");
    task.stop();
}

#[test]
fn the_snapshot_and_the_stream_overlap_without_duplicates() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("ov");
    pg.psql("ov", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)").unwrap();
    // The slot exists first (a stream-only task created it and never committed), then rows
    // commit: they are both in the slot and visible to a later snapshot.
    let mut creator = start(&props(&url, "ov", "s3", &[("snapshot.mode", "never")]), None);
    creator.stop();
    drop(creator);
    pg.psql("ov", "INSERT INTO t VALUES (2); INSERT INTO t VALUES (3)").unwrap();
    let mut task = start(&props(&url, "ov", "s3", &[]), None);
    let (snap, _) = poll_n(task.as_mut(), 3);
    assert_eq!(ops(&snap), ["r", "r", "r"]);
    // The stream skips the transactions the snapshot saw, and carries what came after.
    pg.psql("ov", "INSERT INTO t VALUES (4)").unwrap();
    let (changes, _) = poll_n(task.as_mut(), 1);
    assert_eq!(ops(&changes), ["c"]);
    assert_eq!(value(&changes[0])["after"]["id"], 4);
    task.stop();
}

#[test]
fn an_interrupted_snapshot_is_taken_again() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("snap");
    pg.psql("snap", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)").unwrap();
    let p = props(&url, "sn", "s4", &[]);
    let mut task = start(&p, None);
    let (first, offsets) = poll(task.as_mut(), 3, false);
    assert!(ops(&first).iter().all(|o| o == "r"));
    assert!(first.len() < 10);
    let mid = offsets[0].clone();
    assert_eq!(mid["snapshot"], true);
    task.stop();
    drop(task);
    let mut task = start(&p, Some(mid));
    let (all, _) = poll_n(task.as_mut(), 10);
    let ids: Vec<i64> = all.iter().map(|r| value(r)["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    task.stop();
}

#[test]
fn an_idle_slot_moves_with_the_wal_written_elsewhere() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("quiet");
    pg.create_database("busy");
    pg.psql("quiet", "CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let mut task = start(&props(&url, "q", "s5", &[("snapshot.mode", "never")]), None);
    let before = confirmed(&pg, "quiet", "s5");
    // WAL from another database: nothing for this slot to emit, but it would hold it back.
    pg.psql("busy", "CREATE TABLE w AS SELECT generate_series(1, 10000) AS x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let offset = loop {
        assert!(Instant::now() < deadline, "no offset-only batch for an idle slot");
        if let Some(b) = task.poll(Duration::from_millis(100)).unwrap() {
            assert!(b.records.is_empty(), "{:?}", b.records);
            if let Some((_, o)) = b.offsets.into_iter().next() {
                break o;
            }
        }
    };
    assert!(offset["lsn"].as_u64().unwrap() > before);
    assert_eq!(confirmed(&pg, "quiet", "s5"), before, "only commit() moves the slot");
    task.commit(&[(json!({"server": "q"}), offset.clone())]).unwrap();
    assert_eq!(confirmed(&pg, "quiet", "s5"), offset["lsn"].as_u64().unwrap());
    // Changes after it still arrive.
    pg.psql("quiet", "INSERT INTO t VALUES (1)").unwrap();
    let (records, _) = poll_n(task.as_mut(), 1);
    assert_eq!(value(&records[0])["op"], "c");
    task.stop();
}

fn terminate_task_backends(pg: &postgres::PgServer, db: &str) {
    let n = pg
        .psql(
            db,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'spate-cdc' \
             AND datname = '{db}'"
            ),
        )
        .unwrap();
    assert_eq!(n.trim(), "1", "the task's backend");
}

#[test]
fn a_connection_lost_mid_snapshot_takes_the_snapshot_again() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("lost");
    pg.psql(
        "lost",
        "CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a SELECT generate_series(1, 20); \
         CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b SELECT generate_series(1, 20)",
    )
    .unwrap();
    let mut task = start(&props(&url, "lost", "s6", &[]), None);
    let (mut records, _) = poll(task.as_mut(), 3, false);
    terminate_task_backends(&pg, "lost");
    pg.psql("lost", "INSERT INTO b VALUES (21)").unwrap();
    // The insert committed while the connection was down: in the retaken snapshot (op r) or
    // in the stream (op c), once either way.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut offsets = Vec::new();
    let id = |r: &ConnectRecord| (r.topic.to_string(), value(r)["after"]["id"].as_i64().unwrap());
    let has_21 = |records: &[ConnectRecord]| records.iter().any(|r| id(r) == ("lost.public.b".to_owned(), 21));
    while !(offsets.iter().any(|o: &Json| o["last_snapshot_record"] == true) && has_21(&records)) {
        assert!(Instant::now() < deadline, "{} records, offsets {offsets:?}", records.len());
        if let Some(b) = task.poll(Duration::from_millis(100)).unwrap() {
            records.extend(b.records);
            offsets.extend(b.offsets.into_iter().map(|(_, o)| o));
        }
    }
    let (more, _) = poll(task.as_mut(), 0, true);
    assert!(more.is_empty());
    let first_again = records.iter().skip(1).position(|r| id(r) == id(&records[0]));
    assert!(first_again.is_some(), "the snapshot was taken again from its start");
    let restart = first_again.unwrap() + 1;
    let mut seen: Vec<(String, i64)> = records[restart..].iter().map(id).collect();
    seen.sort();
    let mut want: Vec<(String, i64)> = (1..=20).map(|i| ("lost.public.a".to_owned(), i)).collect();
    want.extend((1..=21).map(|i| ("lost.public.b".to_owned(), i)));
    assert_eq!(seen, want, "every row once after the restart");
    task.stop();
}

#[test]
fn keys_columns_and_slots_agree_between_snapshot_and_stream() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("keys");
    pg.psql(
        "keys",
        "CREATE TABLE r (a int NOT NULL, b text, g int GENERATED ALWAYS AS (a * 2) STORED); \
         CREATE UNIQUE INDEX r_a ON r (a); ALTER TABLE r REPLICA IDENTITY USING INDEX r_a; \
         INSERT INTO r (a, b) VALUES (1, 'x')",
    )
    .unwrap();
    let p = props(&url, "k", "s7", &[]);
    let mut task = start(&p, None);
    let (snap, offsets) = poll_n(task.as_mut(), 1);
    // No primary key: the replica identity index keys both snapshot and stream events; the
    // generated column is in neither (pgoutput does not send it).
    assert_eq!(key(&snap[0]), json!({"a": 1}));
    assert_eq!(value(&snap[0])["after"], json!({"a": 1, "b": "x"}));
    pg.psql("keys", "INSERT INTO r (a, b) VALUES (2, 'y'); DELETE FROM r WHERE a = 1").unwrap();
    let (changes, more) = poll_n(task.as_mut(), 3);
    assert_eq!(ops(&changes), ["c", "d", "tombstone"]);
    assert_eq!(key(&changes[0]), json!({"a": 2}));
    assert_eq!(value(&changes[0])["after"], json!({"a": 2, "b": "y"}));
    assert_eq!(key(&changes[2]), json!({"a": 1}));
    task.stop();
    drop(task);

    // The slot is gone while a streaming offset is stored: a clear error, no new slot.
    pg.psql("keys", "SELECT pg_drop_replication_slot('s7')").unwrap();
    let stored = more.last().cloned().unwrap_or_else(|| offsets.last().unwrap().clone());
    let plugin = Registry::builtin().find(&p["connector.class"]).unwrap();
    let o = Offsets::default();
    o.0.lock().unwrap().push((json!({"server": "k"}), stored));
    let ctx = SourceTaskContext { connector: "cdc".into(), task_id: 0, offsets: Arc::new(o) };
    let mut t = plugin.source_task().unwrap();
    let err = t.start(&p, &ctx).unwrap_err().to_string();
    assert!(err.contains("s7") && err.contains("does not exist"), "{err}");
    let slots = pg.psql("keys", "SELECT count(*) FROM pg_replication_slots").unwrap();
    assert_eq!(slots.trim(), "0");

    // snapshot.mode=initial_only: a snapshot and no slot (nobody would ever advance it).
    let mut task = start(&props(&url, "k2", "s8", &[("snapshot.mode", "initial_only")]), None);
    let (snap, _) = poll_n(task.as_mut(), 1);
    assert_eq!(value(&snap[0])["after"]["a"], 2);
    let slots = pg.psql("keys", "SELECT count(*) FROM pg_replication_slots").unwrap();
    assert_eq!(slots.trim(), "0");
    task.stop();
}

#[test]
fn a_large_transaction_comes_in_batches_with_one_offset_and_a_bound() {
    let pg = postgres::PgServer::start();
    let url = pg.create_database("big");
    pg.psql("big", "CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let mut task =
        start(&props(&url, "big", "s9", &[("snapshot.mode", "never"), ("max.transaction.changes", "10")]), None);
    pg.psql("big", "INSERT INTO t SELECT generate_series(1, 8)").unwrap();
    // Batches of at most max.batch.size (3) inside the transaction; its offset with the last.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut batches = Vec::new();
    while batches.iter().map(|(n, _)| n).sum::<usize>() < 8 {
        assert!(Instant::now() < deadline, "{batches:?}");
        if let Some(b) = task.poll(Duration::from_millis(100)).unwrap() {
            if !b.records.is_empty() {
                batches.push((b.records.len(), b.offsets.len()));
            }
        }
    }
    assert!(batches.len() >= 3 && batches.iter().all(|(n, _)| *n <= 3), "{batches:?}");
    let with_offset: Vec<usize> = batches.iter().enumerate().filter(|(_, b)| b.1 > 0).map(|(i, _)| i).collect();
    assert_eq!(with_offset, [batches.len() - 1], "{batches:?}");
    // A transaction above max.transaction.changes fails the task, naming the key.
    pg.psql("big", "INSERT INTO t SELECT generate_series(100, 111)").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        assert!(Instant::now() < deadline, "no error for a transaction of 12 changes");
        match task.poll(Duration::from_millis(100)) {
            Ok(Some(b)) => assert!(b.records.is_empty(), "{:?}", b.records),
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
    };
    assert!(err.contains("max.transaction.changes"), "{err}");
    task.stop();
}
