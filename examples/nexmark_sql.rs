//! Nexmark's queries in SQL (`--sql`): the same generator and topic as the DSL versions, each
//! query one or more continuous `INSERT INTO … SELECT …` statements run by spate-streams' SQL
//! (`spate_streams::sql::continuous`), in this process, timed the same way.
//!
//! Where continuous SQL needs an intermediate topic (a stream-table join reads a keyed topic; an
//! interval join reads two topics; a second aggregation reads the first one's results), the query
//! is several stages, each its own continuous query (its own group), as a ksqlDB or Flink SQL user
//! would write it. Stages marked `after_previous` start once the stages before them are done: q3's
//! table of sellers must be complete before auctions look sellers up in it (a global table is
//! read to its end before processing starts; the DSL's q3 reads both from one topology instead).
//!
//! q0raw (bytes passed through) has no SQL form: SQL reads typed columns. q4 neither: it
//! aggregates over a join, which continuous SQL refuses ("write the join to a topic"), and its
//! second aggregation is over an updating table, which continuous SQL has no form for.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use spate_client::Admin;
use spate_streams::sql::continuous::ContinuousQuery;
use spate_streams::sql::{SqlConfig, SqlContext};
use spate_streams::StreamsState;

use super::{end_offsets_sum, recreate_topic, Query, EVENTS_TOPIC};

/// How long every stage's counters must stay still before a run is done (see `run`).
const QUIET: Duration = Duration::from_secs(1);

/// One continuous query of a Nexmark query's SQL form.
pub struct SqlStage {
    pub name: &'static str,
    /// Table declarations, then one `INSERT INTO … SELECT …` (the last statement).
    pub statements: Vec<String>,
    /// Topics the stage reads (its progress is measured against their end offsets).
    pub inputs: Vec<String>,
    /// The topic it writes when that is an intermediate topic (recreated before the run).
    pub intermediate: Option<String>,
    /// Starts only once every stage before it has processed all of its input.
    pub after_previous: bool,
}

/// `nexmark-events` declared with the event model's fields (Beam's names, as the generator
/// writes them). Declared rather than inferred: a latency run starts the query before the
/// topic holds any event to infer from.
fn events_table(lateness: Duration) -> String {
    format!(
        "CREATE TABLE e (\
           person STRUCT<id BIGINT, name VARCHAR, \"emailAddress\" VARCHAR, \"creditCard\" VARCHAR, city VARCHAR, \
                         state VARCHAR, \"dateTime\" BIGINT, extra VARCHAR>, \
           auction STRUCT<id BIGINT, \"itemName\" VARCHAR, description VARCHAR, \"initialBid\" BIGINT, reserve BIGINT, \
                          \"dateTime\" BIGINT, expires BIGINT, seller BIGINT, category BIGINT, extra VARCHAR>, \
           bid STRUCT<auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, \"dateTime\" BIGINT, \
                      extra VARCHAR>\
         ) WITH (topic = '{EVENTS_TOPIC}', lateness = '{} ms')",
        lateness.as_millis()
    )
}

fn stage(name: &'static str, statements: Vec<String>, inputs: &[&str]) -> SqlStage {
    SqlStage {
        name,
        statements,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        intermediate: None,
        after_previous: false,
    }
}

fn writing(mut s: SqlStage, topic: &str) -> SqlStage {
    s.intermediate = Some(topic.to_string());
    s
}

/// The SQL form of `query`, writing its results to `output`; `grace` is the `lateness` of the
/// tables windows and interval joins read (the DSL's grace).
pub fn stages(query: Query, output: &str, grace: Duration) -> anyhow::Result<Vec<SqlStage>> {
    let events = events_table(grace);
    let ms = grace.as_millis();
    Ok(match query {
        Query::Q0Raw => bail!("q0raw passes bytes through; SQL reads typed columns (run q0)"),
        Query::Q4 => bail!(
            "q4 has no continuous SQL form here: it aggregates over a join (refused: write the join to a topic) \
             and then re-aggregates an updating table"
        ),
        Query::Q0 => vec![stage(
            "q0",
            vec![events, format!("INSERT INTO \"{output}\" SELECT person, auction, bid FROM e")],
            &[EVENTS_TOPIC],
        )],
        Query::Q1 => vec![stage(
            "q1",
            vec![
                events,
                format!(
                    "INSERT INTO \"{output}\" SELECT bid['auction'] AS auction, bid['bidder'] AS bidder, \
                     bid['price'] * 0.908 AS price, bid['dateTime'] AS \"dateTime\", bid['extra'] AS extra \
                     FROM e WHERE bid IS NOT NULL"
                ),
            ],
            &[EVENTS_TOPIC],
        )],
        Query::Q2 => vec![stage(
            "q2",
            vec![
                events,
                format!(
                    "INSERT INTO \"{output}\" SELECT bid['auction'] AS auction, bid['price'] AS price \
                     FROM e WHERE bid['auction'] % 123 = 0"
                ),
            ],
            &[EVENTS_TOPIC],
        )],
        Query::Q3 => {
            let sellers = "nexmark-q3-sellers";
            vec![
                writing(
                    stage(
                        "q3-sellers",
                        vec![
                            events.clone(),
                            format!(
                                "INSERT INTO \"{sellers}\" SELECT person['name'] AS name, person['city'] AS city, \
                                 person['state'] AS state FROM e WHERE person['state'] IN ('OR', 'ID', 'CA') \
                                 PARTITION BY person['id']"
                            ),
                        ],
                        &[EVENTS_TOPIC],
                    ),
                    sellers,
                ),
                SqlStage {
                    after_previous: true,
                    ..stage(
                        "q3-join",
                        vec![
                            events,
                            format!(
                                "CREATE TABLE s (name VARCHAR, city VARCHAR, state VARCHAR) WITH (topic = '{sellers}')"
                            ),
                            format!(
                                "INSERT INTO \"{output}\" SELECT s.name, s.city, s.state, e.auction['id'] AS id \
                                 FROM e JOIN s ON e.auction['seller'] = s._key WHERE e.auction['category'] = 10"
                            ),
                        ],
                        &[EVENTS_TOPIC],
                    )
                },
            ]
        }
        Query::Q5 => {
            let counts = "nexmark-q5-counts";
            vec![
                writing(
                    stage(
                        "q5-counts",
                        vec![
                            events,
                            format!(
                                "INSERT INTO \"{counts}\" SELECT bid['auction'] AS auction, count(*) AS num \
                                 FROM HOP(e, _timestamp, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
                                 WHERE bid IS NOT NULL GROUP BY window_start, window_end, bid['auction']"
                            ),
                        ],
                        &[EVENTS_TOPIC],
                    ),
                    counts,
                ),
                // Each count's timestamp is its window's end - 1 ms: 2 s tumbling windows hold
                // exactly one hopping window's counts (as the DSL's second stage).
                stage(
                    "q5-max",
                    vec![
                        format!("CREATE TABLE c (auction BIGINT, num BIGINT) WITH (topic = '{counts}', lateness = '{ms} ms')"),
                        format!(
                            "INSERT INTO \"{output}\" SELECT window_start, window_end, \
                             first_value(auction ORDER BY num DESC, auction) AS auction, max(num) AS num \
                             FROM TUMBLE(c, _timestamp, INTERVAL '2' SECOND) GROUP BY window_start, window_end"
                        ),
                    ],
                    &[counts],
                ),
            ]
        }
        Query::Q7 => vec![stage(
            "q7",
            vec![
                events,
                format!(
                    "INSERT INTO \"{output}\" SELECT window_start, window_end, max(bid['price']) AS price, \
                     first_value(bid['auction'] ORDER BY bid['price'] DESC) AS auction, \
                     first_value(bid['bidder'] ORDER BY bid['price'] DESC) AS bidder, \
                     first_value(bid['dateTime'] ORDER BY bid['price'] DESC) AS \"dateTime\", \
                     first_value(bid['extra'] ORDER BY bid['price'] DESC) AS extra \
                     FROM TUMBLE(e, _timestamp, INTERVAL '10' SECOND) WHERE bid IS NOT NULL \
                     GROUP BY window_start, window_end"
                ),
            ],
            &[EVENTS_TOPIC],
        )],
        Query::Q8 => {
            let persons = "nexmark-q8-persons";
            let auctions = "nexmark-q8-auctions";
            vec![
                writing(
                    stage(
                        "q8-persons",
                        vec![
                            events.clone(),
                            format!(
                                "INSERT INTO \"{persons}\" SELECT person['id'] AS id, person['name'] AS name \
                                 FROM e WHERE person IS NOT NULL"
                            ),
                        ],
                        &[EVENTS_TOPIC],
                    ),
                    persons,
                ),
                writing(
                    stage(
                        "q8-auctions",
                        vec![
                            events,
                            format!(
                                "INSERT INTO \"{auctions}\" SELECT auction['seller'] AS seller, \
                                 auction['reserve'] AS reserve FROM e WHERE auction IS NOT NULL"
                            ),
                        ],
                        &[EVENTS_TOPIC],
                    ),
                    auctions,
                ),
                // Kafka Streams' JoinWindows of 10 s (the DSL's q8): either record up to 10 s
                // before or after the other.
                stage(
                    "q8-join",
                    vec![
                        format!(
                            "CREATE TABLE p (id BIGINT, name VARCHAR) WITH (topic = '{persons}', lateness = '{ms} ms')"
                        ),
                        format!("CREATE TABLE a (seller BIGINT, reserve BIGINT) WITH (topic = '{auctions}')"),
                        format!(
                            "INSERT INTO \"{output}\" SELECT p.id, p.name, a.reserve FROM p JOIN a \
                             ON a.seller = p.id AND a._timestamp BETWEEN p._timestamp - INTERVAL '10' SECOND \
                             AND p._timestamp + INTERVAL '10' SECOND"
                        ),
                    ],
                    &[persons, auctions],
                ),
            ]
        }
    })
}

/// Recreates the intermediate topics the stages write (`partitions` each), so that a run never
/// counts an earlier run's records.
pub async fn prepare_topics(admin: &Admin, stages: &[SqlStage], partitions: i32) -> anyhow::Result<()> {
    for s in stages {
        if let Some(topic) = &s.intermediate {
            recreate_topic(admin, topic, partitions).await?;
        }
    }
    Ok(())
}

struct Running {
    query: ContinuousQuery,
    app_id: String,
    inputs: Vec<String>,
    /// Its repartition topics, and when they were last listed.
    internal: Vec<String>,
    internal_listed: Instant,
    state_dir: std::path::PathBuf,
}

/// What a finished run reports.
pub struct SqlRun {
    /// From the first stage's start until every stage had processed all of its input.
    pub elapsed_from_start: Duration,
    /// From the first input record processed.
    pub elapsed_from_first: Option<Duration>,
    pub records_processed: u64,
    pub dropped_late: u64,
    pub commits: u64,
    /// Each stage's topology, for the log.
    pub descriptions: Vec<(String, String)>,
}

async fn start_stage(
    bootstrap: &str,
    s: &SqlStage,
    run_tag: &str,
    settings: &[(String, String)],
) -> anyhow::Result<Running> {
    let ctx = SqlContext::connect(SqlConfig::new(bootstrap)).await?;
    let (insert, declarations) = s.statements.split_last().context("a stage without statements")?;
    for d in declarations {
        ctx.sql(d).await.with_context(|| format!("{}: {d}", s.name))?;
    }
    let app_id = format!("nexmark-sql-{}-{run_tag}", s.name);
    let state_dir = std::env::temp_dir().join(format!("nexmark-sql-state-{}-{run_tag}", s.name));
    let mut config = vec![
        ("commit.interval.ms".to_string(), "1000".to_string()),
        ("state.dir".to_string(), state_dir.to_str().context("temp dir is not UTF-8")?.to_string()),
    ];
    config.extend(settings.iter().cloned());
    let query = ContinuousQuery::start(&ctx, insert, &app_id, &config)
        .await
        .with_context(|| format!("{}: {insert}", s.name))?;
    Ok(Running {
        query,
        app_id,
        inputs: s.inputs.clone(),
        internal: Vec::new(),
        internal_listed: Instant::now(),
        state_dir,
    })
}

fn check(r: &Running) -> anyhow::Result<()> {
    match r.query.state() {
        StreamsState::Error(e) => bail!("continuous query {} stopped: {e}", r.app_id),
        StreamsState::NotRunning => bail!("continuous query {} is not running", r.app_id),
        _ => Ok(()),
    }
}

/// Records a stage must process: its inputs' and its own repartition topics' end offsets.
async fn expected(admin: &Admin, r: &mut Running) -> anyhow::Result<u64> {
    // The runtime creates repartition topics as it starts: look for them until found, then
    // once a second.
    if r.internal.is_empty() || r.internal_listed.elapsed() > Duration::from_secs(1) {
        let prefix = format!("{}-", r.app_id);
        r.internal = admin
            .list_topics(false)
            .await?
            .into_iter()
            .filter(|t| t.starts_with(&prefix) && t.ends_with("-repartition"))
            .collect();
        r.internal_listed = Instant::now();
    }
    let mut total = 0;
    for topic in r.inputs.iter().chain(&r.internal) {
        total += end_offsets_sum(admin, topic).await?;
    }
    Ok(total)
}

/// Runs `stages` until each has processed everything it reads (unchanged across two looks, so
/// results still travelling through an intermediate topic are waited for). Once the first
/// stages run, `warmup` lets their groups form, then `on_started` is called and the clock
/// starts; the run cannot end before `input_complete` says the input is all there (a latency
/// run produces while the query runs).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    admin: &Admin,
    bootstrap: &str,
    stages: &[SqlStage],
    settings: &[(String, String)],
    timeout: Duration,
    warmup: Duration,
    mut on_started: impl FnMut(),
    input_complete: impl Fn() -> bool,
) -> anyhow::Result<SqlRun> {
    let run_tag = format!("{}-{}", std::process::id(), super::now_ms());
    let mut started = Instant::now();
    let mut running: Vec<Running> = Vec::new();
    let mut next = 0;
    let mut first_record: Option<Instant> = None;
    let mut last: Vec<(u64, u64)> = Vec::new();
    // Since when the counters have not moved. A stage counts a record as processed when its
    // micro-batch takes it and writes the results up to 100 ms later, so "done" needs the
    // counters still for QUIET; the run ended when they stopped moving.
    let mut still_since = Instant::now();
    let mut last_report = Instant::now();
    let mut notified = false;
    let done_at = loop {
        // Start every stage that may start now.
        while next < stages.len()
            && (!stages[next].after_previous || (last_done(&last, next) && still_since.elapsed() >= QUIET))
        {
            running.push(start_stage(bootstrap, &stages[next], &run_tag, settings).await?);
            next += 1;
        }
        if !notified {
            let until = Instant::now() + warmup;
            while Instant::now() < until {
                running.iter().try_for_each(check)?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !warmup.is_zero() {
                started = Instant::now();
            }
            on_started();
            notified = true;
        }
        let mut now = Vec::with_capacity(running.len());
        for r in &mut running {
            check(r)?;
            let processed = r.query.metrics().records_processed.load(Ordering::Relaxed);
            now.push((processed, expected(admin, r).await?));
        }
        if first_record.is_none() && now.iter().any(|(p, _)| *p > 0) {
            first_record = Some(Instant::now());
        }
        if now != last {
            still_since = Instant::now();
        }
        let all_done = next == stages.len()
            && input_complete()
            && now.iter().all(|(p, e)| p >= e)
            && still_since.elapsed() >= QUIET;
        if all_done {
            break still_since;
        }
        if started.elapsed() > timeout {
            bail!("not done within {timeout:?}: per stage (processed, to process) {now:?}");
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!("  {:.0} s: per stage (processed, to process) {now:?}", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = SqlRun {
        elapsed_from_start: done_at - started,
        elapsed_from_first: first_record.map(|f| done_at - f),
        records_processed: 0,
        dropped_late: 0,
        commits: 0,
        descriptions: Vec::new(),
    };
    for r in running {
        let m = r.query.metrics();
        out.records_processed += m.records_processed.load(Ordering::Relaxed);
        out.dropped_late += m.dropped_late.load(Ordering::Relaxed);
        out.commits += m.commits.load(Ordering::Relaxed);
        out.descriptions.push((r.app_id.clone(), r.query.describe().to_string()));
        let state_dir = r.state_dir.clone();
        tokio::task::spawn_blocking(move || r.query.close()).await??;
        let _ = std::fs::remove_dir_all(state_dir);
    }
    Ok(out)
}

/// Whether the stages before `next` had all processed their input at the last look.
fn last_done(last: &[(u64, u64)], next: usize) -> bool {
    last.len() == next && last.iter().all(|(p, e)| p >= e && *e > 0)
}
