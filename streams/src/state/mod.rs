//! State stores: key-value, window and session stores of bytes, persistent (redb, one file per
//! store in `state.dir/<application.id>/<task>/<store>`) or in memory (`BTreeMap`s). The runtime
//! puts the record cache, the changelog and typed serdes on top; this layer only stores bytes.
//!
//! - [`open_key_value`], [`open_window`] (and [`open_window_with_duplicates`] for stream-stream
//!   joins), [`open_session`] open a store of a [`StoreKind`] and return it as a
//!   [`KeyValueBytesStore`], [`WindowBytesStore`] or [`SessionBytesStore`].
//! - [`checkpoint`]: the per-task checkpoint file (changelog offsets the local state reflects).
//! - [`directory`]: [`StateDirectory`](directory::StateDirectory), the task directories and their
//!   locks.
//!
//! Window and session stores divide time into segments (a table each) and drop whole segments
//! once stream time has passed them by the retention, as Kafka's segmented stores do.

mod backend;
pub mod checkpoint;
pub mod directory;
mod key_value;
mod segmented;

use std::path::Path;
use std::sync::Arc;

use crate::window::SessionWindow;
use crate::StreamsError;

pub use backend::PERSISTENT_CACHE_BYTES;

/// One entry of a window store's write batch: (key, window_start_ms, value or `None` to delete).
pub type WindowWrite = (Vec<u8>, i64, Option<Vec<u8>>);

/// One entry of a session store's write batch: (key, session, value or `None` to remove).
pub type SessionWrite = (Vec<u8>, SessionWindow, Option<Vec<u8>>);

/// Where a store keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// On local disk under the store's directory; survives restarts (Kafka's default,
    /// `Stores.persistentKeyValueStore`).
    Persistent,
    /// In memory only; rebuilt from the changelog after a restart (`Stores.inMemoryKeyValueStore`).
    InMemory,
}

/// A key-value store of bytes. Send + Sync: interactive queries read it from other threads while
/// the owning stream thread writes it. Visitors must not call back into the same store.
///
/// Durability (all three store traits): a `write_batch` is atomic and visible at once, but only
/// [`flush`](Self::flush) makes it survive a crash; a persistent store that crashed reopens as of
/// its last flush (later batches are gone whole). So flush, then write the checkpoint.
pub trait KeyValueBytesStore: Send + Sync {
    /// The store's name.
    fn name(&self) -> &str;
    /// The value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StreamsError>;
    /// Applies all puts (Some) and deletes (None) atomically, in order.
    fn write_batch(&self, batch: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StreamsError>;
    /// Visits entries with from <= key < to (None = unbounded) in key order until `visit` returns false.
    fn range(
        &self,
        from: Option<&[u8]>,
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    /// The number of entries (exact for both kinds today).
    fn approximate_num_entries(&self) -> Result<u64, StreamsError>;
    /// Makes everything written so far survive a process crash (called before the checkpoint is written).
    fn flush(&self) -> Result<(), StreamsError>;
}

/// Windowed store: entries keyed by (key, window_start_ms). Retention = window size + grace; time
/// is divided into segments of `segment_interval_ms` (Kafka: max(retention/2, 60_000)).
///
/// Expiry: the store's observed stream time is the largest `window_start_ms` ever written (puts
/// and deletes). An entry with `window_start_ms < observed stream time - retention_ms` is expired:
/// a put of it is ignored, reads do not return it, and a segment whose every start is expired is
/// dropped. (A window is closed one millisecond earlier, at `start == stream time - retention`; the
/// aggregator drops those records before they reach the store.)
pub trait WindowBytesStore: Send + Sync {
    /// The store's name.
    fn name(&self) -> &str;
    /// How long windows are kept after stream time passes their start (window size + grace).
    fn retention_ms(&self) -> i64;
    /// Puts (Some) or deletes (None); advances the store's observed stream time to
    /// max(window_start_ms) and drops expired segments. Puts of expired entries are ignored and
    /// counted in [`expired_puts_skipped`](Self::expired_puts_skipped).
    fn write_batch(&self, batch: &[WindowWrite]) -> Result<(), StreamsError>;
    /// The value of `key` in the window starting at `window_start_ms`.
    fn fetch(&self, key: &[u8], window_start_ms: i64) -> Result<Option<Vec<u8>>, StreamsError>;
    /// Entries of `key` with time_from_ms <= window_start_ms <= time_to_ms, ascending start.
    fn fetch_range(
        &self,
        key: &[u8],
        time_from_ms: i64,
        time_to_ms: i64,
        visit: &mut dyn FnMut(i64, &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    /// All keys' entries with start in [time_from_ms, time_to_ms], ordered by (key, start): key
    /// bytes ascending, then start ascending. Not one snapshot: it reads the store in chunks, so
    /// it may see some of a concurrent write.
    #[expect(
        clippy::type_complexity,
        reason = "the visitor's plain `dyn FnMut` keeps implementations' signatures simple to write"
    )]
    fn fetch_all(
        &self,
        time_from_ms: i64,
        time_to_ms: i64,
        visit: &mut dyn FnMut(&[u8], i64, &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    /// Makes everything written so far survive a process crash.
    fn flush(&self) -> Result<(), StreamsError>;
    /// The observed stream time (largest window start written), `None` before the first write.
    /// (Provided so that wrappers need not; a wrapper should forward it.)
    fn observed_stream_time_ms(&self) -> Option<i64> {
        None
    }
    /// Puts ignored because they were already expired, since the store was opened (Kafka's
    /// `dropped-records` sensor counts these). (Provided; a wrapper should forward it.)
    fn expired_puts_skipped(&self) -> u64 {
        0
    }
}

/// Session store: entries keyed by (key, session end_ms, session start_ms) like Kafka's session
/// store. Expiry as for [`WindowBytesStore`], by session end: observed stream time is the largest
/// end written; a session with `end_ms < observed stream time - retention_ms` is expired (exactly
/// when Kafka's session aggregation drops a late record's session, with retention = gap + grace).
pub trait SessionBytesStore: Send + Sync {
    /// The store's name.
    fn name(&self) -> &str;
    /// How long sessions are kept after stream time passes their end (inactivity gap + grace).
    fn retention_ms(&self) -> i64;
    /// Puts (Some) or removes (None) sessions; expiry by session end time as for window stores.
    fn write_batch(&self, batch: &[SessionWrite]) -> Result<(), StreamsError>;
    /// Sessions of `key` with end >= earliest_end_ms and start <= latest_start_ms (Kafka's
    /// findSessions), ascending end (then ascending start).
    fn find_sessions(
        &self,
        key: &[u8],
        earliest_end_ms: i64,
        latest_start_ms: i64,
        visit: &mut dyn FnMut(SessionWindow, &[u8]) -> bool,
    ) -> Result<(), StreamsError>;
    /// The value of exactly this session of `key`.
    fn fetch_session(&self, key: &[u8], window: SessionWindow) -> Result<Option<Vec<u8>>, StreamsError>;
    /// Makes everything written so far survive a process crash.
    fn flush(&self) -> Result<(), StreamsError>;
    /// The observed stream time (largest session end written), `None` before the first write.
    /// (Provided; a wrapper should forward it.)
    fn observed_stream_time_ms(&self) -> Option<i64> {
        None
    }
    /// Puts ignored because they were already expired, since the store was opened. (Provided; a
    /// wrapper should forward it.)
    fn expired_puts_skipped(&self) -> u64 {
        0
    }
}

fn backend(kind: StoreKind, name: &str, dir: &Path) -> Result<Box<dyn backend::Backend>, StreamsError> {
    Ok(match kind {
        StoreKind::Persistent => Box::new(backend::RedbBackend::open(name, dir)?),
        StoreKind::InMemory => Box::new(backend::MemoryBackend::new()),
    })
}

/// Opens a key-value store. `dir` is the store's own directory
/// (`state.dir/<application.id>/<task>/<store>`), created if missing; unused for in-memory stores.
/// A persistent store already open (in this process or another) is an error.
pub fn open_key_value(kind: StoreKind, name: &str, dir: &Path) -> Result<Arc<dyn KeyValueBytesStore>, StreamsError> {
    Ok(Arc::new(key_value::KeyValueStore::new(name, backend(kind, name, dir)?)))
}

/// Opens a window store keeping windows `retention_ms` (window size + grace) in segments of
/// `segment_interval_ms` (see [`default_segment_interval_ms`]). `dir` as for [`open_key_value`].
pub fn open_window(
    kind: StoreKind,
    name: &str,
    dir: &Path,
    retention_ms: i64,
    segment_interval_ms: i64,
) -> Result<Arc<dyn WindowBytesStore>, StreamsError> {
    segmented::validate(name, retention_ms, segment_interval_ms)?;
    let core = segmented::Segments::open(name, backend(kind, name, dir)?, retention_ms, segment_interval_ms, false)?;
    Ok(Arc::new(segmented::WindowStore { core }))
}

/// Opens a window store that retains duplicates (Kafka's `retainDuplicates`, which the
/// stream-stream join's window stores use): every put is a new entry, even for a (key, start)
/// already present, and a put of `None` is ignored (it does not delete, nor advance stream time).
/// `fetch_range` and `fetch_all` return a (key, start)'s duplicates in the order they were put;
/// `fetch` returns the first. Otherwise as [`open_window`].
pub fn open_window_with_duplicates(
    kind: StoreKind,
    name: &str,
    dir: &Path,
    retention_ms: i64,
    segment_interval_ms: i64,
) -> Result<Arc<dyn WindowBytesStore>, StreamsError> {
    segmented::validate(name, retention_ms, segment_interval_ms)?;
    let core = segmented::Segments::open(name, backend(kind, name, dir)?, retention_ms, segment_interval_ms, true)?;
    Ok(Arc::new(segmented::WindowStore { core }))
}

/// Opens a session store keeping sessions `retention_ms` (inactivity gap + grace) after their
/// end, in segments of [`default_segment_interval_ms`]. `dir` as for [`open_key_value`].
pub fn open_session(
    kind: StoreKind,
    name: &str,
    dir: &Path,
    retention_ms: i64,
) -> Result<Arc<dyn SessionBytesStore>, StreamsError> {
    let segment_interval_ms = default_segment_interval_ms(retention_ms);
    segmented::validate(name, retention_ms, segment_interval_ms)?;
    let core = segmented::Segments::open(name, backend(kind, name, dir)?, retention_ms, segment_interval_ms, false)?;
    Ok(Arc::new(segmented::SessionStore { core }))
}

/// Kafka's segment interval for a retention: `max(retention / 2, 60_000)` ms.
pub fn default_segment_interval_ms(retention_ms: i64) -> i64 {
    (retention_ms / 2).max(60_000)
}

#[cfg(test)]
mod tests;
