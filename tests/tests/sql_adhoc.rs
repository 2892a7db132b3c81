//! Ad-hoc SQL over topics end to end: a real broker, records produced with the Rust client, and
//! every query checked against a model computed from what was produced.

use std::collections::BTreeMap;

use bytes::Bytes;
use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::{Admin, Producer, ProducerConfig, ProducerRecord};
use spate_e2e::TestBroker;
use spate_streams::sql::datafusion;
use spate_streams::sql::{QueryResult, SqlConfig, SqlContext};
use spate_streams::StreamsError;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

const BASE_TS_MS: i64 = 1_700_000_000_000;
const SERVICES: [&str; 4] = ["api", "db", "web", "auth"];

/// One produced record, as the model sees it.
#[derive(Debug, Clone)]
struct Produced {
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: String,
    /// `None`: a tombstone; `Some(Err)`: a malformed value.
    value: Option<Result<Event, String>>,
    header_src: Option<String>,
}

#[derive(Debug, Clone)]
struct Event {
    user_id: i64,
    amount: f64,
    service: &'static str,
}

async fn create(broker: &TestBroker, topics: &[(&str, i32)]) {
    let admin = Admin::new(AdminConfig { bootstrap_servers: vec![broker.bootstrap()], ..AdminConfig::default() })
        .await
        .unwrap();
    for (t, n) in topics {
        admin.create_topic(NewTopic::new(*t, *n, 1)).await.unwrap();
    }
}

async fn producer(broker: &TestBroker) -> Producer {
    Producer::new(ProducerConfig { bootstrap_servers: vec![broker.bootstrap()], ..ProducerConfig::default() })
        .await
        .unwrap()
}

/// Produces `n` records over 3 partitions of `events`: JSON events, some malformed values, some
/// tombstones, keys, and headers on every 5th.
async fn produce_events(broker: &TestBroker, n: usize) -> Vec<Produced> {
    let producer = producer(broker).await;
    let mut pending = Vec::new();
    for i in 0..n {
        let partition = (i % 3) as i32;
        let timestamp_ms = BASE_TS_MS + i as i64 * 1000;
        let key = format!("k{}", i % 7);
        let value = match i % 50 {
            7 => Some(Err(if i % 100 == 7 { "{\"user_id\": 1".to_owned() } else { "[1, 2]".to_owned() })),
            13 => None,
            _ => Some(Ok(Event { user_id: (i % 37) as i64, amount: i as f64 * 0.5, service: SERVICES[i % 4] })),
        };
        let mut record =
            ProducerRecord::default().with_partition(partition).with_timestamp_ms(timestamp_ms).with_key(key.clone());
        record.value = value.as_ref().map(|v| match v {
            Ok(e) => Bytes::from(
                serde_json::json!({"user_id": e.user_id, "amount": e.amount, "service": e.service, "extra": {"n": i}})
                    .to_string(),
            ),
            Err(bad) => Bytes::from(bad.clone()),
        });
        let header_src = (i % 5 == 0).then(|| format!("t{}", i % 2));
        if let Some(src) = &header_src {
            record = record.with_header("src", Some(Bytes::from(src.clone())));
        }
        pending.push((producer.send("events", record).await.unwrap(), partition, timestamp_ms, key, value, header_src));
    }
    let mut produced = Vec::new();
    for (ack, partition, timestamp_ms, key, value, header_src) in pending {
        let meta = ack.await.unwrap();
        assert_eq!(meta.partition, partition);
        produced.push(Produced { partition, offset: meta.offset, timestamp_ms, key, value, header_src });
    }
    producer.close().await.unwrap();
    produced
}

async fn produce_values(broker: &TestBroker, topic: &str, values: &[Option<&str>]) {
    let producer = producer(broker).await;
    let mut acks = Vec::new();
    for v in values {
        let mut record = ProducerRecord::default().with_partition(0);
        record.value = v.map(|v| Bytes::from(v.to_owned()));
        acks.push(producer.send(topic, record).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    producer.close().await.unwrap();
}

/// The result as rows of display strings, for comparisons that do not care about types.
fn rows(result: &QueryResult) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let options = FormatOptions::default().with_null("NULL");
    for batch in &result.batches {
        let formatters: Vec<_> =
            batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        for row in 0..batch.num_rows() {
            out.push(formatters.iter().map(|f| f.value(row).to_string()).collect());
        }
    }
    out
}

fn single_i64(result: &QueryResult) -> i64 {
    let batch = result.batches.iter().find(|b| b.num_rows() > 0).expect("one row");
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

async fn query(ctx: &SqlContext, sql: &str) -> QueryResult {
    match ctx.sql(sql).await {
        Ok(r) => r,
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn good(p: &Produced) -> Option<&Event> {
    p.value.as_ref().and_then(|v| v.as_ref().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_queries_match_the_model() {
    let broker = TestBroker::start(&[]).unwrap();
    create(&broker, &[("events", 3), ("users", 1), ("empty", 2), ("csvt", 1), ("snap", 2)]).await;
    let produced = produce_events(&broker, 600).await;
    let user_values: Vec<String> =
        (0..37).map(|u| serde_json::json!({"user_id": u, "name": format!("user{u:02}")}).to_string()).collect();
    produce_values(&broker, "users", &user_values.iter().map(|v| Some(v.as_str())).collect::<Vec<_>>()).await;
    let ctx = SqlContext::connect(SqlConfig::new(broker.bootstrap())).await.unwrap();

    // Aggregates over the whole topic.
    assert_eq!(single_i64(&query(&ctx, "SELECT count(*) FROM events").await), 600);
    let r = query(&ctx, "SELECT count(user_id), sum(amount) FROM events").await;
    let valid: Vec<&Event> = produced.iter().filter_map(good).collect();
    let malformed = produced.iter().filter(|p| matches!(p.value, Some(Err(_)))).count();
    assert_eq!(r.batches[0].column(0).as_primitive::<Int64Type>().value(0), valid.len() as i64);
    let sum = r.batches[0].column(1).as_primitive::<Float64Type>().value(0);
    assert!((sum - valid.iter().map(|e| e.amount).sum::<f64>()).abs() < 1e-6);
    assert_eq!(r.malformed_records, malformed as u64, "malformed values are counted");

    // GROUP BY.
    let r = query(
        &ctx,
        "SELECT service, count(*), sum(user_id) FROM events WHERE user_id IS NOT NULL GROUP BY service ORDER BY service",
    )
    .await;
    let mut model: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for e in &valid {
        let entry = model.entry(e.service).or_default();
        entry.0 += 1;
        entry.1 += e.user_id;
    }
    let expected: Vec<Vec<String>> =
        model.iter().map(|(s, (n, sum))| vec![s.to_string(), n.to_string(), sum.to_string()]).collect();
    assert_eq!(rows(&r), expected);

    // Filters on the metadata columns: exactly the model's rows, and narrowed fetch ranges.
    let sql = "SELECT _offset FROM events WHERE _partition = 1 AND _offset >= 10 AND _offset < 20 ORDER BY _offset";
    let expected: Vec<Vec<String>> = produced
        .iter()
        .filter(|p| p.partition == 1 && (10..20).contains(&p.offset))
        .map(|p| vec![p.offset.to_string()])
        .collect();
    assert_eq!(rows(&query(&ctx, sql).await), expected);
    let plan = rows(&query(&ctx, &format!("EXPLAIN {sql}")).await).concat().join("\n");
    assert!(plan.contains("partitions=[1:[10..20)]"), "{plan}");

    let r = query(&ctx, "SELECT count(*) FROM events WHERE _partition IN (0, 2)").await;
    assert_eq!(single_i64(&r), produced.iter().filter(|p| p.partition != 1).count() as i64);
    let r = query(&ctx, "SELECT count(*) FROM events WHERE _offset BETWEEN 50 AND 59").await;
    assert_eq!(single_i64(&r), produced.iter().filter(|p| (50..=59).contains(&p.offset)).count() as i64);

    let since = BASE_TS_MS + 450_500;
    let sql = format!("SELECT count(*), min(_offset) FROM events WHERE _timestamp >= to_timestamp_millis({since})");
    let r = query(&ctx, &sql).await;
    assert_eq!(single_i64(&r), produced.iter().filter(|p| p.timestamp_ms >= since).count() as i64);
    let plan = rows(&query(&ctx, &format!("EXPLAIN {sql}")).await).concat().join("\n");
    assert!(plan.contains("0:[151..200)"), "the timestamp bound moves the start offset: {plan}");
    let r = query(&ctx, &format!("SELECT count(*) FROM events WHERE _timestamp < to_timestamp_millis({since})")).await;
    assert_eq!(single_i64(&r), produced.iter().filter(|p| p.timestamp_ms < since).count() as i64);

    // Keys and headers.
    let r = query(&ctx, "SELECT count(*) FROM events WHERE _key = 'k3'").await;
    assert_eq!(single_i64(&r), produced.iter().filter(|p| p.key == "k3").count() as i64);
    let r = query(&ctx, "SELECT count(*) FROM events WHERE _headers['src'] = 't1'").await;
    assert_eq!(single_i64(&r), produced.iter().filter(|p| p.header_src.as_deref() == Some("t1")).count() as i64);

    // LIMIT.
    let r = query(&ctx, "SELECT * FROM events LIMIT 5").await;
    assert_eq!(r.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    assert_eq!(
        r.schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
        // serde_json writes keys sorted; inference keeps the order of the records' text.
        ["amount", "extra", "service", "user_id", "_key", "_partition", "_offset", "_timestamp", "_headers"]
    );

    // A declared table with on_error = 'fail' names the bad record; DROP TABLE removes it.
    query(
        &ctx,
        "CREATE TABLE strict (user_id BIGINT, amount DOUBLE) WITH (topic = 'events', format = 'json', on_error = 'fail')",
    )
    .await;
    let err = ctx.sql("SELECT sum(amount) FROM strict").await.unwrap_err();
    let bad_offsets: Vec<String> = produced
        .iter()
        .filter(|p| matches!(p.value, Some(Err(_))))
        .map(|p| format!("events-{}@{}", p.partition, p.offset))
        .collect();
    assert!(matches!(err, StreamsError::SqlExecution(_)), "{err:?}");
    assert!(bad_offsets.iter().any(|o| err.to_string().contains(o)), "{err}");
    // Metadata only: values are not parsed, so nothing is malformed.
    assert_eq!(single_i64(&query(&ctx, "SELECT count(*) FROM strict").await), 600);
    query(&ctx, "DROP TABLE strict").await;
    assert!(ctx.sql("SELECT * FROM strict").await.is_err());

    // string and bytes formats.
    query(&ctx, "CREATE TABLE raw WITH (topic = 'events', format = 'string')").await;
    let r = query(&ctx, "SELECT count(value) FROM raw").await;
    assert_eq!(single_i64(&r), produced.iter().filter(|p| p.value.is_some()).count() as i64);
    query(&ctx, "CREATE TABLE rawb WITH (topic = 'events', format = 'bytes')").await;
    let r = query(&ctx, "SELECT count(value) FROM rawb WHERE _partition = 0").await;
    assert_eq!(single_i64(&r), produced.iter().filter(|p| p.partition == 0 && p.value.is_some()).count() as i64);

    // csv, declared and inferred.
    produce_values(&broker, "csvt", &[Some("a,1"), Some("b,2"), Some("c,x"), None, Some("\"d,e\",4,extra")]).await;
    query(&ctx, "CREATE TABLE c (name VARCHAR, n BIGINT) WITH (topic = 'csvt', format = 'csv')").await;
    let r = query(&ctx, "SELECT name, n FROM c ORDER BY _offset").await;
    assert_eq!(
        rows(&r),
        [["a", "1"], ["b", "2"], ["NULL", "NULL"], ["NULL", "NULL"], ["NULL", "NULL"]]
            .map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(r.malformed_records, 2);
    query(&ctx, "CREATE TABLE c_inferred WITH (topic = 'csvt', format = 'csv')").await;
    let r = query(&ctx, "SELECT c1, c3 FROM c_inferred WHERE c1 IS NOT NULL ORDER BY _offset").await;
    assert_eq!(rows(&r)[3], ["d,e", "extra"]);

    // A join of two topics.
    let r = query(
        &ctx,
        "SELECT u.name, count(*) FROM events e JOIN users u ON e.user_id = u.user_id \
         WHERE u.user_id < 3 GROUP BY u.name ORDER BY u.name",
    )
    .await;
    let mut model: BTreeMap<String, i64> = BTreeMap::new();
    for e in valid.iter().filter(|e| e.user_id < 3) {
        *model.entry(format!("user{:02}", e.user_id)).or_default() += 1;
    }
    let expected: Vec<Vec<String>> = model.iter().map(|(n, c)| vec![n.clone(), c.to_string()]).collect();
    assert_eq!(rows(&r), expected);

    // A topic joined with a Parquet directory in the connect sink's hive layout.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topic=users/partition=0/users-0-0.parquet");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    query(&ctx, &format!("COPY (SELECT user_id, name FROM users) TO '{}' STORED AS PARQUET", file.display())).await;
    query(&ctx, &format!("CREATE EXTERNAL TABLE pq STORED AS PARQUET LOCATION '{}/'", dir.path().display())).await;
    let r = query(
        &ctx,
        "SELECT p.topic, p.name, count(*) FROM events e JOIN pq p ON e.user_id = p.user_id \
         WHERE p.user_id < 3 GROUP BY p.topic, p.name ORDER BY p.name",
    )
    .await;
    let expected: Vec<Vec<String>> =
        model.iter().map(|(n, c)| vec!["users".to_owned(), n.clone(), c.to_string()]).collect();
    assert_eq!(rows(&r), expected);

    // SHOW TABLES lists the topics.
    let tables = rows(&query(&ctx, "SHOW TABLES").await).concat().join(" ");
    assert!(tables.contains("events") && tables.contains("users") && tables.contains("pq"), "{tables}");

    // An empty topic: metadata columns only, and a missing column says why.
    assert_eq!(single_i64(&query(&ctx, "SELECT count(*) FROM empty").await), 0);
    let err = ctx.sql("SELECT x FROM empty").await.unwrap_err();
    assert!(err.to_string().contains("no records to infer"), "{err}");

    // Errors are the query's fault, with a position.
    match ctx.sql("SELECT *\nFROM nope").await.unwrap_err() {
        StreamsError::SqlPlan { message, position } => {
            assert!(message.contains("topic 'nope' does not exist"), "{message}");
            let position = position.expect("a position");
            assert_eq!((position.line, position.column), (2, 6));
        }
        other => panic!("{other:?}"),
    }
    match ctx.sql("SELECT nme FROM events").await.unwrap_err() {
        StreamsError::SqlPlan { message, position } => {
            assert!(message.contains("nme"), "{message}");
            assert_eq!(position.map(|p| (p.line, p.column)), Some((1, 8)), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match ctx.sql("SELEC 1").await.unwrap_err() {
        StreamsError::SqlPlan { position, .. } => assert!(position.is_some()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(ctx.sql("SELECT user_id + 'x' FROM events").await, Err(StreamsError::SqlPlan { .. })));
    assert!(matches!(
        ctx.sql("CREATE TABLE bad (a INT) WITH (topic = 'events', colour = 'red')").await,
        Err(StreamsError::SqlPlan { .. })
    ));

    // A snapshot: records produced after the query started are not read.
    let snap: Vec<String> = (0..100).map(|i| format!("{{\"i\": {i}}}")).collect();
    produce_values(&broker, "snap", &snap.iter().map(|v| Some(v.as_str())).collect::<Vec<_>>()).await;
    let (_, stream) = ctx.sql_stream("SELECT i FROM snap").await.unwrap();
    produce_values(&broker, "snap", &snap.iter().map(|v| Some(v.as_str())).collect::<Vec<_>>()).await;
    let batches = datafusion::physical_plan::common::collect(stream).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    assert_eq!(single_i64(&query(&ctx, "SELECT count(*) FROM snap").await), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_a_clear_execution_error() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ctx = SqlContext::connect(SqlConfig::new(format!("127.0.0.1:{port}"))).await.unwrap();
    // Queries that need no topic work without a broker.
    let r = ctx.sql("SELECT 1 + 1").await.unwrap();
    assert_eq!(r.batches[0].column(0).len(), 1);
    let err = ctx.sql("SELECT * FROM events").await.unwrap_err();
    assert!(matches!(err, StreamsError::SqlExecution(_)), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(!Array::is_empty(r.batches[0].column(0)));
}
