//! The processor nodes a continuous query compiles to (crate-internal nodes of the spate-streams
//! topology, so that they get the runtime's tasks, stores, changelogs and commits):
//!
//! - stateless: source topic → [`MicroBatch`] → the SELECT per micro-batch → output topic;
//! - windowed, sub-topology 0: source topic → [`MicroBatch`] → group key (JSON) and event time
//!   per record → the repartition topic `<query id>-sql-window-repartition`, keyed by the group
//!   key, valued by the whole source record ([`SourceRecord`]);
//! - windowed, sub-topology 1: repartition topic → [`WindowStage`]: rows kept in a changelogged
//!   key-value store until their windows close, then the SELECT over the closed windows' rows →
//!   output topic.
//!
//! Micro-batches are cut at [`MAX_BATCH_RECORDS`], on a wall-clock punctuation every
//! [`BATCH_LINGER_MS`], and before every commit (a flush hook), so that nothing buffered is
//! behind a committed offset.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use spate_client::ConsumerRecord;

use super::analyze::{
    GroupKey, KEY_COLUMN_PREFIX, PAIR_COLUMN, PAIR_OUT_COLUMN, PARTITION_KEY_COLUMN, SOURCE_KEY_COLUMN,
    SOURCE_TS_COLUMN, WINDOW_END, WINDOW_END_COLUMN, WINDOW_START,
};
use super::envelope::SourceRecord;
use super::exec::{event_times_ms, key_texts, rows_as_json, select_columns, BatchSql};
use super::window::{PartitionClocks, SessionIndex, SessionInsert, TimeWindowing, Window};
use crate::processor::{OutKind, OutRecord, PunctuationType, Punctuator, TaskContext};
use crate::sql::format::{RawHeaders, RawRecord, RecordDecoder};
use crate::store::{lock, LoggedKv};
use crate::topology::{GlobalStore, NodeDef, SourceFn, TaskBuild, TopicName, TopologyBuilder};
use crate::StreamsError;

/// Records per micro-batch, at most.
pub(crate) const MAX_BATCH_RECORDS: usize = 8192;
/// How long a record may wait in a micro-batch (wall clock).
pub(crate) const BATCH_LINGER_MS: i64 = 100;
/// Most rows one window emission may hold in memory (a window's rows are decoded into one
/// batch): a query whose windows hold more fails with a clear error instead of exhausting memory.
pub(crate) const MAX_EMIT_ROWS: usize = 5_000_000;
/// How long windows wait for a silent source partition before a warning says so.
const WAITING_WARN_MS: i64 = 60_000;
/// How often an idle task checks its idle timeout.
const IDLE_CHECK_MS: i64 = 200;

/// The window store's keys: one meta entry, then rows (time windows by event time, sessions by
/// group key then event time). The meta entry sorts first so that, in the changelog, the
/// watermark a window was emitted at is written before the deletes of its rows.
const META_KEY: &[u8] = &[0];
const TIME_ROW: u8 = 1;
const SESSION_ROW: u8 = 2;

/// The source table as the query reads it.
#[derive(Clone)]
pub(crate) struct Source {
    pub decoder: Arc<RecordDecoder>,
    pub lateness_ms: i64,
    pub idle_timeout_ms: Option<i64>,
}

impl Source {
    fn decode(
        &self,
        records: &[SourceRecord],
        windows: Option<&[(usize, Window)]>,
    ) -> Result<(RecordBatch, u64), StreamsError> {
        let raw = |i: usize| {
            let r = &records[i];
            RawRecord {
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                partition: r.partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                headers: RawHeaders::Decoded(&r.headers),
            }
        };
        let raws: Vec<RawRecord<'_>> = match windows {
            None => (0..records.len()).map(raw).collect(),
            Some(w) => w.iter().map(|(i, _)| raw(*i)).collect(),
        };
        self.decoder.decode(&raws)
    }
}

/// The table side of a stream-table join: held whole by every instance in the global store
/// `store` (latest value per key of its topic, as Kafka Streams' `GlobalKTable`).
#[derive(Clone)]
pub(crate) struct Lookup {
    pub decoder: Arc<RecordDecoder>,
    pub store: String,
    /// `SELECT CAST((<stream key expression>) AS VARCHAR) FROM <input> AS <alias>`.
    pub key_sql: String,
}

/// Metadata columns a global table does not keep (it holds values by key): NULL on the table side.
const LOOKUP_NULL_COLUMNS: [&str; 4] = ["_partition", "_offset", "_timestamp", "_headers"];

impl Lookup {
    /// The rows the joined table shows: its columns, with the metadata it does not keep nullable.
    pub(crate) fn schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .decoder
            .output_schema()
            .fields()
            .iter()
            .map(|f| {
                let f = f.as_ref().clone();
                if LOOKUP_NULL_COLUMNS.contains(&f.name().as_str()) {
                    f.with_nullable(true)
                } else {
                    f
                }
            })
            .collect();
        Arc::new(Schema::new(fields))
    }
}

/// One task's view of a [`Lookup`].
struct TaskLookup {
    decoder: Arc<RecordDecoder>,
    global: GlobalStore,
    key_sql: BatchSql,
    schema: SchemaRef,
}

impl TaskLookup {
    /// The table rows whose keys the stream rows of `batch` ask for (each key once).
    fn rows(&self, batch: &RecordBatch) -> Result<RecordBatch, StreamsError> {
        let mut keys: Vec<String> = Vec::new();
        for result in self.key_sql.run(vec![batch.clone()])? {
            keys.extend(key_texts(result.column(0))?.into_iter().flatten());
        }
        keys.sort_unstable();
        keys.dedup();
        let mut found: Vec<(String, Vec<u8>)> = Vec::with_capacity(keys.len());
        {
            let store = lock(&self.global);
            for key in keys {
                if let Some(value) = store.get(key.as_bytes())? {
                    found.push((key, value));
                }
            }
        }
        let raws: Vec<RawRecord<'_>> = found
            .iter()
            .map(|(k, v)| RawRecord {
                key: Some(k.as_bytes()),
                value: Some(v.as_slice()),
                partition: -1,
                offset: -1,
                timestamp_ms: -1,
                headers: RawHeaders::NONE,
            })
            .collect();
        let (decoded, _malformed) = self.decoder.decode(&raws)?;
        let columns: Vec<ArrayRef> = self
            .schema
            .fields()
            .iter()
            .zip(decoded.columns())
            .map(|(f, c)| {
                if LOOKUP_NULL_COLUMNS.contains(&f.name().as_str()) {
                    datafusion::arrow::array::new_null_array(f.data_type(), decoded.num_rows())
                } else {
                    c.clone()
                }
            })
            .collect();
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| StreamsError::SqlExecution(format!("internal: cannot build the joined table's rows: {e}")))
    }
}

/// The schema a windowed query's SELECT reads: the table's columns and the window's.
pub(crate) fn windowed_schema(table: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(WINDOW_START, DataType::Timestamp(TimeUnit::Millisecond, None), false));
    fields.push(Field::new(WINDOW_END, DataType::Timestamp(TimeUnit::Millisecond, None), false));
    Arc::new(Schema::new(fields))
}

fn with_windows(
    batch: RecordBatch,
    windows: &[(usize, Window)],
    schema: &SchemaRef,
) -> Result<RecordBatch, StreamsError> {
    let starts = TimestampMillisecondArray::from_iter_values(windows.iter().map(|(_, w)| w.start_ms));
    let ends = TimestampMillisecondArray::from_iter_values(windows.iter().map(|(_, w)| w.end_ms));
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(starts));
    columns.push(Arc::new(ends));
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| StreamsError::SqlExecution(format!("internal: cannot add the window columns: {e}")))
}

/// Buffers a task's source records into micro-batches; `flush` hands them on.
struct MicroBatch {
    records: Vec<SourceRecord>,
}

/// What a micro-batch turns into: records for `ctx.out`.
type BatchFn = Box<dyn FnMut(&mut TaskContext, Vec<SourceRecord>) -> Result<(), StreamsError> + Send>;

/// Adds a source node reading `topic` in micro-batches that `make` (per task) turns into output
/// records.
pub(crate) fn add_batching_source(
    b: &mut TopologyBuilder,
    name: &str,
    topic: TopicName,
    sink: TopicName,
    make: impl Fn(&mut TaskBuild<'_>) -> Result<BatchFn, StreamsError> + Send + Sync + 'static,
) -> crate::topology::NodeId {
    let node_name = b.name(name);
    let source_topic = topic.clone();
    let build = Arc::new(move |tb: &mut TaskBuild<'_>| {
        let handle = Arc::new(Mutex::new((MicroBatch { records: Vec::new() }, make(tb)?)));
        let flush = |handle: &Arc<Mutex<(MicroBatch, BatchFn)>>| {
            let handle = handle.clone();
            move |ctx: &mut TaskContext| -> Result<(), StreamsError> {
                let mut g = lock(&handle);
                let (batch, f) = &mut *g;
                if batch.records.is_empty() {
                    return Ok(());
                }
                let records = std::mem::take(&mut batch.records);
                f(ctx, records)
            }
        };
        let on_full = flush(&handle);
        let h = handle.clone();
        let source: SourceFn = Box::new(move |ctx: &mut TaskContext, rec: &ConsumerRecord| {
            ctx.record_timestamp_ms = rec.timestamp_ms;
            ctx.stream_time_ms = ctx.stream_time_ms.max(rec.timestamp_ms);
            let full = {
                let mut g = lock(&h);
                g.0.records.push(SourceRecord::from_consumer(rec));
                g.0.records.len() >= MAX_BATCH_RECORDS
            };
            if full {
                on_full(ctx)?;
            }
            Ok(())
        });
        tb.sources.push((source_topic.resolve(tb.application_id), source));
        tb.flushers.push(Box::new(flush(&handle)));
        let on_linger = flush(&handle);
        tb.punctuators.push(Punctuator {
            kind: PunctuationType::WallClockTime,
            interval_ms: BATCH_LINGER_MS,
            next_ms: None,
            fire: Box::new(move |ctx, _| on_linger(ctx)),
        });
        Ok(())
    });
    b.add(NodeDef {
        name: node_name,
        parents: Vec::new(),
        source_topics: vec![topic],
        sink_topic: Some(sink),
        stores: Vec::new(),
        joins: false,
        build,
    })
}

/// The stateless stage: the SELECT over each micro-batch (joined with the table's matching rows
/// when the query joins one); output key = the source record's key (or the `PARTITION BY`
/// value), timestamp = the source record's.
pub(crate) fn stateless_stage(
    source: Source,
    lookup: Option<Lookup>,
    select_sql: Arc<str>,
    out_topic: Arc<str>,
) -> impl Fn(&mut TaskBuild<'_>) -> Result<BatchFn, StreamsError> + Send + Sync + 'static {
    move |tb| {
        let input_schema = source.decoder.output_schema();
        let sql = BatchSql::plan_with_lookup_blocking(
            &select_sql,
            input_schema.clone(),
            lookup.as_ref().map(Lookup::schema),
        )?;
        let task_lookup = match &lookup {
            None => None,
            Some(l) => Some(TaskLookup {
                decoder: l.decoder.clone(),
                global: tb.global_store(&l.store)?,
                key_sql: BatchSql::plan_blocking(&l.key_sql, input_schema.clone())?,
                schema: l.schema(),
            }),
        };
        let schema = sql.output_schema();
        let key_col = schema.index_of(SOURCE_KEY_COLUMN).map_err(|e| StreamsError::SqlExecution(e.to_string()))?;
        let ts_col = schema.index_of(SOURCE_TS_COLUMN).map_err(|e| StreamsError::SqlExecution(e.to_string()))?;
        let visible: Vec<usize> = (0..schema.fields().len()).filter(|i| *i != key_col && *i != ts_col).collect();
        let names: Vec<String> = visible.iter().map(|&i| schema.field(i).name().clone()).collect();
        let (source, out_topic) = (source.clone(), out_topic.clone());
        Ok(Box::new(move |ctx: &mut TaskContext, records: Vec<SourceRecord>| {
            let (batch, _malformed) = source.decode(&records, None)?;
            let table_rows = match &task_lookup {
                None => Vec::new(),
                Some(l) => vec![l.rows(&batch)?],
            };
            for result in sql.run_with_lookup(vec![batch], table_rows)? {
                let values = rows_as_json(&select_columns(&result, &visible, &names)?)?;
                let keys = key_texts(result.column(key_col))?;
                let times = event_times_ms(result.column(ts_col))?;
                for ((value, key), time) in values.into_iter().zip(keys).zip(times) {
                    ctx.out.push(OutRecord {
                        topic: out_topic.clone(),
                        partition: None,
                        key: key.map(Bytes::from),
                        value: Some(Bytes::from(value)),
                        timestamp_ms: time.unwrap_or(ctx.wall_clock_ms),
                        kind: OutKind::Sink,
                    });
                }
            }
            Ok(())
        }) as BatchFn)
    }
}

/// `SELECT <select> FROM <input> AS "<alias>"`: a per-batch query over one table's rows.
pub(crate) fn key_by_sql(select: &str, alias: &str) -> String {
    format!("SELECT {select} FROM {} AS \"{}\"", super::analyze::INPUT_TABLE, alias.replace('"', "\"\""))
}

/// Sub-topology 0 of a windowed query: group key and event time per record, to the
/// repartition topic.
pub(crate) fn keying_stage(
    source: Source,
    group_keys: Vec<GroupKey>,
    time_column: String,
    repartition: TopicName,
    alias: String,
    markers_to: Option<i32>,
) -> impl Fn(&mut TaskBuild<'_>) -> Result<BatchFn, StreamsError> + Send + Sync + 'static {
    move |tb| {
        let mut select: Vec<String> =
            group_keys.iter().enumerate().map(|(i, k)| format!("{} AS \"{KEY_COLUMN_PREFIX}{i}\"", k.sql)).collect();
        select.push(format!("\"{}\" AS \"__spate_time\"", time_column.replace('"', "\"\"")));
        let sql_text = key_by_sql(&select.join(", "), &alias);
        let sql = BatchSql::plan_blocking(&sql_text, source.decoder.output_schema())?;
        let key_columns: Vec<usize> = (0..group_keys.len()).collect();
        let key_names: Vec<String> = group_keys.iter().map(|k| k.name.clone()).collect();
        let topic: Arc<str> = Arc::from(repartition.resolve(tb.application_id));
        let source = source.clone();
        // Largest event time this task (one source partition) has written.
        let mut max_time_ms = -1i64;
        Ok(Box::new(move |ctx: &mut TaskContext, records: Vec<SourceRecord>| {
            let (batch, _malformed) = source.decode(&records, None)?;
            let mut row = 0usize;
            for result in sql.run(vec![batch])? {
                let keys = if key_columns.is_empty() {
                    vec![b"{}".to_vec(); result.num_rows()]
                } else {
                    rows_as_json(&select_columns(&result, &key_columns, &key_names)?)?
                };
                let times = event_times_ms(result.column(key_columns.len()))?;
                for (key, time) in keys.into_iter().zip(times) {
                    let Some(record) = records.get(row) else {
                        return Err(StreamsError::SqlExecution("internal: more key rows than records".into()));
                    };
                    row += 1;
                    match time {
                        Some(ts) if ts >= 0 => {
                            max_time_ms = max_time_ms.max(ts);
                            ctx.out.push(OutRecord {
                                topic: topic.clone(),
                                partition: None,
                                key: Some(Bytes::from(key)),
                                value: Some(Bytes::from(record.encode())),
                                timestamp_ms: ts,
                                kind: OutKind::Sink,
                            })
                        }
                        // No usable event time: the record cannot be windowed.
                        _ => ctx.counters.dropped_other += 1,
                    }
                }
            }
            if row != records.len() {
                return Err(StreamsError::SqlExecution(format!(
                    "internal: {row} key rows for {} records",
                    records.len()
                )));
            }
            // Every downstream task learns how far this source partition has got, whether or not
            // any of its keys went there (Flink's watermarks per input channel).
            if let (Some(partitions), Some(first)) = (markers_to, records.first()) {
                if max_time_ms >= 0 {
                    for partition in 0..partitions {
                        ctx.out.push(OutRecord {
                            topic: topic.clone(),
                            partition: Some(partition),
                            key: None,
                            value: Some(Bytes::from(encode_marker(first.partition, max_time_ms))),
                            timestamp_ms: max_time_ms,
                            kind: OutKind::Sink,
                        });
                    }
                }
            }
            Ok(())
        }) as BatchFn)
    }
}

/// A watermark marker of the repartition topics (the only records without a key there): source
/// partition and largest event time written from it.
fn encode_marker(partition: i32, time_ms: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&partition.to_be_bytes());
    v.extend_from_slice(&time_ms.to_be_bytes());
    v
}

fn decode_marker(b: &[u8], topic: &str) -> Result<(i32, i64), StreamsError> {
    let fields = || -> Option<(i32, i64)> {
        Some((i32::from_be_bytes(b.get(..4)?.try_into().ok()?), i64::from_be_bytes(b.get(4..12)?.try_into().ok()?)))
    };
    fields().ok_or_else(|| StreamsError::SqlExecution(format!("{topic}: a damaged watermark marker")))
}

/// What the window stage persists besides rows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    /// Each source partition's max event time (-1: none).
    times_ms: Vec<i64>,
    /// Every window ending at or before this was emitted (or had no rows).
    closed_through_ms: i64,
}

/// The meta entry's layout: version, closed-through, then one time per source partition.
const META_VERSION: u8 = 2;

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![META_VERSION];
        v.extend_from_slice(&self.closed_through_ms.to_be_bytes());
        for t in &self.times_ms {
            v.extend_from_slice(&t.to_be_bytes());
        }
        v
    }

    fn decode(b: &[u8]) -> Result<Meta, StreamsError> {
        let bad = || StreamsError::SqlExecution("the continuous query's window store has a corrupt meta entry".into());
        let word = |b: &[u8]| -> Result<i64, StreamsError> { Ok(i64::from_be_bytes(b.try_into().map_err(|_| bad())?)) };
        if b.len() == 16 {
            // Written before watermarks were per source partition: (stream time, closed through).
            return Ok(Meta { times_ms: vec![word(&b[..8])?], closed_through_ms: word(&b[8..])? });
        }
        if b.first() != Some(&META_VERSION) || b.len() < 9 || !(b.len() - 9).is_multiple_of(8) {
            return Err(bad());
        }
        let times_ms = b[9..].chunks(8).map(word).collect::<Result<_, _>>()?;
        Ok(Meta { times_ms, closed_through_ms: word(&b[1..9])? })
    }
}

fn time_row_key(ts: i64, partition: i32, offset: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(21);
    k.push(TIME_ROW);
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The smallest key of a time row at `ts` (a bound: shorter than every row key at `ts`).
fn time_bound(ts: i64) -> Vec<u8> {
    let mut k = vec![TIME_ROW];
    k.extend_from_slice(&ts.to_be_bytes());
    k
}

/// The smallest key of a session row of `group` at `ts`.
fn session_bound(group: &[u8], ts: i64) -> Vec<u8> {
    let mut k = session_prefix(group);
    k.extend_from_slice(&ts.to_be_bytes());
    k
}

fn session_prefix(group: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + group.len() + 20);
    k.push(SESSION_ROW);
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group);
    k
}

fn session_row_key(group: &[u8], ts: i64, partition: i32, offset: i64) -> Vec<u8> {
    let mut k = session_prefix(group);
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// (group key, event time) of a session row key.
fn parse_session_key(k: &[u8]) -> Option<(&[u8], i64)> {
    let len = u32::from_be_bytes(k.get(1..5)?.try_into().ok()?) as usize;
    let group = k.get(5..5 + len)?;
    let ts = i64::from_be_bytes(k.get(5 + len..13 + len)?.try_into().ok()?);
    Some((group, ts))
}

enum Windowing {
    Time(TimeWindowing),
    /// The index is built from the store when the task starts.
    Session {
        gap_ms: i64,
        index: Option<SessionIndex>,
    },
}

/// Sub-topology 1 of a windowed query: one task's window state and emission.
pub(crate) struct WindowStage {
    store: Arc<Mutex<LoggedKv>>,
    source: Source,
    windowing: Windowing,
    sql: BatchSql,
    schema: SchemaRef,
    out_topic: Arc<str>,
    /// Source partitions (each holds the watermark back until heard from).
    partitions: usize,
    /// Since when a source partition never heard from holds the watermark back; warned once.
    waiting_since_ms: Option<i64>,
    warned: bool,
    /// Loaded from the store at the first record or punctuation.
    state: Option<(PartitionClocks, Meta)>,
    key_columns: Vec<usize>,
    key_names: Vec<String>,
    value_columns: Vec<usize>,
    value_names: Vec<String>,
    window_end_column: usize,
    /// `PARTITION BY`'s column: the output key instead of the group key's JSON.
    partition_key_column: Option<usize>,
}

impl WindowStage {
    fn load(&mut self, wall_ms: i64) -> Result<(), StreamsError> {
        if self.state.is_some() {
            return Ok(());
        }
        let meta = match lock(&self.store).get(META_KEY)? {
            Some(b) => Meta::decode(&b)?,
            None => Meta { times_ms: Vec::new(), closed_through_ms: i64::MIN },
        };
        if let Windowing::Session { gap_ms, index } = &mut self.windowing {
            let mut built = SessionIndex::new(*gap_ms);
            let rows = lock(&self.store).range(Some(&[SESSION_ROW]), Some(&[SESSION_ROW + 1]), usize::MAX)?;
            for (k, _) in rows {
                if let Some((group, ts)) = parse_session_key(&k) {
                    let _ = built.insert(group, ts, i64::MIN);
                }
            }
            *index = Some(built);
        }
        let clocks = PartitionClocks::new(
            meta.times_ms.clone(),
            self.partitions,
            self.source.lateness_ms,
            self.source.idle_timeout_ms,
            wall_ms,
        );
        self.state = Some((clocks, meta));
        Ok(())
    }

    fn record(&mut self, ctx: &mut TaskContext, rec: &ConsumerRecord) -> Result<(), StreamsError> {
        let wall_ms = ctx.wall_clock_ms;
        self.load(wall_ms)?;
        let ts = rec.timestamp_ms;
        let Some(value) = rec.value.as_deref() else {
            ctx.counters.dropped_other += 1;
            return Ok(());
        };
        if rec.key.is_none() {
            // A watermark marker: how far one source partition has got.
            let (partition, time_ms) = decode_marker(value, &rec.topic)?;
            let (clocks, _) = self.state.as_mut().expect("loaded");
            clocks.observe(partition, time_ms, wall_ms);
            let watermark = clocks.watermark_ms(wall_ms);
            return self.advance(ctx, watermark);
        }
        let source = SourceRecord::decode(value, &rec.topic)?;
        let (clocks, _) = self.state.as_mut().expect("loaded");
        clocks.observe(source.partition, ts, wall_ms);
        let watermark = clocks.watermark_ms(wall_ms);
        ctx.record_timestamp_ms = ts;
        ctx.stream_time_ms = ctx.stream_time_ms.max(ts);
        self.advance(ctx, watermark)?;
        let group = rec.key.as_deref().unwrap_or(b"{}");
        let row_key = match &mut self.windowing {
            Windowing::Time(w) => w.accepts(ts, watermark).then(|| time_row_key(ts, source.partition, source.offset)),
            Windowing::Session { index, .. } => {
                let index = index.as_mut().expect("loaded");
                match index.insert(group, ts, watermark) {
                    SessionInsert::Accepted(..) => Some(session_row_key(group, ts, source.partition, source.offset)),
                    SessionInsert::Late => None,
                }
            }
        };
        match row_key {
            Some(k) => lock(&self.store).put(&mut ctx.out, k, Some(value.to_vec()), ts),
            None => {
                ctx.drop_late(source.key.clone(), source.value.clone(), ts);
                Ok(())
            }
        }
    }

    fn idle(&mut self, ctx: &mut TaskContext, wall_ms: i64) -> Result<(), StreamsError> {
        self.load(wall_ms)?;
        let (clocks, _) = self.state.as_mut().expect("loaded");
        clocks.idle_tick(wall_ms);
        let watermark = clocks.watermark_ms(wall_ms);
        self.warn_if_waiting(wall_ms);
        self.advance(ctx, watermark)
    }

    /// Says once (after a minute) when windows wait for a source partition that sent nothing.
    fn warn_if_waiting(&mut self, wall_ms: i64) {
        let Some((clocks, _)) = &self.state else { return };
        match clocks.waiting_for(wall_ms) {
            None => self.waiting_since_ms = None,
            Some(partition) => {
                let since = *self.waiting_since_ms.get_or_insert(wall_ms);
                if wall_ms.saturating_sub(since) >= WAITING_WARN_MS && !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        partition,
                        "continuous query: windows stay open because source partition {partition} has sent no record; \
                         set the table's idle_timeout to let them close without it"
                    );
                }
            }
        }
    }

    /// Emits every window that closes at `watermark` and persists the new state.
    fn advance(&mut self, ctx: &mut TaskContext, watermark: i64) -> Result<(), StreamsError> {
        let (clocks, meta) = self.state.as_mut().expect("loaded");
        let times_ms = clocks.times_ms();
        let closed_through = meta.closed_through_ms;
        let due = match &self.windowing {
            Windowing::Time(w) => watermark > i64::MIN && watermark >= w.next_end_after(closed_through),
            Windowing::Session { .. } => watermark > closed_through,
        };
        let latest_ms = times_ms.iter().copied().max().unwrap_or(-1).max(0);
        let mut next = Meta { times_ms, closed_through_ms: closed_through };
        if due {
            match &mut self.windowing {
                Windowing::Time(w) => {
                    let w = *w;
                    self.emit_time_windows(ctx, w, closed_through, watermark)?;
                }
                Windowing::Session { .. } => self.emit_sessions(ctx, watermark)?,
            }
            next.closed_through_ms = watermark;
        }
        let (_, meta) = self.state.as_mut().expect("loaded");
        if next != *meta {
            lock(&self.store).put(&mut ctx.out, META_KEY.to_vec(), Some(next.encode()), latest_ms)?;
            *meta = next;
        }
        Ok(())
    }

    fn emit_time_windows(
        &mut self,
        ctx: &mut TaskContext,
        w: TimeWindowing,
        closed_through: i64,
        watermark: i64,
    ) -> Result<(), StreamsError> {
        // Rows with event time < watermark are the only ones in windows ending <= watermark.
        let to = time_bound(watermark.max(0));
        let rows = lock(&self.store).range(Some(&[TIME_ROW]), Some(&to), MAX_EMIT_ROWS + 1)?;
        if rows.is_empty() {
            return Ok(());
        }
        if rows.len() > MAX_EMIT_ROWS {
            return Err(too_many_rows());
        }
        let mut records = Vec::with_capacity(rows.len());
        let mut windows = Vec::new();
        let mut done = Vec::new();
        for (k, v) in &rows {
            let record = SourceRecord::decode(v, "the window store")?;
            let ts = i64::from_be_bytes(k.get(1..9).and_then(|b| b.try_into().ok()).ok_or_else(corrupt_row)?);
            for window in w.closing(ts, closed_through, watermark) {
                windows.push((records.len(), window));
            }
            if w.last_end_ms(ts) <= watermark {
                done.push(k.clone());
            }
            records.push(record);
        }
        self.emit(ctx, &records, &windows)?;
        let mut store = lock(&self.store);
        for k in done {
            store.put(&mut ctx.out, k, None, watermark.max(0))?;
        }
        Ok(())
    }

    fn emit_sessions(&mut self, ctx: &mut TaskContext, watermark: i64) -> Result<(), StreamsError> {
        let Windowing::Session { index, .. } = &mut self.windowing else { return Ok(()) };
        let closed = index.as_mut().expect("loaded").take_closed(watermark, usize::MAX);
        if closed.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        let mut windows = Vec::new();
        let mut done = Vec::new();
        {
            let store = lock(&self.store);
            for (group, window, last) in &closed {
                let from = session_bound(group, window.start_ms);
                let to = session_bound(group, last.saturating_add(1));
                for (k, v) in store.range(Some(&from), Some(&to), MAX_EMIT_ROWS + 1)? {
                    if records.len() >= MAX_EMIT_ROWS {
                        return Err(too_many_rows());
                    }
                    windows.push((records.len(), *window));
                    records.push(SourceRecord::decode(&v, "the window store")?);
                    done.push(k);
                }
            }
        }
        self.emit(ctx, &records, &windows)?;
        let mut store = lock(&self.store);
        for k in done {
            store.put(&mut ctx.out, k, None, watermark.max(0))?;
        }
        Ok(())
    }

    /// Runs the SELECT over `records` placed in `windows` and writes its rows.
    fn emit(
        &mut self,
        ctx: &mut TaskContext,
        records: &[SourceRecord],
        windows: &[(usize, Window)],
    ) -> Result<(), StreamsError> {
        if windows.is_empty() {
            return Ok(());
        }
        let (batch, _malformed) = self.source.decode(records, Some(windows))?;
        let input = with_windows(batch, windows, &self.schema)?;
        for result in self.sql.run(vec![input])? {
            let values = rows_as_json(&select_columns(&result, &self.value_columns, &self.value_names)?)?;
            let keys: Option<Vec<Option<Vec<u8>>>> = if let Some(column) = self.partition_key_column {
                Some(key_texts(result.column(column))?.into_iter().map(|k| k.map(String::into_bytes)).collect())
            } else if self.key_columns.is_empty() {
                None
            } else {
                Some(
                    rows_as_json(&select_columns(&result, &self.key_columns, &self.key_names)?)?
                        .into_iter()
                        .map(Some)
                        .collect(),
                )
            };
            let ends = result.column(self.window_end_column).as_primitive_opt::<TimestampMillisecondType>().cloned();
            for (row, value) in values.into_iter().enumerate() {
                let end = ends.as_ref().filter(|e| e.is_valid(row)).map(|e| e.value(row));
                ctx.out.push(OutRecord {
                    topic: self.out_topic.clone(),
                    partition: None,
                    key: keys.as_ref().and_then(|k| k[row].clone()).map(Bytes::from),
                    value: Some(Bytes::from(value)),
                    // A window's result carries its last instant, as Flink's window results do.
                    timestamp_ms: end.map_or(ctx.wall_clock_ms, |e| e.saturating_sub(1)),
                    kind: OutKind::Sink,
                });
            }
        }
        Ok(())
    }
}

fn too_many_rows() -> StreamsError {
    StreamsError::SqlExecution(format!(
        "closing windows hold more than {MAX_EMIT_ROWS} rows in one task: use smaller windows, or more partitions"
    ))
}

fn corrupt_row() -> StreamsError {
    StreamsError::SqlExecution("the continuous query's window store has a corrupt row key".into())
}

/// Adds the window stage: a source of the repartition topic, its store, the emission.
#[expect(clippy::too_many_arguments, reason = "the parts of one windowed query")]
pub(crate) fn add_window_stage(
    b: &mut TopologyBuilder,
    repartition: TopicName,
    store: String,
    source: Source,
    windowing: super::analyze::WindowSpec,
    select_sql: Arc<str>,
    key_names: Vec<String>,
    out_topic: TopicName,
    partitions: usize,
) {
    let node_name = b.name("SQL-WINDOW");
    let topic = repartition.clone();
    let build_store = store.clone();
    let out = out_topic.clone();
    let build = Arc::new(move |tb: &mut TaskBuild<'_>| {
        let schema = windowed_schema(&source.decoder.output_schema());
        let sql = BatchSql::plan_blocking(&select_sql, schema.clone())?;
        let output = sql.output_schema();
        let index = |name: &str| output.index_of(name).map_err(|e| StreamsError::SqlExecution(e.to_string()));
        let key_columns: Vec<usize> =
            (0..key_names.len()).map(|i| index(&format!("{KEY_COLUMN_PREFIX}{i}"))).collect::<Result<_, _>>()?;
        let window_end_column = index(WINDOW_END_COLUMN)?;
        let partition_key_column = output.index_of(PARTITION_KEY_COLUMN).ok();
        let value_columns: Vec<usize> = (0..output.fields().len())
            .filter(|i| !key_columns.contains(i) && *i != window_end_column && Some(*i) != partition_key_column)
            .collect();
        let value_names = value_columns.iter().map(|&i| output.field(i).name().clone()).collect();
        let windowing = match windowing {
            super::analyze::WindowSpec::Session { gap_ms } => Windowing::Session { gap_ms, index: None },
            spec => Windowing::Time(TimeWindowing::from_spec(spec).expect("a time window")),
        };
        let stage = Arc::new(Mutex::new(WindowStage {
            store: tb.kv_store(&build_store)?,
            source: source.clone(),
            windowing,
            sql,
            schema,
            out_topic: Arc::from(out.resolve(tb.application_id)),
            partitions,
            waiting_since_ms: None,
            warned: false,
            state: None,
            key_columns,
            key_names: key_names.clone(),
            value_columns,
            value_names,
            window_end_column,
            partition_key_column,
        }));
        let s = stage.clone();
        let src: SourceFn = Box::new(move |ctx, rec| lock(&s).record(ctx, rec));
        tb.sources.push((topic.resolve(tb.application_id), src));
        // The idle timeout, and the warning about a silent source partition.
        let s = stage.clone();
        tb.punctuators.push(Punctuator {
            kind: PunctuationType::WallClockTime,
            interval_ms: IDLE_CHECK_MS,
            next_ms: None,
            fire: Box::new(move |ctx, now_ms| lock(&s).idle(ctx, now_ms)),
        });
        Ok(())
    });
    b.add(NodeDef {
        name: node_name,
        parents: Vec::new(),
        source_topics: vec![repartition],
        sink_topic: Some(out_topic),
        stores: vec![store],
        joins: false,
        build,
    });
}

/// Which input of an interval join a row came from.
const JOIN_LEFT: u8 = 1;
const JOIN_RIGHT: u8 = 2;
/// Most rows of the other side one record may match (they are joined in memory).
pub(crate) const MAX_JOIN_MATCHES: usize = 100_000;

/// `[side][group length][group][event time][source partition][offset]`: rows of one side and key
/// sort by event time, so a record's matches are one range.
fn join_row_key(side: u8, group: &[u8], ts: i64, partition: i32, offset: i64) -> Vec<u8> {
    let mut k = join_bound(side, group, ts);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn join_bound(side: u8, group: &[u8], ts: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + group.len() + 20);
    k.push(side);
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group);
    k.extend_from_slice(&ts.to_be_bytes());
    k
}

/// (side, group key, event time) of a join row key.
fn parse_join_key(k: &[u8]) -> Option<(u8, &[u8], i64)> {
    let side = *k.first()?;
    let len = u32::from_be_bytes(k.get(1..5)?.try_into().ok()?) as usize;
    let group = k.get(5..5 + len)?;
    let ts = i64::from_be_bytes(k.get(5 + len..13 + len)?.try_into().ok()?);
    Some((side, group, ts))
}

/// A pair found by the join stage, waiting for the SELECT.
struct Pair {
    left: SourceRecord,
    right: SourceRecord,
    group: Vec<u8>,
    timestamp_ms: i64,
}

/// The interval join of one task: both sides' rows in a changelogged store, kept while a record
/// that is not late could still match them. Watermark = min over the two sides of (max event
/// time − lateness), so a backlog of one topic read before the other does not make the other late.
/// A record older than the watermark is late and dropped; every pair of records that are not late
/// and satisfy the interval is emitted once, when the second of them arrives.
pub(crate) struct JoinStage {
    store: Arc<Mutex<LoggedKv>>,
    left_topic: String,
    left: Source,
    right: Source,
    /// Source partitions of each side: each holds the watermark back until it is heard from.
    partitions: (usize, usize),
    lower_ms: i64,
    upper_ms: i64,
    sql: BatchSql,
    /// Loaded at the first record or punctuation: the clocks and the rows by expiry.
    state: Option<JoinState>,
    pending: Vec<Pair>,
    out_topic: Arc<str>,
    value_columns: Vec<usize>,
    value_names: Vec<String>,
    pair_column: usize,
    partition_key_column: Option<usize>,
}

struct JoinState {
    /// The event time of each side, per source partition (records and markers advance them).
    clocks: [PartitionClocks; 2],
    /// (time the row may be dropped after, row key).
    expiry: BTreeSet<(i64, Vec<u8>)>,
    persisted: Vec<i64>,
}

impl JoinState {
    fn times(&self) -> Vec<i64> {
        let (left, right) = (self.clocks[0].times_ms(), self.clocks[1].times_ms());
        let mut v = vec![left.len() as i64];
        v.extend(left);
        v.extend(right);
        v
    }

    fn encode(times: &[i64]) -> Vec<u8> {
        times.iter().flat_map(|t| t.to_be_bytes()).collect()
    }

    /// (left times, right times) persisted by [`Self::times`].
    fn decode(b: &[u8]) -> Option<(Vec<i64>, Vec<i64>)> {
        if !b.len().is_multiple_of(8) || b.is_empty() {
            return None;
        }
        let all: Vec<i64> = b.chunks(8).map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
        let left = usize::try_from(*all.first()?).ok()?;
        let rest = all.get(1..)?;
        (left <= rest.len()).then(|| (rest[..left].to_vec(), rest[left..].to_vec()))
    }
}

impl JoinStage {
    fn load(&mut self, wall_ms: i64) -> Result<(), StreamsError> {
        if self.state.is_some() {
            return Ok(());
        }
        let (left, right) = match lock(&self.store).get(META_KEY)? {
            Some(b) => JoinState::decode(&b).ok_or_else(|| {
                StreamsError::SqlExecution("the continuous query's join store has a corrupt meta entry".into())
            })?,
            None => (Vec::new(), Vec::new()),
        };
        let mut expiry = BTreeSet::new();
        for (k, _) in lock(&self.store).range(Some(&[JOIN_LEFT]), None, usize::MAX)? {
            let (side, _, ts) = parse_join_key(&k).ok_or_else(corrupt_row)?;
            expiry.insert((self.expires_at(side, ts), k));
        }
        let (lateness, idle) = (self.left.lateness_ms, self.left.idle_timeout_ms);
        let clocks = [
            PartitionClocks::new(left, self.partitions.0, lateness, idle, wall_ms),
            PartitionClocks::new(right, self.partitions.1, lateness, idle, wall_ms),
        ];
        let mut state = JoinState { clocks, expiry, persisted: Vec::new() };
        state.persisted = state.times();
        self.state = Some(state);
        Ok(())
    }

    /// A row is kept while a record that is not late (time ≥ watermark) could match it: a left
    /// row at t matches right times up to t + upper, a right row at s left times from s − upper…
    /// so a left row goes once the watermark passes t + upper, a right row once it passes s − lower.
    fn expires_at(&self, side: u8, ts: i64) -> i64 {
        if side == JOIN_LEFT {
            ts.saturating_add(self.upper_ms)
        } else {
            ts.saturating_sub(self.lower_ms)
        }
    }

    /// The minimum over every source partition of both sides.
    fn watermark(&self, wall_ms: i64) -> i64 {
        let state = self.state.as_ref().expect("loaded");
        state.clocks[0].watermark_ms(wall_ms).min(state.clocks[1].watermark_ms(wall_ms))
    }

    fn observe(&mut self, side: u8, partition: i32, ts: i64, wall_ms: i64) {
        let state = self.state.as_mut().expect("loaded");
        state.clocks[usize::from(side == JOIN_RIGHT)].observe(partition, ts, wall_ms);
    }

    fn record(&mut self, ctx: &mut TaskContext, rec: &ConsumerRecord) -> Result<(), StreamsError> {
        self.load(ctx.wall_clock_ms)?;
        let side = if *rec.topic == *self.left_topic { JOIN_LEFT } else { JOIN_RIGHT };
        let ts = rec.timestamp_ms;
        let Some(value) = rec.value.as_deref() else {
            ctx.counters.dropped_other += 1;
            return Ok(());
        };
        if rec.key.is_none() {
            let (partition, time_ms) = decode_marker(value, &rec.topic)?;
            self.observe(side, partition, time_ms, ctx.wall_clock_ms);
            let watermark = self.watermark(ctx.wall_clock_ms);
            return self.advance(ctx, watermark);
        }
        let source = SourceRecord::decode(value, &rec.topic)?;
        let group = rec.key.as_deref().unwrap_or_default().to_vec();
        self.observe(side, source.partition, ts, ctx.wall_clock_ms);
        let watermark = self.watermark(ctx.wall_clock_ms);
        ctx.record_timestamp_ms = ts;
        ctx.stream_time_ms = ctx.stream_time_ms.max(ts);
        if ts < watermark {
            ctx.drop_late(source.key.clone(), source.value.clone(), ts);
            return self.advance(ctx, watermark);
        }
        let (other, from, to) = if side == JOIN_LEFT {
            (JOIN_RIGHT, ts.saturating_add(self.lower_ms), ts.saturating_add(self.upper_ms))
        } else {
            (JOIN_LEFT, ts.saturating_sub(self.upper_ms), ts.saturating_sub(self.lower_ms))
        };
        // Stored times are ≥ 0 (the keying stage drops records without one), and keys order
        // times as big-endian bytes, where negative numbers would sort last.
        let matches = if to < 0 {
            Vec::new()
        } else {
            lock(&self.store).range(
                Some(&join_bound(other, &group, from.max(0))),
                Some(&join_bound(other, &group, to.saturating_add(1))),
                MAX_JOIN_MATCHES + 1,
            )?
        };
        if matches.len() > MAX_JOIN_MATCHES {
            return Err(StreamsError::SqlExecution(format!(
                "a record of the interval join matches more than {MAX_JOIN_MATCHES} rows of the other topic: \
                 narrow the interval or the key"
            )));
        }
        for (k, v) in matches {
            let (_, _, other_ts) = parse_join_key(&k).ok_or_else(corrupt_row)?;
            let found = SourceRecord::decode(&v, "the join store")?;
            let (left, right) = if side == JOIN_LEFT { (source.clone(), found) } else { (found, source.clone()) };
            self.pending.push(Pair { left, right, group: group.clone(), timestamp_ms: ts.max(other_ts) });
        }
        let expires = self.expires_at(side, ts);
        if expires >= watermark {
            let key = join_row_key(side, &group, ts, source.partition, source.offset);
            lock(&self.store).put(&mut ctx.out, key.clone(), Some(value.to_vec()), ts)?;
            self.state.as_mut().expect("loaded").expiry.insert((expires, key));
        }
        if self.pending.len() >= MAX_BATCH_RECORDS {
            self.flush(ctx)?;
        }
        self.advance(ctx, watermark)
    }

    fn idle(&mut self, ctx: &mut TaskContext, wall_ms: i64) -> Result<(), StreamsError> {
        self.load(wall_ms)?;
        let state = self.state.as_mut().expect("loaded");
        for clocks in &mut state.clocks {
            clocks.idle_tick(wall_ms);
        }
        let watermark = self.watermark(wall_ms);
        self.advance(ctx, watermark)
    }

    /// Deletes the rows no record that is not late can match any more; persists the clocks.
    fn advance(&mut self, ctx: &mut TaskContext, watermark: i64) -> Result<(), StreamsError> {
        let state = self.state.as_mut().expect("loaded");
        let mut store = lock(&self.store);
        while let Some((expires, _)) = state.expiry.first() {
            if *expires >= watermark {
                break;
            }
            let (_, key) = state.expiry.pop_first().expect("non-empty");
            store.put(&mut ctx.out, key, None, watermark.max(0))?;
        }
        let times = state.times();
        if times != state.persisted {
            let latest = times.iter().skip(1).copied().max().unwrap_or(0).max(0);
            store.put(&mut ctx.out, META_KEY.to_vec(), Some(JoinState::encode(&times)), latest)?;
            state.persisted = times;
        }
        Ok(())
    }

    /// Runs the SELECT over the pairs found so far and writes its rows.
    fn flush(&mut self, ctx: &mut TaskContext) -> Result<(), StreamsError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pairs = std::mem::take(&mut self.pending);
        let lefts: Vec<SourceRecord> = pairs.iter().map(|p| p.left.clone()).collect();
        let rights: Vec<SourceRecord> = pairs.iter().map(|p| p.right.clone()).collect();
        let (left, _) = self.left.decode(&lefts, None)?;
        let (right, _) = self.right.decode(&rights, None)?;
        let numbered = |batch: RecordBatch| -> Result<RecordBatch, StreamsError> {
            let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(PAIR_COLUMN, DataType::Int64, false));
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(0..batch.num_rows() as i64)));
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| StreamsError::SqlExecution(format!("internal: cannot number the join's pairs: {e}")))
        };
        for result in self.sql.run_with_lookup(vec![numbered(left)?], vec![numbered(right)?])? {
            let values = rows_as_json(&select_columns(&result, &self.value_columns, &self.value_names)?)?;
            let numbers = result
                .column(self.pair_column)
                .as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>()
                .cloned()
                .ok_or_else(|| StreamsError::SqlExecution("internal: the pair column is not BIGINT".into()))?;
            let keys = match self.partition_key_column {
                Some(column) => Some(key_texts(result.column(column))?),
                None => None,
            };
            for (row, value) in values.into_iter().enumerate() {
                let pair = usize::try_from(numbers.value(row))
                    .ok()
                    .and_then(|i| pairs.get(i))
                    .ok_or_else(|| StreamsError::SqlExecution("internal: a result row names no pair".into()))?;
                let key = match &keys {
                    Some(keys) => keys[row].clone().map(Bytes::from),
                    None => Some(Bytes::from(pair.group.clone())),
                };
                ctx.out.push(OutRecord {
                    topic: self.out_topic.clone(),
                    partition: None,
                    key,
                    value: Some(Bytes::from(value)),
                    timestamp_ms: pair.timestamp_ms,
                    kind: OutKind::Sink,
                });
            }
        }
        Ok(())
    }
}

/// The schema one side of an interval join shows the SELECT: its columns and the pair number.
pub(crate) fn numbered_schema(table: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(PAIR_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// The interval join's parts.
pub(crate) struct JoinSpec {
    /// Source partitions of the left and right topics.
    pub partitions: (usize, usize),
    pub left_topic: TopicName,
    pub right_topic: TopicName,
    pub store: String,
    pub left: Source,
    pub right: Source,
    pub lower_ms: i64,
    pub upper_ms: i64,
    pub select_sql: Arc<str>,
    pub out_topic: TopicName,
}

/// Adds the join stage: a source of both repartition topics, its store, the emission.
pub(crate) fn add_join_stage(b: &mut TopologyBuilder, spec: JoinSpec) {
    let node_name = b.name("SQL-INTERVAL-JOIN");
    let JoinSpec { partitions, left_topic, right_topic, store, left, right, lower_ms, upper_ms, select_sql, out_topic } =
        spec;
    let (sources, sink, stores) =
        (vec![left_topic.clone(), right_topic.clone()], out_topic.clone(), vec![store.clone()]);
    let build = Arc::new(move |tb: &mut TaskBuild<'_>| {
        let sql = BatchSql::plan_with_lookup_blocking(
            &select_sql,
            numbered_schema(&left.decoder.output_schema()),
            Some(numbered_schema(&right.decoder.output_schema())),
        )?;
        let output = sql.output_schema();
        let index = |name: &str| output.index_of(name).map_err(|e| StreamsError::SqlExecution(e.to_string()));
        let pair_column = index(PAIR_OUT_COLUMN)?;
        let partition_key_column = output.index_of(PARTITION_KEY_COLUMN).ok();
        let value_columns: Vec<usize> = (0..output.fields().len())
            .filter(|i| {
                *i != pair_column
                    && Some(*i) != partition_key_column
                    && !output.field(*i).name().starts_with("__spate_")
            })
            .collect();
        let value_names = value_columns.iter().map(|&i| output.field(i).name().clone()).collect();
        let left_name = left_topic.resolve(tb.application_id);
        let stage = Arc::new(Mutex::new(JoinStage {
            store: tb.kv_store(&store)?,
            left_topic: left_name.clone(),
            left: left.clone(),
            right: right.clone(),
            partitions,
            lower_ms,
            upper_ms,
            sql,
            state: None,
            pending: Vec::new(),
            out_topic: Arc::from(out_topic.resolve(tb.application_id)),
            value_columns,
            value_names,
            pair_column,
            partition_key_column,
        }));
        for topic in [left_name, right_topic.resolve(tb.application_id)] {
            let s = stage.clone();
            let src: SourceFn = Box::new(move |ctx, rec| lock(&s).record(ctx, rec));
            tb.sources.push((topic, src));
        }
        let s = stage.clone();
        tb.flushers.push(Box::new(move |ctx: &mut TaskContext| lock(&s).flush(ctx)));
        let s = stage.clone();
        tb.punctuators.push(Punctuator {
            kind: PunctuationType::WallClockTime,
            interval_ms: BATCH_LINGER_MS,
            next_ms: None,
            fire: Box::new(move |ctx, now_ms| {
                let mut stage = lock(&s);
                stage.flush(ctx)?;
                stage.idle(ctx, now_ms)
            }),
        });
        Ok(())
    });
    b.add(NodeDef {
        name: node_name,
        parents: Vec::new(),
        source_topics: sources,
        sink_topic: Some(sink),
        stores,
        joins: true,
        build,
    });
}
