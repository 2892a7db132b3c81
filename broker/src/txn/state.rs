//! The transaction coordinator's state machine (sans-IO), after Kafka's `TransactionCoordinator`
//! and `TransactionMetadata`: one [`TxnMetadata`] per transactional id, moved through
//! `Empty → Ongoing → PrepareCommit|PrepareAbort → CompleteCommit|CompleteAbort → Ongoing …`.
//!
//! Every change is a write: an operation returns the metadata to persist in
//! `__transaction_state` and marks the id `pending`; the shell appends it and calls
//! [`TxnState::apply`] once it is durable (or [`TxnState::unpend`] when it is not). While an id
//! is pending or its markers are being written (`Prepare*`), its requests get
//! CONCURRENT_TRANSACTIONS, which clients retry.

use std::collections::{BTreeSet, HashMap};

use spate_client::protocol::ErrorCode;

/// Kafka's transaction states, with their `__transaction_state` byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum TxnStatus {
    Empty = 0,
    Ongoing = 1,
    PrepareCommit = 2,
    PrepareAbort = 3,
    CompleteCommit = 4,
    CompleteAbort = 5,
    Dead = 6,
    PrepareEpochFence = 7,
}

impl TxnStatus {
    pub fn from_i8(v: i8) -> Option<TxnStatus> {
        Some(match v {
            0 => TxnStatus::Empty,
            1 => TxnStatus::Ongoing,
            2 => TxnStatus::PrepareCommit,
            3 => TxnStatus::PrepareAbort,
            4 => TxnStatus::CompleteCommit,
            5 => TxnStatus::CompleteAbort,
            6 => TxnStatus::Dead,
            7 => TxnStatus::PrepareEpochFence,
            _ => return None,
        })
    }

    /// Kafka's names (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
            TxnStatus::Dead => "Dead",
            TxnStatus::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub fn is_prepare(self) -> bool {
        matches!(self, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence)
    }
}

/// One transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// The partitions of the ongoing (or ending) transaction.
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    /// When the ongoing transaction began (its first AddPartitions); -1 when none.
    pub start_ms: i64,
    /// A write of this id is in flight (not persisted).
    pub pending: bool,
}

/// Limits and timeouts (Kafka's config keys).
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`
    pub id_expiration_ms: i64,
    /// Bound on transactional ids this broker coordinates (memory).
    pub max_transactional_ids: usize,
    /// Bound on partitions in one transaction.
    pub max_partitions_per_txn: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
            id_expiration_ms: 604_800_000,
            max_transactional_ids: 100_000,
            max_partitions_per_txn: 10_000,
        }
    }
}

/// What InitProducerId asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new transactional id: allocate a producer id and call again with it.
    NeedProducerId,
    /// Persist this, then answer with its producer id and epoch.
    Write(TxnMetadata),
    /// An earlier InitProducerId's bump is what this retry asks for: answer with these.
    Current { producer_id: i64, producer_epoch: i16 },
    /// The ongoing transaction must be aborted first (epoch bumped to fence its producer):
    /// persist this `PrepareAbort`, write the markers, and answer CONCURRENT_TRANSACTIONS
    /// (the client retries).
    AbortFirst(TxnMetadata),
}

/// What EndTxn asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// Persist this `Prepare*`, answer once durable, then write markers.
    Prepare(TxnMetadata),
    /// A retry of an EndTxn that already completed.
    AlreadyDone,
}

/// The coordinator's transactional ids (those of the `__transaction_state` partitions it leads).
#[derive(Debug, Default)]
pub struct TxnState {
    txns: HashMap<String, TxnMetadata>,
    config: TxnConfig,
}

/// The largest epoch handed out; one more is kept for the coordinator's fencing bump.
const MAX_EPOCH: i16 = i16::MAX - 1;

impl TxnState {
    pub fn new(config: TxnConfig) -> TxnState {
        TxnState { txns: HashMap::new(), config }
    }

    pub fn get(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    pub fn all(&self) -> impl Iterator<Item = &TxnMetadata> {
        self.txns.values()
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// A record read back from `__transaction_state` (`None`: a tombstone).
    pub fn load(&mut self, transactional_id: String, value: Option<TxnMetadata>) {
        match value {
            Some(m) => {
                self.txns.insert(transactional_id, m);
            }
            None => {
                self.txns.remove(&transactional_id);
            }
        }
    }

    /// Takes over the ids of a freshly loaded partition.
    pub fn adopt(&mut self, loaded: TxnState) {
        self.txns.extend(loaded.txns);
    }

    /// Drops the ids `owned_elsewhere` says another coordinator owns now.
    pub fn unload(&mut self, mut moved: impl FnMut(&str) -> bool) -> usize {
        let before = self.txns.len();
        self.txns.retain(|id, _| !moved(id));
        before - self.txns.len()
    }

    /// The write of `next` is durable: it becomes the id's state.
    pub fn apply(&mut self, next: TxnMetadata) {
        let mut next = next;
        next.pending = false;
        self.txns.insert(next.transactional_id.clone(), next);
    }

    /// The write for `transactional_id` failed: its state stays what it was.
    pub fn unpend(&mut self, transactional_id: &str) {
        if let Some(m) = self.txns.get_mut(transactional_id) {
            m.pending = false;
            // A first write that never landed leaves nothing behind.
            if m.producer_id < 0 {
                self.txns.remove(transactional_id);
            }
        }
    }

    fn mark_pending(&mut self, next: &TxnMetadata) {
        match self.txns.get_mut(&next.transactional_id) {
            Some(m) => m.pending = true,
            None => {
                // Placeholder until the first write lands (see `unpend`).
                let mut placeholder = next.clone();
                placeholder.producer_id = -1;
                placeholder.pending = true;
                self.txns.insert(next.transactional_id.clone(), placeholder);
            }
        }
    }

    /// InitProducerId with a transactional id. `expected` is the request's
    /// `(producer_id, producer_epoch)` (KIP-360; `(-1, -1)` when not given); `new_producer_id`
    /// is a freshly allocated id when the caller has one.
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: (i64, i16),
        new_producer_id: Option<i64>,
        now_ms: i64,
    ) -> Result<InitOutcome, ErrorCode> {
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(ErrorCode::INVALID_TRANSACTION_TIMEOUT);
        }
        let Some(m) = self.txns.get(transactional_id) else {
            if self.txns.len() >= self.config.max_transactional_ids {
                return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE);
            }
            let Some(producer_id) = new_producer_id else {
                return Ok(InitOutcome::NeedProducerId);
            };
            let next = TxnMetadata {
                transactional_id: transactional_id.to_string(),
                producer_id,
                producer_epoch: 0,
                timeout_ms,
                status: TxnStatus::Empty,
                partitions: BTreeSet::new(),
                last_update_ms: now_ms,
                start_ms: -1,
                pending: false,
            };
            self.mark_pending(&next);
            return Ok(InitOutcome::Write(next));
        };
        if m.pending || m.status.is_prepare() {
            return Err(ErrorCode::CONCURRENT_TRANSACTIONS);
        }
        let (expected_id, expected_epoch) = expected;
        if expected_id >= 0 {
            if expected_id != m.producer_id {
                return Err(ErrorCode::PRODUCER_FENCED);
            }
            if expected_epoch != m.producer_epoch {
                // The retry of a bump that landed: hand out the current epoch again.
                if expected_epoch.checked_add(1) == Some(m.producer_epoch) && m.status != TxnStatus::Ongoing {
                    return Ok(InitOutcome::Current { producer_id: m.producer_id, producer_epoch: m.producer_epoch });
                }
                return Err(ErrorCode::PRODUCER_FENCED);
            }
        }
        if m.status == TxnStatus::Ongoing {
            // A new producer instance (or a recovering one) while a transaction is open: abort
            // it, bumping the epoch so the old instance can write nothing more.
            let mut next = m.clone();
            next.producer_epoch = m.producer_epoch.saturating_add(1);
            next.status = TxnStatus::PrepareAbort;
            next.last_update_ms = now_ms;
            self.mark_pending(&next);
            return Ok(InitOutcome::AbortFirst(next));
        }
        let mut next = m.clone();
        if m.producer_epoch >= MAX_EPOCH {
            let Some(producer_id) = new_producer_id else {
                return Ok(InitOutcome::NeedProducerId);
            };
            next.producer_id = producer_id;
            next.producer_epoch = 0;
        } else {
            next.producer_epoch = m.producer_epoch + 1;
        }
        next.timeout_ms = timeout_ms;
        next.status = TxnStatus::Empty;
        next.partitions.clear();
        next.start_ms = -1;
        next.last_update_ms = now_ms;
        self.mark_pending(&next);
        Ok(InitOutcome::Write(next))
    }

    /// The checks every request of an initialised producer passes (Kafka's order).
    fn check_producer(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<&TxnMetadata, ErrorCode> {
        let m = self.txns.get(transactional_id).filter(|m| m.producer_id >= 0);
        let Some(m) = m else {
            return Err(ErrorCode::INVALID_PRODUCER_ID_MAPPING);
        };
        if m.producer_id != producer_id {
            return Err(ErrorCode::INVALID_PRODUCER_ID_MAPPING);
        }
        if m.producer_epoch != producer_epoch {
            return Err(ErrorCode::PRODUCER_FENCED);
        }
        if m.pending || m.status.is_prepare() {
            return Err(ErrorCode::CONCURRENT_TRANSACTIONS);
        }
        Ok(m)
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: `Ok(None)` when every partition is in the
    /// transaction already; otherwise the state to persist.
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> Result<Option<TxnMetadata>, ErrorCode> {
        let m = self.check_producer(transactional_id, producer_id, producer_epoch)?;
        if m.status == TxnStatus::Dead {
            return Err(ErrorCode::INVALID_TXN_STATE);
        }
        if m.status == TxnStatus::Ongoing && partitions.iter().all(|p| m.partitions.contains(p)) {
            return Ok(None);
        }
        let mut next = m.clone();
        if next.status != TxnStatus::Ongoing {
            next.partitions.clear();
            next.start_ms = now_ms;
        }
        next.partitions.extend(partitions.iter().cloned());
        if next.partitions.len() > self.config.max_partitions_per_txn {
            return Err(ErrorCode::INVALID_REQUEST);
        }
        next.status = TxnStatus::Ongoing;
        next.last_update_ms = now_ms;
        self.mark_pending(&next);
        Ok(Some(next))
    }

    /// KIP-890 part 1, asked by a partition leader before the first transactional batch of a
    /// transaction lands there: for each partition, NONE when it is in the ongoing transaction
    /// of this producer id and epoch, INVALID_TXN_STATE otherwise. The durable state decides (a
    /// partition being added now is not in it yet: its AddPartitionsToTxn has not been answered,
    /// so its producer cannot have written).
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<Vec<ErrorCode>, ErrorCode> {
        let Some(m) = self.txns.get(transactional_id).filter(|m| m.producer_id == producer_id) else {
            return Err(ErrorCode::INVALID_PRODUCER_ID_MAPPING);
        };
        if m.producer_epoch != producer_epoch {
            return Err(ErrorCode::PRODUCER_FENCED);
        }
        let ongoing = m.status == TxnStatus::Ongoing;
        Ok(partitions
            .iter()
            .map(|p| if ongoing && m.partitions.contains(p) { ErrorCode::NONE } else { ErrorCode::INVALID_TXN_STATE })
            .collect())
    }

    /// EndTxn.
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<EndOutcome, ErrorCode> {
        let m = match self.check_producer(transactional_id, producer_id, producer_epoch) {
            Err(ErrorCode::CONCURRENT_TRANSACTIONS) => {
                // A retry while the same ending is still writing its markers.
                let m = &self.txns[transactional_id];
                let same = (commit && m.status == TxnStatus::PrepareCommit)
                    || (!commit && m.status == TxnStatus::PrepareAbort);
                return Err(if same || m.pending {
                    ErrorCode::CONCURRENT_TRANSACTIONS
                } else {
                    ErrorCode::INVALID_TXN_STATE
                });
            }
            other => other?,
        };
        match (m.status, commit) {
            (TxnStatus::Ongoing, _) => {
                let mut next = m.clone();
                next.status = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
                next.last_update_ms = now_ms;
                self.mark_pending(&next);
                Ok(EndOutcome::Prepare(next))
            }
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => Ok(EndOutcome::AlreadyDone),
            _ => Err(ErrorCode::INVALID_TXN_STATE),
        }
    }

    /// The markers of a `Prepare*` transaction are written: its `Complete*` state to persist.
    pub fn complete(&mut self, transactional_id: &str, now_ms: i64) -> Option<TxnMetadata> {
        let m = self.txns.get(transactional_id)?;
        if m.pending || !m.status.is_prepare() {
            return None;
        }
        let mut next = m.clone();
        next.status = match m.status {
            TxnStatus::PrepareCommit => TxnStatus::CompleteCommit,
            _ => TxnStatus::CompleteAbort,
        };
        next.partitions.clear();
        next.start_ms = -1;
        next.last_update_ms = now_ms;
        self.mark_pending(&next);
        Some(next)
    }

    /// Ongoing transactions past their timeout, to abort: each returned `PrepareAbort` (epoch
    /// bumped, fencing the producer) is to be persisted like an EndTxn's.
    pub fn expire_transactions(&mut self, now_ms: i64) -> Vec<TxnMetadata> {
        let expired: Vec<TxnMetadata> = self
            .txns
            .values()
            .filter(|m| {
                !m.pending && m.status == TxnStatus::Ongoing && now_ms.saturating_sub(m.start_ms) > m.timeout_ms as i64
            })
            .map(|m| {
                let mut next = m.clone();
                next.producer_epoch = m.producer_epoch.saturating_add(1);
                next.status = TxnStatus::PrepareAbort;
                next.last_update_ms = now_ms;
                next
            })
            .collect();
        for next in &expired {
            self.mark_pending(next);
        }
        expired
    }

    /// Transactions whose markers are still to be written (after a load, or a failed attempt).
    pub fn prepared(&self) -> Vec<TxnMetadata> {
        self.txns.values().filter(|m| !m.pending && m.status.is_prepare()).cloned().collect()
    }

    /// Idle transactional ids past `transactional.id.expiration.ms`: removed now; the shell
    /// writes their tombstones.
    pub fn expire_ids(&mut self, now_ms: i64) -> Vec<String> {
        let limit = self.config.id_expiration_ms;
        let expired: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                !m.pending
                    && matches!(m.status, TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort)
                    && now_ms.saturating_sub(m.last_update_ms) > limit
            })
            .map(|m| m.transactional_id.clone())
            .collect();
        for id in &expired {
            self.txns.remove(id);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(s: &mut TxnState, id: &str, now: i64) -> TxnMetadata {
        let out = match s.init_producer_id(id, 10_000, (-1, -1), None, now).unwrap() {
            InitOutcome::NeedProducerId => s.init_producer_id(id, 10_000, (-1, -1), Some(1000), now).unwrap(),
            other => other,
        };
        let InitOutcome::Write(m) = out else { panic!("{out:?}") };
        s.apply(m.clone());
        m
    }

    fn tp(t: &str, p: i32) -> (String, i32) {
        (t.to_string(), p)
    }

    #[test]
    fn a_transaction_commits_through_prepare_and_complete() {
        let mut s = TxnState::default();
        let m = init(&mut s, "t", 0);
        assert_eq!((m.producer_id, m.producer_epoch, m.status), (1000, 0, TxnStatus::Empty));
        let added = s.add_partitions("t", 1000, 0, &[tp("a", 0)], 5).unwrap().unwrap();
        // Pending until durable: a concurrent request is told to retry.
        assert_eq!(s.add_partitions("t", 1000, 0, &[tp("a", 1)], 5), Err(ErrorCode::CONCURRENT_TRANSACTIONS));
        s.apply(added);
        assert_eq!(s.add_partitions("t", 1000, 0, &[tp("a", 0)], 6), Ok(None));
        let EndOutcome::Prepare(prepare) = s.end_txn("t", 1000, 0, true, 7).unwrap() else { panic!() };
        assert_eq!(prepare.status, TxnStatus::PrepareCommit);
        assert_eq!(prepare.partitions, [tp("a", 0)].into());
        s.apply(prepare);
        assert_eq!(s.end_txn("t", 1000, 0, true, 8), Err(ErrorCode::CONCURRENT_TRANSACTIONS));
        assert_eq!(s.end_txn("t", 1000, 0, false, 8), Err(ErrorCode::INVALID_TXN_STATE));
        assert_eq!(s.prepared().len(), 1);
        let done = s.complete("t", 9).unwrap();
        assert_eq!(done.status, TxnStatus::CompleteCommit);
        assert!(done.partitions.is_empty());
        s.apply(done);
        assert_eq!(s.end_txn("t", 1000, 0, true, 10), Ok(EndOutcome::AlreadyDone));
        assert_eq!(s.end_txn("t", 1000, 0, false, 10), Err(ErrorCode::INVALID_TXN_STATE));
        // The next transaction starts afresh.
        let next = s.add_partitions("t", 1000, 0, &[tp("b", 2)], 11).unwrap().unwrap();
        assert_eq!(next.partitions, [tp("b", 2)].into());
        assert_eq!(next.start_ms, 11);
    }

    #[test]
    fn a_second_instance_fences_the_first_and_aborts_its_transaction() {
        let mut s = TxnState::default();
        init(&mut s, "t", 0);
        let added = s.add_partitions("t", 1000, 0, &[tp("a", 0)], 1).unwrap().unwrap();
        s.apply(added);
        let InitOutcome::AbortFirst(abort) = s.init_producer_id("t", 10_000, (-1, -1), None, 2).unwrap() else {
            panic!()
        };
        assert_eq!((abort.status, abort.producer_epoch), (TxnStatus::PrepareAbort, 1));
        s.apply(abort);
        // The old instance is fenced everywhere.
        assert_eq!(s.add_partitions("t", 1000, 0, &[tp("a", 1)], 3), Err(ErrorCode::PRODUCER_FENCED));
        assert_eq!(s.end_txn("t", 1000, 0, true, 3), Err(ErrorCode::PRODUCER_FENCED));
        // The new one retries while the markers are written, then gets epoch 2.
        assert_eq!(s.init_producer_id("t", 10_000, (-1, -1), None, 3), Err(ErrorCode::CONCURRENT_TRANSACTIONS));
        let done = s.complete("t", 4).unwrap();
        s.apply(done);
        let InitOutcome::Write(m) = s.init_producer_id("t", 10_000, (-1, -1), None, 5).unwrap() else { panic!() };
        assert_eq!((m.producer_id, m.producer_epoch, m.status), (1000, 2, TxnStatus::Empty));
    }

    #[test]
    fn kip_360_bump_with_the_current_epoch_and_fencing_of_others() {
        let mut s = TxnState::default();
        init(&mut s, "t", 0);
        let InitOutcome::Write(m) = s.init_producer_id("t", 10_000, (1000, 0), None, 1).unwrap() else { panic!() };
        assert_eq!(m.producer_epoch, 1);
        s.apply(m);
        // A retry of that bump gets the same answer; an older epoch or another id is fenced.
        assert_eq!(
            s.init_producer_id("t", 10_000, (1000, 0), None, 2),
            Ok(InitOutcome::Current { producer_id: 1000, producer_epoch: 1 })
        );
        s.unpend("t");
        assert_eq!(s.init_producer_id("t", 10_000, (999, 1), None, 2), Err(ErrorCode::PRODUCER_FENCED));
        assert_eq!(s.init_producer_id("t", 10_000, (1000, 5), None, 2), Err(ErrorCode::PRODUCER_FENCED));
    }

    #[test]
    fn timed_out_transactions_are_aborted_with_a_bumped_epoch() {
        let mut s = TxnState::default();
        init(&mut s, "t", 0);
        let added = s.add_partitions("t", 1000, 0, &[tp("a", 0)], 100).unwrap().unwrap();
        s.apply(added);
        assert!(s.expire_transactions(100 + 10_000).is_empty());
        let expired = s.expire_transactions(100 + 10_001);
        assert_eq!(expired.len(), 1);
        assert_eq!((expired[0].status, expired[0].producer_epoch), (TxnStatus::PrepareAbort, 1));
        // Pending: not expired twice.
        assert!(s.expire_transactions(100 + 20_000).is_empty());
    }

    #[test]
    fn failed_first_write_leaves_nothing_and_bad_requests_are_refused() {
        let mut s = TxnState::default();
        let InitOutcome::Write(_) = s.init_producer_id("t", 10_000, (-1, -1), Some(5), 0).unwrap() else { panic!() };
        s.unpend("t");
        assert!(s.get("t").is_none());
        assert_eq!(s.init_producer_id("t", 0, (-1, -1), None, 0), Err(ErrorCode::INVALID_TRANSACTION_TIMEOUT));
        assert_eq!(s.init_producer_id("t", 900_001, (-1, -1), None, 0), Err(ErrorCode::INVALID_TRANSACTION_TIMEOUT));
        assert_eq!(s.add_partitions("nope", 1, 0, &[tp("a", 0)], 0), Err(ErrorCode::INVALID_PRODUCER_ID_MAPPING));
        init(&mut s, "t", 0);
        assert_eq!(s.add_partitions("t", 7, 0, &[tp("a", 0)], 0), Err(ErrorCode::INVALID_PRODUCER_ID_MAPPING));
        assert_eq!(s.end_txn("t", 1000, 0, true, 0), Err(ErrorCode::INVALID_TXN_STATE));
    }

    #[test]
    fn verification_answers_from_the_durable_state() {
        let mut s = TxnState::default();
        let m = init(&mut s, "t", 0);
        let (pid, epoch) = (m.producer_id, m.producer_epoch);
        let asked = [tp("a", 0), tp("b", 1)];
        let invalid = ErrorCode::INVALID_TXN_STATE;
        assert_eq!(s.verify_partitions("t", pid, epoch, &asked), Ok(vec![invalid, invalid]), "no transaction yet");
        let next = s.add_partitions("t", pid, epoch, &[tp("a", 0)], 1).unwrap().unwrap();
        assert_eq!(s.verify_partitions("t", pid, epoch, &asked), Ok(vec![invalid, invalid]), "not durable yet");
        s.apply(next);
        assert_eq!(s.verify_partitions("t", pid, epoch, &asked), Ok(vec![ErrorCode::NONE, invalid]));
        assert_eq!(s.verify_partitions("t", pid, epoch + 1, &asked), Err(ErrorCode::PRODUCER_FENCED));
        assert_eq!(s.verify_partitions("t", pid + 1, epoch, &asked), Err(ErrorCode::INVALID_PRODUCER_ID_MAPPING));
        assert_eq!(s.verify_partitions("other", pid, epoch, &asked), Err(ErrorCode::INVALID_PRODUCER_ID_MAPPING));
        // Once the transaction is ending, late data is refused.
        let EndOutcome::Prepare(next) = s.end_txn("t", pid, epoch, true, 2).unwrap() else { panic!("prepare") };
        s.apply(next);
        assert_eq!(s.verify_partitions("t", pid, epoch, &asked), Ok(vec![invalid, invalid]));
    }

    #[test]
    fn idle_ids_expire() {
        let mut s = TxnState::new(TxnConfig { id_expiration_ms: 100, ..TxnConfig::default() });
        init(&mut s, "t", 0);
        assert!(s.expire_ids(100).is_empty());
        assert_eq!(s.expire_ids(101), vec!["t".to_string()]);
        assert!(s.is_empty());
    }
}
