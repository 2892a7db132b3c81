//! A task: one sub-topology's processor graph for one partition, with its stores, its input
//! buffers and its progress (next offsets to commit, changelog offsets for the checkpoint).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use spate_client::ConsumerRecord;

use crate::processor::{PunctuationType, Punctuator, TaskContext};
use crate::state::checkpoint::{self, Checkpoint};
use crate::state::directory::TaskDirLock;
use crate::state::{open_key_value, open_session, open_window, StoreKind};
use crate::store::{Changelog, LoggedKv, LoggedSession, LoggedWindow, StoreType, TaskStore};
use crate::topology::{build_task, FlushFn, SourceFn, SubTopology, TaskBuild, Topology};
use crate::{StreamsError, TaskId};

const CHECKPOINT_FILE: &str = ".checkpoint";

/// One input partition's records waiting to be processed.
struct InputBuffer {
    topic: Arc<str>,
    partition: i32,
    records: VecDeque<ConsumerRecord>,
    /// Next offset to commit: one past the last record processed.
    next_offset: Option<i64>,
}

pub(crate) struct Task {
    pub id: TaskId,
    pub ctx: TaskContext,
    sources: HashMap<String, SourceFn>,
    inputs: Vec<InputBuffer>,
    punctuators: Vec<Punctuator>,
    flushers: Vec<FlushFn>,
    pub stores: BTreeMap<String, TaskStore>,
    /// Changelog partition of each logged store and the next offset to read from it.
    pub changelogs: BTreeMap<String, (Changelog, i64)>,
    /// Logged stores kept in memory: they start empty, so they restore from the changelog's
    /// start and the checkpoint leaves them out (as Kafka checkpoints persistent stores only).
    in_memory: std::collections::BTreeSet<String>,
    dir: PathBuf,
    _lock: Option<TaskDirLock>,
    pub records_processed: u64,
    pub metrics: TaskMetrics,
}

/// The task's metrics through the `metrics` facade (labels `application_id`, `task_id`), as
/// Kafka's task-level metrics.
pub(crate) struct TaskMetrics {
    /// `spate_streams_process_total`: records processed.
    pub process_total: metrics::Counter,
    /// `spate_streams_dropped_records_total`: late or unusable records.
    pub dropped_records_total: metrics::Counter,
    /// `spate_streams_records_lag{topic, partition}`: consumer lag of each input partition.
    pub lag: Vec<(spate_client::TopicPartition, metrics::Gauge)>,
}

impl TaskMetrics {
    fn new(application_id: &str, id: TaskId, inputs: &[String]) -> Self {
        let labels = [("application_id", application_id.to_string()), ("task_id", id.to_string())];
        TaskMetrics {
            process_total: metrics::counter!("spate_streams_process_total", &labels),
            dropped_records_total: metrics::counter!("spate_streams_dropped_records_total", &labels),
            lag: inputs
                .iter()
                .map(|t| {
                    let labels = [
                        ("application_id", application_id.to_string()),
                        ("task_id", id.to_string()),
                        ("topic", t.clone()),
                        ("partition", id.partition.to_string()),
                    ];
                    let g = metrics::gauge!("spate_streams_records_lag", &labels);
                    (spate_client::TopicPartition::new(t.clone(), id.partition), g)
                })
                .collect(),
        }
    }
}

/// `state.dir/<application.id>/<task>` and its lock.
pub(crate) struct TaskDir {
    pub path: PathBuf,
    pub lock: Option<TaskDirLock>,
}

impl Task {
    /// Opens the task's stores (in its directory), reads its checkpoint, builds its graph.
    #[expect(clippy::too_many_arguments, reason = "the runtime's pieces a task is made of")]
    pub fn open(
        topology: &Topology,
        st: &SubTopology,
        id: TaskId,
        application_id: &str,
        dir: TaskDir,
        input_topics: &[String],
        cache_max_bytes: usize,
        deserialization_handler: &crate::topology::DeserializationHandler,
        globals: &HashMap<String, crate::topology::GlobalStore>,
        late_records_topic: Option<Arc<str>>,
    ) -> Result<Task, StreamsError> {
        let checkpoint = checkpoint::read(&dir.path.join(CHECKPOINT_FILE))?;
        let mut stores = BTreeMap::new();
        let mut changelogs = BTreeMap::new();
        let mut in_memory = std::collections::BTreeSet::new();
        let store_names: Vec<&String> = st.stores.iter().collect();
        let per_store_cache =
            if store_names.is_empty() { cache_max_bytes } else { cache_max_bytes / store_names.len() };
        for name in store_names {
            let spec = &topology.stores[name];
            let kind = if spec.in_memory { StoreKind::InMemory } else { StoreKind::Persistent };
            let store_dir = dir.path.join(name);
            let changelog = spec.logging.then(|| Changelog {
                topic: Arc::from(format!("{application_id}-{name}-changelog")),
                partition: id.partition,
            });
            if let Some(cl) = &changelog {
                let from = checkpoint
                    .as_ref()
                    .filter(|_| !spec.in_memory)
                    .and_then(|c| c.offsets.get(&(cl.topic.to_string(), cl.partition)).copied())
                    .unwrap_or(0);
                changelogs.insert(name.clone(), (cl.clone(), from));
                if spec.in_memory {
                    in_memory.insert(name.clone());
                }
            }
            let store = match spec.store_type {
                StoreType::KeyValue => TaskStore::Kv(Arc::new(Mutex::new(LoggedKv::new(
                    open_key_value(kind, name, &store_dir)?,
                    changelog,
                    per_store_cache,
                )))),
                StoreType::Window { retention_ms, segment_interval_ms } => {
                    TaskStore::Window(Arc::new(Mutex::new(LoggedWindow::new(
                        open_window(kind, name, &store_dir, retention_ms, segment_interval_ms)?,
                        changelog,
                        per_store_cache,
                    ))))
                }
                StoreType::Session { retention_ms } => TaskStore::Session(Arc::new(Mutex::new(LoggedSession::new(
                    open_session(kind, name, &store_dir, retention_ms)?,
                    changelog,
                    per_store_cache,
                )))),
            };
            stores.insert(name.clone(), store);
        }
        let store_map: HashMap<String, TaskStore> = stores.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut tb = TaskBuild::new(id, application_id, &store_map, deserialization_handler, globals, per_store_cache);
        build_task(topology, st, &mut tb)?;
        let TaskBuild { sources, punctuators, flushers, .. } = tb;
        let inputs = input_topics
            .iter()
            .map(|t| InputBuffer {
                topic: Arc::from(t.as_str()),
                partition: id.partition,
                records: VecDeque::new(),
                next_offset: None,
            })
            .collect();
        Ok(Task {
            id,
            ctx: TaskContext::new(id, late_records_topic),
            sources: sources.into_iter().collect(),
            inputs,
            punctuators,
            flushers,
            stores,
            changelogs,
            in_memory,
            dir: dir.path,
            _lock: dir.lock,
            records_processed: 0,
            metrics: TaskMetrics::new(application_id, id, input_topics),
        })
    }

    pub fn add_records(&mut self, topic: &str, records: impl IntoIterator<Item = ConsumerRecord>) {
        if let Some(input) = self.inputs.iter_mut().find(|i| &*i.topic == topic) {
            input.records.extend(records);
        }
    }

    pub fn has_buffered(&self) -> bool {
        self.inputs.iter().any(|i| !i.records.is_empty())
    }

    /// Processes everything buffered, picking across partitions the record with the lowest
    /// timestamp first (Kafka's `PartitionGroup`), so that a join sees the table update that
    /// precedes a stream record.
    pub fn process_buffered(&mut self, wall_clock_ms: i64) -> Result<(), StreamsError> {
        self.ctx.wall_clock_ms = wall_clock_ms;
        loop {
            let next = if self.inputs.len() == 1 {
                if self.inputs[0].records.is_empty() {
                    None
                } else {
                    Some(0)
                }
            } else {
                self.inputs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, input)| input.records.front().map(|r| (r.timestamp_ms, i)))
                    .min()
                    .map(|(_, i)| i)
            };
            let Some(i) = next else { break };
            let input = &mut self.inputs[i];
            let Some(record) = input.records.pop_front() else { break };
            input.next_offset = Some(record.offset + 1);
            let Some(source) = self.sources.get_mut(&*input.topic) else { continue };
            self.ctx.topic = input.topic.clone();
            self.ctx.partition = input.partition;
            self.ctx.offset = record.offset;
            source(&mut self.ctx, &record)?;
            self.records_processed += 1;
            let stream_time = self.ctx.stream_time_ms;
            for p in self.punctuators.iter_mut().filter(|p| p.kind == PunctuationType::StreamTime) {
                p.maybe_fire(&mut self.ctx, stream_time)?;
            }
        }
        Ok(())
    }

    pub fn punctuate_wall_clock(&mut self, wall_clock_ms: i64) -> Result<(), StreamsError> {
        self.ctx.wall_clock_ms = wall_clock_ms;
        self.ctx.offset = -1;
        for p in self.punctuators.iter_mut().filter(|p| p.kind == PunctuationType::WallClockTime) {
            p.maybe_fire(&mut self.ctx, wall_clock_ms)?;
        }
        Ok(())
    }

    /// First half of a commit: forwards held-back updates and writes every store's buffer (to
    /// the store and, as records in `ctx.out`, to its changelog).
    pub fn prepare_commit(&mut self) -> Result<(), StreamsError> {
        for f in &mut self.flushers {
            f(&mut self.ctx)?;
        }
        for store in self.stores.values() {
            store.flush_buffer(&mut self.ctx.out)?;
        }
        Ok(())
    }

    /// Offsets to commit for this task's input partitions.
    pub fn committable(&self) -> impl Iterator<Item = (String, i32, i64)> + '_ {
        self.inputs.iter().filter_map(|i| i.next_offset.map(|o| (i.topic.to_string(), i.partition, o)))
    }

    /// Last half of a commit (after the changelog writes were acknowledged and the offsets
    /// committed): makes the stores durable and writes the checkpoint.
    pub fn write_checkpoint(&mut self) -> Result<(), StreamsError> {
        for store in self.stores.values() {
            store.flush_store()?;
        }
        let mut checkpoint = Checkpoint::default();
        for (name, (changelog, next)) in &self.changelogs {
            if !self.in_memory.contains(name) {
                checkpoint.offsets.insert((changelog.topic.to_string(), changelog.partition), *next);
            }
        }
        checkpoint::write(&self.dir.join(CHECKPOINT_FILE), &checkpoint)
    }

    /// Deletes the checkpoint (under exactly-once, once it has been read): from now on the
    /// stores may hold writes of a transaction that is not committed yet, so until the next
    /// clean close a crash must find no checkpoint, and the task directory is wiped and
    /// restored from the changelogs' committed records.
    pub fn delete_checkpoint(&self) -> Result<(), StreamsError> {
        checkpoint::delete(&self.dir.join(CHECKPOINT_FILE))
    }

    /// Records that a changelog write was acknowledged at `offset`.
    pub fn changelog_acked(&mut self, topic: &str, partition: i32, offset: i64) {
        for (changelog, next) in self.changelogs.values_mut() {
            if &*changelog.topic == topic && changelog.partition == partition {
                *next = (*next).max(offset + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serdes::{I64Serde, StringSerde};
    use crate::state::directory::StateDirectory;
    use crate::topology::DeserializationHandler;
    use crate::{Consumed, Grouped, Materialized, Produced, StreamsBuilder};

    /// Two counts of one input: store `persistent` on disk, store `volatile` in memory.
    fn topology() -> Topology {
        let b = StreamsBuilder::new();
        let grouped = b
            .stream(&["in"], Consumed::with(StringSerde, StringSerde))
            .group_by_key(Grouped::with(StringSerde, StringSerde));
        grouped
            .count(Materialized::named("persistent"))
            .unwrap()
            .to_stream()
            .to("out-p", Produced::with(StringSerde, I64Serde));
        grouped
            .count(Materialized::named("volatile").in_memory())
            .unwrap()
            .to_stream()
            .to("out-v", Produced::with(StringSerde, I64Serde));
        b.build().unwrap()
    }

    fn open(topology: &Topology, sd: &StateDirectory) -> Task {
        let st = &topology.subtopologies[0];
        let id = TaskId { subtopology: st.id, partition: 0 };
        let dir =
            TaskDir { path: sd.task_dir(&id.to_string()).unwrap(), lock: Some(sd.lock_task(&id.to_string()).unwrap()) };
        Task::open(
            topology,
            st,
            id,
            "app",
            dir,
            &["in".to_string()],
            0,
            &DeserializationHandler::LogAndFail,
            &HashMap::new(),
            None,
        )
        .unwrap()
    }

    /// In-memory stores start empty, so they restore from the changelog's start and stay out
    /// of the checkpoint; persistent stores resume from it. Under exactly-once the checkpoint
    /// is deleted once read, so a crash before the next clean close finds none.
    #[test]
    fn checkpoints_cover_persistent_stores_and_can_be_withdrawn() {
        let root = tempfile::tempdir().unwrap();
        let sd = StateDirectory::new(root.path(), "app").unwrap();
        let topology = topology();
        let mut task = open(&topology, &sd);
        for (changelog, next) in task.changelogs.values_mut() {
            assert_eq!(*next, 0, "{}", changelog.topic);
            *next = 42;
        }
        task.write_checkpoint().unwrap();
        let path = task.dir.join(CHECKPOINT_FILE);
        let written = checkpoint::read(&path).unwrap().unwrap();
        assert_eq!(
            written.offsets.into_iter().collect::<Vec<_>>(),
            vec![(("app-persistent-changelog".to_string(), 0), 42)]
        );
        drop(task);

        let task = open(&topology, &sd);
        assert_eq!(task.changelogs["persistent"].1, 42);
        assert_eq!(task.changelogs["volatile"].1, 0);
        task.delete_checkpoint().unwrap();
        assert!(!path.exists());
        // Deleting what is not there is fine (a task that never had one).
        task.delete_checkpoint().unwrap();
        drop(task);
        let task = open(&topology, &sd);
        assert_eq!(task.changelogs["persistent"].1, 0);
    }
}
