//! `KGroupedTable`: a table re-grouped by a new key, aggregated with an adder and a
//! subtractor (Kafka's `KTable.groupBy(...).aggregate(init, adder, subtractor)`).
//!
//! Each table update becomes two records on the repartition topic, partitioned by the new
//! key: the old row's (key, value) to subtract, then the new row's to add. The value carries a
//! trailing flag byte (0 subtract, 1 add), as Kafka's `ChangedSerializer` carries its flags.

use std::sync::Arc;

use super::aggregate::aggregate_node;
use super::{Data, Grouped, KStream, KTable, Materialized};
use crate::processor::{Change, ProcessFn, Record, TaskContext};
use crate::serdes::{I64Serde, Serde, SerdeRef};
use crate::topology::processor_node;
use crate::StreamsError;

/// A value with the add (true) or subtract (false) flag, as the repartition topic carries it.
struct FlaggedSerde<V>(SerdeRef<V>);

impl<V> Serde<(V, bool)> for FlaggedSerde<V> {
    fn serialize_into(&self, value: &(V, bool), out: &mut Vec<u8>) -> Result<(), StreamsError> {
        self.0.serialize_into(&value.0, out)?;
        out.push(u8::from(value.1));
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<(V, bool), StreamsError> {
        match bytes.split_last() {
            Some((&flag @ (0 | 1), value)) => Ok((self.0.deserialize(value)?, flag == 1)),
            _ => Err(StreamsError::deserialize("grouped-table change", "missing or bad trailing flag byte")),
        }
    }
}

/// A table grouped by a new key (Kafka's `KGroupedTable`).
pub struct KGroupedTable<K, V> {
    stream: KStream<K, (V, bool)>,
    key: SerdeRef<K>,
    value: SerdeRef<V>,
}

impl<K: Data, V: Data> KTable<K, V> {
    /// Re-groups the table's rows by `selector(key, value) -> (new key, new value)`; always
    /// repartitions (Kafka's `KTable.groupBy`).
    pub fn group_by<K2: Data, V2: Data>(
        &self,
        selector: impl Fn(&K, &V) -> (K2, V2) + Send + Sync + 'static,
        grouped: Grouped<K2, V2>,
    ) -> KGroupedTable<K2, V2> {
        let selector = Arc::new(selector);
        let mut b = self.builder.lock();
        let name = b.name("KTABLE-SELECT");
        let node = processor_node(&mut b, name, vec![self.node], Vec::new(), move |_, mut ds| {
            let selector = selector.clone();
            Ok(Box::new(move |ctx: &mut TaskContext, r: Record<K, Change<V>>| {
                if let Some(old) = &r.value.old {
                    let (k, v) = selector(&r.key, old);
                    ds.forward(ctx, Record::new(k, (v, false), r.timestamp_ms))?;
                }
                if let Some(new) = &r.value.new {
                    let (k, v) = selector(&r.key, new);
                    ds.forward(ctx, Record::new(k, (v, true), r.timestamp_ms))?;
                }
                Ok(())
            }) as ProcessFn<K, Change<V>>)
        });
        let repartition = grouped.name.clone().unwrap_or_else(|| b.name("KTABLE-AGGREGATE-STATE-STORE"));
        drop(b);
        let selected: KStream<K2, (V2, bool)> = KStream::new(self.builder.clone(), node, true);
        let flagged: SerdeRef<(V2, bool)> = Arc::new(FlaggedSerde(grouped.value.clone()));
        let stream =
            selected.repartition_through(repartition, Grouped { key: grouped.key.clone(), value: flagged, name: None });
        KGroupedTable { stream, key: grouped.key, value: grouped.value }
    }
}

impl<K: Data, V: Data> KGroupedTable<K, V> {
    /// Rows per new key: +1 per added row, -1 per removed one.
    pub fn count(&self, materialized: Materialized<i64>) -> Result<KTable<K, i64>, StreamsError> {
        let materialized = materialized.or_value_serde(Arc::new(I64Serde));
        self.aggregate(|| 0, |_, _, n| n + 1, |_, _, n| n - 1, materialized)
    }

    /// Combines rows with `adder(aggregate, value)` and removes them with
    /// `subtractor(aggregate, value)`.
    pub fn reduce(
        &self,
        adder: impl Fn(V, V) -> V + Send + Sync + 'static,
        subtractor: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> Result<KTable<K, V>, StreamsError> {
        let materialized = materialized.or_value_serde(self.value.clone());
        aggregate_node(&self.stream, self.key.clone(), materialized, move |_, (v, add), agg| match (agg, add) {
            (None, true) => Some(v),
            (Some(a), true) => Some(adder(a, v)),
            (Some(a), false) => Some(subtractor(a, v)),
            // Removing a row from nothing: nothing to change.
            (None, false) => None,
        })
    }

    /// Folds rows into an aggregate: `initializer()` for a new key, `adder(key, value, agg)`
    /// for an added row, `subtractor(key, value, agg)` for a removed one. The materialized
    /// value serde is required.
    pub fn aggregate<A: Data>(
        &self,
        initializer: impl Fn() -> A + Send + Sync + 'static,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        subtractor: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> Result<KTable<K, A>, StreamsError> {
        aggregate_node(&self.stream, self.key.clone(), materialized, move |k, (v, add), agg| {
            let agg = agg.unwrap_or_else(&initializer);
            Some(if add { adder(k, v, agg) } else { subtractor(k, v, agg) })
        })
    }
}
