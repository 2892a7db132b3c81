//! The `suppress` operator's buffer (KIP-328): emit-final windowed results and rate-limited
//! table updates, as a sans-IO state machine. The runtime feeds it a table's updates, with keys
//! and values already serialized, and forwards what it returns; no changelog and no I/O here.
//!
//! Semantics follow Kafka's `KTableSuppressProcessorSupplier` and
//! `InMemoryTimeOrderedKeyValueChangeBuffer`:
//! - Each update is buffered under its serialized key (for a windowed table the windowed key's
//!   bytes, e.g. [`TimeWindowedSerde`](crate::serdes::TimeWindowedSerde)'s `key + start`, so
//!   every window of a key is its own entry). A later update replaces the value but keeps the
//!   entry's original buffer time ("non-resetting": `untilTimeLimit` does not restart the
//!   timer).
//! - The buffer time is the window end for [`Suppressed::until_window_closes`] and the record
//!   timestamp for [`Suppressed::until_time_limit`]. After every record, entries whose buffer time
//!   is `<= stream_time - wait` are emitted, oldest first by `(buffer time, key bytes)`, where
//!   `wait` is the upstream grace or the time limit: a window is emitted once
//!   `window_end + grace <= stream_time`, exactly when [`TimeWindows::is_closed`] says so.
//! - Then, if the buffer holds more than `max_records` entries or more than `max_bytes` bytes,
//!   it either emits the oldest entries until it fits again or fails with
//!   [`StreamsError::SuppressionBufferFull`].
//! - Tombstones are buffered like any value. `until_window_closes` drops them when they come
//!   due: it has never emitted that windowed key before, so there is nothing to delete
//!   downstream (Kafka's `safeToDropTombstones`). `until_time_limit` forwards them, even for a
//!   key it never emitted, because it cannot know whether it emitted the key before.
//!
//! [`TimeWindows::is_closed`]: crate::window::TimeWindows::is_closed

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::window::StreamTime;
use crate::StreamsError;

/// The node name in errors when the application gave none (Kafka's generated names start so;
/// the runtime will number them).
const DEFAULT_NAME: &str = "KTABLE-SUPPRESS";

/// Bytes counted per entry besides its key and value: the buffer time (8) and the record
/// context's timestamp (8), offset (8) and partition (4), as Kafka's `computeRecordSize` and
/// `ProcessorRecordContext.residentMemorySizeEstimate` count them.
pub const RECORD_OVERHEAD_BYTES: u64 = 8 + 8 + 8 + 4;

/// What the buffer does when an update makes it exceed `max_records` or `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferFullStrategy {
    /// Emit the oldest entries (by buffer time) until it fits (`emitEarlyWhenFull`): fewer
    /// duplicates downstream, no promise of only one result per key.
    EmitEarlyWhenFull,
    /// Fail with [`StreamsError::SuppressionBufferFull`] (`shutDownWhenFull`): Kafka shuts the
    /// stream thread down rather than break the time bound.
    ShutDownWhenFull,
}

/// Size limits of a suppression buffer (Kafka's `Suppressed.BufferConfig`). Both limits are
/// unbounded (`u64::MAX`) unless set; an entry is over capacity only when a count is strictly
/// greater than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    max_records: u64,
    max_bytes: u64,
    full_strategy: BufferFullStrategy,
}

impl Default for BufferConfig {
    /// Kafka's default when no buffer config is given: unbounded.
    fn default() -> Self {
        Self::unbounded()
    }
}

impl BufferConfig {
    /// No size limit (`BufferConfig.unbounded()`): memory grows with the time bound. Strict,
    /// like Kafka's: it never emits early, so it is allowed for `until_window_closes`.
    pub fn unbounded() -> Self {
        Self { max_records: u64::MAX, max_bytes: u64::MAX, full_strategy: BufferFullStrategy::ShutDownWhenFull }
    }

    /// At most `max_records` keys, emitting early when full (`BufferConfig.maxRecords`).
    pub fn max_records(max_records: u64) -> Self {
        Self { max_records, max_bytes: u64::MAX, full_strategy: BufferFullStrategy::EmitEarlyWhenFull }
    }

    /// At most `max_bytes` bytes, emitting early when full (`BufferConfig.maxBytes`).
    pub fn max_bytes(max_bytes: u64) -> Self {
        Self { max_records: u64::MAX, max_bytes, full_strategy: BufferFullStrategy::EmitEarlyWhenFull }
    }

    /// Sets the key limit, keeping the strategy (`withMaxRecords`).
    pub fn with_max_records(self, max_records: u64) -> Self {
        Self { max_records, ..self }
    }

    /// Sets the byte limit, keeping the strategy (`withMaxBytes`).
    pub fn with_max_bytes(self, max_bytes: u64) -> Self {
        Self { max_bytes, ..self }
    }

    /// Removes both limits (`withNoBound`); the result is strict, as Kafka's is.
    pub fn with_no_bound(self) -> Self {
        Self::unbounded()
    }

    /// Fails when full instead of emitting early (`shutDownWhenFull`).
    pub fn shut_down_when_full(self) -> Self {
        Self { full_strategy: BufferFullStrategy::ShutDownWhenFull, ..self }
    }

    /// Emits the oldest entries when full (`emitEarlyWhenFull`).
    pub fn emit_early_when_full(self) -> Self {
        Self { full_strategy: BufferFullStrategy::EmitEarlyWhenFull, ..self }
    }

    /// Most keys the buffer holds (`u64::MAX`: unbounded).
    pub fn max_records_limit(&self) -> u64 {
        self.max_records
    }

    /// Most bytes the buffer holds, counted as [`SuppressBuffer::size_bytes`] does
    /// (`u64::MAX`: unbounded).
    pub fn max_bytes_limit(&self) -> u64 {
        self.max_bytes
    }

    /// What happens when full.
    pub fn full_strategy(&self) -> BufferFullStrategy {
        self.full_strategy
    }
}

/// When an entry comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Buffer time = window end; due once `window_end + grace <= stream_time`; tombstones are
    /// dropped.
    UntilWindowCloses,
    /// Buffer time = record timestamp; due once `timestamp + time_to_wait <= stream_time`.
    UntilTimeLimit { time_to_wait_ms: i64 },
}

/// A suppression definition (Kafka's `Suppressed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    mode: Mode,
    buffer_config: BufferConfig,
    name: Option<String>,
}

impl Suppressed {
    /// Emit only the final result of each window, once `window_end + grace <= stream_time`
    /// (`Suppressed.untilWindowCloses`). The buffer must be strict (unbounded or
    /// `shut_down_when_full`): emitting early would break the promise of one final result per
    /// window, which Kafka enforces with its `StrictBufferConfig` type.
    pub fn until_window_closes(buffer_config: BufferConfig) -> Result<Self, StreamsError> {
        if buffer_config.full_strategy == BufferFullStrategy::EmitEarlyWhenFull {
            return Err(StreamsError::InvalidSuppression {
                reason: "until_window_closes needs a strict buffer (unbounded or shut_down_when_full); \
                         emit_early_when_full would emit results before their window closes"
                    .to_string(),
            });
        }
        Ok(Self { mode: Mode::UntilWindowCloses, buffer_config, name: None })
    }

    /// Emit a key's latest value once its first buffered update is `time_to_wait` old in stream
    /// time (`Suppressed.untilTimeLimit`); later updates do not restart the timer. Any buffer
    /// config is allowed. A zero wait disables suppression (every update is emitted at once).
    pub fn until_time_limit(time_to_wait: Duration, buffer_config: BufferConfig) -> Result<Self, StreamsError> {
        let time_to_wait_ms =
            i64::try_from(time_to_wait.as_millis()).map_err(|_| StreamsError::InvalidSuppression {
                reason: format!("time to wait {time_to_wait:?} does not fit in i64 milliseconds"),
            })?;
        Ok(Self { mode: Mode::UntilTimeLimit { time_to_wait_ms }, buffer_config, name: None })
    }

    /// Names the suppression node (`withName`); errors name it.
    pub fn with_name(self, name: impl Into<String>) -> Self {
        Self { name: Some(name.into()), ..self }
    }

    /// The node name, if the application gave one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The buffer's limits.
    pub fn buffer_config(&self) -> BufferConfig {
        self.buffer_config
    }

    /// Whether this is `until_window_closes` (emit-final).
    pub fn is_until_window_closes(&self) -> bool {
        self.mode == Mode::UntilWindowCloses
    }
}

/// A record the suppression forwards: the latest update of a key, with that update's
/// timestamp (Kafka forwards the buffered record context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressedRecord {
    /// Serialized key, as given to [`SuppressBuffer::process`].
    pub key: Vec<u8>,
    /// Serialized value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Timestamp of the latest update of the key.
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Option<Vec<u8>>,
    timestamp_ms: i64,
}

fn entry_size_bytes(key_len: usize, value: &Option<Vec<u8>>) -> u64 {
    let value_len = value.as_ref().map_or(0, Vec::len);
    RECORD_OVERHEAD_BYTES + key_len as u64 + value_len as u64
}

/// The state of one suppression node in one task: the buffered entries and the node's stream
/// time (the largest record timestamp it has processed, as Kafka's `observedStreamTime`).
#[derive(Debug, Clone)]
pub struct SuppressBuffer {
    name: String,
    mode: Mode,
    /// Due delay: the upstream grace for `until_window_closes`, the time limit otherwise.
    wait_ms: i64,
    config: BufferConfig,
    stream_time: StreamTime,
    /// Key bytes to their buffer time, to find an entry by key.
    index: HashMap<Vec<u8>, i64>,
    /// Entries by `(buffer time, key bytes)`: Kafka's eviction order (its `BufferKey` compares
    /// time, then the key bytes lexicographically as unsigned).
    sorted: BTreeMap<(i64, Vec<u8>), Entry>,
    size_bytes: u64,
}

impl SuppressBuffer {
    /// The buffer of `suppressed`. For `until_window_closes`, `window_grace_ms` is the grace of
    /// the windowed aggregation it follows (Kafka's DSL reads it from the windows, e.g.
    /// [`TimeWindows::grace_ms`](crate::window::TimeWindows::grace_ms); after session windows it
    /// is grace + inactivity gap, as their close time is) and is required;
    /// `until_time_limit` does not use it.
    pub fn new(suppressed: Suppressed, window_grace_ms: Option<i64>) -> Result<Self, StreamsError> {
        let wait_ms = match suppressed.mode {
            Mode::UntilWindowCloses => match window_grace_ms {
                Some(grace_ms) if grace_ms >= 0 => grace_ms,
                Some(grace_ms) => {
                    return Err(StreamsError::InvalidSuppression {
                        reason: format!("window grace {grace_ms} ms must not be negative"),
                    })
                }
                None => {
                    return Err(StreamsError::InvalidSuppression {
                        reason: "until_window_closes follows a windowed aggregation, but no window grace was given"
                            .to_string(),
                    })
                }
            },
            Mode::UntilTimeLimit { time_to_wait_ms } => time_to_wait_ms,
        };
        Ok(Self {
            name: suppressed.name.unwrap_or_else(|| DEFAULT_NAME.to_string()),
            mode: suppressed.mode,
            wait_ms,
            config: suppressed.buffer_config,
            stream_time: StreamTime::new(),
            index: HashMap::new(),
            sorted: BTreeMap::new(),
            size_bytes: 0,
        })
    }

    /// Buffers one update of the upstream table and appends what is now due to `out`, in
    /// emission order (Kafka's `process`: advance stream time with the record, buffer it,
    /// emit what is due, then enforce the size limits).
    ///
    /// `key` is the serialized key (for windowed tables the windowed key, so each window is
    /// its own entry); `value` `None` is a tombstone; `timestamp_ms` is the update's record
    /// timestamp; `window_end_ms` is the end of the key's window, required by
    /// `until_window_closes` (its buffer time) and unused by `until_time_limit`.
    ///
    /// Fails when the buffer is over its limits and `shut_down_when_full`: records already
    /// due were appended to `out` first (Kafka forwards them before it throws) and the update
    /// stays buffered; the application must stop, as Kafka's stream thread does. Also fails,
    /// without buffering, when `until_window_closes` gets no window end (the runtime's bug).
    pub fn process(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        timestamp_ms: i64,
        window_end_ms: Option<i64>,
        out: &mut Vec<SuppressedRecord>,
    ) -> Result<(), StreamsError> {
        let buffer_time_ms = match (self.mode, window_end_ms) {
            (Mode::UntilWindowCloses, Some(end_ms)) => end_ms,
            (Mode::UntilWindowCloses, None) => {
                return Err(StreamsError::InvalidSuppression {
                    reason: format!("{}: until_window_closes got an update without a window end", self.name),
                })
            }
            (Mode::UntilTimeLimit { .. }, _) => timestamp_ms,
        };
        self.stream_time.observe(timestamp_ms);
        self.put(buffer_time_ms, key, Entry { value, timestamp_ms });
        self.enforce_constraints(out)
    }

    /// Advances stream time to `stream_time_ms` without a record and emits what is due.
    /// Kafka has no such call: its suppression only moves when a record reaches it, so a quiet
    /// partition holds its last windows. A runtime that calls this (e.g. at end of input in
    /// tests) emits earlier than Kafka would.
    pub fn advance(&mut self, stream_time_ms: i64, out: &mut Vec<SuppressedRecord>) {
        self.stream_time.observe(stream_time_ms);
        self.evict_due(out);
    }

    /// The node's stream time (`-1` before any record).
    pub fn stream_time_ms(&self) -> i64 {
        self.stream_time.ms()
    }

    /// Keys buffered (Kafka's `numRecords`).
    pub fn num_records(&self) -> u64 {
        self.index.len() as u64
    }

    /// Bytes buffered: per entry the key and value bytes plus [`RECORD_OVERHEAD_BYTES`].
    /// Kafka's estimate also counts the source topic name, headers and the old and prior
    /// values of its `Change`; this buffer keeps none of those, so the same data counts fewer
    /// bytes here and a `max_bytes` limit is reached later than in Kafka.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The smallest buffer time buffered, if any (Kafka's `minTimestamp`).
    pub fn min_buffer_time_ms(&self) -> Option<i64> {
        self.sorted.keys().next().map(|(time_ms, _)| *time_ms)
    }

    fn put(&mut self, buffer_time_ms: i64, key: Vec<u8>, entry: Entry) {
        let key_len = key.len();
        // Non-resetting: a later update of a buffered key takes the place of the earlier one,
        // keeping its buffer time.
        let time_ms = match self.index.get(&key) {
            Some(&time_ms) => time_ms,
            None => {
                self.index.insert(key.clone(), buffer_time_ms);
                buffer_time_ms
            }
        };
        self.size_bytes += entry_size_bytes(key_len, &entry.value);
        if let Some(replaced) = self.sorted.insert((time_ms, key), entry) {
            self.size_bytes -= entry_size_bytes(key_len, &replaced.value);
        }
    }

    fn enforce_constraints(&mut self, out: &mut Vec<SuppressedRecord>) -> Result<(), StreamsError> {
        self.evict_due(out);
        if self.over_capacity() {
            match self.config.full_strategy {
                BufferFullStrategy::EmitEarlyWhenFull => while self.over_capacity() && self.evict_oldest(out) {},
                BufferFullStrategy::ShutDownWhenFull => {
                    return Err(StreamsError::SuppressionBufferFull {
                        name: self.name.clone(),
                        records: self.num_records(),
                        max_records: self.config.max_records,
                        bytes: self.size_bytes,
                        max_bytes: self.config.max_bytes,
                    });
                }
            }
        }
        Ok(())
    }

    fn evict_due(&mut self, out: &mut Vec<SuppressedRecord>) {
        let expiry_ms = self.stream_time.ms().saturating_sub(self.wait_ms);
        while self.min_buffer_time_ms().is_some_and(|time_ms| time_ms <= expiry_ms) {
            self.evict_oldest(out);
        }
    }

    fn over_capacity(&self) -> bool {
        self.num_records() > self.config.max_records || self.size_bytes > self.config.max_bytes
    }

    /// Removes the oldest entry and forwards it unless it is a tombstone that emit-final may
    /// drop. Returns whether there was one.
    fn evict_oldest(&mut self, out: &mut Vec<SuppressedRecord>) -> bool {
        let Some(((_, key), entry)) = self.sorted.pop_first() else {
            return false;
        };
        self.index.remove(&key);
        self.size_bytes -= entry_size_bytes(key.len(), &entry.value);
        let safe_to_drop_tombstones = self.mode == Mode::UntilWindowCloses;
        if entry.value.is_some() || !safe_to_drop_tombstones {
            out.push(SuppressedRecord { key, value: entry.value, timestamp_ms: entry.timestamp_ms });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::serdes::{I64Serde, Serde, StringSerde, TimeWindowedSerde};
    use crate::window::{TimeWindow, TimeWindows, Windowed};
    use proptest::prelude::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn rec(key: &str, value: Option<&str>, timestamp_ms: i64) -> SuppressedRecord {
        SuppressedRecord { key: key.into(), value: value.map(Into::into), timestamp_ms }
    }

    /// Feeds `(key, value, timestamp, window end)` and returns what each call emitted.
    fn feed(
        buffer: &mut SuppressBuffer,
        key: &str,
        value: Option<&str>,
        timestamp_ms: i64,
        window_end_ms: Option<i64>,
    ) -> Vec<SuppressedRecord> {
        let mut out = Vec::new();
        buffer.process(key.into(), value.map(Into::into), timestamp_ms, window_end_ms, &mut out).unwrap();
        out
    }

    fn final_results(grace_ms: i64) -> SuppressBuffer {
        SuppressBuffer::new(Suppressed::until_window_closes(BufferConfig::unbounded()).unwrap(), Some(grace_ms))
            .unwrap()
    }

    #[test]
    fn window_is_emitted_once_when_stream_time_reaches_end_plus_grace() {
        // Windows of 10 ms with 5 ms grace: [0, 10) closes at stream time 15. Keys here stand
        // for windowed keys; "a0" is key a in [0, 10).
        let mut buffer = final_results(5);
        assert_eq!(feed(&mut buffer, "a0", Some("1"), 3, Some(10)), []);
        assert_eq!(feed(&mut buffer, "a10", Some("1"), 14, Some(20)), []);
        // Out of order, within grace: replaces the buffered value, timestamp of the update.
        assert_eq!(feed(&mut buffer, "a0", Some("2"), 7, Some(10)), []);
        assert_eq!(buffer.num_records(), 2);
        // Stream time 15 = 10 + 5: [0, 10) is final now, not before.
        assert_eq!(feed(&mut buffer, "b10", Some("1"), 15, Some(20)), [rec("a0", Some("2"), 7)]);
        // Stream time 24 < 20 + 5 emits nothing; 25 emits both [10, 20) keys, by key bytes.
        assert_eq!(feed(&mut buffer, "c20", Some("1"), 24, Some(30)), []);
        assert_eq!(
            feed(&mut buffer, "c20", Some("2"), 25, Some(30)),
            [rec("a10", Some("1"), 14), rec("b10", Some("1"), 15)]
        );
        assert_eq!(buffer.stream_time_ms(), 25);
        let mut out = Vec::new();
        buffer.advance(35, &mut out);
        assert_eq!(out, [rec("c20", Some("2"), 25)]);
        assert_eq!((buffer.num_records(), buffer.size_bytes(), buffer.min_buffer_time_ms()), (0, 0, None));
    }

    #[test]
    fn time_limit_keeps_the_first_buffer_time_and_emits_the_latest_value() {
        let suppressed = Suppressed::until_time_limit(ms(10), BufferConfig::unbounded()).unwrap();
        let mut buffer = SuppressBuffer::new(suppressed, None).unwrap();
        assert_eq!(feed(&mut buffer, "k1", Some("v1"), 100, None), []);
        assert_eq!(feed(&mut buffer, "k2", Some("w1"), 105, None), []);
        // Updates of k1 do not restart its timer (buffer time stays 100), even out of order.
        assert_eq!(feed(&mut buffer, "k1", Some("v2"), 108, None), []);
        assert_eq!(feed(&mut buffer, "k1", Some("v3"), 102, None), []);
        // Stream time 110: k1 (100 + 10) is due with its latest value and that update's timestamp.
        assert_eq!(feed(&mut buffer, "k3", Some("x1"), 110, None), [rec("k1", Some("v3"), 102)]);
        // A new update of k1 starts a new entry at its own timestamp.
        assert_eq!(feed(&mut buffer, "k1", Some("v4"), 111, None), []);
        assert_eq!(feed(&mut buffer, "k4", Some("y1"), 115, None), [rec("k2", Some("w1"), 105)]);
        assert_eq!(
            feed(&mut buffer, "k4", Some("y2"), 121, None),
            [rec("k3", Some("x1"), 110), rec("k1", Some("v4"), 111)]
        );
    }

    #[test]
    fn zero_time_limit_emits_every_update_at_once() {
        let suppressed = Suppressed::until_time_limit(Duration::ZERO, BufferConfig::unbounded()).unwrap();
        let mut buffer = SuppressBuffer::new(suppressed, None).unwrap();
        assert_eq!(feed(&mut buffer, "k", Some("v1"), 5, None), [rec("k", Some("v1"), 5)]);
        // Out of order: buffer time 3 <= stream time 5.
        assert_eq!(feed(&mut buffer, "k", Some("v2"), 3, None), [rec("k", Some("v2"), 3)]);
    }

    #[test]
    fn emit_early_evicts_the_oldest_by_buffer_time_then_key() {
        let suppressed = Suppressed::until_time_limit(ms(1_000), BufferConfig::max_records(2)).unwrap();
        let mut buffer = SuppressBuffer::new(suppressed, None).unwrap();
        assert_eq!(feed(&mut buffer, "a", Some("1"), 5, None), []);
        assert_eq!(feed(&mut buffer, "b", Some("1"), 3, None), []);
        // Third key: over 2 records, the oldest (b at 3) goes.
        assert_eq!(feed(&mut buffer, "c", Some("1"), 5, None), [rec("b", Some("1"), 3)]);
        // Replacing a buffered key does not add a record.
        assert_eq!(feed(&mut buffer, "a", Some("2"), 6, None), []);
        // A new key older than all others is itself the one evicted.
        assert_eq!(feed(&mut buffer, "d", Some("1"), 1, None), [rec("d", Some("1"), 1)]);
        // Same buffer time 5 for a and c: key bytes decide, a first.
        assert_eq!(feed(&mut buffer, "e", Some("1"), 7, None), [rec("a", Some("2"), 6)]);
        assert_eq!(buffer.num_records(), 2);
    }

    #[test]
    fn bytes_count_key_value_and_overhead_and_limit_them() {
        // Each entry: 1 key byte + value bytes + 28.
        let suppressed = Suppressed::until_time_limit(ms(1_000), BufferConfig::max_bytes(60)).unwrap();
        let mut buffer = SuppressBuffer::new(suppressed, None).unwrap();
        assert_eq!(feed(&mut buffer, "a", Some("1"), 1, None), []);
        assert_eq!(buffer.size_bytes(), 30);
        assert_eq!(feed(&mut buffer, "b", None, 2, None), []);
        assert_eq!(buffer.size_bytes(), 59);
        // Replacing b's tombstone with one value byte: exactly 60, not over.
        assert_eq!(feed(&mut buffer, "b", Some("2"), 3, None), []);
        assert_eq!(buffer.size_bytes(), 60);
        // A larger value for a: 61 bytes, over; the oldest entry (a itself, time 1) goes.
        assert_eq!(feed(&mut buffer, "a", Some("22"), 4, None), [rec("a", Some("22"), 4)]);
        assert_eq!((buffer.size_bytes(), buffer.num_records()), (30, 1));
    }

    #[test]
    fn shut_down_when_full_names_the_suppression_and_its_limits() {
        let config = BufferConfig::max_records(1).shut_down_when_full();
        let suppressed = Suppressed::until_window_closes(config).unwrap().with_name("counts-final");
        let mut buffer = SuppressBuffer::new(suppressed, Some(0)).unwrap();
        assert_eq!(feed(&mut buffer, "a0", Some("1"), 5, Some(10)), []);
        // Stream time 15 closes [0, 10): a0 leaves before the limit is checked.
        assert_eq!(feed(&mut buffer, "a10", Some("1"), 15, Some(20)), [rec("a0", Some("1"), 5)]);
        let mut out = Vec::new();
        // a10 and b10: 2 * (3 key bytes + 1 value byte + 28) = 64 bytes.
        let err = buffer.process(b"b10".to_vec(), Some(b"1".to_vec()), 16, Some(20), &mut out).unwrap_err();
        assert!(out.is_empty());
        assert_eq!(
            err.to_string(),
            format!(
                "suppression counts-final buffer exceeded its max capacity: 2/1 records and 64/{} bytes \
                 (the application's buffer config is too small: raise its limits or use \
                 emit_early_when_full)",
                u64::MAX
            )
        );
    }

    #[test]
    fn until_window_closes_refuses_emit_early_and_needs_a_grace() {
        assert!(Suppressed::until_window_closes(BufferConfig::max_records(10)).is_err());
        let err = Suppressed::until_window_closes(BufferConfig::max_bytes(10)).unwrap_err();
        assert!(err.to_string().starts_with("invalid suppression: until_window_closes needs a strict buffer"));
        let strict = BufferConfig::max_records(10).shut_down_when_full();
        assert!(Suppressed::until_window_closes(strict).is_ok());
        assert!(Suppressed::until_window_closes(BufferConfig::max_bytes(1).with_no_bound()).is_ok());
        assert!(Suppressed::until_time_limit(ms(1), BufferConfig::max_records(10)).is_ok());
        let err = Suppressed::until_time_limit(Duration::MAX, BufferConfig::unbounded()).unwrap_err();
        assert!(err.to_string().starts_with("invalid suppression: time to wait"));

        let final_results = Suppressed::until_window_closes(BufferConfig::unbounded()).unwrap();
        assert!(SuppressBuffer::new(final_results.clone(), None).is_err());
        assert!(SuppressBuffer::new(final_results.clone(), Some(-1)).is_err());
        let mut buffer = SuppressBuffer::new(final_results, Some(0)).unwrap();
        let mut out = Vec::new();
        assert!(buffer.process(b"a".to_vec(), None, 1, None, &mut out).is_err());
        assert_eq!(buffer.num_records(), 0);
    }

    #[test]
    fn final_results_drop_tombstones_and_time_limit_forwards_them() {
        // Emit-final never emitted the windowed key before, so a final tombstone is dropped.
        let mut buffer = final_results(0);
        assert_eq!(feed(&mut buffer, "a0", Some("1"), 1, Some(10)), []);
        assert_eq!(feed(&mut buffer, "a0", None, 2, Some(10)), []);
        assert_eq!(feed(&mut buffer, "b10", Some("1"), 10, Some(20)), []);
        assert_eq!(buffer.num_records(), 1);

        // Time limit cannot know: the tombstone goes out even for a key it never emitted.
        let suppressed = Suppressed::until_time_limit(ms(5), BufferConfig::unbounded()).unwrap();
        let mut buffer = SuppressBuffer::new(suppressed, None).unwrap();
        assert_eq!(feed(&mut buffer, "k", Some("1"), 1, None), []);
        assert_eq!(feed(&mut buffer, "k", None, 2, None), []);
        assert_eq!(feed(&mut buffer, "j", Some("1"), 6, None), [rec("k", None, 2)]);
    }

    proptest! {
        /// A windowed count through `TimeWindows::assign` and `until_window_closes` with an
        /// unbounded buffer emits exactly one record per (key, window), equal to the
        /// brute-force final count of the records the window logic accepts, with the
        /// timestamp of the last of them, in non-decreasing window-end order, at the record
        /// that closes the window and not later.
        #[test]
        fn until_window_closes_emits_exactly_the_final_counts(
            size_ms in 1i64..20,
            advance_pick in 0i64..20,
            grace_ms in 0i64..15,
            records in proptest::collection::vec((0u8..3, 0i64..100), 1..60),
        ) {
            let advance_ms = advance_pick % size_ms + 1;
            let windows = TimeWindows::of_size_with_grace(ms(size_ms as u64), ms(grace_ms as u64))
                .unwrap()
                .advance_by(ms(advance_ms as u64))
                .unwrap();
            let key_serde = TimeWindowedSerde::new(StringSerde, size_ms);
            let suppressed = Suppressed::until_window_closes(BufferConfig::unbounded()).unwrap();
            let mut buffer = SuppressBuffer::new(suppressed, Some(windows.grace_ms())).unwrap();
            let mut time = StreamTime::new();
            let mut counts: BTreeMap<(String, i64), i64> = BTreeMap::new();
            let mut out = Vec::new();
            for &(key, ts) in &records {
                let key = key.to_string();
                for window in windows.assign(ts, &mut time).update {
                    let count = counts.entry((key.clone(), window.start_ms)).or_default();
                    *count += 1;
                    let windowed = key_serde.serialize(&Windowed { key: key.clone(), window }).unwrap();
                    let value = I64Serde.serialize(count).unwrap();
                    let emitted_before = out.len();
                    buffer.process(windowed, Some(value), ts, Some(window.end_ms), &mut out).unwrap();
                    // Emitted exactly when closed: what went out is closed, what stays is open.
                    let now = buffer.stream_time_ms();
                    for record in &out[emitted_before..] {
                        let emitted: Windowed<String, TimeWindow> = key_serde.deserialize(&record.key).unwrap();
                        prop_assert!(windows.is_closed(emitted.window, now));
                    }
                    if let Some(end_ms) = buffer.min_buffer_time_ms() {
                        let oldest = TimeWindow { start_ms: end_ms - size_ms, end_ms };
                        prop_assert!(!windows.is_closed(oldest, now));
                    }
                }
            }
            buffer.advance(i64::MAX, &mut out);

            // Brute force: a record counts for every window containing it that was still
            // open (stream time including the record below end + grace) when it arrived.
            let mut want: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
            let mut max_seen = -1;
            for &(key, ts) in &records {
                max_seen = max_seen.max(ts);
                for start in (0..=ts).filter(|start| start % advance_ms == 0 && ts < start + size_ms) {
                    if max_seen < start + size_ms + grace_ms {
                        let (count, last_ts) = want.entry((key.to_string(), start)).or_default();
                        *count += 1;
                        *last_ts = ts;
                    }
                }
            }

            let mut got: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
            let mut last_end = i64::MIN;
            for record in &out {
                let windowed: Windowed<String, TimeWindow> = key_serde.deserialize(&record.key).unwrap();
                prop_assert!(windowed.window.end_ms >= last_end, "emitted out of window-end order");
                last_end = windowed.window.end_ms;
                let count = I64Serde.deserialize(record.value.as_deref().unwrap()).unwrap();
                let previous = got.insert((windowed.key, windowed.window.start_ms), (count, record.timestamp_ms));
                prop_assert!(previous.is_none(), "a window was emitted twice");
            }
            prop_assert_eq!(got, want);
            prop_assert_eq!(buffer.num_records(), 0);
        }

        /// `until_time_limit` with any limits: the buffer never stays over its record limit
        /// with emit-early, its byte count equals a recount of what it holds, and once stream
        /// time passes everything, each key's last emission is its last update.
        #[test]
        fn until_time_limit_emits_each_keys_latest_update_and_respects_limits(
            wait_ms in 0u64..20,
            max_records in 1u64..4,
            updates in proptest::collection::vec(
                (0u8..5, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..5)), 0i64..50),
                1..60,
            ),
        ) {
            let suppressed = Suppressed::until_time_limit(ms(wait_ms), BufferConfig::max_records(max_records)).unwrap();
            let mut buffer = SuppressBuffer::new(suppressed, None).unwrap();
            let mut out = Vec::new();
            let mut latest: BTreeMap<Vec<u8>, (Option<Vec<u8>>, i64)> = BTreeMap::new();
            for (key, value, ts) in updates {
                buffer.process(vec![key], value.clone(), ts, None, &mut out).unwrap();
                latest.insert(vec![key], (value, ts));
                prop_assert!(buffer.num_records() <= max_records);
                let recount: u64 = buffer
                    .sorted
                    .iter()
                    .map(|((_, key), entry)| entry_size_bytes(key.len(), &entry.value))
                    .sum();
                prop_assert_eq!(buffer.size_bytes(), recount);
                prop_assert_eq!(buffer.index.len(), buffer.sorted.len());
            }
            buffer.advance(i64::MAX, &mut out);
            let mut last_emitted: BTreeMap<Vec<u8>, (Option<Vec<u8>>, i64)> = BTreeMap::new();
            for record in out {
                last_emitted.insert(record.key, (record.value, record.timestamp_ms));
            }
            prop_assert_eq!(last_emitted, latest);
            prop_assert_eq!(buffer.size_bytes(), 0);
        }
    }
}
