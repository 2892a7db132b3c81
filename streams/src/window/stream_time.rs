//! Stream time: the largest record timestamp a task has seen.

/// Kafka's `ConsumerRecord.NO_TIMESTAMP`, the stream time before any record.
const NO_TIMESTAMP: i64 = -1;

/// A processor's stream time: the maximum timestamp observed so far (Kafka's
/// `observedStreamTime`). It never goes backwards; out-of-order records do not move it.
///
/// Kafka keeps one per windowed processor in each task (a stream-stream join shares one
/// between its two sides), starting at `-1`; it is not restored after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTime {
    max_ms: i64,
}

impl Default for StreamTime {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamTime {
    /// Stream time before any record (`-1`, Kafka's `NO_TIMESTAMP`).
    pub fn new() -> Self {
        Self { max_ms: NO_TIMESTAMP }
    }

    /// Stream time restored from a checkpoint or changelog.
    pub fn at(stream_time_ms: i64) -> Self {
        Self { max_ms: stream_time_ms }
    }

    /// Current stream time in milliseconds (`-1` before any record).
    pub fn ms(&self) -> i64 {
        self.max_ms
    }

    /// Observes a record's timestamp and returns the new stream time. Kafka advances stream
    /// time before deciding whether the record itself is late, so a record is judged against a
    /// stream time that includes it.
    pub fn observe(&mut self, timestamp_ms: i64) -> i64 {
        self.max_ms = self.max_ms.max(timestamp_ms);
        self.max_ms
    }
}

/// Whether a record (or the window it would update) is still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateDecision {
    /// The window is open: update it.
    Accept,
    /// The window has closed: the record is dropped for it and counted in Kafka's
    /// `dropped-records` metric ("Skipping record for expired window").
    DropLate {
        /// End of the window the record was too late for.
        window_end_ms: i64,
        /// Stream time minus grace (Kafka's `windowCloseTime`) at the decision.
        close_time_ms: i64,
    },
}
