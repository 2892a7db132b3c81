//! Continuous SQL queries: `INSERT INTO out_topic SELECT … FROM …` compiled onto the
//! spate-streams runtime, so that a query gets its tasks, changelogged state stores, commit
//! protocol and scale-out (every process running the same `query id` joins one group, the
//! `application.id`, and they split the partitions).
//!
//! Entry points: [`run_continuous`] (runs until a shutdown future completes) and
//! [`ContinuousQuery`] (start, observe, close).
//!
//! What a statement compiles to:
//! - stateless (`SELECT … FROM t WHERE …`): one sub-topology; records are decoded with the
//!   table's format in micro-batches, the SELECT runs per micro-batch (DataFusion), each result
//!   row is a JSON value with the source record's key and timestamp;
//! - windowed (`FROM TUMBLE(t, ts, size)`, `HOP(t, ts, slide, size)`, `SESSION(t, ts, gap)`
//!   `GROUP BY window_start, window_end, k…`): sub-topology 0 computes each record's group key
//!   (JSON of the GROUP BY expressions) and event time and writes the record to the repartition
//!   topic `<query id>-sql-window-repartition` keyed by the group key; sub-topology 1 keeps each
//!   record in the changelogged store `sql-window-rows` (keyed by event time, source partition
//!   and offset, so a record processed twice is stored once) until the watermark closes its
//!   windows; then the SELECT runs over the closed windows' rows (with `window_start` and
//!   `window_end`) and each result row is written once, keyed by the group key as JSON.
//!
//! Sans-IO cores: [`analyze`] (SQL analysis and rewriting) and [`window`] (watermark, window
//! assignment, closing, sessions).

mod analyze;
mod envelope;
mod exec;
mod nodes;
mod window;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use spate_client::admin::{AdminConfig, NewTopic};
use spate_client::Admin;

pub use analyze::WindowSpec;

use super::format::RecordDecoder;
use super::options::TableOptions;
use super::SqlContext;
use crate::store::{StoreSpec, StoreType};
use crate::topology::TopicName;
use crate::{KafkaStreams, StreamsBuilder, StreamsConfig, StreamsError, StreamsMetrics, StreamsState};

/// Name of the repartition topic of a windowed query: `<query id>-sql-window-repartition`.
const REPARTITION: &str = "sql-window";
/// Name of the window store: changelog `<query id>-sql-window-rows-changelog`.
const WINDOW_STORE: &str = "sql-window-rows";
/// Name of the global store holding a stream-table join's table (its topic is its changelog).
const LOOKUP_STORE: &str = "sql-join-table";
/// Repartition topics of an interval join's sides and its store (changelog
/// `<query id>-sql-join-rows-changelog`).
const JOIN_LEFT_REPARTITION: &str = "sql-join-left";
const JOIN_RIGHT_REPARTITION: &str = "sql-join-right";
const JOIN_STORE: &str = "sql-join-rows";
/// `commit.interval.ms` of continuous queries unless set: shorter than Kafka Streams' 30 s so
/// that a crash replays (and may duplicate) less.
const DEFAULT_COMMIT_INTERVAL_MS: &str = "5000";

/// A continuous query running on this process (one member of its query-id group).
pub struct ContinuousQuery {
    streams: KafkaStreams,
    out_topic: String,
    description: String,
}

impl ContinuousQuery {
    /// Plans `sql` (one `INSERT INTO topic SELECT …`) against the tables of `ctx` and starts it
    /// as the streams application `query_id`. `extra_streams_config` are spate-streams keys
    /// (Kafka's: `commit.interval.ms`, `state.dir`, `num.stream.threads`, …). The output topic
    /// is created (with the source's partition count) if missing.
    pub async fn start(
        ctx: &SqlContext,
        sql: &str,
        query_id: &str,
        extra_streams_config: &[(String, String)],
    ) -> Result<ContinuousQuery, StreamsError> {
        let Prepared { plan, options, topology, batch_plan: _ } = prepare(ctx, sql).await?;
        let description = topology.to_string();
        let mut config = StreamsConfig::new(query_id, &ctx.config().bootstrap_servers)
            .set("commit.interval.ms", DEFAULT_COMMIT_INTERVAL_MS)?;
        for (key, value) in extra_streams_config {
            config = config.set(key, value)?;
        }
        ensure_output_topic(&config, &options.topic, &plan.out_topic).await?;
        let mut streams = KafkaStreams::new(topology, config)?;
        streams.start()?;
        Ok(ContinuousQuery { streams, out_topic: plan.out_topic, description })
    }

    /// The topic the query writes.
    pub fn out_topic(&self) -> &str {
        &self.out_topic
    }

    /// The topology the query compiled to (Kafka's `TopologyDescription` layout).
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Running, stopped, or stopped by an error (which says why).
    pub fn state(&self) -> StreamsState {
        self.streams.state()
    }

    /// The runtime's counters (records processed, dropped as late, commits, …).
    pub fn metrics(&self) -> &StreamsMetrics {
        self.streams.metrics()
    }

    /// Commits what was processed and stops (blocking: joins the stream threads).
    pub fn close(mut self) -> Result<(), StreamsError> {
        self.streams.close()
    }

    /// Stops without committing, as a crash would (for failover tests).
    #[doc(hidden)]
    pub fn crash(mut self) {
        self.streams.crash();
    }
}

/// What `EXPLAIN INSERT INTO … SELECT …` shows of a continuous statement, without running it:
/// the topology it compiles to (sub-topologies, topics, stores) and the plan of the SELECT each
/// micro-batch or closing window runs. Errors as [`ContinuousQuery::start`] would report them.
pub async fn explain(ctx: &SqlContext, sql: &str) -> Result<String, StreamsError> {
    let Prepared { plan, options, topology, batch_plan } = prepare(ctx, sql).await?;
    let kind = match (&plan.window, &plan.lookup) {
        (Some((spec, column)), _) => format!("windowed: {spec:?} on {column}, lateness {} ms", options.lateness_ms),
        (None, None) if plan.interval.is_some() => {
            let join = plan.interval.as_ref().expect("checked");
            format!(
                "interval join with {} on ({}) = ({}), {}.{} within [{}.{} {:+} ms, {:+} ms], lateness {} ms",
                join.table,
                join.left_keys.join(", "),
                join.right_keys.join(", "),
                join.table_alias,
                join.right_time,
                plan.source_alias,
                join.left_time,
                join.lower_ms,
                join.upper_ms,
                options.lateness_ms
            )
        }
        (None, Some(join)) => format!(
            "stateless, {} join with table {} on {} = _key",
            if join.left { "LEFT" } else { "INNER" },
            join.table,
            join.stream_key_sql
        ),
        (None, None) => "stateless".to_owned(),
    };
    let key = match (&plan.partition_by, plan.window.is_some()) {
        (Some(expr), _) => format!("PARTITION BY {expr} (as text)"),
        (None, true) => "the group key as JSON".to_owned(),
        (None, false) => "the source record's key".to_owned(),
    };
    Ok(format!(
        "continuous query reading {} ({kind}), writing {}, output key: {key}\n{topology}\nSELECT run per micro-batch or closing window:\n{batch_plan}",
        options.topic, plan.out_topic
    ))
}

/// A continuous statement planned and compiled, not started.
struct Prepared {
    plan: analyze::ContinuousPlan,
    options: TableOptions,
    topology: crate::Topology,
    batch_plan: String,
}

/// Plans `sql` against the tables of `ctx` so that the query's mistakes are reported before
/// anything starts, and compiles it to a topology.
async fn prepare(ctx: &SqlContext, sql: &str) -> Result<Prepared, StreamsError> {
    let plan = analyze::analyze(sql)?;
    let (options, table_schema) = source_table(ctx, &plan.source_table).await?;
    let decoder = Arc::new(RecordDecoder::new(&options, table_schema.clone(), None)?);
    let source = nodes::Source {
        decoder: decoder.clone(),
        lateness_ms: options.lateness_ms,
        idle_timeout_ms: options.idle_timeout_ms,
    };
    // Plan once here so that the query's mistakes are reported before anything starts.
    let mut input_schema = match &plan.window {
        None => decoder.output_schema(),
        Some((_, time_column)) => {
            check_time_column(&decoder, time_column, &plan.source_table, "window")?;
            nodes::windowed_schema(&decoder.output_schema())
        }
    };
    let mut lookup_schema = None;
    let interval = match &plan.interval {
        None => None,
        Some(join) => {
            let (table_options, table_schema) = source_table(ctx, &join.table).await?;
            let right_decoder = Arc::new(RecordDecoder::new(&table_options, table_schema, None)?);
            check_time_column(&decoder, &join.left_time, &plan.source_table, "interval join")?;
            check_time_column(&right_decoder, &join.right_time, &join.table, "interval join")?;
            for (keys, alias, d) in
                [(&join.left_keys, &plan.source_alias, &decoder), (&join.right_keys, &join.table_alias, &right_decoder)]
            {
                exec::BatchSql::plan(&nodes::key_by_sql(&keys.join(", "), alias), d.output_schema()).await?;
            }
            input_schema = nodes::numbered_schema(&decoder.output_schema());
            lookup_schema = Some(nodes::numbered_schema(&right_decoder.output_schema()));
            let right = nodes::Source {
                decoder: right_decoder,
                lateness_ms: options.lateness_ms,
                idle_timeout_ms: options.idle_timeout_ms,
            };
            let partitions =
                (partition_count(ctx, &options.topic).await?, partition_count(ctx, &table_options.topic).await?);
            Some((right, table_options.topic, partitions))
        }
    };
    let lookup = match &plan.lookup {
        None => None,
        Some(join) => {
            let (table_options, table_schema) = source_table(ctx, &join.table).await?;
            let lookup = nodes::Lookup {
                decoder: Arc::new(RecordDecoder::new(&table_options, table_schema, None)?),
                store: LOOKUP_STORE.to_owned(),
                key_sql: format!(
                    "SELECT CAST(({}) AS VARCHAR) FROM {} AS \"{}\"",
                    join.stream_key_sql,
                    analyze::INPUT_TABLE,
                    plan.source_alias.replace('"', "\"\"")
                ),
            };
            // The stream side of ON must be computable from the stream's row alone.
            exec::BatchSql::plan(&lookup.key_sql, decoder.output_schema()).await.map_err(|e| match e {
                StreamsError::SqlPlan { message, .. } => StreamsError::SqlPlan {
                    message: format!(
                        "the join's stream side {} must read only {}'s columns: {message}",
                        join.stream_key_sql, plan.source_alias
                    ),
                    position: None,
                },
                other => other,
            })?;
            Some((lookup, table_options.topic))
        }
    };
    if let Some((l, _)) = &lookup {
        lookup_schema = Some(l.schema());
    }
    let checked = exec::BatchSql::plan_with_lookup(&plan.select_sql, input_schema, lookup_schema).await?;
    if plan.window.is_none() && checked.aggregates() {
        return Err(StreamsError::SqlPlan {
            message: "aggregates, DISTINCT and window functions need a window in a continuous query: read FROM \
                          TUMBLE(…), HOP(…) or SESSION(…) and GROUP BY window_start, window_end"
                .into(),
            position: None,
        });
    }
    for key in &plan.group_keys {
        // Group keys are evaluated per record batch before the repartition.
        exec::BatchSql::plan(&nodes::key_by_sql(&key.sql, &plan.source_alias), decoder.output_schema()).await?;
    }

    // Watermarks are per source partition (windows and interval joins): how many there are.
    let source_partitions =
        if plan.window.is_some() || plan.interval.is_some() { partition_count(ctx, &options.topic).await? } else { 1 };
    let interval =
        interval.map(|(right, topic, (_, right_partitions))| (right, topic, (source_partitions, right_partitions)));
    let topology = compile(&plan, &options, source, lookup, interval, source_partitions)?;
    Ok(Prepared { plan, options, topology, batch_plan: checked.display_plan() })
}

/// The time column `column` of `table` (read by a window or an interval join) exists and holds time.
fn check_time_column(decoder: &RecordDecoder, column: &str, table: &str, what: &str) -> Result<(), StreamsError> {
    let schema = decoder.output_schema();
    let field = schema.field_with_name(column).map_err(|_| StreamsError::SqlPlan {
        message: format!(
            "the {what}'s time column '{column}' is not a column of table {table} (its columns: {})",
            column_names(&schema)
        ),
        position: None,
    })?;
    if !exec::is_time_type(field.data_type()) {
        return Err(StreamsError::SqlPlan {
            message: format!(
                "the {what}'s time column '{column}' is {}, not a TIMESTAMP, BIGINT (ms since the epoch) or timestamp text",
                field.data_type()
            ),
            position: None,
        });
    }
    Ok(())
}

/// Runs one continuous statement until `shutdown` completes (then commits and stops), or until
/// the query fails (then returns its error). More processes running the same `query_id`
/// share the work. `extra_streams_config`: spate-streams keys (`state.dir`,
/// `commit.interval.ms`, `num.stream.threads`, …).
pub async fn run_continuous(
    ctx: &SqlContext,
    sql: &str,
    query_id: &str,
    extra_streams_config: &[(String, String)],
    shutdown: impl Future<Output = ()>,
) -> Result<(), StreamsError> {
    let query = ContinuousQuery::start(ctx, sql, query_id, extra_streams_config).await?;
    tokio::pin!(shutdown);
    let failed = loop {
        tokio::select! {
            _ = &mut shutdown => break None,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let StreamsState::Error(e) = query.state() {
                    break Some(e);
                }
            }
        }
    };
    let closed = tokio::task::spawn_blocking(move || query.close())
        .await
        .map_err(|e| StreamsError::State(format!("closing the continuous query panicked: {e}")))?;
    match failed {
        Some(e) => Err(StreamsError::SqlExecution(format!("the continuous query stopped: {e}"))),
        None => closed,
    }
}

/// The topology of an analysed statement reading the table with `options` through `source`.
fn compile(
    plan: &analyze::ContinuousPlan,
    options: &TableOptions,
    source: nodes::Source,
    lookup: Option<(nodes::Lookup, String)>,
    interval: Option<(nodes::Source, String, (usize, usize))>,
    source_partitions: usize,
) -> Result<crate::Topology, StreamsError> {
    let builder = StreamsBuilder::new();
    let out = TopicName::User(plan.out_topic.clone());
    let select: Arc<str> = Arc::from(plan.select_sql.as_str());
    {
        let mut b = builder.lock();
        let lookup = lookup.map(|(lookup, topic)| {
            b.globals.push(crate::topology::GlobalDef { topic, store: lookup.store.clone(), in_memory: false });
            lookup
        });
        match (&plan.window, &plan.interval, interval) {
            (None, Some(join), Some((right, right_topic, partitions))) => {
                // Both repartition topics get the left source's partition count.
                let markers_to = Some(i32::try_from(partitions.0).unwrap_or(i32::MAX));
                let (left_rep, right_rep) = (JOIN_LEFT_REPARTITION.to_owned(), JOIN_RIGHT_REPARTITION.to_owned());
                let keys = |sqls: &[String]| -> Vec<analyze::GroupKey> {
                    sqls.iter()
                        .enumerate()
                        .map(|(i, sql)| analyze::GroupKey { sql: sql.clone(), name: format!("k{i}") })
                        .collect()
                };
                let left_node = nodes::add_batching_source(
                    &mut b,
                    "SQL-JOIN-KEY-BY",
                    TopicName::User(options.topic.clone()),
                    TopicName::Repartition(left_rep.clone()),
                    nodes::keying_stage(
                        source.clone(),
                        keys(&join.left_keys),
                        join.left_time.clone(),
                        TopicName::Repartition(left_rep.clone()),
                        plan.source_alias.clone(),
                        markers_to,
                    ),
                );
                nodes::add_batching_source(
                    &mut b,
                    "SQL-JOIN-KEY-BY",
                    TopicName::User(right_topic),
                    TopicName::Repartition(right_rep.clone()),
                    nodes::keying_stage(
                        right.clone(),
                        keys(&join.right_keys),
                        join.right_time.clone(),
                        TopicName::Repartition(right_rep.clone()),
                        join.table_alias.clone(),
                        markers_to,
                    ),
                );
                // Both sides are partitioned by key over the same count: the source's.
                b.copartition.push((right_rep.clone(), left_node));
                b.add_store(StoreSpec {
                    name: JOIN_STORE.to_owned(),
                    store_type: StoreType::KeyValue,
                    logging: true,
                    in_memory: false,
                })?;
                nodes::add_join_stage(
                    &mut b,
                    nodes::JoinSpec {
                        partitions,
                        left_topic: TopicName::Repartition(left_rep),
                        right_topic: TopicName::Repartition(right_rep),
                        store: JOIN_STORE.to_owned(),
                        left: source.clone(),
                        right,
                        lower_ms: join.lower_ms,
                        upper_ms: join.upper_ms,
                        select_sql: select.clone(),
                        out_topic: out.clone(),
                    },
                );
            }
            (None, _, _) => {
                nodes::add_batching_source(
                    &mut b,
                    "SQL-SELECT",
                    TopicName::User(options.topic.clone()),
                    out.clone(),
                    nodes::stateless_stage(source.clone(), lookup, select.clone(), Arc::from(plan.out_topic.as_str())),
                );
            }
            (Some((spec, time_column)), _, _) => {
                let repartition = TopicName::Repartition(REPARTITION.to_owned());
                nodes::add_batching_source(
                    &mut b,
                    "SQL-KEY-BY",
                    TopicName::User(options.topic.clone()),
                    repartition.clone(),
                    nodes::keying_stage(
                        source.clone(),
                        plan.group_keys.clone(),
                        time_column.clone(),
                        repartition.clone(),
                        plan.source_alias.clone(),
                        Some(i32::try_from(source_partitions).unwrap_or(i32::MAX)),
                    ),
                );
                b.add_store(StoreSpec {
                    name: WINDOW_STORE.to_owned(),
                    store_type: StoreType::KeyValue,
                    logging: true,
                    in_memory: false,
                })?;
                nodes::add_window_stage(
                    &mut b,
                    repartition,
                    WINDOW_STORE.to_owned(),
                    source.clone(),
                    *spec,
                    select.clone(),
                    plan.group_keys.iter().map(|k| k.name.clone()).collect(),
                    out.clone(),
                    source_partitions,
                );
            }
        }
    }
    builder.build()
}

fn column_names(schema: &SchemaRef) -> String {
    schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
}

/// The options and full schema of the topic table `name` of `ctx`.
async fn source_table(ctx: &SqlContext, name: &str) -> Result<(TableOptions, SchemaRef), StreamsError> {
    let provider = ctx.session().table_provider(name).await.map_err(exec::plan_error)?;
    let any: &dyn std::any::Any = provider.as_ref();
    let Some(table) = any.downcast_ref::<super::table::TopicTable>() else {
        return Err(StreamsError::SqlPlan {
            message: format!("table {name} is not a topic: continuous queries read topics"),
            position: None,
        });
    };
    Ok((table.options().clone(), provider.schema()))
}

/// Partitions of `topic` (a source of the query).
async fn partition_count(ctx: &SqlContext, topic: &str) -> Result<usize, StreamsError> {
    let admin = Admin::new(AdminConfig {
        bootstrap_servers: ctx
            .config()
            .bootstrap_servers
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        ..AdminConfig::default()
    })
    .await
    .map_err(|e| StreamsError::Config(format!("cannot reach the cluster to describe topic {topic}: {e}")))?;
    let described = admin
        .describe_topics(&[topic])
        .await
        .map_err(|e| StreamsError::Config(format!("cannot describe topic {topic}: {e}")))?;
    match described.first().map(|d| d.partitions.len()) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(StreamsError::Config(format!("topic {topic} does not exist: create it before starting the query"))),
    }
}

/// Creates the output topic with the source topic's partition count if it does not exist.
async fn ensure_output_topic(config: &StreamsConfig, source: &str, out: &str) -> Result<(), StreamsError> {
    let admin =
        Admin::new(AdminConfig { bootstrap_servers: config.bootstrap_servers.clone(), ..AdminConfig::default() })
            .await
            .map_err(|e| StreamsError::Config(format!("cannot reach the cluster to check output topic {out}: {e}")))?;
    let existing =
        admin.list_topics(false).await.map_err(|e| StreamsError::Config(format!("cannot list topics: {e}")))?;
    if existing.iter().any(|t| t == out) {
        return Ok(());
    }
    let partitions = admin
        .describe_topics(&[source])
        .await
        .map_err(|e| StreamsError::Config(format!("cannot describe source topic {source}: {e}")))?
        .first()
        .map_or(1, |d| d.partitions.len().max(1) as i32);
    let _ = admin.create_topics(&[NewTopic::new(out, partitions, config.replication_factor)]).await;
    Ok(())
}
