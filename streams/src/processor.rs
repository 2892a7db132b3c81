//! The record-at-a-time plumbing every DSL operator is built from: [`Record`], the task context
//! passed down a task's processor graph, and the typed "downstream" lists a node forwards to.
//!
//! A task's graph is a tree of boxed closures built once per task: each node owns the closures
//! of its children and calls them directly (no per-record lookups, channels or async hops). A
//! node with two parents (a `merge`) is shared behind a mutex.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::StreamsError;

/// One record as the DSL's operators see it (Kafka's `Record<K, V>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Record<K, V> {
    pub key: K,
    pub value: V,
    /// Event time in milliseconds since the epoch; outputs carry it to the topics they write.
    pub timestamp_ms: i64,
}

impl<K, V> Record<K, V> {
    pub fn new(key: K, value: V, timestamp_ms: i64) -> Self {
        Record { key, value, timestamp_ms }
    }
}

/// A KTable update: the new value (None: the key was deleted) and the value it replaces
/// (Kafka's `Change<V>`; tables always send old values here so that downstream re-grouping can
/// subtract them).
#[derive(Debug, Clone, PartialEq)]
pub struct Change<V> {
    pub new: Option<V>,
    pub old: Option<V>,
}

/// A record on its way to a topic, already serialized.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub topic: Arc<str>,
    /// Set for changelog and repartition-by-task writes; None: the producer's partitioner.
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp_ms: i64,
    /// What the write is: changelog writes are tracked for checkpoints.
    pub kind: OutKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutKind {
    Sink,
    Changelog,
}

/// Counters a task's operators bump while processing; the runtime turns them into metrics.
#[derive(Debug, Default, Clone)]
pub(crate) struct TaskCounters {
    /// Records too late for their window (Kafka's `dropped-records`).
    pub dropped_late: u64,
    /// Records skipped because they could not be used (bad timestamp, null key for a
    /// grouping, undecodable input under log-and-continue).
    pub dropped_other: u64,
}

/// What a task's operators share while processing a batch: the current record's position, the
/// task's stream time, the outputs collected so far.
pub struct TaskContext {
    pub(crate) task_id: crate::TaskId,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) record_timestamp_ms: i64,
    pub(crate) stream_time_ms: i64,
    pub(crate) wall_clock_ms: i64,
    pub(crate) out: Vec<OutRecord>,
    pub(crate) counters: TaskCounters,
    /// Topic for records dropped as late, if the application asked for one.
    pub(crate) late_records_topic: Option<Arc<str>>,
}

impl TaskContext {
    pub(crate) fn new(task_id: crate::TaskId, late_records_topic: Option<Arc<str>>) -> Self {
        TaskContext {
            task_id,
            topic: Arc::from(""),
            partition: task_id.partition,
            offset: -1,
            record_timestamp_ms: -1,
            stream_time_ms: -1,
            wall_clock_ms: 0,
            out: Vec::new(),
            counters: TaskCounters::default(),
            late_records_topic,
        }
    }

    /// The task processing this record.
    pub fn task_id(&self) -> crate::TaskId {
        self.task_id
    }

    /// Topic of the input record being processed ("" in a punctuation).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Partition of the input record being processed (the task's partition).
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Offset of the input record being processed (-1 in a punctuation).
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The task's stream time: the largest record timestamp it has seen (-1 before any).
    pub fn stream_time_ms(&self) -> i64 {
        self.stream_time_ms
    }

    /// Wall-clock time when the current batch started, in ms since the epoch.
    pub fn wall_clock_ms(&self) -> i64 {
        self.wall_clock_ms
    }

    /// Counts a record dropped as late and, when the application configured a late-records topic,
    /// writes its original bytes there.
    pub(crate) fn drop_late(&mut self, key: Option<Bytes>, value: Option<Bytes>, timestamp_ms: i64) {
        self.counters.dropped_late += 1;
        if let Some(topic) = &self.late_records_topic {
            self.out.push(OutRecord {
                topic: topic.clone(),
                partition: None,
                key,
                value,
                timestamp_ms,
                kind: OutKind::Sink,
            });
        }
    }
}

/// A processing step that takes records of one type.
pub(crate) type ProcessFn<K, V> = Box<dyn FnMut(&mut TaskContext, Record<K, V>) -> Result<(), StreamsError> + Send>;

/// The children of one node in one task.
pub(crate) struct Downstream<K, V> {
    children: Vec<ProcessFn<K, V>>,
}

impl<K: Clone, V: Clone> Downstream<K, V> {
    pub(crate) fn new(children: Vec<ProcessFn<K, V>>) -> Self {
        Downstream { children }
    }

    /// Hands `record` to every child: a clone to each but the last, which takes it.
    #[inline]
    pub(crate) fn forward(&mut self, ctx: &mut TaskContext, record: Record<K, V>) -> Result<(), StreamsError> {
        match self.children.len() {
            0 => Ok(()),
            1 => (self.children[0])(ctx, record),
            n => {
                for child in &mut self.children[..n - 1] {
                    child(ctx, record.clone())?;
                }
                (self.children[n - 1])(ctx, record)
            }
        }
    }
}

/// Shares one node between two parents (merge): each parent gets a closure that locks it.
pub(crate) fn shared<K: 'static, V: 'static>(f: ProcessFn<K, V>, parents: usize) -> Vec<ProcessFn<K, V>> {
    if parents == 1 {
        return vec![f];
    }
    let f = Arc::new(Mutex::new(f));
    (0..parents)
        .map(|_| {
            let f = f.clone();
            Box::new(move |ctx: &mut TaskContext, r: Record<K, V>| {
                // The graph is a DAG, so a node is never re-entered while it runs: the lock
                // is uncontended and cannot be poisoned by re-entry.
                let mut g = f.lock().unwrap_or_else(|p| p.into_inner());
                (g)(ctx, r)
            }) as ProcessFn<K, V>
        })
        .collect()
}

/// What a [`Processor`] gets for each record: the task's context, and where to forward.
pub struct ProcessorContext<'a, KOut, VOut> {
    pub(crate) task: &'a mut TaskContext,
    pub(crate) downstream: &'a mut Downstream<KOut, VOut>,
}

impl<KOut: Clone, VOut: Clone> ProcessorContext<'_, KOut, VOut> {
    /// Sends a record to the processor's children.
    pub fn forward(&mut self, record: Record<KOut, VOut>) -> Result<(), StreamsError> {
        self.downstream.forward(self.task, record)
    }

    /// The task's context: position of the current record, stream time, wall clock.
    pub fn task(&self) -> &TaskContext {
        self.task
    }
}

/// When a punctuation fires (Kafka's `PunctuationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunctuationType {
    /// When the task's stream time passes the next interval boundary (driven by records).
    StreamTime,
    /// When the wall clock does, whether records arrive or not.
    WallClockTime,
}

/// A low-level processor (Kafka's Processor API), given to [`KStream::process`]. Stores it
/// declared are opened for it in [`ProcessorInit`](crate::ProcessorInit).
///
/// [`KStream::process`]: crate::KStream::process
pub trait Processor<K, V, KOut, VOut>: Send {
    /// Handles one record.
    fn process(&mut self, ctx: &mut ProcessorContext<'_, KOut, VOut>, record: Record<K, V>)
        -> Result<(), StreamsError>;

    /// Called for each punctuation scheduled in
    /// [`ProcessorInit::schedule`](crate::ProcessorInit::schedule), with the time
    /// (stream time or wall-clock time, by type) that triggered it.
    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_, KOut, VOut>,
        kind: PunctuationType,
        time_ms: i64,
    ) -> Result<(), StreamsError> {
        let _ = (ctx, kind, time_ms);
        Ok(())
    }
}

pub(crate) type PunctuateFn = Box<dyn FnMut(&mut TaskContext, i64) -> Result<(), StreamsError> + Send>;

/// A scheduled punctuation of one processor in one task.
pub(crate) struct Punctuator {
    pub kind: PunctuationType,
    pub interval_ms: i64,
    /// Next time it fires; set at the first check.
    pub next_ms: Option<i64>,
    pub fire: PunctuateFn,
}

impl Punctuator {
    /// Fires if `now_ms` reached the next boundary; the boundary then moves past `now_ms`
    /// (missed intervals fire once, as Kafka's).
    pub(crate) fn maybe_fire(&mut self, ctx: &mut TaskContext, now_ms: i64) -> Result<(), StreamsError> {
        if now_ms < 0 {
            return Ok(());
        }
        let next = *self.next_ms.get_or_insert(now_ms.saturating_add(self.interval_ms));
        if now_ms >= next {
            (self.fire)(ctx, now_ms)?;
            let behind = (now_ms - next) / self.interval_ms + 1;
            self.next_ms = Some(next.saturating_add(behind.saturating_mul(self.interval_ms)));
        }
        Ok(())
    }
}
