//! `KStream`: a typed record stream and its stateless operators.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use super::{sink_record, source_node, Consumed, Data, Grouped, Produced, Repartitioned, StreamsBuilder};
use crate::dsl::aggregate::KGroupedStream;
use crate::processor::{
    Downstream, ProcessFn, Processor, ProcessorContext, PunctuationType, Punctuator, Record, TaskContext,
};
use crate::store::lock;
use crate::topology::{processor_node, NodeDef, NodeId, TaskBuild, TopicName};
use crate::StreamsError;

/// A stream of records (Kafka's `KStream<K, V>`). Cheap to clone; each operator adds a node.
pub struct KStream<K, V> {
    pub(crate) builder: StreamsBuilder,
    pub(crate) node: NodeId,
    /// The key was changed upstream (map, select_key, flat_map): a grouping or join must
    /// repartition first so that equal keys meet in one task.
    pub(crate) repartition_required: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        KStream {
            builder: self.builder.clone(),
            node: self.node,
            repartition_required: self.repartition_required,
            _types: PhantomData,
        }
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    pub(crate) fn new(builder: StreamsBuilder, node: NodeId, repartition_required: bool) -> Self {
        KStream { builder, node, repartition_required, _types: PhantomData }
    }

    /// Adds a one-input node after this stream.
    pub(crate) fn add<K2: Data, V2: Data, F>(&self, prefix: &str, key_changed: bool, make: F) -> KStream<K2, V2>
    where
        F: Fn(&mut TaskBuild<'_>, Downstream<K2, V2>) -> Result<ProcessFn<K, V>, StreamsError> + Send + Sync + 'static,
    {
        let mut b = self.builder.lock();
        let name = b.name(prefix);
        let node = processor_node(&mut b, name, vec![self.node], Vec::new(), make);
        drop(b);
        KStream::new(self.builder.clone(), node, self.repartition_required || key_changed)
    }

    /// Keeps records that satisfy `predicate`.
    pub fn filter(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KStream<K, V> {
        let predicate = Arc::new(predicate);
        self.add("KSTREAM-FILTER", false, move |_, mut ds| {
            let p = predicate.clone();
            Ok(Box::new(
                move |ctx: &mut TaskContext, r: Record<K, V>| {
                    if p(&r.key, &r.value) {
                        ds.forward(ctx, r)
                    } else {
                        Ok(())
                    }
                },
            ))
        })
    }

    /// Drops records that satisfy `predicate`.
    pub fn filter_not(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KStream<K, V> {
        self.filter(move |k, v| !predicate(k, v))
    }

    /// A new key and value per record. The key changes, so a later grouping or join
    /// repartitions.
    pub fn map<K2: Data, V2: Data>(&self, f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static) -> KStream<K2, V2> {
        let f = Arc::new(f);
        self.add("KSTREAM-MAP", true, move |_, mut ds| {
            let f = f.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                let (key, value) = f(r.key, r.value);
                ds.forward(ctx, Record::new(key, value, r.timestamp_ms))
            }))
        })
    }

    /// A new value per record; the key stays, so no repartition follows.
    pub fn map_values<V2: Data>(&self, f: impl Fn(V) -> V2 + Send + Sync + 'static) -> KStream<K, V2> {
        self.map_values_with_key(move |_, v| f(v))
    }

    /// As [`Self::map_values`], seeing the key (Kafka's `ValueMapperWithKey`).
    pub fn map_values_with_key<V2: Data>(&self, f: impl Fn(&K, V) -> V2 + Send + Sync + 'static) -> KStream<K, V2> {
        let f = Arc::new(f);
        self.add("KSTREAM-MAPVALUES", false, move |_, mut ds| {
            let f = f.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                let value = f(&r.key, r.value);
                ds.forward(ctx, Record::new(r.key, value, r.timestamp_ms))
            }))
        })
    }

    /// Zero or more records per record, with new keys.
    pub fn flat_map<K2: Data, V2: Data, I>(&self, f: impl Fn(K, V) -> I + Send + Sync + 'static) -> KStream<K2, V2>
    where
        I: IntoIterator<Item = (K2, V2)>,
    {
        let f = Arc::new(f);
        self.add("KSTREAM-FLATMAP", true, move |_, mut ds| {
            let f = f.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                for (key, value) in f(r.key, r.value) {
                    ds.forward(ctx, Record::new(key, value, r.timestamp_ms))?;
                }
                Ok(())
            }))
        })
    }

    /// Zero or more values per record, each with the record's key.
    pub fn flat_map_values<V2: Data, I>(&self, f: impl Fn(V) -> I + Send + Sync + 'static) -> KStream<K, V2>
    where
        I: IntoIterator<Item = V2>,
    {
        let f = Arc::new(f);
        self.add("KSTREAM-FLATMAPVALUES", false, move |_, mut ds| {
            let f = f.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                for value in f(r.value) {
                    ds.forward(ctx, Record::new(r.key.clone(), value, r.timestamp_ms))?;
                }
                Ok(())
            }))
        })
    }

    /// A new key computed from the record; the value stays.
    pub fn select_key<K2: Data>(&self, f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static) -> KStream<K2, V> {
        let f = Arc::new(f);
        self.add("KSTREAM-KEY-SELECT", true, move |_, mut ds| {
            let f = f.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                let key = f(&r.key, &r.value);
                ds.forward(ctx, Record::new(key, r.value, r.timestamp_ms))
            }))
        })
    }

    /// Calls `f` for each record and passes the record on.
    pub fn peek(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> KStream<K, V> {
        let f = Arc::new(f);
        self.add("KSTREAM-PEEK", false, move |_, mut ds| {
            let f = f.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                f(&r.key, &r.value);
                ds.forward(ctx, r)
            }))
        })
    }

    /// Calls `f` for each record (a terminal operation).
    pub fn foreach(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) {
        let _ = self.peek(f);
    }

    /// One stream of both streams' records (Kafka's `merge`).
    pub fn merge(&self, other: &KStream<K, V>) -> KStream<K, V> {
        let mut b = self.builder.lock();
        let name = b.name("KSTREAM-MERGE");
        let node = processor_node(&mut b, name, vec![self.node, other.node], Vec::new(), |_, mut ds| {
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| ds.forward(ctx, r)) as ProcessFn<K, V>)
        });
        drop(b);
        KStream::new(self.builder.clone(), node, self.repartition_required || other.repartition_required)
    }

    /// Splits the stream by predicates, each record going to the first branch it matches
    /// (Kafka's `split()`).
    pub fn split(&self) -> BranchedKStream<K, V> {
        BranchedKStream { stream: self.clone(), predicates: Vec::new(), branches: BTreeMap::new() }
    }

    /// Writes every record to `topic`.
    pub fn to(&self, topic: &str, produced: Produced<K, V>) {
        self.sink(TopicName::User(topic.to_string()), produced);
    }

    fn sink(&self, topic: TopicName, produced: Produced<K, V>) {
        let mut b = self.builder.lock();
        let name = b.name("KSTREAM-SINK");
        let id = b.nodes.len();
        let parent = self.node;
        let build_topic = topic.clone();
        let build = Arc::new(move |tb: &mut TaskBuild<'_>| {
            let topic: Arc<str> = Arc::from(build_topic.resolve(tb.application_id));
            let (key, value) = (produced.key.clone(), produced.value.clone());
            let _ = id;
            tb.push_child::<K, V>(
                parent,
                Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                    let out = sink_record(&key, &value, &topic, &r)?;
                    ctx.out.push(out);
                    Ok(())
                }),
            );
            Ok(())
        });
        b.add(NodeDef {
            name,
            parents: vec![parent],
            source_topics: Vec::new(),
            sink_topic: Some(topic),
            stores: Vec::new(),
            joins: false,
            build,
        });
    }

    /// Writes the stream to the internal topic `<application.id>-<name>-repartition` and reads
    /// it back, so that records are partitioned by their current key (Kafka's `repartition`).
    /// The topic gets the partition count of this stream's source topics.
    pub fn repartition(&self, repartitioned: Repartitioned<K, V>) -> KStream<K, V> {
        let name = repartitioned.name.clone().unwrap_or_else(|| self.builder.lock().name("KSTREAM-REPARTITION"));
        self.repartition_through(name, repartitioned)
    }

    pub(crate) fn repartition_through(&self, name: String, grouped: Grouped<K, V>) -> KStream<K, V> {
        let topic = TopicName::Repartition(name);
        self.sink(topic.clone(), Produced { key: grouped.key.clone(), value: grouped.value.clone() });
        let consumed = Consumed::with_refs(grouped.key, grouped.value);
        let node = source_node(&mut self.builder.lock(), vec![topic], consumed, "KSTREAM-SOURCE");
        KStream::new(self.builder.clone(), node, false)
    }

    /// Groups by the current key (repartitioning first if the key was changed upstream).
    pub fn group_by_key(&self, grouped: Grouped<K, V>) -> KGroupedStream<K, V> {
        KGroupedStream::new(self.clone(), grouped.key, grouped.value, grouped.name)
    }

    /// Groups by a new key; always repartitions (Kafka's `groupBy`).
    pub fn group_by<K2: Data>(
        &self,
        selector: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
        grouped: Grouped<K2, V>,
    ) -> KGroupedStream<K2, V> {
        self.select_key(selector).group_by_key(grouped)
    }

    /// A low-level processor with access to the stores named in `stores` and to punctuation
    /// (Kafka's `process`). `supplier` makes one processor per task.
    pub fn process<K2: Data, V2: Data, P>(
        &self,
        supplier: impl Fn(&mut ProcessorInit<'_, '_>) -> Result<P, StreamsError> + Send + Sync + 'static,
        stores: &[&str],
    ) -> KStream<K2, V2>
    where
        P: Processor<K, V, K2, V2> + 'static,
    {
        let mut b = self.builder.lock();
        let name = b.name("KSTREAM-PROCESSOR");
        let stores: Vec<String> = stores.iter().map(|s| s.to_string()).collect();
        let supplier = Arc::new(supplier);
        let node = processor_node(&mut b, name, vec![self.node], stores, move |tb, ds| {
            let mut init = ProcessorInit { tb, schedules: Vec::new() };
            let processor = supplier(&mut init)?;
            let schedules = std::mem::take(&mut init.schedules);
            let shared = Arc::new(std::sync::Mutex::new((processor, ds)));
            for (kind, interval_ms) in schedules {
                let shared = shared.clone();
                tb.punctuators.push(Punctuator {
                    kind,
                    interval_ms,
                    next_ms: None,
                    fire: Box::new(move |task: &mut TaskContext, now_ms| {
                        let mut g = lock(&shared);
                        let (p, ds) = &mut *g;
                        p.punctuate(&mut ProcessorContext { task, downstream: ds }, kind, now_ms)
                    }),
                });
            }
            Ok(Box::new(move |task: &mut TaskContext, r: Record<K, V>| {
                let mut g = lock(&shared);
                let (p, ds) = &mut *g;
                p.process(&mut ProcessorContext { task, downstream: ds }, r)
            }) as ProcessFn<K, V>)
        });
        drop(b);
        KStream::new(self.builder.clone(), node, true)
    }
}

/// What a processor supplier gets: the task's stores and punctuation scheduling.
pub struct ProcessorInit<'a, 'b> {
    pub(crate) tb: &'a mut TaskBuild<'b>,
    pub(crate) schedules: Vec<(PunctuationType, i64)>,
}

impl ProcessorInit<'_, '_> {
    /// Calls the processor's `punctuate` every `interval_ms` of stream time or wall-clock time.
    pub fn schedule(&mut self, interval_ms: i64, kind: PunctuationType) -> Result<(), StreamsError> {
        if interval_ms < 1 {
            return Err(StreamsError::Topology(format!("punctuation interval {interval_ms} ms must be at least 1 ms")));
        }
        self.schedules.push((kind, interval_ms));
        Ok(())
    }

    /// This task's key-value store `name` (declared with [`StreamsBuilder::add_key_value_store`]
    /// and listed in `process`'s stores).
    pub fn key_value_store<K, V>(
        &self,
        name: &str,
        key: impl crate::serdes::Serde<K> + Send + Sync + 'static,
        value: impl crate::serdes::Serde<V> + Send + Sync + 'static,
    ) -> Result<crate::KeyValueStore<K, V>, StreamsError> {
        Ok(crate::KeyValueStore { store: self.tb.kv_store(name)?, key: Arc::new(key), value: Arc::new(value) })
    }

    /// The task this processor belongs to.
    pub fn task_id(&self) -> crate::TaskId {
        self.tb.task_id
    }
}

type Predicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

/// The branches of a [`KStream::split`].
pub struct BranchedKStream<K, V> {
    stream: KStream<K, V>,
    predicates: Vec<Predicate<K, V>>,
    branches: BTreeMap<String, KStream<K, V>>,
}

impl<K: Data, V: Data> BranchedKStream<K, V> {
    /// Records matching `predicate` (and no earlier branch) go to the branch `name`.
    pub fn branch(mut self, name: &str, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        let earlier = self.predicates.clone();
        let predicate: Predicate<K, V> = Arc::new(predicate);
        self.predicates.push(predicate.clone());
        let branch = self.stream.filter(move |k, v| !earlier.iter().any(|p| p(k, v)) && predicate(k, v));
        self.branches.insert(name.to_string(), branch);
        self
    }

    /// Records that matched no branch go to `name`; returns all branches by name.
    pub fn default_branch(mut self, name: &str) -> BTreeMap<String, KStream<K, V>> {
        let all = self.predicates.clone();
        let branch = self.stream.filter(move |k, v| !all.iter().any(|p| p(k, v)));
        self.branches.insert(name.to_string(), branch);
        self.branches
    }

    /// The branches by name; records that matched none are dropped.
    pub fn no_default_branch(self) -> BTreeMap<String, KStream<K, V>> {
        self.branches
    }
}

impl<K, V> Consumed<K, V> {
    pub(crate) fn with_refs(key: crate::serdes::SerdeRef<K>, value: crate::serdes::SerdeRef<V>) -> Self {
        Consumed {
            key,
            value,
            timestamp: super::TimestampExtractor::Record,
            invalid_timestamp: super::InvalidTimestampPolicy::Fail,
        }
    }
}
