//! spate-streams: the start of Kafka Streams for Rust. What exists so far is the sans-IO core
//! that the DSL and runtime will call; there is no `StreamsBuilder`, no runtime and no state
//! store yet.
//!
//! Entry points:
//! - [`serdes`]: the [`Serde`](serdes::Serde) trait and Kafka's byte layouts: bytes, UTF-8
//!   strings, big-endian `i32`/`i64`/`f64`, JSON, and the time- and session-windowed key
//!   serdes ([`TimeWindowedSerde`](serdes::TimeWindowedSerde),
//!   [`SessionWindowedSerde`](serdes::SessionWindowedSerde)).
//! - [`window`]: window logic as functions of `(record timestamp, stream time)`:
//!   [`TimeWindows`](window::TimeWindows) (tumbling, hopping),
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
//! - [`StreamsError`]: the crate's one error type.

mod error;
pub mod serdes;
pub mod state;
pub mod suppress;
pub mod window;

pub use error::StreamsError;
