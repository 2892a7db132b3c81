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

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use spate_client::ConsumerRecord;

use super::analyze::{
    GroupKey, KEY_COLUMN_PREFIX, PARTITION_KEY_COLUMN, SOURCE_KEY_COLUMN, SOURCE_TS_COLUMN, WINDOW_END,
    WINDOW_END_COLUMN, WINDOW_START,
};
use super::envelope::SourceRecord;
use super::exec::{event_times_ms, key_texts, rows_as_json, select_columns, BatchSql};
use super::window::{EventClock, SessionIndex, SessionInsert, TimeWindowing, Window};
use crate::processor::{OutKind, OutRecord, PunctuationType, Punctuator, TaskContext};
use crate::sql::format::{RawRecord, RecordDecoder};
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
                headers: &r.headers,
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
                headers: &[],
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
) {
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
    });
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

/// Sub-topology 0 of a windowed query: group key and event time per record, to the
/// repartition topic.
pub(crate) fn keying_stage(
    source: Source,
    group_keys: Vec<GroupKey>,
    time_column: String,
    repartition: TopicName,
) -> impl Fn(&mut TaskBuild<'_>) -> Result<BatchFn, StreamsError> + Send + Sync + 'static {
    move |tb| {
        let mut select: Vec<String> =
            group_keys.iter().enumerate().map(|(i, k)| format!("{} AS \"{KEY_COLUMN_PREFIX}{i}\"", k.sql)).collect();
        select.push(format!("\"{}\" AS \"__spate_time\"", time_column.replace('"', "\"\"")));
        let sql_text = format!("SELECT {} FROM {}", select.join(", "), super::analyze::INPUT_TABLE);
        let sql = BatchSql::plan_blocking(&sql_text, source.decoder.output_schema())?;
        let key_columns: Vec<usize> = (0..group_keys.len()).collect();
        let key_names: Vec<String> = group_keys.iter().map(|k| k.name.clone()).collect();
        let topic: Arc<str> = Arc::from(repartition.resolve(tb.application_id));
        let source = source.clone();
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
                        Some(ts) if ts >= 0 => ctx.out.push(OutRecord {
                            topic: topic.clone(),
                            partition: None,
                            key: Some(Bytes::from(key)),
                            value: Some(Bytes::from(record.encode())),
                            timestamp_ms: ts,
                            kind: OutKind::Sink,
                        }),
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
            Ok(())
        }) as BatchFn)
    }
}

/// What the window stage persists besides rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    stream_time_ms: i64,
    /// Every window ending at or before this was emitted (or had no rows).
    closed_through_ms: i64,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.stream_time_ms.to_be_bytes().to_vec();
        v.extend_from_slice(&self.closed_through_ms.to_be_bytes());
        v
    }

    fn decode(b: &[u8]) -> Result<Meta, StreamsError> {
        let bad = || StreamsError::SqlExecution("the continuous query's window store has a corrupt meta entry".into());
        let a: [u8; 8] = b.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        let c: [u8; 8] = b.get(8..16).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        Ok(Meta { stream_time_ms: i64::from_be_bytes(a), closed_through_ms: i64::from_be_bytes(c) })
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
    /// Loaded from the store at the first record or punctuation.
    state: Option<(EventClock, Meta)>,
    key_columns: Vec<usize>,
    key_names: Vec<String>,
    value_columns: Vec<usize>,
    value_names: Vec<String>,
    window_end_column: usize,
    /// `PARTITION BY`'s column: the output key instead of the group key's JSON.
    partition_key_column: Option<usize>,
}

impl WindowStage {
    fn load(&mut self) -> Result<(), StreamsError> {
        if self.state.is_some() {
            return Ok(());
        }
        let meta = match lock(&self.store).get(META_KEY)? {
            Some(b) => Meta::decode(&b)?,
            None => Meta { stream_time_ms: -1, closed_through_ms: i64::MIN },
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
        let clock = EventClock::new(meta.stream_time_ms, self.source.lateness_ms, self.source.idle_timeout_ms);
        self.state = Some((clock, meta));
        Ok(())
    }

    fn record(&mut self, ctx: &mut TaskContext, rec: &ConsumerRecord) -> Result<(), StreamsError> {
        self.load()?;
        let ts = rec.timestamp_ms;
        let Some(value) = rec.value.as_deref() else {
            ctx.counters.dropped_other += 1;
            return Ok(());
        };
        let source = SourceRecord::decode(value, &rec.topic)?;
        let (clock, _) = self.state.as_mut().expect("loaded");
        let watermark = clock.observe(ts, ctx.wall_clock_ms);
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
        self.load()?;
        let (clock, _) = self.state.as_mut().expect("loaded");
        let watermark = clock.idle_tick(wall_ms);
        self.advance(ctx, watermark)
    }

    /// Emits every window that closes at `watermark` and persists the new state.
    fn advance(&mut self, ctx: &mut TaskContext, watermark: i64) -> Result<(), StreamsError> {
        let (clock, meta) = self.state.as_mut().expect("loaded");
        let stream_time_ms = clock.stream_time_ms;
        let closed_through = meta.closed_through_ms;
        let due = match &self.windowing {
            Windowing::Time(w) => watermark > i64::MIN && watermark >= w.next_end_after(closed_through),
            Windowing::Session { .. } => watermark > closed_through,
        };
        let mut next = Meta { stream_time_ms, closed_through_ms: closed_through };
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
            *meta = next;
            lock(&self.store).put(&mut ctx.out, META_KEY.to_vec(), Some(next.encode()), stream_time_ms.max(0))?;
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
        if source.idle_timeout_ms.is_some() {
            let s = stage.clone();
            tb.punctuators.push(Punctuator {
                kind: PunctuationType::WallClockTime,
                interval_ms: IDLE_CHECK_MS,
                next_ms: None,
                fire: Box::new(move |ctx, now_ms| lock(&s).idle(ctx, now_ms)),
            });
        }
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
