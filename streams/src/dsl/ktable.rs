//! `KTable`: a changelog stream read as a table (the latest value per key).

use std::marker::PhantomData;
use std::sync::Arc;

use super::{Data, KStream, StreamsBuilder};
use crate::processor::{Change, Downstream, ProcessFn, Record, TaskContext};
use crate::serdes::SerdeRef;
use crate::topology::{processor_node, NodeId, TaskBuild};
use crate::StreamsError;

/// A table (Kafka's `KTable<K, V>`): records are updates `Change { new, old }` per key.
pub struct KTable<K, V> {
    pub(crate) builder: StreamsBuilder,
    pub(crate) node: NodeId,
    /// The key-value store holding this table, when it is materialized (joins look it up).
    pub(crate) store: Option<String>,
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KTable<K, V> {
    fn clone(&self) -> Self {
        KTable {
            builder: self.builder.clone(),
            node: self.node,
            store: self.store.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Data, V: Data> KTable<K, V> {
    pub(crate) fn new(
        builder: StreamsBuilder,
        node: NodeId,
        store: Option<String>,
        key: SerdeRef<K>,
        value: SerdeRef<V>,
    ) -> Self {
        KTable { builder, node, store, key, value, _types: PhantomData }
    }

    /// The name of the store that materializes this table, for interactive queries.
    pub fn queryable_store_name(&self) -> Option<&str> {
        self.store.as_deref()
    }

    fn add<V2: Data, F>(&self, prefix: &str, value: SerdeRef<V2>, make: F) -> KTable<K, V2>
    where
        F: Fn(&mut TaskBuild<'_>, Downstream<K, Change<V2>>) -> Result<ProcessFn<K, Change<V>>, StreamsError>
            + Send
            + Sync
            + 'static,
    {
        let mut b = self.builder.lock();
        let name = b.name(prefix);
        let node = processor_node(&mut b, name, vec![self.node], Vec::new(), make);
        drop(b);
        KTable::new(self.builder.clone(), node, None, self.key.clone(), value)
    }

    /// Keeps rows that satisfy `predicate`; a row that stops satisfying it is deleted
    /// downstream (Kafka's `KTable.filter`).
    pub fn filter(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KTable<K, V> {
        let predicate = Arc::new(predicate);
        self.add("KTABLE-FILTER", self.value.clone(), move |_, mut ds| {
            let p = predicate.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V>>| {
                let keep = |v: Option<V>| v.filter(|v| p(&r.key, v));
                let change = Change { new: keep(r.value.new), old: keep(r.value.old) };
                if change.new.is_none() && change.old.is_none() {
                    return Ok(());
                }
                ds.forward(ctx, Record::new(r.key, change, r.timestamp_ms))
            }))
        })
    }

    pub fn filter_not(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KTable<K, V> {
        self.filter(move |k, v| !predicate(k, v))
    }

    /// A new value per row; `serde` encodes the new values where they are written.
    pub fn map_values<V2: Data>(
        &self,
        f: impl Fn(&V) -> V2 + Send + Sync + 'static,
        serde: impl crate::serdes::Serde<V2> + Send + Sync + 'static,
    ) -> KTable<K, V2> {
        let f = Arc::new(f);
        self.add("KTABLE-MAPVALUES", Arc::new(serde), move |_, mut ds| {
            let f = f.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V>>| {
                let change =
                    Change { new: r.value.new.as_ref().map(|v| f(v)), old: r.value.old.as_ref().map(|v| f(v)) };
                ds.forward(ctx, Record::new(r.key, change, r.timestamp_ms))
            }))
        })
    }

    /// The table's updates as a stream of new values; deletions are dropped (use
    /// [`Self::to_change_stream`] to keep them as `None`).
    pub fn to_stream(&self) -> KStream<K, V> {
        let mut b = self.builder.lock();
        let name = b.name("KTABLE-TOSTREAM");
        let node = processor_node(&mut b, name, vec![self.node], Vec::new(), |_, mut ds: Downstream<K, V>| {
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V>>| match r.value.new {
                Some(v) => ds.forward(ctx, Record::new(r.key, v, r.timestamp_ms)),
                None => Ok(()),
            }) as ProcessFn<K, Change<V>>)
        });
        drop(b);
        KStream::new(self.builder.clone(), node, false)
    }

    /// The table's updates as a stream, deletions as `None` (write them with a
    /// [`NullableSerde`](crate::serdes::NullableSerde) to get tombstones).
    pub fn to_change_stream(&self) -> KStream<K, Option<V>> {
        let mut b = self.builder.lock();
        let name = b.name("KTABLE-TOSTREAM");
        let node = processor_node(&mut b, name, vec![self.node], Vec::new(), |_, mut ds: Downstream<K, Option<V>>| {
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V>>| {
                ds.forward(ctx, Record::new(r.key, r.value.new, r.timestamp_ms))
            }) as ProcessFn<K, Change<V>>)
        });
        drop(b);
        KStream::new(self.builder.clone(), node, false)
    }
}
