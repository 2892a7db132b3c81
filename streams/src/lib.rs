//! spate-streams: Kafka Streams for Rust. Build a topology with the DSL, run it with
//! [`KafkaStreams`] against any Kafka-protocol broker; instances with the same
//! `application.id` share the work as a consumer group.
//!
//! Entry points:
//! - [`StreamsBuilder`] → [`KStream`] / [`KTable`]: stateless operators, `group_by` →
//!   [`KGroupedStream`] (`count`, `reduce`, `aggregate`), `windowed_by` time windows
//!   ([`TimeWindowedKStream`], with [`EmitStrategy::OnWindowClose`] for final results) and
//!   sessions ([`SessionWindowedKStream`]), `windowed_by_sliding` sliding windows
//!   ([`SlidingWindowedKStream`]), [`KTable::suppress`] for final results, stream-table,
//!   table-table and windowed stream-stream joins, and the Processor API
//!   ([`KStream::process`], [`Processor`]).
//! - [`KafkaStreams`] with a [`StreamsConfig`] (Kafka's keys): stream threads, tasks per
//!   partition, state stores restored from changelog topics, at-least-once commits or
//!   exactly-once transactions (`processing.guarantee=exactly_once_v2`, see
//!   [`ProcessingGuarantee::ExactlyOnceV2`]), interactive queries ([`KafkaStreams::store`],
//!   [`KafkaStreams::window_store`]).
//! - [`TopologyTestDriver`]: runs a topology in-process without a broker, for tests.
//! - [`serdes`]: the [`Serde`](serdes::Serde) trait and Kafka's byte layouts.
//! - [`window`]: the sans-IO window logic the operators call ([`TimeWindows`](window::TimeWindows),
//!   [`SlidingWindows`](window::SlidingWindows), [`SessionWindows`](window::SessionWindows),
//!   [`JoinWindows`](window::JoinWindows) with the stream-stream join state
//!   [`StreamStreamJoin`](window::StreamStreamJoin), and [`StreamTime`](window::StreamTime).
//! - [`suppress`]: the `suppress` operator's buffer (KIP-328):
//!   [`Suppressed::until_window_closes`](suppress::Suppressed::until_window_closes) (emit-final
//!   windowed results) and [`Suppressed::until_time_limit`](suppress::Suppressed::until_time_limit)
//!   with a [`BufferConfig`](suppress::BufferConfig), run by
//!   [`SuppressBuffer`](suppress::SuppressBuffer).
//! - [`state`]: state stores of bytes: key-value, window and session stores, persistent (redb, one
//!   file per store under `state.dir/<application.id>/<task>/<store>`) or in memory, opened with
//!   [`state::open_key_value`], [`state::open_window`], [`state::open_session`]; the per-task
//!   [`Checkpoint`](state::checkpoint::Checkpoint) file and the
//!   [`StateDirectory`](state::directory::StateDirectory) with its task locks.
//! - `sql` (feature `sql`): SQL over topics with DataFusion: every topic is a table
//!   ([`sql::SqlContext`]), ad-hoc queries read a snapshot of each partition, continuous
//!   `INSERT INTO … SELECT` queries run on this runtime.
//! - [`StreamsError`]: the crate's one error type.

mod config;
mod dsl;
mod error;
mod processor;
mod query;
mod runtime;
pub mod serdes;
#[cfg(feature = "sql")]
pub mod sql;
pub mod state;
mod store;
pub mod suppress;
pub mod test_driver;
mod topology;
pub mod window;

pub use config::{ProcessingGuarantee, StreamsConfig};
pub use dsl::ProcessorInit;
pub use dsl::{
    BranchedKStream, Consumed, Data, EmitStrategy, GlobalKTable, Grouped, InvalidTimestampPolicy, KGroupedStream,
    KGroupedTable, KStream, KTable, Materialized, Produced, Repartitioned, SessionWindowedKStream,
    SlidingWindowedKStream, StreamJoined, StreamsBuilder, TimeWindowedKStream, TimestampExtractor,
};
pub use error::{SqlPosition, StreamsError};
pub use processor::{Change, Processor, ProcessorContext, PunctuationType, Record, TaskContext};
pub use query::{KeyValueStore, ReadOnlyKeyValueStore, ReadOnlyWindowStore};
pub use runtime::{KafkaStreams, StreamsMetrics, StreamsState};
pub use test_driver::TopologyTestDriver;
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
