//! spate-streams: Kafka Streams for Rust. Build a topology with the DSL, run it with
//! [`KafkaStreams`] against any Kafka-protocol broker; instances with the same
//! `application.id` share the work as a consumer group.
//!
//! Entry points:
//! - [`StreamsBuilder`] → [`KStream`] / [`KTable`]: stateless operators, `group_by` →
//!   [`KGroupedStream`] (`count`, `reduce`, `aggregate`), `windowed_by` time windows
//!   ([`TimeWindowedKStream`], with [`EmitStrategy::OnWindowClose`] for final results) and
//!   sessions ([`SessionWindowedKStream`]), stream-table, table-table and windowed
//!   stream-stream joins, and the Processor API ([`KStream::process`], [`Processor`]).
//! - [`KafkaStreams`] with a [`StreamsConfig`] (Kafka's keys): stream threads, tasks per
//!   partition, state stores restored from changelog topics, at-least-once commits,
//!   interactive queries ([`KafkaStreams::store`], [`KafkaStreams::window_store`]).
//! - [`serdes`]: the [`Serde`](serdes::Serde) trait and Kafka's byte layouts.
//! - [`window`]: the sans-IO window logic the operators call ([`TimeWindows`](window::TimeWindows),
//!   [`SlidingWindows`](window::SlidingWindows), [`SessionWindows`](window::SessionWindows),
//!   [`JoinWindows`](window::JoinWindows)).
//! - [`suppress`]: the `suppress` operator's buffer (KIP-328).
//! - [`state`]: the bytes-level key-value, window and session stores.
//! - [`StreamsError`]: the crate's one error type.

mod config;
mod dsl;
mod error;
mod processor;
mod query;
mod runtime;
pub mod serdes;
pub mod state;
mod store;
pub mod suppress;
mod topology;
pub mod window;

pub use config::{ProcessingGuarantee, StreamsConfig};
pub use dsl::ProcessorInit;
pub use dsl::{
    BranchedKStream, Consumed, Data, EmitStrategy, Grouped, InvalidTimestampPolicy, KGroupedStream, KStream, KTable,
    Materialized, Produced, Repartitioned, SessionWindowedKStream, StreamsBuilder, TimeWindowedKStream,
    TimestampExtractor,
};
pub use error::StreamsError;
pub use processor::{Change, Processor, ProcessorContext, PunctuationType, Record, TaskContext};
pub use query::{KeyValueStore, ReadOnlyKeyValueStore, ReadOnlyWindowStore};
pub use runtime::{KafkaStreams, StreamsMetrics, StreamsState};
pub use topology::{DeserializationHandler, Topology};

/// A task: sub-topology × partition (Kafka's `TaskId`, printed `<subtopology>_<partition>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    pub subtopology: u32,
    pub partition: i32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.subtopology, self.partition)
    }
}
