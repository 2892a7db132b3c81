//! [`TopologyTestDriver`]: runs a topology in-process without a broker (Kafka's
//! `TopologyTestDriver`), for unit tests of applications and of the DSL itself. Every topic has
//! one partition; records written to repartition topics are fed back at once; after each
//! piped record the driver commits (held-back aggregate updates are forwarded, store buffers
//! written), as Kafka's does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use spate_client::ConsumerRecord;

use crate::processor::OutRecord;
use crate::query::{ReadOnlyKeyValueStore, ReadOnlyWindowStore, StoreRegistry};
use crate::runtime::{open_globals, Task, TaskDir, GLOBAL_TASK as GLOBAL_TASK_ID};
use crate::serdes::Serde;
use crate::state::directory::StateDirectory;
use crate::store::lock;
use crate::topology::GlobalStore;
use crate::{StreamsConfig, StreamsError, TaskId, Topology};

/// Most repartition hops one piped record may cause, so a topology that feeds itself cannot
/// loop forever.
const MAX_ROUNDS: usize = 1_000;

/// An output record: key and value bytes (None: null) and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp_ms: i64,
}

/// Runs a topology on one partition per topic, in the calling thread.
pub struct TopologyTestDriver {
    topology: Arc<Topology>,
    application_id: String,
    tasks: BTreeMap<u32, Task>,
    next_offset: HashMap<String, i64>,
    outputs: HashMap<String, VecDeque<TestRecord>>,
    wall_clock_ms: i64,
    registry: Arc<StoreRegistry>,
    /// Global tables' stores by topic.
    globals_by_topic: HashMap<String, GlobalStore>,
    _global_lock: Option<crate::state::directory::TaskDirLock>,
}

impl TopologyTestDriver {
    /// Opens every sub-topology's task for partition 0, with stores under `config.state_dir`.
    pub fn new(topology: Topology, config: &StreamsConfig) -> Result<Self, StreamsError> {
        config.validate()?;
        let topology = Arc::new(topology);
        let state_dir = StateDirectory::new(&config.state_dir, &config.application_id)?;
        let mut tasks = BTreeMap::new();
        let registry: Arc<StoreRegistry> = Arc::default();
        let (globals, global_lock) = open_globals(&topology, &state_dir)?;
        let mut globals_by_topic = HashMap::new();
        for g in &topology.globals {
            let store = globals[&g.store].clone();
            lock(&registry)
                .entry(g.store.clone())
                .or_default()
                .insert(GLOBAL_TASK_ID, crate::store::TaskStore::Kv(store.clone()));
            globals_by_topic.insert(g.topic.clone(), store);
        }
        for st in &topology.subtopologies {
            let id = TaskId { subtopology: st.id, partition: 0 };
            let name = id.to_string();
            let lock = if st.stores.is_empty() { None } else { Some(state_dir.lock_task(&name)?) };
            state_dir.wipe_task(&name)?;
            let dir = TaskDir { path: state_dir.task_dir(&name)?, lock };
            let inputs: Vec<String> = st.source_topics.iter().map(|t| t.resolve(&config.application_id)).collect();
            let late = topology.late_records_topic.as_deref().map(Arc::from);
            let mut task = Task::open(
                &topology,
                st,
                id,
                &config.application_id,
                dir,
                &inputs,
                config.statestore_cache_max_bytes,
                &config.deserialization_handler,
                &globals,
                late,
            )?;
            let mut r = crate::store::lock(&registry);
            for (store, handle) in &task.stores {
                r.entry(store.clone()).or_default().insert(id, handle.clone());
            }
            drop(r);
            // Wall-clock punctuations count from the driver's start (time 0), as Kafka's
            // count from when they are scheduled.
            task.punctuate_wall_clock(0)?;
            tasks.insert(st.id, task);
        }
        Ok(TopologyTestDriver {
            topology,
            application_id: config.application_id.clone(),
            tasks,
            next_offset: HashMap::new(),
            outputs: HashMap::new(),
            wall_clock_ms: 0,
            registry,
            globals_by_topic,
            _global_lock: global_lock,
        })
    }

    /// Feeds one record to `topic` and processes everything it causes.
    pub fn pipe_input(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        self.feed(topic, key.map(Bytes::copy_from_slice), value.map(Bytes::copy_from_slice), timestamp_ms)?;
        self.run()?;
        // Commit until quiet: what one task releases may reach a downstream task's cache.
        for _ in 0..MAX_ROUNDS {
            let mut released = false;
            for task in self.tasks.values_mut() {
                task.prepare_commit()?;
                released |= task.ctx.out.iter().any(|o| o.kind != crate::processor::OutKind::Changelog);
            }
            self.run()?;
            if !released {
                return Ok(());
            }
        }
        Err(StreamsError::Topology(format!("a piped record caused more than {MAX_ROUNDS} commit rounds")))
    }

    /// As [`Self::pipe_input`], serializing the key and value.
    pub fn pipe<K, V>(
        &mut self,
        topic: &str,
        key_serde: &impl Serde<K>,
        value_serde: &impl Serde<V>,
        key: &K,
        value: &V,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        let k = key_serde.serialize(key)?;
        let v = value_serde.serialize(value)?;
        self.pipe_input(topic, Some(&k), Some(&v), timestamp_ms)
    }

    /// Moves the wall clock and fires wall-clock punctuations that are due.
    pub fn advance_wall_clock_ms(&mut self, ms: i64) -> Result<(), StreamsError> {
        self.wall_clock_ms = self.wall_clock_ms.saturating_add(ms);
        for task in self.tasks.values_mut() {
            task.punctuate_wall_clock(self.wall_clock_ms)?;
        }
        self.run()
    }

    /// Takes everything written to `topic` so far.
    pub fn read_output(&mut self, topic: &str) -> Vec<TestRecord> {
        self.outputs.remove(topic).map(Vec::from).unwrap_or_default()
    }

    /// Queries a key-value store (as [`crate::KafkaStreams::store`]).
    pub fn store<K, V>(
        &self,
        name: &str,
        key: impl Serde<K> + Send + Sync + 'static,
        value: impl Serde<V> + Send + Sync + 'static,
    ) -> ReadOnlyKeyValueStore<K, V> {
        ReadOnlyKeyValueStore::new(self.registry.clone(), name, key, value)
    }

    /// Queries a window store (as [`crate::KafkaStreams::window_store`]).
    pub fn window_store<K, V>(
        &self,
        name: &str,
        key: impl Serde<K> + Send + Sync + 'static,
        value: impl Serde<V> + Send + Sync + 'static,
    ) -> ReadOnlyWindowStore<K, V> {
        ReadOnlyWindowStore::new(self.registry.clone(), name, key, value)
    }

    /// Records dropped as late so far.
    pub fn dropped_late(&self) -> u64 {
        self.tasks.values().map(|t| t.ctx.counters.dropped_late).sum()
    }

    fn feed(
        &mut self,
        topic: &str,
        key: Option<Bytes>,
        value: Option<Bytes>,
        timestamp_ms: i64,
    ) -> Result<(), StreamsError> {
        if let Some(store) = self.globals_by_topic.get(topic) {
            return lock(store).restore(&[(key, value)]);
        }
        let Some(st) = self.topology.subtopology_of(topic, &self.application_id) else {
            return Err(StreamsError::Topology(format!("no sub-topology reads topic '{topic}'")));
        };
        let offset = self.next_offset.entry(topic.to_string()).or_insert(0);
        let record = ConsumerRecord {
            topic: Arc::from(topic),
            partition: 0,
            offset: *offset,
            timestamp_ms,
            key,
            value,
            headers: Vec::new(),
        };
        *offset += 1;
        let task = self.tasks.get_mut(&st.id).expect("a task per sub-topology");
        task.add_records(topic, [record]);
        Ok(())
    }

    /// Processes buffered records until no task has any, routing outputs.
    fn run(&mut self) -> Result<(), StreamsError> {
        for _ in 0..MAX_ROUNDS {
            let mut outs: Vec<OutRecord> = Vec::new();
            for task in self.tasks.values_mut() {
                if task.has_buffered() {
                    task.process_buffered(self.wall_clock_ms)?;
                }
                outs.append(&mut task.ctx.out);
            }
            if outs.is_empty() {
                return Ok(());
            }
            for out in outs {
                if out.kind == crate::processor::OutKind::Changelog {
                    continue;
                }
                if self.topology.subtopology_of(&out.topic, &self.application_id).is_some() {
                    self.feed(&out.topic, out.key, out.value, out.timestamp_ms)?;
                } else {
                    self.outputs.entry(out.topic.to_string()).or_default().push_back(TestRecord {
                        key: out.key,
                        value: out.value,
                        timestamp_ms: out.timestamp_ms,
                    });
                }
            }
        }
        Err(StreamsError::Topology(format!("a piped record caused more than {MAX_ROUNDS} rounds of repartitioning")))
    }
}
