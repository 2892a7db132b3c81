//! Idempotent producer state of one partition, as Kafka's `ProducerStateManager` keeps it:
//! per producer id the current `producer_epoch` and the sequence ranges and offsets of its last
//! [`BATCHES_RETAINED_PER_PRODUCER`] batches, so that a retried batch is answered with the
//! offsets it got the first time instead of being appended twice (KIP-98).
//!
//! Sans-IO: callers pass batch headers and `now_ms` and get decisions back. The produce path
//! calls [`ProducerStateManager::check`] before appending and [`ProducerStateManager::record`]
//! after the log assigned offsets; recovery starts from a snapshot ([`ProducerStateManager::import`]
//! of what [`ProducerStateManager::export`] wrote) and calls `record` for each batch header it
//! reads back after it. Producer ids themselves come in blocks from the controller.
//!
//! One deliberate match with current Kafka (since KIP-360) rather than older brokers: a producer
//! id this partition has no state for (never seen, expired, evicted or removed by retention) may
//! start at any sequence, so `UNKNOWN_PRODUCER_ID` is never returned from here.

use std::collections::{BTreeMap, HashMap, VecDeque};

use spate_client::protocol::record::BatchHeader;
use spate_client::protocol::ErrorCode;

/// Batches remembered per producer for duplicate detection. Kafka's producers keep at most five
/// requests in flight per partition (`max.in.flight.requests.per.connection` <= 5 with
/// idempotence), so a retry is always of one of the last five batches.
pub const BATCHES_RETAINED_PER_PRODUCER: usize = 5;

/// Kafka's default `producer.id.expiration.ms` (one day).
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;

/// Producer ids a broker takes from the controller at a time (Kafka's block size).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// What to do with a batch that passed [`ProducerStateManager::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Append,
    /// It is a retry of a batch already in the log: do not append, answer success with the
    /// original `base_offset` (Kafka answers `NONE`, not `DUPLICATE_SEQUENCE_NUMBER`).
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// Why a batch of an idempotent producer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerStateError {
    #[error(
        "producer {producer_id} epoch {producer_epoch} sent sequence {base_sequence}, \
         which does not follow its last sequence {last_sequence}"
    )]
    OutOfOrderSequence { producer_id: i64, producer_epoch: i16, base_sequence: i32, last_sequence: i32 },
    #[error(
        "producer {producer_id} moved from epoch {current_epoch} to {producer_epoch} \
         with sequence {base_sequence}; a new epoch must start at sequence 0"
    )]
    NewEpochNotAtSequenceZero { producer_id: i64, producer_epoch: i16, current_epoch: i16, base_sequence: i32 },
    #[error("producer {producer_id} epoch {producer_epoch} is older than its current epoch {current_epoch}")]
    InvalidProducerEpoch { producer_id: i64, producer_epoch: i16, current_epoch: i16 },
    #[error(
        "batch of producer {producer_id} has epoch {producer_epoch} and base sequence {base_sequence}; \
         an idempotent batch needs both to be non-negative"
    )]
    InvalidBatch { producer_id: i64, producer_epoch: i16, base_sequence: i32 },
}

/// The Kafka error code a client receives for each refusal (the one mapping of this module).
pub fn error_code(err: &ProducerStateError) -> ErrorCode {
    match err {
        ProducerStateError::OutOfOrderSequence { .. } | ProducerStateError::NewEpochNotAtSequenceZero { .. } => {
            ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER
        }
        // Since Kafka 2.7 a produce with a stale epoch gets INVALID_PRODUCER_EPOCH (retriable for
        // the client's transaction manager) rather than the fatal PRODUCER_FENCED.
        ProducerStateError::InvalidProducerEpoch { .. } => ErrorCode::INVALID_PRODUCER_EPOCH,
        ProducerStateError::InvalidBatch { .. } => ErrorCode::INVALID_RECORD,
    }
}

/// One producer as DescribeProducers reports it (Kafka's `ProducerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Last sequence appended in the current epoch, -1 when none (just after an epoch bump).
    pub last_sequence: i32,
    pub last_timestamp_ms: i64,
    pub coordinator_epoch: i32,
    /// First offset of its open transaction in this partition, -1 when none is open.
    pub current_txn_start_offset: i64,
}

/// One producer's state as a snapshot holds it (see `crate::producer_snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub last_used_ms: i64,
    pub last_timestamp_ms: i64,
    pub coordinator_epoch: i32,
    /// `(first_sequence, last_sequence, base_offset, last_offset)` of its last batches, oldest
    /// first.
    pub batches: Vec<(i32, i32, i64, i64)>,
}

/// Sequence range and offsets of one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMetadata {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug)]
struct ProducerStateEntry {
    producer_epoch: i16,
    /// Oldest first; at most [`BATCHES_RETAINED_PER_PRODUCER`]; empty only after a marker
    /// moved the producer to a new epoch (the next batch must then start at sequence 0).
    batches: VecDeque<BatchMetadata>,
    last_used_ms: i64,
    /// Max timestamp of its last data batch (the client's clock; DescribeProducers'
    /// `last_timestamp`), -1 before any.
    last_timestamp_ms: i64,
    /// Coordinator epoch of the last marker this broker appended as leader, -1 when unknown
    /// (no marker yet, or state rebuilt from batch headers, which do not carry it).
    coordinator_epoch: i32,
    /// This entry's key in [`ProducerStateManager::lru`].
    lru_key: u64,
}

/// Idempotent producer state of one partition.
#[derive(Debug)]
pub struct ProducerStateManager {
    producer_id_expiration_ms: i64,
    max_producers: usize,
    producers: HashMap<i64, ProducerStateEntry>,
    /// Producer ids by the order of their last `record`, least recently used first.
    lru: BTreeMap<u64, i64>,
    next_lru_key: u64,
}

impl ProducerStateManager {
    /// `producer_id_expiration_ms` is Kafka's `producer.id.expiration.ms`; `max_producers`
    /// bounds the memory one partition spends on producer state (at least 1).
    pub fn new(producer_id_expiration_ms: i64, max_producers: usize) -> Self {
        assert!(max_producers >= 1, "max_producers must be at least 1 (validated config)");
        ProducerStateManager {
            producer_id_expiration_ms,
            max_producers,
            producers: HashMap::new(),
            lru: BTreeMap::new(),
            next_lru_key: 0,
        }
    }

    /// Producers with state.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The current epoch of a producer this partition has state for.
    pub fn producer_epoch(&self, producer_id: i64) -> Option<i16> {
        self.producers.get(&producer_id).map(|e| e.producer_epoch)
    }

    /// Decides what to do with one batch before it is appended. Batches without a producer id
    /// are always appended. Several batches of one producer in one request must be checked and
    /// recorded one at a time, because each moves the expected sequence.
    pub fn check(&self, batch: &BatchHeader) -> Result<SequenceCheck, ProducerStateError> {
        if !batch.has_producer_id() {
            return Ok(SequenceCheck::Append);
        }
        let producer_id = batch.producer_id;
        if batch.producer_epoch < 0 || batch.base_sequence < 0 {
            return Err(ProducerStateError::InvalidBatch {
                producer_id,
                producer_epoch: batch.producer_epoch,
                base_sequence: batch.base_sequence,
            });
        }
        let Some(entry) = self.producers.get(&producer_id) else {
            // No state: a new producer, or one whose state expired or was removed with the
            // segments that held it. Kafka (KIP-360) accepts any sequence here.
            return Ok(SequenceCheck::Append);
        };
        let current_epoch = entry.producer_epoch;
        if batch.producer_epoch < current_epoch {
            return Err(ProducerStateError::InvalidProducerEpoch {
                producer_id,
                producer_epoch: batch.producer_epoch,
                current_epoch,
            });
        }
        if batch.producer_epoch > current_epoch {
            if batch.base_sequence != 0 {
                return Err(ProducerStateError::NewEpochNotAtSequenceZero {
                    producer_id,
                    producer_epoch: batch.producer_epoch,
                    current_epoch,
                    base_sequence: batch.base_sequence,
                });
            }
            return Ok(SequenceCheck::Append);
        }
        let last_sequence = batch.last_sequence();
        if let Some(dup) =
            entry.batches.iter().find(|b| b.first_sequence == batch.base_sequence && b.last_sequence == last_sequence)
        {
            return Ok(SequenceCheck::Duplicate { base_offset: dup.base_offset, last_offset: dup.last_offset });
        }
        let last = entry.batches.back().map_or(-1, |b| b.last_sequence);
        if in_sequence(last, batch.base_sequence) {
            Ok(SequenceCheck::Append)
        } else {
            Err(ProducerStateError::OutOfOrderSequence {
                producer_id,
                producer_epoch: batch.producer_epoch,
                base_sequence: batch.base_sequence,
                last_sequence: last,
            })
        }
    }

    /// Records a batch the log appended at `base_offset`. Does not validate: callers run
    /// [`check`](Self::check) first (or replay the log, which was checked when written).
    pub fn record(&mut self, batch: &BatchHeader, base_offset: i64, now_ms: i64) {
        if !batch.has_producer_id() {
            return;
        }
        if batch.is_control() {
            self.record_marker(batch.producer_id, batch.producer_epoch, now_ms);
            return;
        }
        let metadata = BatchMetadata {
            first_sequence: batch.base_sequence,
            last_sequence: batch.last_sequence(),
            base_offset,
            // Saturating: a corrupt header replayed from the log must not overflow.
            last_offset: base_offset.saturating_add(batch.last_offset_delta as i64),
        };
        let lru_key = self.next_lru_key;
        self.next_lru_key += 1;
        match self.producers.get_mut(&batch.producer_id) {
            Some(entry) => {
                if entry.producer_epoch != batch.producer_epoch {
                    // Sequences restart with each epoch, so older batches can no longer match.
                    entry.batches.clear();
                    entry.producer_epoch = batch.producer_epoch;
                }
                if entry.batches.len() == BATCHES_RETAINED_PER_PRODUCER {
                    entry.batches.pop_front();
                }
                entry.batches.push_back(metadata);
                entry.last_used_ms = now_ms;
                entry.last_timestamp_ms = batch.max_timestamp;
                self.lru.remove(&entry.lru_key);
                entry.lru_key = lru_key;
            }
            None => {
                if self.producers.len() >= self.max_producers {
                    self.evict_least_recently_used();
                }
                self.producers.insert(
                    batch.producer_id,
                    ProducerStateEntry {
                        producer_epoch: batch.producer_epoch,
                        batches: VecDeque::from([metadata]),
                        last_used_ms: now_ms,
                        last_timestamp_ms: batch.max_timestamp,
                        coordinator_epoch: -1,
                        lru_key,
                    },
                );
            }
        }
        self.lru.insert(lru_key, batch.producer_id);
    }

    /// Remembers the coordinator epoch of a marker just appended for `producer_id`.
    pub fn set_coordinator_epoch(&mut self, producer_id: i64, coordinator_epoch: i32) {
        if let Some(entry) = self.producers.get_mut(&producer_id) {
            entry.coordinator_epoch = coordinator_epoch;
        }
    }

    /// Every producer with state here, by producer id (DescribeProducers). `txn_start` gives
    /// the first offset of a producer's open transaction in this log, if any.
    pub fn describe(&self, txn_start: impl Fn(i64) -> Option<i64>) -> Vec<ActiveProducer> {
        let mut out: Vec<ActiveProducer> = self
            .producers
            .iter()
            .map(|(&producer_id, e)| ActiveProducer {
                producer_id,
                producer_epoch: e.producer_epoch,
                last_sequence: e.batches.back().map_or(-1, |b| b.last_sequence),
                last_timestamp_ms: e.last_timestamp_ms,
                coordinator_epoch: e.coordinator_epoch,
                current_txn_start_offset: txn_start(producer_id).unwrap_or(-1),
            })
            .collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }

    /// Refuses a transaction marker from an epoch older than the producer's current one (a
    /// coordinator that lost track; Kafka's `checkProducerEpoch` for markers).
    pub fn check_marker(&self, producer_id: i64, producer_epoch: i16) -> Result<(), ProducerStateError> {
        match self.producers.get(&producer_id) {
            Some(entry) if producer_epoch < entry.producer_epoch => Err(ProducerStateError::InvalidProducerEpoch {
                producer_id,
                producer_epoch,
                current_epoch: entry.producer_epoch,
            }),
            _ => Ok(()),
        }
    }

    /// A transaction marker: it carries no sequence, so it keeps the producer's sequence state
    /// unless it moves the producer to a newer epoch (the coordinator bumped it to fence a
    /// zombie or after a timeout), which restarts sequences at 0 as any new epoch does.
    fn record_marker(&mut self, producer_id: i64, producer_epoch: i16, now_ms: i64) {
        let lru_key = self.next_lru_key;
        self.next_lru_key += 1;
        match self.producers.get_mut(&producer_id) {
            Some(entry) => {
                if producer_epoch > entry.producer_epoch {
                    entry.batches.clear();
                    entry.producer_epoch = producer_epoch;
                }
                entry.last_used_ms = now_ms;
                self.lru.remove(&entry.lru_key);
                entry.lru_key = lru_key;
            }
            // No state here (the marker of a partition it wrote nothing to, or state that
            // expired): nothing to keep; any sequence is accepted for it anyway (KIP-360).
            None => return,
        }
        self.lru.insert(lru_key, producer_id);
    }

    /// Drops producers idle for `producer.id.expiration.ms` or longer.
    pub fn expire(&mut self, now_ms: i64) {
        let expiration_ms = self.producer_id_expiration_ms;
        let lru = &mut self.lru;
        self.producers.retain(|_, entry| {
            let keep = now_ms.saturating_sub(entry.last_used_ms) < expiration_ms;
            if !keep {
                lru.remove(&entry.lru_key);
            }
            keep
        });
    }

    /// Drops producers whose last batch lies entirely below the new `log_start_offset`
    /// (retention or DeleteRecords removed it), as Kafka does when the log start moves.
    pub fn truncate_head(&mut self, log_start_offset: i64) {
        let lru = &mut self.lru;
        self.producers.retain(|_, entry| {
            let keep = entry.batches.back().is_some_and(|b| b.last_offset >= log_start_offset);
            if !keep {
                lru.remove(&entry.lru_key);
            }
            keep
        });
    }

    /// Forgets every producer (before a rebuild after the log was truncated at its tail).
    pub fn clear(&mut self) {
        self.producers.clear();
        self.lru.clear();
    }

    /// Every producer's state, least recently used first (for a snapshot).
    pub fn export(&self) -> Vec<SnapshotProducer> {
        self.lru
            .values()
            .filter_map(|producer_id| {
                let e = self.producers.get(producer_id)?;
                Some(SnapshotProducer {
                    producer_id: *producer_id,
                    producer_epoch: e.producer_epoch,
                    last_used_ms: e.last_used_ms,
                    last_timestamp_ms: e.last_timestamp_ms,
                    coordinator_epoch: e.coordinator_epoch,
                    batches: e
                        .batches
                        .iter()
                        .map(|b| (b.first_sequence, b.last_sequence, b.base_offset, b.last_offset))
                        .collect(),
                })
            })
            .collect()
    }

    /// Replaces the state with `producers` (as [`export`](Self::export) gave them, least
    /// recently used first), keeping at most `max_producers` of the most recent ones and at
    /// most [`BATCHES_RETAINED_PER_PRODUCER`] batches each.
    pub fn import(&mut self, producers: Vec<SnapshotProducer>) {
        self.clear();
        let skip = producers.len().saturating_sub(self.max_producers);
        for p in producers.into_iter().skip(skip) {
            let lru_key = self.next_lru_key;
            self.next_lru_key += 1;
            let keep = p.batches.len().saturating_sub(BATCHES_RETAINED_PER_PRODUCER);
            let batches = p.batches[keep..]
                .iter()
                .map(|&(first_sequence, last_sequence, base_offset, last_offset)| BatchMetadata {
                    first_sequence,
                    last_sequence,
                    base_offset,
                    last_offset,
                })
                .collect();
            let entry = ProducerStateEntry {
                producer_epoch: p.producer_epoch,
                batches,
                last_used_ms: p.last_used_ms,
                last_timestamp_ms: p.last_timestamp_ms,
                coordinator_epoch: p.coordinator_epoch,
                lru_key,
            };
            if let Some(old) = self.producers.insert(p.producer_id, entry) {
                self.lru.remove(&old.lru_key);
            }
            self.lru.insert(lru_key, p.producer_id);
        }
    }

    fn evict_least_recently_used(&mut self) {
        if let Some((_, producer_id)) = self.lru.pop_first() {
            self.producers.remove(&producer_id);
        }
    }
}

/// Whether `next` directly follows `last`; sequences wrap from `i32::MAX` to 0.
fn in_sequence(last: i32, next: i32) -> bool {
    next as i64 == last as i64 + 1 || (next == 0 && last == i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use spate_client::protocol::record::{NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE};

    const EXPIRATION_MS: i64 = 60_000;

    fn batch(producer_id: i64, producer_epoch: i16, base_sequence: i32, records_count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records_count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch,
            base_sequence,
            records_count,
        }
    }

    /// Checks, then records at `*log_end_offset` like the produce path; returns the base offset.
    fn append(m: &mut ProducerStateManager, b: &BatchHeader, log_end_offset: &mut i64, now_ms: i64) -> i64 {
        assert_eq!(m.check(b), Ok(SequenceCheck::Append), "{b:?}");
        let base_offset = *log_end_offset;
        m.record(b, base_offset, now_ms);
        *log_end_offset += b.records_count as i64;
        base_offset
    }

    fn manager() -> ProducerStateManager {
        ProducerStateManager::new(EXPIRATION_MS, 100)
    }

    #[test]
    fn batches_without_producer_id_are_appended_and_not_tracked() {
        let mut m = manager();
        let b = batch(NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE, 3);
        assert_eq!(m.check(&b), Ok(SequenceCheck::Append));
        m.record(&b, 0, 0);
        assert!(m.is_empty());
        assert_eq!(m.check(&b), Ok(SequenceCheck::Append));
    }

    #[test]
    fn first_batch_of_an_unknown_producer_is_appended_at_any_sequence() {
        let mut m = manager();
        assert_eq!(m.check(&batch(1, 0, 0, 1)), Ok(SequenceCheck::Append));
        // KIP-360: state may have been expired or deleted with old segments.
        assert_eq!(m.check(&batch(1, 0, 42, 1)), Ok(SequenceCheck::Append));
        m.record(&batch(1, 3, 42, 2), 10, 0);
        assert_eq!(m.len(), 1);
        assert_eq!(m.producer_epoch(1), Some(3));
        assert_eq!(m.check(&batch(1, 3, 44, 1)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn in_order_batches_are_appended() {
        let mut m = manager();
        let mut leo = 0;
        let mut seq = 0;
        for count in [1, 5, 2, 10, 1, 1, 7] {
            append(&mut m, &batch(7, 0, seq, count), &mut leo, 0);
            seq += count;
        }
        assert_eq!(leo, 27);
    }

    #[test]
    fn duplicate_of_each_of_the_last_five_batches_returns_its_original_offsets() {
        let mut m = manager();
        let mut leo = 100;
        let mut sent = Vec::new();
        let mut seq = 0;
        for count in [2, 3, 1, 4, 2, 5, 3] {
            let b = batch(7, 1, seq, count);
            let base = append(&mut m, &b, &mut leo, 0);
            sent.push((b, base));
            seq += count;
        }
        for (b, base) in &sent[2..] {
            assert_eq!(
                m.check(b),
                Ok(SequenceCheck::Duplicate { base_offset: *base, last_offset: base + b.records_count as i64 - 1 })
            );
        }
        // Older than the last five: no longer known, and not next in line.
        for (b, _) in &sent[..2] {
            assert!(matches!(m.check(b), Err(ProducerStateError::OutOfOrderSequence { .. })), "{b:?}");
        }
    }

    #[test]
    fn overlapping_but_different_range_is_not_a_duplicate() {
        let mut m = manager();
        let mut leo = 0;
        append(&mut m, &batch(7, 0, 0, 4), &mut leo, 0);
        assert_eq!(
            m.check(&batch(7, 0, 0, 3)),
            Err(ProducerStateError::OutOfOrderSequence {
                producer_id: 7,
                producer_epoch: 0,
                base_sequence: 0,
                last_sequence: 3
            })
        );
    }

    #[test]
    fn gap_is_out_of_order() {
        let mut m = manager();
        let mut leo = 0;
        append(&mut m, &batch(7, 0, 0, 2), &mut leo, 0);
        let err = m.check(&batch(7, 0, 3, 1)).unwrap_err();
        assert_eq!(
            err,
            ProducerStateError::OutOfOrderSequence {
                producer_id: 7,
                producer_epoch: 0,
                base_sequence: 3,
                last_sequence: 1
            }
        );
        assert_eq!(error_code(&err), ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER);
    }

    #[test]
    fn older_epoch_is_fenced_even_for_a_retry() {
        let mut m = manager();
        let mut leo = 0;
        let old = batch(7, 2, 0, 1);
        append(&mut m, &old, &mut leo, 0);
        append(&mut m, &batch(7, 3, 0, 1), &mut leo, 0);
        let err = m.check(&old).unwrap_err();
        assert_eq!(
            err,
            ProducerStateError::InvalidProducerEpoch { producer_id: 7, producer_epoch: 2, current_epoch: 3 }
        );
        assert_eq!(error_code(&err), ErrorCode::INVALID_PRODUCER_EPOCH);
        assert!(matches!(m.check(&batch(7, 1, 1, 1)), Err(ProducerStateError::InvalidProducerEpoch { .. })));
    }

    #[test]
    fn epoch_bump_must_start_at_sequence_zero() {
        let mut m = manager();
        let mut leo = 0;
        let first = batch(7, 0, 0, 3);
        append(&mut m, &first, &mut leo, 0);
        let err = m.check(&batch(7, 1, 3, 1)).unwrap_err();
        assert_eq!(
            err,
            ProducerStateError::NewEpochNotAtSequenceZero {
                producer_id: 7,
                producer_epoch: 1,
                current_epoch: 0,
                base_sequence: 3
            }
        );
        assert_eq!(error_code(&err), ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER);
        let bumped = batch(7, 1, 0, 3);
        assert_eq!(m.check(&bumped), Ok(SequenceCheck::Append));
        m.record(&bumped, leo, 0);
        assert_eq!(m.producer_epoch(7), Some(1));
        // The old epoch's batch had the same sequence range; it is now fenced, and the new
        // epoch's batch is the one a retry maps to.
        assert!(matches!(m.check(&first), Err(ProducerStateError::InvalidProducerEpoch { .. })));
        assert_eq!(m.check(&bumped), Ok(SequenceCheck::Duplicate { base_offset: 3, last_offset: 5 }));
        assert_eq!(m.check(&batch(7, 1, 3, 1)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut m = manager();
        let mut leo = 0;
        append(&mut m, &batch(7, 0, i32::MAX, 1), &mut leo, 0);
        assert!(in_sequence(i32::MAX, 0));
        assert!(m.check(&batch(7, 0, i32::MAX, 2)).is_err());
        assert_eq!(m.check(&batch(7, 0, 0, 1)), Ok(SequenceCheck::Append));
        // A batch straddling the wrap: sequences MAX-1, MAX, 0, 1 after a reset.
        let mut m = manager();
        let mut leo = 0;
        append(&mut m, &batch(7, 0, i32::MAX - 5, 4), &mut leo, 0);
        let straddling = batch(7, 0, i32::MAX - 1, 4);
        assert_eq!(straddling.last_sequence(), 1);
        let base = append(&mut m, &straddling, &mut leo, 0);
        assert_eq!(m.check(&straddling), Ok(SequenceCheck::Duplicate { base_offset: base, last_offset: base + 3 }));
        append(&mut m, &batch(7, 0, 2, 1), &mut leo, 0);
        assert!(matches!(m.check(&batch(7, 0, 4, 1)), Err(ProducerStateError::OutOfOrderSequence { .. })));
    }

    #[test]
    fn negative_epoch_or_sequence_with_a_producer_id_is_an_invalid_record() {
        let m = manager();
        for b in [batch(7, 0, -1, 1), batch(7, -1, 0, 1), batch(7, -5, -5, 1)] {
            let err = m.check(&b).unwrap_err();
            assert!(matches!(err, ProducerStateError::InvalidBatch { producer_id: 7, .. }));
            assert_eq!(error_code(&err), ErrorCode::INVALID_RECORD);
        }
    }

    #[test]
    fn rebuild_restores_duplicate_detection() {
        // (producer id, epoch, base sequence, records) in log order, with a non-idempotent batch.
        let batches =
            [(1, 0, 0, 2), (2, 4, 0, 3), (-1, -1, -1, 1), (1, 0, 2, 1), (1, 1, 0, 2), (2, 4, 3, 1), (1, 1, 2, 3)];
        let mut m = manager();
        let mut leo = 0;
        let mut log = Vec::new();
        for (producer_id, epoch, sequence, count) in batches {
            let mut b = batch(producer_id, epoch, sequence, count);
            b.base_offset = append(&mut m, &b, &mut leo, 0);
            log.push(b);
        }
        let mut rebuilt = manager();
        for h in &log {
            rebuilt.record(h, h.base_offset, 1_000);
        }
        assert_eq!(rebuilt.len(), 2);
        assert_eq!(rebuilt.producer_epoch(1), Some(1));
        assert_eq!(rebuilt.producer_epoch(2), Some(4));
        for b in &log {
            assert_eq!(rebuilt.check(b), m.check(b), "{b:?}");
        }
        let last = log[6];
        assert_eq!(last.base_offset, 10);
        assert_eq!(rebuilt.check(&last), Ok(SequenceCheck::Duplicate { base_offset: 10, last_offset: 12 }));
        assert_eq!(rebuilt.check(&log[5]), Ok(SequenceCheck::Duplicate { base_offset: 9, last_offset: 9 }));
        assert!(matches!(rebuilt.check(&log[0]), Err(ProducerStateError::InvalidProducerEpoch { .. })));
        assert_eq!(rebuilt.check(&batch(1, 1, 5, 1)), Ok(SequenceCheck::Append));
        assert_eq!(rebuilt.check(&batch(2, 4, 4, 1)), Ok(SequenceCheck::Append));
        assert!(rebuilt.check(&batch(2, 4, 5, 1)).is_err());
    }

    #[test]
    fn rebuild_keeps_only_the_last_five_batches() {
        let mut m = manager();
        let log: Vec<_> =
            (0..8).map(|i| BatchHeader { base_offset: i as i64 * 10, ..batch(3, 0, i * 10, 10) }).collect();
        for h in &log {
            m.record(h, h.base_offset, 0);
        }
        for b in &log[3..] {
            assert!(matches!(m.check(b), Ok(SequenceCheck::Duplicate { .. })));
        }
        for b in &log[..3] {
            assert!(m.check(b).is_err());
        }
    }

    #[test]
    fn idle_producers_expire_at_the_expiration_time() {
        let mut m = manager();
        let mut leo = 0;
        append(&mut m, &batch(1, 0, 0, 1), &mut leo, 1_000);
        append(&mut m, &batch(2, 0, 0, 1), &mut leo, 5_000);
        m.expire(1_000 + EXPIRATION_MS - 1);
        assert_eq!(m.len(), 2);
        m.expire(1_000 + EXPIRATION_MS);
        assert_eq!(m.len(), 1);
        assert_eq!(m.producer_epoch(1), None);
        // Expired: its retry is no longer recognised, and any sequence is accepted (KIP-360).
        assert_eq!(m.check(&batch(1, 0, 0, 1)), Ok(SequenceCheck::Append));
        assert_eq!(m.check(&batch(1, 0, 17, 1)), Ok(SequenceCheck::Append));
        // Using a producer refreshes it.
        append(&mut m, &batch(2, 0, 1, 1), &mut leo, 60_000);
        m.expire(5_000 + EXPIRATION_MS);
        assert_eq!(m.len(), 1);
        m.expire(i64::MAX);
        assert!(m.is_empty());
        // Clock far in the past does not overflow or expire.
        append(&mut m, &batch(4, 0, 0, 1), &mut leo, i64::MAX);
        m.expire(i64::MIN);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn full_manager_evicts_the_least_recently_used_producer() {
        let mut m = ProducerStateManager::new(EXPIRATION_MS, 2);
        let mut leo = 0;
        append(&mut m, &batch(1, 0, 0, 1), &mut leo, 0);
        append(&mut m, &batch(2, 0, 0, 1), &mut leo, 0);
        append(&mut m, &batch(1, 0, 1, 1), &mut leo, 0);
        append(&mut m, &batch(3, 0, 0, 1), &mut leo, 0);
        assert_eq!(m.len(), 2);
        assert_eq!(m.producer_epoch(2), None);
        assert_eq!(m.producer_epoch(1), Some(0));
        assert_eq!(m.producer_epoch(3), Some(0));
        append(&mut m, &batch(4, 0, 0, 1), &mut leo, 0);
        assert_eq!(m.producer_epoch(1), None);
        assert_eq!(m.lru.len(), m.producers.len());
    }

    #[test]
    fn truncate_head_drops_producers_below_the_log_start() {
        let mut m = manager();
        let mut leo = 0;
        append(&mut m, &batch(1, 0, 0, 5), &mut leo, 0);
        append(&mut m, &batch(2, 0, 0, 5), &mut leo, 0);
        m.truncate_head(5);
        assert_eq!(m.producer_epoch(1), None);
        assert_eq!(m.producer_epoch(2), Some(0));
        m.truncate_head(9);
        assert_eq!(m.len(), 1);
        m.truncate_head(10);
        assert!(m.is_empty());
        assert!(m.lru.is_empty());
    }

    /// One step of a simulated idempotent producer.
    #[derive(Debug, Clone)]
    enum Step {
        /// Send a new batch of this many records from producer `usize`.
        Send(usize, i32),
        /// Retry the batch sent this many batches ago (0 = the last) by producer `usize`.
        Retry(usize, usize),
        /// Bump producer `usize`'s epoch (as after InitProducerId with a known id).
        BumpEpoch(usize),
    }

    /// A simulated producer: its epoch, next sequence, and batches sent in this epoch with the
    /// base offset each got.
    struct SimProducer {
        epoch: i16,
        next_sequence: i32,
        sent: Vec<(BatchHeader, i64)>,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0..3usize, 1..20i32).prop_map(|(p, n)| Step::Send(p, n)),
            4 => (0..3usize, 0..8usize).prop_map(|(p, back)| Step::Retry(p, back)),
            1 => (0..3usize).prop_map(Step::BumpEpoch),
        ]
    }

    proptest! {
        /// Retries of any of a producer's last five batches in its current epoch map to the
        /// offsets the first send got; nothing is ever appended twice; a rebuild from the
        /// appended headers gives the same answers.
        #[test]
        fn retries_map_to_their_original_offsets(
            steps in proptest::collection::vec(step(), 1..120),
            start_sequence in prop_oneof![Just(0), Just(i32::MAX - 30), 0..1000i32],
        ) {
            let mut m = ProducerStateManager::new(EXPIRATION_MS, 10);
            let mut log_end_offset = 0i64;
            let mut log = Vec::new();
            let mut producers: Vec<SimProducer> = (0..3)
                .map(|_| SimProducer { epoch: 0, next_sequence: start_sequence, sent: Vec::new() })
                .collect();
            for (now_ms, step) in steps.into_iter().enumerate() {
                let now_ms = now_ms as i64;
                match step {
                    Step::Send(p, count) => {
                        let SimProducer { epoch, next_sequence, sent } = &mut producers[p];
                        let mut b = batch(100 + p as i64, *epoch, *next_sequence, count);
                        prop_assert_eq!(m.check(&b), Ok(SequenceCheck::Append));
                        b.base_offset = log_end_offset;
                        m.record(&b, log_end_offset, now_ms);
                        log_end_offset += count as i64;
                        *next_sequence = b.last_sequence().wrapping_add(1) & i32::MAX;
                        sent.push((b, b.base_offset));
                        log.push(b);
                    }
                    Step::Retry(p, back) => {
                        let sent = &producers[p].sent;
                        if back >= sent.len() {
                            continue;
                        }
                        let (b, base_offset) = sent[sent.len() - 1 - back];
                        let got = m.check(&b);
                        if back < BATCHES_RETAINED_PER_PRODUCER {
                            prop_assert_eq!(got, Ok(SequenceCheck::Duplicate {
                                base_offset,
                                last_offset: base_offset + b.records_count as i64 - 1,
                            }));
                        } else {
                            prop_assert!(
                                matches!(got, Err(ProducerStateError::OutOfOrderSequence { .. })),
                                "an old retry must be refused, got {:?}", got
                            );
                        }
                    }
                    Step::BumpEpoch(p) => {
                        let SimProducer { epoch, next_sequence, sent } = &mut producers[p];
                        let stale = sent.last().map(|(b, _)| *b);
                        *epoch += 1;
                        *next_sequence = 0;
                        sent.clear();
                        if let Some(stale) = stale {
                            // A retry from the fenced epoch is refused once the new epoch wrote.
                            let mut first = batch(100 + p as i64, *epoch, 0, 1);
                            prop_assert_eq!(m.check(&first), Ok(SequenceCheck::Append));
                            first.base_offset = log_end_offset;
                            m.record(&first, log_end_offset, now_ms);
                            log_end_offset += 1;
                            *next_sequence = 1;
                            sent.push((first, first.base_offset));
                            log.push(first);
                            prop_assert!(
                                matches!(m.check(&stale), Err(ProducerStateError::InvalidProducerEpoch { .. })),
                                "stale epoch accepted"
                            );
                        }
                    }
                }
            }
            let mut rebuilt = ProducerStateManager::new(EXPIRATION_MS, 10);
            for h in &log {
                rebuilt.record(h, h.base_offset, 0);
            }
            for b in &log {
                prop_assert_eq!(rebuilt.check(b), m.check(b));
            }
        }
    }
}
