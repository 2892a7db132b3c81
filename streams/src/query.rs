//! Typed store access: [`KeyValueStore`] for processors (read and write), and the read-only
//! views of interactive queries ([`ReadOnlyKeyValueStore`], [`ReadOnlyWindowStore`]) over the
//! stores of every task this instance runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::processor::ProcessorContext;
use crate::serdes::SerdeRef;
use crate::store::{lock, LoggedKv, TaskStore};
use crate::{StreamsError, TaskId};

/// Most entries one `range`/`all` call returns, so that a query cannot exhaust memory.
pub const MAX_QUERY_ENTRIES: usize = 1_000_000;

/// A task's key-value store as a processor sees it.
pub struct KeyValueStore<K, V> {
    pub(crate) store: Arc<Mutex<LoggedKv>>,
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
}

impl<K, V> KeyValueStore<K, V> {
    pub fn get(&self, key: &K) -> Result<Option<V>, StreamsError> {
        let key = self.key.serialize(key)?;
        lock(&self.store).get(&key)?.map(|b| self.value.deserialize(&b)).transpose()
    }

    /// Puts (Some) or deletes (None); the change reaches the store and its changelog at the
    /// next commit.
    pub fn put<KO, VO>(
        &self,
        ctx: &mut ProcessorContext<'_, KO, VO>,
        key: &K,
        value: Option<&V>,
    ) -> Result<(), StreamsError> {
        let key = self.key.serialize(key)?;
        let value = value.map(|v| self.value.serialize(v)).transpose()?;
        let ts = ctx.task.record_timestamp_ms.max(0);
        lock(&self.store).put(&mut ctx.task.out, key, value, ts)
    }

    /// Entries in key-byte order, at most `limit`.
    pub fn all(&self, limit: usize) -> Result<Vec<(K, V)>, StreamsError> {
        let entries = lock(&self.store).range(None, None, limit.min(MAX_QUERY_ENTRIES))?;
        entries.into_iter().map(|(k, v)| Ok((self.key.deserialize(&k)?, self.value.deserialize(&v)?))).collect()
    }
}

/// The stores of the tasks this instance runs, by store name (for interactive queries).
pub(crate) type StoreRegistry = Mutex<BTreeMap<String, BTreeMap<TaskId, TaskStore>>>;

/// Read-only access to a key-value store across this instance's tasks (Kafka's
/// `ReadOnlyKeyValueStore`). Reads see updates not yet committed, as Kafka's caching stores do.
pub struct ReadOnlyKeyValueStore<K, V> {
    pub(crate) registry: Arc<StoreRegistry>,
    pub(crate) name: String,
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
}

impl<K, V> ReadOnlyKeyValueStore<K, V> {
    pub(crate) fn new(
        registry: Arc<StoreRegistry>,
        name: &str,
        key: impl crate::serdes::Serde<K> + Send + Sync + 'static,
        value: impl crate::serdes::Serde<V> + Send + Sync + 'static,
    ) -> Self {
        ReadOnlyKeyValueStore { registry, name: name.to_string(), key: Arc::new(key), value: Arc::new(value) }
    }

    fn stores(&self) -> Result<Vec<Arc<Mutex<LoggedKv>>>, StreamsError> {
        let registry = lock(&self.registry);
        let Some(tasks) = registry.get(&self.name) else {
            return Err(StreamsError::State(format!(
                "not hosting store '{}' now (no task of it is assigned to this instance, or it is restoring)",
                self.name
            )));
        };
        tasks
            .values()
            .map(|s| match s {
                TaskStore::Kv(kv) => Ok(kv.clone()),
                _ => Err(StreamsError::Topology(format!("store '{}' is not a key-value store", self.name))),
            })
            .collect()
    }

    /// The value of `key` in whichever local task holds it.
    pub fn get(&self, key: &K) -> Result<Option<V>, StreamsError> {
        let key = self.key.serialize(key)?;
        for store in self.stores()? {
            if let Some(v) = lock(&store).get(&key)? {
                return self.value.deserialize(&v).map(Some);
            }
        }
        Ok(None)
    }

    /// Entries with `from <= key < to` by key bytes (None: unbounded), at most
    /// `MAX_QUERY_ENTRIES` (1,000,000).
    pub fn range(&self, from: Option<&K>, to: Option<&K>) -> Result<Vec<(K, V)>, StreamsError> {
        let from = from.map(|k| self.key.serialize(k)).transpose()?;
        let to = to.map(|k| self.key.serialize(k)).transpose()?;
        let mut merged = BTreeMap::new();
        for store in self.stores()? {
            for (k, v) in lock(&store).range(from.as_deref(), to.as_deref(), MAX_QUERY_ENTRIES)? {
                merged.insert(k, v);
            }
        }
        merged
            .into_iter()
            .take(MAX_QUERY_ENTRIES)
            .map(|(k, v)| Ok((self.key.deserialize(&k)?, self.value.deserialize(&v)?)))
            .collect()
    }

    /// Every entry (at most `MAX_QUERY_ENTRIES` (1,000,000)).
    pub fn all(&self) -> Result<Vec<(K, V)>, StreamsError> {
        self.range(None, None)
    }

    /// Entries in the local tasks' stores.
    pub fn approximate_num_entries(&self) -> Result<u64, StreamsError> {
        let mut n = 0;
        for store in self.stores()? {
            n += lock(&store).store.approximate_num_entries()?;
        }
        Ok(n)
    }
}

/// Read-only access to a window store across this instance's tasks (Kafka's
/// `ReadOnlyWindowStore`).
pub struct ReadOnlyWindowStore<K, V> {
    pub(crate) registry: Arc<StoreRegistry>,
    pub(crate) name: String,
    pub(crate) key: SerdeRef<K>,
    pub(crate) value: SerdeRef<V>,
}

impl<K, V> ReadOnlyWindowStore<K, V> {
    pub(crate) fn new(
        registry: Arc<StoreRegistry>,
        name: &str,
        key: impl crate::serdes::Serde<K> + Send + Sync + 'static,
        value: impl crate::serdes::Serde<V> + Send + Sync + 'static,
    ) -> Self {
        ReadOnlyWindowStore { registry, name: name.to_string(), key: Arc::new(key), value: Arc::new(value) }
    }

    /// Windows of `key` that start in `[time_from_ms, time_to_ms]`, by start.
    pub fn fetch(&self, key: &K, time_from_ms: i64, time_to_ms: i64) -> Result<Vec<(i64, V)>, StreamsError> {
        let key = self.key.serialize(key)?;
        let registry = lock(&self.registry);
        let Some(tasks) = registry.get(&self.name) else {
            return Err(StreamsError::State(format!("not hosting store '{}' now", self.name)));
        };
        let mut merged = BTreeMap::new();
        for store in tasks.values() {
            let TaskStore::Window(ws) = store else {
                return Err(StreamsError::Topology(format!("store '{}' is not a window store", self.name)));
            };
            for (start, v) in lock(ws).fetch_range(&key, time_from_ms, time_to_ms)? {
                merged.insert(start, v);
            }
        }
        merged.into_iter().map(|(s, v)| Ok((s, self.value.deserialize(&v)?))).collect()
    }
}
