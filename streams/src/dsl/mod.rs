//! The DSL: [`StreamsBuilder`] → [`KStream`] / [`KTable`] → grouped and windowed aggregations
//! and joins, as in Kafka Streams, with serdes passed where bytes are read or written
//! ([`Consumed`], [`Produced`], [`Grouped`], [`Materialized`]).

mod aggregate;
mod fk_join;
mod global;
mod grouped_table;
mod join;
mod kstream;
mod ktable;
mod sliding;
pub(crate) mod suppress;

use std::sync::{Arc, Mutex};

pub use aggregate::{EmitStrategy, KGroupedStream, SessionWindowedKStream, TimeWindowedKStream};
pub use global::GlobalKTable;
pub use grouped_table::KGroupedTable;
pub use join::StreamJoined;
pub use kstream::{BranchedKStream, KStream, ProcessorInit};
pub use ktable::KTable;
pub use sliding::SlidingWindowedKStream;

use crate::processor::{shared, Downstream, ProcessFn, Record, TaskContext};
use crate::serdes::{Serde, SerdeRef};
use crate::store::{StoreSpec, StoreType};
use crate::topology::{DeserializationHandler, NodeDef, NodeId, TaskBuild, TopicName, Topology, TopologyBuilder};
use crate::StreamsError;

/// What every key and value type of the DSL must be: records are cloned when a node has
/// several children, and tasks move between threads.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}

/// A custom timestamp extractor: (key, value, record timestamp) → event time in ms.
pub type ExtractFn<K, V> = Arc<dyn Fn(&K, &V, i64) -> i64 + Send + Sync>;

/// Where a record's event time comes from (Kafka's `TimestampExtractor`).
pub enum TimestampExtractor<K, V> {
    /// The record's own timestamp (Kafka's default, `FailOnInvalidTimestamp`).
    Record,
    /// Processing time (`WallclockTimestampExtractor`).
    WallClock,
    /// Computed from the record, e.g. a field of the value; gets the record's timestamp too.
    Custom(ExtractFn<K, V>),
}

impl<K, V> Clone for TimestampExtractor<K, V> {
    fn clone(&self) -> Self {
        match self {
            TimestampExtractor::Record => TimestampExtractor::Record,
            TimestampExtractor::WallClock => TimestampExtractor::WallClock,
            TimestampExtractor::Custom(f) => TimestampExtractor::Custom(f.clone()),
        }
    }
}

/// What happens to a record whose extracted timestamp is negative (invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidTimestampPolicy {
    /// Stop the application (`FailOnInvalidTimestamp`, Kafka's default).
    Fail,
    /// Skip and count it (`LogAndSkipOnInvalidTimestamp`).
    Skip,
    /// Use the task's stream time instead (`UsePartitionTimeOnInvalidTimestamp`).
    UseStreamTime,
}

/// How a source reads a topic (Kafka's `Consumed`).
pub struct Consumed<K, V> {
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
    pub(crate) timestamp: TimestampExtractor<K, V>,
    pub(crate) invalid_timestamp: InvalidTimestampPolicy,
}

impl<K, V> Consumed<K, V> {
    pub fn with(key: impl Serde<K> + Send + Sync + 'static, value: impl Serde<V> + Send + Sync + 'static) -> Self {
        Consumed {
            key: Arc::new(key),
            value: Arc::new(value),
            timestamp: TimestampExtractor::Record,
            invalid_timestamp: InvalidTimestampPolicy::Fail,
        }
    }

    pub fn with_timestamp_extractor(mut self, extractor: TimestampExtractor<K, V>) -> Self {
        self.timestamp = extractor;
        self
    }

    pub fn with_invalid_timestamp_policy(mut self, policy: InvalidTimestampPolicy) -> Self {
        self.invalid_timestamp = policy;
        self
    }
}

/// How a sink writes a topic (Kafka's `Produced`). Records go to the partition murmur2 of the
/// key bytes picks (Kafka's default partitioner), so keyed output is co-partitioned with other
/// Kafka producers' output.
pub struct Produced<K, V> {
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
}

impl<K, V> Produced<K, V> {
    pub fn with(key: impl Serde<K> + Send + Sync + 'static, value: impl Serde<V> + Send + Sync + 'static) -> Self {
        Produced { key: Arc::new(key), value: Arc::new(value) }
    }
}

/// Serdes for a grouping, and the name of its repartition topic when one is needed (Kafka's
/// `Grouped`).
pub struct Grouped<K, V> {
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
    pub(crate) name: Option<String>,
}

impl<K, V> Grouped<K, V> {
    pub fn with(key: impl Serde<K> + Send + Sync + 'static, value: impl Serde<V> + Send + Sync + 'static) -> Self {
        Grouped { key: Arc::new(key), value: Arc::new(value), name: None }
    }

    /// Names the repartition topic `<application.id>-<name>-repartition`.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Serdes for an explicit repartition (Kafka's `Repartitioned`).
pub type Repartitioned<K, V> = Grouped<K, V>;

/// A store's name, its value serde and where it lives (Kafka's `Materialized`). Without a name
/// the store gets a generated one (and cannot be queried by a name known in advance).
pub struct Materialized<V> {
    pub(crate) name: Option<String>,
    pub(crate) value: Option<SerdeRef<V>>,
    pub(crate) logging: bool,
    pub(crate) in_memory: bool,
}

impl<V> Materialized<V> {
    /// A store named `name` (queryable as such; its changelog is
    /// `<application.id>-<name>-changelog`).
    pub fn named(name: impl Into<String>) -> Self {
        Materialized { name: Some(name.into()), value: None, logging: true, in_memory: false }
    }

    /// A store with a generated name.
    pub fn unnamed() -> Self {
        Materialized { name: None, value: None, logging: true, in_memory: false }
    }

    /// The serde of the stored values (needed by `aggregate` and by tables of new types).
    pub fn with_value_serde(mut self, serde: impl Serde<V> + Send + Sync + 'static) -> Self {
        self.value = Some(Arc::new(serde));
        self
    }

    /// `serde` unless a value serde was given.
    pub(crate) fn or_value_serde(self, serde: SerdeRef<V>) -> Self {
        Materialized { value: Some(self.value.unwrap_or(serde)), ..self }
    }

    /// No changelog topic: the store is not restored after a crash or a move (Kafka's
    /// `withLoggingDisabled`).
    pub fn with_logging_disabled(mut self) -> Self {
        self.logging = false;
        self
    }

    /// Keep the store in memory instead of on disk (`Stores.inMemoryKeyValueStore`); with
    /// logging it is restored from its changelog at start.
    pub fn in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }
}

/// Builds a [`Topology`] with the DSL (Kafka's `StreamsBuilder`).
#[derive(Clone, Default)]
pub struct StreamsBuilder {
    pub(crate) inner: Arc<Mutex<TopologyBuilder>>,
}

impl StreamsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, TopologyBuilder> {
        crate::store::lock(&self.inner)
    }

    /// A stream of the records of `topics` (Kafka's `builder.stream`). Records with a null value
    /// are skipped unless the value serde reads null (e.g. [`NullableSerde`]).
    ///
    /// [`NullableSerde`]: crate::serdes::NullableSerde
    pub fn stream<K: Data, V: Data>(&self, topics: &[&str], consumed: Consumed<K, V>) -> KStream<K, V> {
        let topics: Vec<TopicName> = topics.iter().map(|t| TopicName::User(t.to_string())).collect();
        let node = source_node(&mut self.lock(), topics, consumed, "KSTREAM-SOURCE");
        KStream::new(self.clone(), node, false)
    }

    /// A table of the latest value per key of `topic` (Kafka's `builder.table`): a null value
    /// deletes the key. The table is materialized in a store with a changelog.
    pub fn table<K: Data, V: Data>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
        materialized: Materialized<V>,
    ) -> Result<KTable<K, V>, StreamsError> {
        let key_serde = consumed.key.clone();
        let value_serde = materialized.value.clone().unwrap_or_else(|| consumed.value.clone());
        let mut b = self.lock();
        let store = materialized.name.clone().unwrap_or_else(|| b.name("KTABLE-SOURCE-STATE-STORE"));
        b.add_store(StoreSpec {
            name: store.clone(),
            store_type: StoreType::KeyValue,
            logging: materialized.logging,
            in_memory: materialized.in_memory,
        })?;
        let source = table_source_node(&mut b, TopicName::User(topic.to_string()), consumed, store.clone());
        drop(b);
        Ok(KTable::new(self.clone(), source, Some(store), key_serde, value_serde))
    }

    /// Declares a key-value store for processors added with [`KStream::process`] (Kafka's
    /// `addStateStore`); list its name in `process`'s stores to use it. With `logging` it has
    /// a changelog topic and is restored like the DSL's stores.
    pub fn add_key_value_store(&self, name: &str, logging: bool, in_memory: bool) -> Result<(), StreamsError> {
        self.lock().add_store(StoreSpec { name: name.to_string(), store_type: StoreType::KeyValue, logging, in_memory })
    }

    /// Sends records that were dropped as late (beyond their window's grace) to `topic`,
    /// with their original key and value bytes, besides counting them (beyond Kafka Streams,
    /// which only counts them).
    pub fn late_records_topic(&self, topic: impl Into<String>) {
        self.lock().late_records_topic = Some(topic.into());
    }

    /// The topology built so far; checks it (every store known, no topic read twice).
    pub fn build(&self) -> Result<Topology, StreamsError> {
        let builder = std::mem::take(&mut *self.lock());
        Topology::new(builder)
    }
}

/// Extracts a record's event time per the consumed settings; None: skip the record.
fn event_time<K, V>(
    consumed: &TimestampExtractor<K, V>,
    policy: InvalidTimestampPolicy,
    ctx: &mut TaskContext,
    key: &K,
    value: &V,
    record_ms: i64,
) -> Result<Option<i64>, StreamsError> {
    let ts = match consumed {
        TimestampExtractor::Record => record_ms,
        TimestampExtractor::WallClock => ctx.wall_clock_ms,
        TimestampExtractor::Custom(f) => f(key, value, record_ms),
    };
    if ts >= 0 {
        return Ok(Some(ts));
    }
    match policy {
        InvalidTimestampPolicy::Fail => Err(StreamsError::InvalidRecordTimestamp {
            topic: ctx.topic.to_string(),
            partition: ctx.partition,
            offset: ctx.offset,
            timestamp_ms: ts,
        }),
        InvalidTimestampPolicy::Skip => {
            ctx.counters.dropped_other += 1;
            Ok(None)
        }
        InvalidTimestampPolicy::UseStreamTime => Ok(Some(ctx.stream_time_ms.max(0))),
    }
}

/// What a source does with a record it cannot decode.
fn on_bad_record(
    handler: &DeserializationHandler,
    ctx: &mut TaskContext,
    record: &spate_client::ConsumerRecord,
    err: StreamsError,
) -> Result<(), StreamsError> {
    match handler {
        DeserializationHandler::LogAndFail => Err(StreamsError::BadInput {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            reason: err.to_string(),
        }),
        DeserializationHandler::LogAndContinue => {
            tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, error = %err,
                "skipping a record that does not deserialize (default.deserialization.exception.handler=LogAndContinue)");
            ctx.counters.dropped_other += 1;
            Ok(())
        }
        DeserializationHandler::DeadLetterQueue(topic) => {
            ctx.counters.dropped_other += 1;
            ctx.out.push(crate::processor::OutRecord {
                topic: Arc::from(topic.as_str()),
                partition: None,
                key: record.key.clone(),
                value: record.value.clone(),
                timestamp_ms: record.timestamp_ms,
                kind: crate::processor::OutKind::Sink,
            });
            Ok(())
        }
    }
}

pub(crate) fn source_node<K: Data, V: Data>(
    b: &mut TopologyBuilder,
    topics: Vec<TopicName>,
    consumed: Consumed<K, V>,
    prefix: &str,
) -> NodeId {
    let id = b.nodes.len();
    let name = b.name(prefix);
    let Consumed { key, value, timestamp, invalid_timestamp } = consumed;
    let build_topics = topics.clone();
    let build = Arc::new(move |tb: &mut TaskBuild<'_>| {
        let children = take::<K, V>(tb, id)?;
        let downstream = Downstream::new(children);
        let f: ProcessFn<K, V> = {
            let mut downstream = downstream;
            Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| downstream.forward(ctx, r))
        };
        let parts = shared(f, build_topics.len());
        for (topic, mut part) in build_topics.iter().zip(parts) {
            let (key, value, timestamp) = (key.clone(), value.clone(), timestamp.clone());
            let handler = tb.deserialization_handler.clone();
            let source: crate::topology::SourceFn = Box::new(move |ctx, rec| {
                let k = match key.deserialize_nullable(rec.key.as_deref()) {
                    Ok(k) => k,
                    Err(e) => return on_bad_record(&handler, ctx, rec, e),
                };
                let v = match value.deserialize_nullable(rec.value.as_deref()) {
                    Ok(v) => v,
                    // A tombstone on a stream whose serde has no null: nothing to process.
                    Err(_) if rec.value.is_none() => return Ok(()),
                    Err(e) => return on_bad_record(&handler, ctx, rec, e),
                };
                let Some(ts) = event_time(&timestamp, invalid_timestamp, ctx, &k, &v, rec.timestamp_ms)? else {
                    return Ok(());
                };
                ctx.record_timestamp_ms = ts;
                ctx.stream_time_ms = ctx.stream_time_ms.max(ts);
                part(ctx, Record::new(k, v, ts))
            });
            tb.sources.push((topic.resolve(tb.application_id), source));
        }
        Ok(())
    });
    b.add(NodeDef {
        name,
        parents: Vec::new(),
        source_topics: topics,
        sink_topic: None,
        stores: Vec::new(),
        joins: false,
        build,
    })
}

/// A table source: materializes the latest value per key and forwards changes.
fn table_source_node<K: Data, V: Data>(
    b: &mut TopologyBuilder,
    topic: TopicName,
    consumed: Consumed<K, V>,
    store: String,
) -> NodeId {
    let id = b.nodes.len();
    let name = b.name("KTABLE-SOURCE");
    let Consumed { key, value, timestamp, invalid_timestamp } = consumed;
    let build_topic = topic.clone();
    let build_store = store.clone();
    let build = Arc::new(move |tb: &mut TaskBuild<'_>| {
        let mut downstream = Downstream::<K, Change<V>>::new(take::<K, Change<V>>(tb, id)?);
        let store = tb.kv_store(&build_store)?;
        let (key, value, timestamp) = (key.clone(), value.clone(), timestamp.clone());
        let handler = tb.deserialization_handler.clone();
        let source: crate::topology::SourceFn = Box::new(move |ctx, rec| {
            let Some(key_bytes) = rec.key.as_deref() else {
                // Kafka's table sources skip null keys: there is nothing to update.
                ctx.counters.dropped_other += 1;
                return Ok(());
            };
            let k = match key.deserialize(key_bytes) {
                Ok(k) => k,
                Err(e) => return on_bad_record(&handler, ctx, rec, e),
            };
            let new = match rec.value.as_deref() {
                None => None,
                Some(bytes) => match value.deserialize(bytes) {
                    Ok(v) => Some(v),
                    Err(e) => return on_bad_record(&handler, ctx, rec, e),
                },
            };
            let ts = match &new {
                Some(v) => match event_time(&timestamp, invalid_timestamp, ctx, &k, v, rec.timestamp_ms)? {
                    Some(ts) => ts,
                    None => return Ok(()),
                },
                None => rec.timestamp_ms.max(0),
            };
            ctx.record_timestamp_ms = ts;
            ctx.stream_time_ms = ctx.stream_time_ms.max(ts);
            let old = {
                let mut s = crate::store::lock(&store);
                let old = s.get(key_bytes)?;
                s.put(&mut ctx.out, key_bytes.to_vec(), rec.value.as_ref().map(|v| v.to_vec()), ts)?;
                old
            };
            let old = old.map(|o| value.deserialize(&o)).transpose()?;
            if old.is_none() && new.is_none() {
                return Ok(());
            }
            downstream.forward(ctx, Record::new(k, Change { new, old }, ts))
        });
        tb.sources.push((build_topic.resolve(tb.application_id), source));
        Ok(())
    });
    b.add(NodeDef {
        name,
        parents: Vec::new(),
        source_topics: vec![topic],
        sink_topic: None,
        stores: vec![store],
        joins: false,
        build,
    })
}

pub use crate::processor::Change;

/// Takes a node's children in a task build (re-exported for the DSL modules).
pub(crate) fn take<K: 'static, V: 'static>(
    tb: &mut TaskBuild<'_>,
    id: NodeId,
) -> Result<Vec<ProcessFn<K, V>>, StreamsError> {
    tb.take_children::<K, V>(id)
}

/// Serializes a key and value for a sink.
pub(crate) fn sink_record<K, V>(
    key_serde: &SerdeRef<K>,
    value_serde: &SerdeRef<V>,
    topic: &Arc<str>,
    r: &Record<K, V>,
) -> Result<crate::processor::OutRecord, StreamsError> {
    Ok(crate::processor::OutRecord {
        topic: topic.clone(),
        partition: None,
        key: key_serde.serialize_nullable(&r.key)?.map(bytes::Bytes::from),
        value: value_serde.serialize_nullable(&r.value)?.map(bytes::Bytes::from),
        timestamp_ms: r.timestamp_ms,
        kind: crate::processor::OutKind::Sink,
    })
}
