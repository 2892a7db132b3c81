//! `GlobalKTable`: a table every instance holds whole (all partitions of its topic), joined
//! with streams by a key computed from each record, so the stream needs no co-partitioning.

use std::marker::PhantomData;
use std::sync::Arc;

use super::{Consumed, Data, KStream, Materialized, StreamsBuilder};
use crate::processor::{Downstream, ProcessFn, Record, TaskContext};
use crate::serdes::SerdeRef;
use crate::store::lock;
use crate::topology::{processor_node, GlobalDef};

/// A global table (Kafka's `GlobalKTable<K, V>`): a store of the latest value per key of all
/// partitions of its topic, kept by each instance's global thread, which reads the topic to
/// its end before the stream threads start and follows it afterwards. The topic itself is the
/// store's changelog.
pub struct GlobalKTable<K, V> {
    pub(crate) store: String,
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> GlobalKTable<K, V> {
    /// The store's name, for interactive queries.
    pub fn queryable_store_name(&self) -> &str {
        &self.store
    }
}

impl StreamsBuilder {
    /// A global table of `topic` (Kafka's `builder.globalTable`).
    pub fn global_table<K: Data, V: Data>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
        materialized: Materialized<V>,
    ) -> GlobalKTable<K, V> {
        let mut b = self.lock();
        let store = materialized.name.clone().unwrap_or_else(|| b.name("GLOBALKTABLE-STATE-STORE"));
        b.globals.push(GlobalDef { topic: topic.to_string(), store: store.clone(), in_memory: materialized.in_memory });
        let value = materialized.value.unwrap_or(consumed.value);
        GlobalKTable { store, key: consumed.key, value, _types: PhantomData }
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Each record joined with the global table's value under `key_mapper(key, value)`;
    /// records without one are dropped (Kafka's `join(GlobalKTable, …)`).
    pub fn join_global<GK: Data, GV: Data, VR: Data>(
        &self,
        table: &GlobalKTable<GK, GV>,
        key_mapper: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(&V, &GV) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.lookup_global(table, "KSTREAM-JOIN-GLOBAL", key_mapper, move |v, g| g.map(|g| joiner(v, g)))
    }

    /// As [`Self::join_global`], keeping records without a match (the joiner gets `None`).
    pub fn left_join_global<GK: Data, GV: Data, VR: Data>(
        &self,
        table: &GlobalKTable<GK, GV>,
        key_mapper: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&GV>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.lookup_global(table, "KSTREAM-LEFTJOIN-GLOBAL", key_mapper, move |v, g| Some(joiner(v, g)))
    }

    fn lookup_global<GK: Data, GV: Data, VR: Data>(
        &self,
        table: &GlobalKTable<GK, GV>,
        prefix: &str,
        key_mapper: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&GV>) -> Option<VR> + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        let (store, key_serde, value_serde) = (table.store.clone(), table.key.clone(), table.value.clone());
        let (key_mapper, joiner) = (Arc::new(key_mapper), Arc::new(joiner));
        let mut b = self.builder.lock();
        let name = b.name(prefix);
        let node = processor_node(&mut b, name, vec![self.node], Vec::new(), move |tb, mut ds: Downstream<K, VR>| {
            let global = tb.global_store(&store)?;
            let (key_serde, value_serde, key_mapper, joiner) =
                (key_serde.clone(), value_serde.clone(), key_mapper.clone(), joiner.clone());
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                let gk = key_serde.serialize(&key_mapper(&r.key, &r.value))?;
                let found = lock(&global).get(&gk)?;
                let gv = found.map(|b| value_serde.deserialize(&b)).transpose()?;
                match joiner(&r.value, gv.as_ref()) {
                    Some(joined) => ds.forward(ctx, Record::new(r.key, joined, r.timestamp_ms)),
                    None => Ok(()),
                }
            }) as ProcessFn<K, V>)
        });
        drop(b);
        KStream::new(self.builder.clone(), node, self.repartition_required)
    }
}
