//! Transactions (KIP-98, KIP-447, KIP-360), as the Java client's `TransactionManager` does
//! them.
//!
//! The state machine ([`TxnStatus`]) is plain data with unit tests; [`TransactionManager`] is
//! the async shell that talks to the transaction coordinator (FindCoordinator key type 1,
//! InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn) and to the group coordinator
//! (TxnOffsetCommit). The producer's transactional methods live here too, as an `impl Producer`
//! block.
//!
//! AddPartitionsToTxn is the sender's business: a record for a partition new in the
//! transaction marks it pending in the accumulator, which drains nothing of it until the
//! coordinator has added it ([`maybe_add_partitions`]). Everything else runs on the caller's
//! task, one call at a time.
//!
//! Errors are classed as Java's are. Fatal ones (fenced by a newer instance, not authorized,
//! an unsupported version, an invalid transaction state at EndTxn) make every later call fail
//! with [`Error::TransactionFatal`]. Abortable ones (a send in the transaction failed, the
//! coordinator answered TRANSACTION_ABORTABLE, the group fenced the offsets) make every call
//! but `abort_transaction` fail with [`Error::TransactionAbortable`]; records not yet sent are
//! failed at once, and after the abort a new transaction may begin. Coordinator errors that
//! only mean "not now" are retried until `max.block.ms`; a call that times out leaves the state
//! as it was, so it can be made again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::accumulator::{CompletionWait, ProducerIdAndEpoch};
use super::sender::SenderShared;
use super::Producer;
use crate::connection::{Connection, ConnectionConfig};
use crate::consumer::{ConsumerGroupMetadata, OffsetAndMetadata};
use crate::error::{Error, ProtocolError, Result};
use crate::metadata::{Cluster, TopicPartition};
use crate::protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use crate::protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use crate::protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    EndTxnRequest, EndTxnResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use crate::protocol::{str_bytes, ApiKey, Codec, ErrorCode};

/// Where a transactional producer is, by the Java client's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnState {
    Uninitialized,
    Initializing,
    Ready,
    InTransaction,
    CommittingTransaction,
    AbortingTransaction,
    AbortableError,
    FatalError,
}

impl TxnState {
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Uninitialized => "UNINITIALIZED",
            TxnState::Initializing => "INITIALIZING",
            TxnState::Ready => "READY",
            TxnState::InTransaction => "IN_TRANSACTION",
            TxnState::CommittingTransaction => "COMMITTING_TRANSACTION",
            TxnState::AbortingTransaction => "ABORTING_TRANSACTION",
            TxnState::AbortableError => "ABORTABLE_ERROR",
            TxnState::FatalError => "FATAL_ERROR",
        }
    }
}

/// The transactional state machine: plain data, changed under the manager's lock.
#[derive(Debug)]
pub(crate) struct TxnStatus {
    state: TxnState,
    /// Why the state is `AbortableError` or `FatalError`.
    last_error: Option<Arc<Error>>,
    /// From InitProducerId.
    producer: ProducerIdAndEpoch,
    /// The coordinator knows of the current transaction (a partition or a group's offsets were
    /// added), so EndTxn must end it. Without this EndTxn is skipped, as Java's: a coordinator
    /// that never heard of the transaction answers it INVALID_TXN_STATE.
    started: bool,
    /// An error that may have left the broker holding sequences this producer does not know
    /// of: the abort gets a new epoch from the coordinator (KIP-360).
    epoch_bump_required: bool,
}

impl TxnStatus {
    fn new() -> Self {
        TxnStatus {
            state: TxnState::Uninitialized,
            last_error: None,
            producer: ProducerIdAndEpoch::NONE,
            started: false,
            epoch_bump_required: false,
        }
    }

    /// The error of a call not allowed in the current state: the fatal or abortable error
    /// when there is one, else an invalid-state error naming the call.
    fn refuse(&self, operation: &'static str) -> Error {
        let source = || self.last_error.clone().unwrap_or_else(|| Arc::new(Error::TransactionAborted));
        match self.state {
            TxnState::FatalError => Error::TransactionFatal { source: source() },
            TxnState::AbortableError => Error::TransactionAbortable { source: source() },
            state => Error::InvalidTransactionState { operation, state: state.name() },
        }
    }

    /// Checks that `operation` may run now, and returns the state it runs in.
    fn check(&self, operation: &'static str, allowed: &[TxnState]) -> Result<TxnState> {
        if allowed.contains(&self.state) {
            Ok(self.state)
        } else {
            Err(self.refuse(operation))
        }
    }

    /// Moves to `to` if `operation` is allowed now; returns the state it left.
    fn transition(&mut self, operation: &'static str, allowed: &[TxnState], to: TxnState) -> Result<TxnState> {
        let from = self.check(operation, allowed)?;
        self.state = to;
        Ok(from)
    }

    /// The current transaction cannot commit. Ignored while aborting (that is where it goes
    /// anyway) and once an earlier error decided the outcome.
    fn abortable(&mut self, error: Arc<Error>) {
        if matches!(self.state, TxnState::InTransaction | TxnState::CommittingTransaction) {
            self.state = TxnState::AbortableError;
            self.last_error = Some(error);
        }
    }

    /// The producer cannot go on.
    fn fatal(&mut self, error: Arc<Error>) {
        if self.state != TxnState::FatalError {
            self.state = TxnState::FatalError;
            self.last_error = Some(error);
        }
    }

    /// A transaction ended (committed or aborted).
    fn completed(&mut self) {
        self.state = TxnState::Ready;
        self.last_error = None;
        self.started = false;
    }

    /// What records not yet sent are failed with: the error that forces an abort, or
    /// [`Error::TransactionAborted`] while aborting; `None` while they may still go.
    fn undrained_error(&self) -> Option<Arc<Error>> {
        match self.state {
            TxnState::AbortableError | TxnState::FatalError => self.last_error.clone(),
            TxnState::AbortingTransaction => Some(Arc::new(Error::TransactionAborted)),
            _ => None,
        }
    }
}

/// What a coordinator's error code means for the call that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Not now: send again after the retry backoff, looking the coordinator up again first
    /// when it moved.
    Retry { find_coordinator: bool },
    /// The transaction cannot commit; the user must abort it.
    Abortable,
    /// The producer cannot go on.
    Fatal,
}

/// Classes a transaction or group coordinator's answer to InitProducerId, AddPartitionsToTxn,
/// AddOffsetsToTxn, TxnOffsetCommit or EndTxn, as Java's handlers do. Codes it does not
/// expect are fatal, as there.
pub(crate) fn classify(code: ErrorCode) -> ErrorClass {
    match code {
        ErrorCode::NOT_COORDINATOR | ErrorCode::COORDINATOR_NOT_AVAILABLE => {
            ErrorClass::Retry { find_coordinator: true }
        }
        ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
        | ErrorCode::CONCURRENT_TRANSACTIONS
        | ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
        | ErrorCode::REQUEST_TIMED_OUT => ErrorClass::Retry { find_coordinator: false },
        // KIP-890's TRANSACTION_ABORTABLE; partitions or a group the producer may not use;
        // offsets of a member the group has fenced (KIP-447: a zombie's offsets must not
        // commit); a producer id the coordinator lost (KIP-360: fixed by the abort's bump).
        ErrorCode::TRANSACTION_ABORTABLE
        | ErrorCode::TOPIC_AUTHORIZATION_FAILED
        | ErrorCode::GROUP_AUTHORIZATION_FAILED
        | ErrorCode::UNKNOWN_MEMBER_ID
        | ErrorCode::ILLEGAL_GENERATION
        | ErrorCode::FENCED_INSTANCE_ID
        | ErrorCode::UNKNOWN_PRODUCER_ID
        | ErrorCode::INVALID_PRODUCER_ID_MAPPING => ErrorClass::Abortable,
        code if code.is_retriable() => ErrorClass::Retry { find_coordinator: false },
        // PRODUCER_FENCED and INVALID_PRODUCER_EPOCH (a newer instance of the transactional
        // id), TRANSACTIONAL_ID_AUTHORIZATION_FAILED, INVALID_TXN_STATE, UNSUPPORTED_VERSION,
        // TRANSACTION_COORDINATOR_FENCED, ...
        _ => ErrorClass::Fatal,
    }
}

/// Whether a batch that failed inside a transaction makes the producer unusable (Java's
/// `handleFailedBatch`); any other failure makes the transaction abortable.
pub(crate) fn batch_error_is_fatal(error: &Error) -> bool {
    match error {
        Error::Delivery { source, .. } => batch_error_is_fatal(source),
        Error::UnsupportedApi { .. } | Error::ApiNotSupported { .. } => true,
        e => matches!(
            e.code(),
            Some(
                ErrorCode::PRODUCER_FENCED
                    | ErrorCode::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                    | ErrorCode::CLUSTER_AUTHORIZATION_FAILED
                    | ErrorCode::UNSUPPORTED_VERSION
            )
        ),
    }
}

/// A failed batch's error after which the broker's sequences for this producer are unknown.
fn batch_error_needs_epoch_bump(error: &Error) -> bool {
    matches!(
        error.code(),
        Some(
            ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER
                | ErrorCode::UNKNOWN_PRODUCER_ID
                | ErrorCode::INVALID_PRODUCER_EPOCH
                | ErrorCode::INVALID_PRODUCER_ID_MAPPING
        )
    )
}

/// Backoff after CONCURRENT_TRANSACTIONS while the previous transaction completes.
const CONCURRENT_TRANSACTIONS_BACKOFF: Duration = Duration::from_millis(20);

/// One attempt of a coordinator request.
enum Attempt<T> {
    Done(T),
    /// The coordinator said "not now"; the attempt already forgot a coordinator that moved.
    Retry(Error),
}

/// A transactional producer's state and its coordinators.
pub(crate) struct TransactionManager {
    pub transactional_id: String,
    transactional_id_wire: TransactionalId,
    transaction_timeout_ms: i32,
    status: Mutex<TxnStatus>,
    /// Serialises the user's transactional calls (init, send_offsets, commit, abort).
    calls: tokio::sync::Mutex<()>,
    /// Whether an AddPartitionsToTxn is in flight: set by the sender, waited on by commit and
    /// abort, which must know whether the coordinator added them before ending.
    adding: watch::Sender<bool>,
    coordinator: tokio::sync::Mutex<Option<Connection>>,
    group_coordinators: tokio::sync::Mutex<HashMap<String, Connection>>,
    connection_config: ConnectionConfig,
    retry_backoff: Duration,
}

impl TransactionManager {
    pub fn new(
        transactional_id: String,
        transaction_timeout_ms: i32,
        connection_config: ConnectionConfig,
        retry_backoff: Duration,
    ) -> Self {
        TransactionManager {
            transactional_id_wire: TransactionalId(str_bytes(transactional_id.as_str())),
            transactional_id,
            transaction_timeout_ms,
            status: Mutex::new(TxnStatus::new()),
            calls: tokio::sync::Mutex::new(()),
            adding: watch::Sender::new(false),
            coordinator: tokio::sync::Mutex::new(None),
            group_coordinators: tokio::sync::Mutex::new(HashMap::new()),
            connection_config,
            retry_backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TxnStatus> {
        self.status.lock().expect("transaction status lock")
    }

    /// Whether `send` may add a record now (only inside a transaction).
    pub fn check_send(&self) -> Result<()> {
        self.lock().check("send", &[TxnState::InTransaction]).map(|_| ())
    }

    /// What the sender fails records not yet sent with, if they may not go.
    pub fn undrained_error(&self) -> Option<Arc<Error>> {
        self.lock().undrained_error()
    }

    /// A batch of the current transaction failed for good.
    pub fn batch_failed(&self, error: &Arc<Error>) {
        let mut status = self.lock();
        if batch_error_is_fatal(error) {
            warn!(transactional_id = %self.transactional_id, error = %error, "fatal error in a transaction");
            status.fatal(error.clone());
        } else {
            if batch_error_needs_epoch_bump(error) {
                status.epoch_bump_required = true;
            }
            if status.state != TxnState::AbortableError {
                debug!(transactional_id = %self.transactional_id, error = %error, "transaction must be aborted");
            }
            status.abortable(error.clone());
        }
    }

    /// Records what a failed coordinator call means for the state and returns the error for
    /// the caller: fatal and abortable codes change the state; others (timeouts, lost
    /// connections, "not now" answers until the deadline) leave it, so the call can be made
    /// again.
    fn failed(&self, error: Error) -> Error {
        let (class, code) = match &error {
            // Java's UnsupportedVersionException is fatal.
            Error::UnsupportedApi { .. } | Error::ApiNotSupported { .. } => (ErrorClass::Fatal, None),
            e => match e.code() {
                Some(code) => (classify(code), Some(code)),
                None => return error,
            },
        };
        if let ErrorClass::Retry { .. } = class {
            return error;
        }
        let error = Arc::new(error);
        let mut status = self.lock();
        if class == ErrorClass::Fatal {
            warn!(transactional_id = %self.transactional_id, error = %error, "fatal transaction error");
            status.fatal(error.clone());
            return Error::TransactionFatal { source: error };
        }
        if matches!(code, Some(ErrorCode::UNKNOWN_PRODUCER_ID | ErrorCode::INVALID_PRODUCER_ID_MAPPING)) {
            status.epoch_bump_required = true;
        }
        status.abortable(error.clone());
        Error::TransactionAbortable { source: error }
    }

    /// Runs `attempt` until it is done, fails, or the deadline leaves no room for another try.
    async fn retry<T, F, Fut>(&self, what: &str, deadline: Instant, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>>>,
    {
        self.retry_with(what, deadline, false, attempt).await
    }

    /// [`TransactionManager::retry`]; `adds` marks AddPartitionsToTxn/AddOffsetsToTxn, which
    /// retry CONCURRENT_TRANSACTIONS soon at the start of a transaction.
    async fn retry_with<T, F, Fut>(&self, what: &str, deadline: Instant, adds: bool, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>>>,
    {
        loop {
            let error = match attempt().await {
                Ok(Attempt::Done(value)) => return Ok(value),
                Ok(Attempt::Retry(error)) => error,
                Err(error) => match error.code() {
                    // FindCoordinator's COORDINATOR_NOT_AVAILABLE, ...
                    Some(code) if matches!(classify(code), ErrorClass::Retry { .. }) => error,
                    // A lost connection or a timeout: the attempt forgot its coordinator.
                    None if error.is_retriable() => error,
                    _ => return Err(error),
                },
            };
            // CONCURRENT_TRANSACTIONS on the first AddPartitionsToTxn/AddOffsetsToTxn of a
            // transaction: the previous one is still writing its markers, which takes milliseconds; the full backoff would cost
            // every short transaction 100 ms (Java's client retries its first AddPartitionsToTxn
            // after 20 ms for the same reason).
            let backoff = if adds && error.code() == Some(ErrorCode::CONCURRENT_TRANSACTIONS) && !self.lock().started {
                self.retry_backoff.min(CONCURRENT_TRANSACTIONS_BACKOFF)
            } else {
                self.retry_backoff
            };
            if Instant::now() + backoff >= deadline {
                return Err(error);
            }
            debug!(transactional_id = %self.transactional_id, error = %error, "{what} failed, retrying");
            tokio::time::sleep(backoff).await;
        }
    }

    /// Turns a coordinator's answer into an attempt's outcome, forgetting the coordinator
    /// (transaction or `group`) when it moved.
    async fn answer(
        &self,
        code: ErrorCode,
        context: impl FnOnce() -> String,
        group: Option<&str>,
    ) -> Result<Attempt<()>> {
        if code.is_ok() {
            return Ok(Attempt::Done(()));
        }
        let error = Error::broker(code, context());
        match classify(code) {
            ErrorClass::Retry { find_coordinator } => {
                if find_coordinator {
                    match group {
                        Some(group) => {
                            self.group_coordinators.lock().await.remove(group);
                        }
                        None => *self.coordinator.lock().await = None,
                    }
                }
                Ok(Attempt::Retry(error))
            }
            ErrorClass::Abortable | ErrorClass::Fatal => Err(error),
        }
    }

    /// The connection to the transaction coordinator, looked up when unknown.
    async fn txn_coordinator(&self, cluster: &Cluster) -> Result<Connection> {
        let mut slot = self.coordinator.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = find_coordinator(cluster, &self.connection_config, 1, &self.transactional_id).await?;
        info!(transactional_id = %self.transactional_id, coordinator = conn.peer(), "found transaction coordinator");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn group_coordinator(&self, cluster: &Cluster, group_id: &str) -> Result<Connection> {
        let mut slots = self.group_coordinators.lock().await;
        if let Some(conn) = slots.get(group_id).filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = find_coordinator(cluster, &self.connection_config, 0, group_id).await?;
        debug!(group = group_id, coordinator = conn.peer(), "found group coordinator");
        slots.insert(group_id.to_string(), conn.clone());
        Ok(conn)
    }

    /// Sends one request to the transaction coordinator (at the version `build` is given),
    /// forgetting the coordinator when the connection fails.
    async fn call_txn_coordinator<Req: Codec, Resp: Codec>(
        &self,
        cluster: &Cluster,
        api_key: ApiKey,
        build: impl FnOnce(i16) -> Result<Req>,
    ) -> Result<Resp> {
        let conn = self.txn_coordinator(cluster).await?;
        let version = conn.version(api_key)?;
        let request = build(version)?;
        match conn.send(api_key, version, &request).await {
            Ok(response) => Ok(response),
            Err(e) => {
                *self.coordinator.lock().await = None;
                Err(e)
            }
        }
    }

    /// InitProducerId for the transactional id: a new producer id, or (with `current`, from
    /// v3) a new epoch of this producer's id after an abort that lost sequences (KIP-360).
    /// Either way the coordinator fences older instances and aborts a transaction they left
    /// open.
    async fn init_producer_id(
        &self,
        cluster: &Cluster,
        current: ProducerIdAndEpoch,
        deadline: Instant,
    ) -> Result<ProducerIdAndEpoch> {
        self.retry("InitProducerId", deadline, move || async move {
            let response: InitProducerIdResponse = self
                .call_txn_coordinator(cluster, ApiKey::InitProducerId, |version| {
                    let mut request = InitProducerIdRequest::default()
                        .with_transactional_id(Some(self.transactional_id_wire.clone()))
                        .with_transaction_timeout_ms(self.transaction_timeout_ms);
                    if version >= 3 {
                        request = request
                            .with_producer_id(ProducerId(current.producer_id))
                            .with_producer_epoch(current.producer_epoch);
                    }
                    Ok(request)
                })
                .await?;
            let code = ErrorCode(response.error_code);
            match self.answer(code, || format!("InitProducerId for {}", self.transactional_id), None).await? {
                Attempt::Done(()) => Ok(Attempt::Done(ProducerIdAndEpoch {
                    producer_id: response.producer_id.0,
                    producer_epoch: response.producer_epoch,
                })),
                Attempt::Retry(e) => Ok(Attempt::Retry(e)),
            }
        })
        .await
    }

    /// AddPartitionsToTxn (v0–3) for `partitions`, retried until the coordinator answers for
    /// good or `deadline`.
    async fn add_partitions(&self, cluster: &Cluster, partitions: &[(Arc<str>, i32)], deadline: Instant) -> Result<()> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        let topics: Vec<AddPartitionsToTxnTopic> = by_topic
            .into_iter()
            .map(|(name, partitions)| {
                AddPartitionsToTxnTopic::default().with_name(TopicName(str_bytes(name))).with_partitions(partitions)
            })
            .collect();
        let topics = &topics;
        self.retry_with("AddPartitionsToTxn", deadline, true, move || async move {
            let producer = self.lock().producer;
            let response: AddPartitionsToTxnResponse = self
                .call_txn_coordinator(cluster, ApiKey::AddPartitionsToTxn, |_| {
                    Ok(AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(self.transactional_id_wire.clone())
                        .with_v3_and_below_producer_id(ProducerId(producer.producer_id))
                        .with_v3_and_below_producer_epoch(producer.producer_epoch)
                        .with_v3_and_below_topics(topics.clone()))
                })
                .await?;
            // The worst answer decides: a fatal one, else an abortable one, else a retry.
            // OPERATION_NOT_ATTEMPTED only says another partition failed.
            let mut worst: Option<(ErrorClass, ErrorCode, String)> = None;
            for t in &response.results_by_topic_v3_and_below {
                for p in &t.results_by_partition {
                    let code = ErrorCode(p.partition_error_code);
                    if code.is_ok() || code == ErrorCode::OPERATION_NOT_ATTEMPTED {
                        continue;
                    }
                    let class = classify(code);
                    let rank = |c: &ErrorClass| match c {
                        ErrorClass::Fatal => 2,
                        ErrorClass::Abortable => 1,
                        ErrorClass::Retry { .. } => 0,
                    };
                    if worst.as_ref().is_none_or(|(w, _, _)| rank(&class) > rank(w)) {
                        worst = Some((class, code, format!("{}-{}", t.name.0, p.partition_index)));
                    }
                }
            }
            match worst {
                None => Ok(Attempt::Done(())),
                Some((_, code, partition)) => {
                    match self.answer(code, || format!("AddPartitionsToTxn of {partition}"), None).await? {
                        Attempt::Done(()) => Ok(Attempt::Done(())),
                        Attempt::Retry(e) => Ok(Attempt::Retry(e)),
                    }
                }
            }
        })
        .await
    }

    /// EndTxn: commits or aborts the transaction on the coordinator.
    async fn end_txn(&self, cluster: &Cluster, committed: bool, deadline: Instant) -> Result<()> {
        let producer = self.lock().producer;
        let what = if committed { "EndTxn (commit)" } else { "EndTxn (abort)" };
        self.retry(what, deadline, move || async move {
            let response: EndTxnResponse = self
                .call_txn_coordinator(cluster, ApiKey::EndTxn, |_| {
                    Ok(EndTxnRequest::default()
                        .with_transactional_id(self.transactional_id_wire.clone())
                        .with_producer_id(ProducerId(producer.producer_id))
                        .with_producer_epoch(producer.producer_epoch)
                        .with_committed(committed))
                })
                .await?;
            self.answer(ErrorCode(response.error_code), || format!("{what} of {}", self.transactional_id), None).await
        })
        .await
    }

    /// AddOffsetsToTxn: the group's offsets partition joins the transaction.
    async fn add_offsets(&self, cluster: &Cluster, group_id: &str, deadline: Instant) -> Result<()> {
        let producer = self.lock().producer;
        self.retry_with("AddOffsetsToTxn", deadline, true, move || async move {
            let response: AddOffsetsToTxnResponse = self
                .call_txn_coordinator(cluster, ApiKey::AddOffsetsToTxn, |_| {
                    Ok(AddOffsetsToTxnRequest::default()
                        .with_transactional_id(self.transactional_id_wire.clone())
                        .with_producer_id(ProducerId(producer.producer_id))
                        .with_producer_epoch(producer.producer_epoch)
                        .with_group_id(GroupId(str_bytes(group_id))))
                })
                .await?;
            self.answer(ErrorCode(response.error_code), || format!("AddOffsetsToTxn for group {group_id}"), None).await
        })
        .await
    }

    /// TxnOffsetCommit to the group coordinator: the offsets commit with the transaction. From
    /// v3 the group checks the member's generation (KIP-447), so a zombie's offsets fail.
    async fn txn_offset_commit(
        &self,
        cluster: &Cluster,
        offsets: &BTreeMap<TopicPartition, OffsetAndMetadata>,
        group: &ConsumerGroupMetadata,
        deadline: Instant,
    ) -> Result<()> {
        let producer = self.lock().producer;
        let group_id = group.group_id.as_str();
        self.retry("TxnOffsetCommit", deadline, move || async move {
            let conn = self.group_coordinator(cluster, group_id).await?;
            let version = conn.version(ApiKey::TxnOffsetCommit)?;
            let mut by_topic: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
            for (tp, o) in offsets {
                let mut p = TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(o.offset)
                    .with_committed_metadata(o.metadata.as_deref().map(str_bytes));
                if version >= 2 {
                    p = p.with_committed_leader_epoch(o.leader_epoch.unwrap_or(-1));
                }
                by_topic.entry(tp.topic.as_str()).or_default().push(p);
            }
            let mut request = TxnOffsetCommitRequest::default()
                .with_transactional_id(self.transactional_id_wire.clone())
                .with_group_id(GroupId(str_bytes(group_id)))
                .with_producer_id(ProducerId(producer.producer_id))
                .with_producer_epoch(producer.producer_epoch)
                .with_topics(
                    by_topic
                        .into_iter()
                        .map(|(name, partitions)| {
                            TxnOffsetCommitRequestTopic::default()
                                .with_name(TopicName(str_bytes(name)))
                                .with_partitions(partitions)
                        })
                        .collect(),
                );
            if version >= 3 {
                request = request
                    .with_generation_id(group.generation_id)
                    .with_member_id(str_bytes(group.member_id.as_str()))
                    .with_group_instance_id(group.group_instance_id.as_deref().map(str_bytes));
            } else if group.generation_id >= 0 {
                // Without the member's generation the group cannot fence a zombie; Java
                // refuses too.
                return Err(Error::UnsupportedApi {
                    peer: conn.peer().to_string(),
                    api: "TxnOffsetCommit with group metadata (v3+, KIP-447)",
                    client_min: 3,
                    client_max: 3,
                    broker_min: conn.broker_versions().range(ApiKey::TxnOffsetCommit).map_or(-1, |r| r.0),
                    broker_max: version,
                });
            }
            let response: TxnOffsetCommitResponse = match conn.send(ApiKey::TxnOffsetCommit, version, &request).await {
                Ok(r) => r,
                Err(e) => {
                    self.group_coordinators.lock().await.remove(group_id);
                    return Err(e);
                }
            };
            // Every partition must commit; the first error that is not "not now" decides.
            let mut retry = None;
            for t in &response.topics {
                for p in &t.partitions {
                    let code = ErrorCode(p.error_code);
                    let context =
                        || format!("TxnOffsetCommit of {}-{} for group {group_id}", t.name.0, p.partition_index);
                    if let Attempt::Retry(e) = self.answer(code, context, Some(group_id)).await? {
                        retry.get_or_insert(e);
                    }
                }
            }
            Ok(retry.map_or(Attempt::Done(()), Attempt::Retry))
        })
        .await
    }

    /// Waits until no AddPartitionsToTxn is in flight.
    async fn wait_for_added(&self) {
        let mut rx = self.adding.subscribe();
        let _ = rx.wait_for(|adding| !adding).await;
    }
}

/// FindCoordinator for a group (`key_type` 0) or a transactional id (1), and a connection of
/// its own to the coordinator it names.
async fn find_coordinator(cluster: &Cluster, config: &ConnectionConfig, key_type: i8, key: &str) -> Result<Connection> {
    let what = if key_type == 0 { "group" } else { "transactional id" };
    let any = cluster.any_broker().await?;
    let version = any.version(ApiKey::FindCoordinator)?;
    let request = if version >= 4 {
        FindCoordinatorRequest::default().with_key_type(key_type).with_coordinator_keys(vec![str_bytes(key)])
    } else if version >= 1 {
        FindCoordinatorRequest::default().with_key_type(key_type).with_key(str_bytes(key))
    } else if key_type == 0 {
        FindCoordinatorRequest::default().with_key(str_bytes(key))
    } else {
        return Err(Error::ApiNotSupported {
            peer: any.peer().to_string(),
            api: "FindCoordinator for transactions (v1+)",
        });
    };
    let response: FindCoordinatorResponse = match any.send(ApiKey::FindCoordinator, version, &request).await {
        Ok(r) => r,
        Err(e) => {
            cluster.report_failure(&any);
            return Err(e);
        }
    };
    let (code, host, port) = if version >= 4 {
        let c = response.coordinators.first().ok_or_else(|| Error::Protocol {
            peer: any.peer().to_string(),
            source: ProtocolError::malformed("FindCoordinator response", "no coordinator listed"),
        })?;
        (ErrorCode(c.error_code), c.host.to_string(), c.port)
    } else {
        (ErrorCode(response.error_code), response.host.to_string(), response.port)
    };
    if !code.is_ok() {
        return Err(Error::broker(code, format!("FindCoordinator for {what} {key}")));
    }
    Connection::connect(&format!("{host}:{port}"), config).await
}

/// Sends AddPartitionsToTxn for the partitions new in the transaction, unless one is in
/// flight (the next takes what arrived meanwhile). Called by the sender on every pass.
pub(crate) fn maybe_add_partitions(shared: &Arc<SenderShared>) {
    let Some(txn) = &shared.txn else { return };
    if !matches!(txn.lock().state, TxnState::InTransaction | TxnState::CommittingTransaction) {
        return;
    }
    let claimed = txn.adding.send_if_modified(|adding| !std::mem::replace(adding, true));
    if !claimed {
        return;
    }
    let partitions = shared.acc.take_txn_pending();
    if partitions.is_empty() {
        txn.adding.send_replace(false);
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let txn = shared.txn.as_ref().expect("transactional");
        // Bounded as the records waiting for it are.
        let deadline = Instant::now() + Duration::from_millis(shared.config.delivery_timeout_ms.max(0) as u64);
        match txn.add_partitions(&shared.cluster, &partitions, deadline).await {
            Ok(()) => {
                debug!(transactional_id = %txn.transactional_id, partitions = partitions.len(), "partitions added to the transaction");
                txn.lock().started = true;
                shared.acc.mark_txn_added(&partitions);
            }
            Err(e) => {
                // Their records cannot be sent in this transaction.
                let e = match txn.failed(e) {
                    e @ (Error::TransactionFatal { .. } | Error::TransactionAbortable { .. }) => e,
                    other => {
                        let other = Arc::new(other);
                        txn.lock().abortable(other.clone());
                        Error::TransactionAbortable { source: other }
                    }
                };
                warn!(transactional_id = %txn.transactional_id, error = %e, "AddPartitionsToTxn failed");
            }
        }
        txn.adding.send_replace(false);
        shared.wakeup.notify_one();
    });
}

impl Producer {
    fn txn(&self, operation: &'static str) -> Result<&TransactionManager> {
        self.inner.shared.txn.as_ref().ok_or(Error::NotTransactional { operation })
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.max_block
    }

    /// Registers the `transactional.id` with its coordinator and gets the producer id and
    /// epoch to write with. This fences older producers with the same id (their later calls
    /// fail with PRODUCER_FENCED) and aborts a transaction one of them left open. Call once,
    /// before the first `begin_transaction`; after a timeout it may be called again.
    pub async fn init_transactions(&self) -> Result<()> {
        let txn = self.txn("init_transactions")?;
        let _call = txn.calls.lock().await;
        txn.lock().transition("init_transactions", &[TxnState::Uninitialized], TxnState::Initializing)?;
        let shared = &self.inner.shared;
        match txn.init_producer_id(&shared.cluster, ProducerIdAndEpoch::NONE, self.deadline()).await {
            Ok(producer) => {
                info!(transactional_id = %txn.transactional_id, producer.producer_id, producer.producer_epoch, "transactions initialised");
                shared.acc.reset_producer(producer);
                let mut status = txn.lock();
                status.producer = producer;
                status.state = TxnState::Ready;
                Ok(())
            }
            Err(e) => {
                let e = txn.failed(e);
                let mut status = txn.lock();
                if status.state == TxnState::Initializing {
                    status.state = TxnState::Uninitialized;
                }
                Err(e)
            }
        }
    }

    /// Starts a transaction: the records sent from now on, and the offsets given to
    /// [`Producer::send_offsets_to_transaction`], commit or abort together.
    pub fn begin_transaction(&self) -> Result<()> {
        let txn = self.txn("begin_transaction")?;
        let mut status = txn.lock();
        status.transition("begin_transaction", &[TxnState::Ready], TxnState::InTransaction)?;
        status.started = false;
        Ok(())
    }

    /// Adds a consumer group's offsets to the transaction, so they commit only if it does
    /// (consume–transform–produce exactly once). `offsets` are the next offsets to read, as
    /// for `commit_sync`; `group_metadata` comes from [`crate::Consumer::group_metadata`], so
    /// the group refuses them if the consumer has been fenced out of its generation (KIP-447),
    /// which makes the transaction abortable.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &BTreeMap<TopicPartition, OffsetAndMetadata>,
        group_metadata: &ConsumerGroupMetadata,
    ) -> Result<()> {
        let txn = self.txn("send_offsets_to_transaction")?;
        let _call = txn.calls.lock().await;
        txn.lock().check("send_offsets_to_transaction", &[TxnState::InTransaction])?;
        let cluster = &self.inner.shared.cluster;
        let deadline = self.deadline();
        if let Err(e) = txn.add_offsets(cluster, &group_metadata.group_id, deadline).await {
            return Err(txn.failed(e));
        }
        txn.lock().started = true;
        if offsets.is_empty() {
            return Ok(());
        }
        txn.txn_offset_commit(cluster, offsets, group_metadata, deadline).await.map_err(|e| txn.failed(e))
    }

    /// Sends every record of the transaction, then commits it. If a record failed, nothing
    /// commits and this returns [`Error::TransactionAbortable`]: call
    /// [`Producer::abort_transaction`]. After a timeout it may be called again. Records must
    /// not be sent while this runs.
    pub async fn commit_transaction(&self) -> Result<()> {
        let txn = self.txn("commit_transaction")?;
        let _call = txn.calls.lock().await;
        txn.lock().transition(
            "commit_transaction",
            &[TxnState::InTransaction, TxnState::CommittingTransaction],
            TxnState::CommittingTransaction,
        )?;
        self.flush().await?;
        txn.wait_for_added().await;
        let started = {
            let status = txn.lock();
            status.check("commit_transaction", &[TxnState::CommittingTransaction])?;
            status.started
        };
        let shared = &self.inner.shared;
        if started {
            txn.end_txn(&shared.cluster, true, self.deadline()).await.map_err(|e| txn.failed(e))?;
        }
        shared.acc.end_transaction();
        txn.lock().completed();
        debug!(transactional_id = %txn.transactional_id, "transaction committed");
        Ok(())
    }

    /// Aborts the transaction: records not yet sent fail with [`Error::TransactionAborted`],
    /// records on the wire are waited for, and the coordinator writes abort markers, so
    /// `read_committed` consumers never see any of it. Afterwards `begin_transaction` starts
    /// a new one (after an error that may have cost sequences, with a new epoch from the
    /// coordinator, KIP-360).
    pub async fn abort_transaction(&self) -> Result<()> {
        let txn = self.txn("abort_transaction")?;
        let _call = txn.calls.lock().await;
        txn.lock().transition(
            "abort_transaction",
            &[TxnState::InTransaction, TxnState::AbortableError, TxnState::AbortingTransaction],
            TxnState::AbortingTransaction,
        )?;
        let shared = &self.inner.shared;
        let released = shared.acc.abort_undrained(&Arc::new(Error::TransactionAborted));
        shared.release(released);
        shared.wakeup.notify_one();
        for completion in shared.acc.incomplete() {
            let _ = CompletionWait(completion).await;
        }
        txn.wait_for_added().await;
        let (started, bump, current) = {
            let status = txn.lock();
            status.check("abort_transaction", &[TxnState::AbortingTransaction])?;
            (status.started, status.epoch_bump_required || shared.acc.needs_epoch_bump(), status.producer)
        };
        let deadline = self.deadline();
        if started {
            txn.end_txn(&shared.cluster, false, deadline).await.map_err(|e| txn.failed(e))?;
        }
        shared.acc.end_transaction();
        if bump {
            let producer = txn.init_producer_id(&shared.cluster, current, deadline).await.map_err(|e| txn.failed(e))?;
            info!(transactional_id = %txn.transactional_id, producer.producer_id, producer.producer_epoch, "new producer epoch after an aborted transaction");
            shared.acc.reset_producer(producer);
            let mut status = txn.lock();
            status.producer = producer;
            status.epoch_bump_required = false;
        }
        txn.lock().completed();
        debug!(transactional_id = %txn.transactional_id, "transaction aborted");
        Ok(())
    }

    /// Aborts an open transaction before closing, as Java's producer does on close.
    pub(super) async fn abort_open_transaction(&self) {
        let Some(txn) = &self.inner.shared.txn else { return };
        let open = matches!(txn.lock().state, TxnState::InTransaction | TxnState::AbortableError);
        if open {
            if let Err(e) = self.abort_transaction().await {
                warn!(transactional_id = %txn.transactional_id, error = %e, "aborting the open transaction on close failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(code: ErrorCode) -> Arc<Error> {
        Arc::new(Error::broker(code, "test"))
    }

    #[test]
    fn calls_out_of_order_are_refused_with_the_state_named() {
        let mut s = TxnStatus::new();
        let err = s.check("send", &[TxnState::InTransaction]).unwrap_err();
        assert!(matches!(err, Error::InvalidTransactionState { operation: "send", state: "UNINITIALIZED" }), "{err}");
        s.state = TxnState::Ready;
        s.transition("begin_transaction", &[TxnState::Ready], TxnState::InTransaction).unwrap();
        let err = s.transition("begin_transaction", &[TxnState::Ready], TxnState::InTransaction).unwrap_err();
        assert_eq!(
            err.to_string(),
            "begin_transaction is not allowed while the producer's transaction state is IN_TRANSACTION"
        );
    }

    #[test]
    fn abortable_errors_keep_the_first_cause_and_refuse_everything_but_abort() {
        let mut s = TxnStatus::new();
        s.state = TxnState::InTransaction;
        s.abortable(broker(ErrorCode::TOPIC_AUTHORIZATION_FAILED));
        s.abortable(broker(ErrorCode::NOT_ENOUGH_REPLICAS));
        assert_eq!(s.state, TxnState::AbortableError);
        let err = s.check("commit_transaction", &[TxnState::InTransaction]).unwrap_err();
        assert!(matches!(err, Error::TransactionAbortable { .. }));
        assert_eq!(err.code(), Some(ErrorCode::TOPIC_AUTHORIZATION_FAILED));
        assert!(s.undrained_error().is_some(), "records not yet sent fail at once");
        s.transition("abort_transaction", &[TxnState::AbortableError], TxnState::AbortingTransaction).unwrap();
        // An error while aborting changes nothing: the abort goes on.
        s.abortable(broker(ErrorCode::NOT_ENOUGH_REPLICAS));
        assert_eq!(s.state, TxnState::AbortingTransaction);
        assert!(matches!(*s.undrained_error().unwrap(), Error::TransactionAborted));
        s.completed();
        assert_eq!((s.state, s.last_error.is_none(), s.undrained_error().is_none()), (TxnState::Ready, true, true));
    }

    #[test]
    fn fatal_errors_are_final() {
        let mut s = TxnStatus::new();
        s.state = TxnState::InTransaction;
        s.fatal(broker(ErrorCode::PRODUCER_FENCED));
        s.abortable(broker(ErrorCode::TRANSACTION_ABORTABLE));
        s.fatal(broker(ErrorCode::INVALID_TXN_STATE));
        for (op, allowed) in [
            ("abort_transaction", &[TxnState::InTransaction, TxnState::AbortableError][..]),
            ("begin_transaction", &[TxnState::Ready][..]),
        ] {
            let err = s.check(op, allowed).unwrap_err();
            assert!(matches!(err, Error::TransactionFatal { .. }));
            assert_eq!(err.code(), Some(ErrorCode::PRODUCER_FENCED));
        }
    }

    #[test]
    fn coordinator_errors_are_classed_as_javas() {
        let retry = |find_coordinator| ErrorClass::Retry { find_coordinator };
        assert_eq!(classify(ErrorCode::NOT_COORDINATOR), retry(true));
        assert_eq!(classify(ErrorCode::COORDINATOR_NOT_AVAILABLE), retry(true));
        assert_eq!(classify(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS), retry(false));
        assert_eq!(classify(ErrorCode::CONCURRENT_TRANSACTIONS), retry(false));
        assert_eq!(classify(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION), retry(false));
        for code in [
            ErrorCode::TRANSACTION_ABORTABLE,
            ErrorCode::TOPIC_AUTHORIZATION_FAILED,
            ErrorCode::ILLEGAL_GENERATION,
            ErrorCode::UNKNOWN_MEMBER_ID,
            ErrorCode::FENCED_INSTANCE_ID,
            ErrorCode::UNKNOWN_PRODUCER_ID,
        ] {
            assert_eq!(classify(code), ErrorClass::Abortable, "{code}");
        }
        for code in [
            ErrorCode::PRODUCER_FENCED,
            ErrorCode::INVALID_PRODUCER_EPOCH,
            ErrorCode::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            ErrorCode::INVALID_TXN_STATE,
            ErrorCode::UNSUPPORTED_VERSION,
            ErrorCode::UNKNOWN_SERVER_ERROR,
        ] {
            assert_eq!(classify(code), ErrorClass::Fatal, "{code}");
        }
    }

    #[test]
    fn failed_batches_are_fatal_only_when_the_producer_cannot_go_on() {
        let delivery = |code| Error::Delivery { topic: "t".into(), partition: 0, source: broker(code) };
        assert!(batch_error_is_fatal(&delivery(ErrorCode::PRODUCER_FENCED)));
        assert!(batch_error_is_fatal(&Error::broker(ErrorCode::TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "p")));
        // KIP-588: INVALID_PRODUCER_EPOCH on a produce is abortable (the abort finds out
        // whether the producer was really fenced).
        assert!(!batch_error_is_fatal(&delivery(ErrorCode::INVALID_PRODUCER_EPOCH)));
        assert!(!batch_error_is_fatal(&Error::broker(ErrorCode::MESSAGE_TOO_LARGE, "p")));
        assert!(!batch_error_is_fatal(&Error::DeliveryTimeout { topic: "t".into(), partition: 0, waited_ms: 1 }));
        assert!(batch_error_needs_epoch_bump(&Error::broker(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER, "p")));
        assert!(!batch_error_needs_epoch_bump(&Error::broker(ErrorCode::MESSAGE_TOO_LARGE, "p")));
    }

    use crate::consumer::{AutoOffsetReset, Consumer, ConsumerConfig, IsolationLevel};
    use crate::producer::{ProducerConfig, ProducerRecord};
    use crate::test_broker::TestBroker;
    use std::collections::BTreeSet;

    fn config(addr: &str) -> ProducerConfig {
        ProducerConfig {
            bootstrap_servers: vec![addr.to_string()],
            linger_ms: 1,
            retry_backoff_ms: 5,
            max_block_ms: 5_000,
            transactional_id: Some("tx".into()),
            ..ProducerConfig::default()
        }
    }

    fn record(value: &str, partition: i32) -> ProducerRecord {
        ProducerRecord::new(value.to_string()).with_partition(partition)
    }

    fn requests(broker: &TestBroker) -> Vec<String> {
        broker.state.lock().unwrap().requests.clone()
    }

    /// Checks the order rule: inside each transaction (up to its EndTxn), a transactional
    /// Produce to a partition comes after an AddPartitionsToTxn that named it. Returns the
    /// partitions added, per transaction.
    fn check_added_before_produce(log: &[String]) -> Vec<BTreeSet<String>> {
        let mut transactions = Vec::new();
        let mut added = BTreeSet::new();
        for r in log {
            let words: Vec<&str> = r.split(' ').collect();
            match words[0] {
                "AddPartitionsToTxn" => added.extend(words[1..].iter().map(|w| w.to_string())),
                "Produce" => {
                    assert_eq!(
                        words.get(2),
                        Some(&"txn"),
                        "{r}: batches of a transactional producer are transactional"
                    );
                    assert!(added.contains(words[1]), "{r} before AddPartitionsToTxn of it: {log:#?}");
                }
                "EndTxn" => transactions.push(std::mem::take(&mut added)),
                _ => {}
            }
        }
        transactions
    }

    /// A loop of sends that never has to wait still lets the sender run (tokio's budget): the
    /// partition is added, and its batches can go, while the loop goes on, not only once it
    /// awaits commit_transaction. This test's runtime has one thread, so nothing else could run
    /// the sender meanwhile.
    #[tokio::test]
    async fn a_send_loop_that_never_waits_lets_the_sender_add_partitions() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        let producer = Producer::new(config(&broker.addr)).await.unwrap();
        producer.init_transactions().await.unwrap();
        producer.begin_transaction().unwrap();
        producer.send("t", record("first", 0)).await.unwrap();
        let mut sent = 1;
        while !requests(&broker).iter().any(|r| r.starts_with("AddPartitionsToTxn")) {
            assert!(sent < 20_000, "no AddPartitionsToTxn after {sent} sends: {:?}", requests(&broker));
            producer.send("t", record("next", 0)).await.unwrap();
            sent += 1;
        }
        producer.commit_transaction().await.unwrap();
    }

    #[tokio::test]
    async fn transactions_send_their_requests_in_kafkas_order() {
        let broker = TestBroker::start(&[("t", 3)]).await;
        broker.state.lock().unwrap().group_generations.insert("g".into(), 5);
        let producer = Producer::new(config(&broker.addr)).await.unwrap();
        producer.init_transactions().await.unwrap();
        assert_eq!(requests(&broker), ["FindCoordinator key_type=1 tx", "InitProducerId tx producer_id=-1 epoch=-1"]);

        producer.begin_transaction().unwrap();
        let mut futures = Vec::new();
        for (i, p) in [0, 1, 0, 1, 1].into_iter().enumerate() {
            futures.push(producer.send("t", record(&format!("one-{i}"), p)).await.unwrap());
        }
        producer.commit_transaction().await.unwrap();
        for f in futures {
            f.await.unwrap();
        }

        producer.begin_transaction().unwrap();
        producer.send("t", record("two-0", 1)).await.unwrap();
        producer.send("t", record("two-1", 2)).await.unwrap();
        let metadata = ConsumerGroupMetadata {
            group_id: "g".into(),
            generation_id: 5,
            member_id: "m-1".into(),
            group_instance_id: Some("i-1".into()),
        };
        let offsets: BTreeMap<TopicPartition, OffsetAndMetadata> =
            [(TopicPartition::new("in", 0), OffsetAndMetadata::new(42))].into();
        producer.send_offsets_to_transaction(&offsets, &metadata).await.unwrap();
        producer.commit_transaction().await.unwrap();

        let log = requests(&broker);
        let added = check_added_before_produce(&log);
        let names = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            added,
            [names(&["t-0", "t-1"]), names(&["t-1", "t-2"])],
            "t-1 is added again in the second: {log:#?}"
        );
        let position = |prefix: &str| {
            log.iter().position(|r| r.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}: {log:#?}"))
        };
        assert!(position("AddOffsetsToTxn g") < position("FindCoordinator key_type=0 g"));
        assert!(position("FindCoordinator key_type=0 g") < position("TxnOffsetCommit g"));
        assert!(
            log.contains(&"TxnOffsetCommit g generation=5 member=m-1 instance=i-1 in-0@42".to_string()),
            "{log:#?}"
        );
        assert_eq!(log.iter().filter(|r| *r == "EndTxn commit").count(), 2);
        assert_eq!(log.last().map(String::as_str), Some("EndTxn commit"));

        let state = broker.state.lock().unwrap();
        assert_eq!(state.committed_values("t", 0), ["one-0", "one-2"]);
        assert_eq!(state.committed_values("t", 1), ["one-1", "one-3", "one-4", "two-0"]);
        assert_eq!(state.committed_values("t", 2), ["two-1"]);
        assert_eq!(state.group_offsets["g"][&("in".to_string(), 0)], 42);
    }

    #[tokio::test]
    async fn abort_fails_unsent_records_and_the_next_transaction_works() {
        let broker = TestBroker::start(&[("t", 2)]).await;
        let mut c = config(&broker.addr);
        // Records wait in their batches until the abort.
        c.linger_ms = 60_000;
        let producer = Producer::new(c).await.unwrap();
        producer.init_transactions().await.unwrap();
        // Nothing reached the coordinator: the abort ends the transaction locally.
        producer.begin_transaction().unwrap();
        producer.abort_transaction().await.unwrap();
        assert!(!requests(&broker).iter().any(|r| r.starts_with("EndTxn")));

        producer.begin_transaction().unwrap();
        let unsent: Vec<_> = [0, 1, 0].into_iter().map(|p| record("aborted", p)).collect();
        let mut futures = Vec::new();
        for r in unsent {
            futures.push(producer.send("t", r).await.unwrap());
        }
        producer.abort_transaction().await.unwrap();
        for f in futures {
            let result = f.await;
            assert!(
                matches!(&result, Err(Error::Delivery { source, .. }) if matches!(**source, Error::TransactionAborted)),
                "{result:?}"
            );
        }
        let log = requests(&broker);
        assert!(!log.iter().any(|r| r.starts_with("Produce")), "{log:#?}");

        producer.begin_transaction().unwrap();
        let f = producer.send("t", record("kept", 1)).await.unwrap();
        producer.commit_transaction().await.unwrap();
        assert_eq!(f.await.unwrap().partition, 1);
        check_added_before_produce(&requests(&broker));
        let state = broker.state.lock().unwrap();
        assert_eq!(state.committed_values("t", 1), ["kept"]);
        assert!(state.committed_values("t", 0).is_empty());
        // No epoch bump: nothing sent was lost.
        assert_eq!(state.transactions["tx"].producer_epoch, 0);
    }

    #[tokio::test]
    async fn a_newer_instance_fences_the_older_for_good() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        let old = Producer::new(config(&broker.addr)).await.unwrap();
        old.init_transactions().await.unwrap();
        old.begin_transaction().unwrap();
        let newer = Producer::new(config(&broker.addr)).await.unwrap();
        newer.init_transactions().await.unwrap();

        let f = old.send("t", record("zombie", 0)).await.unwrap();
        let err = old.commit_transaction().await.unwrap_err();
        assert!(matches!(err, Error::TransactionFatal { .. }), "{err}");
        assert_eq!(err.code(), Some(ErrorCode::PRODUCER_FENCED));
        assert_eq!(f.await.unwrap_err().code(), Some(ErrorCode::PRODUCER_FENCED));
        // Every later call fails with the same error.
        for err in [
            old.begin_transaction().unwrap_err(),
            old.abort_transaction().await.unwrap_err(),
            old.send("t", record("x", 0)).await.unwrap_err(),
        ] {
            assert!(matches!(err, Error::TransactionFatal { .. }), "{err}");
            assert_eq!(err.code(), Some(ErrorCode::PRODUCER_FENCED));
        }
        // The newer one is unaffected.
        newer.begin_transaction().unwrap();
        newer.send("t", record("live", 0)).await.unwrap();
        newer.commit_transaction().await.unwrap();
        assert_eq!(broker.state.lock().unwrap().committed_values("t", 0), ["live"]);
        old.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_send_makes_the_transaction_abortable_and_the_abort_bumps_the_epoch() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        let producer = Producer::new(config(&broker.addr)).await.unwrap();
        producer.init_transactions().await.unwrap();
        producer.begin_transaction().unwrap();
        broker.state.lock().unwrap().inject.insert(ApiKey::Produce, vec![ErrorCode::INVALID_RECORD]);
        let f = producer.send("t", record("refused", 0)).await.unwrap();
        assert_eq!(f.await.unwrap_err().code(), Some(ErrorCode::INVALID_RECORD));
        let err = producer.commit_transaction().await.unwrap_err();
        assert!(matches!(err, Error::TransactionAbortable { .. }), "{err}");
        assert_eq!(err.code(), Some(ErrorCode::INVALID_RECORD));
        assert!(matches!(producer.send("t", record("x", 0)).await, Err(Error::TransactionAbortable { .. })));
        assert!(matches!(producer.begin_transaction(), Err(Error::TransactionAbortable { .. })));

        producer.abort_transaction().await.unwrap();
        // The refused batch had a sequence: the broker's view of it is unknown, so the abort
        // asked the coordinator for the next epoch of the same producer id (KIP-360).
        let log = requests(&broker);
        let abort = log.iter().position(|r| r == "EndTxn abort").unwrap();
        assert_eq!(log[abort + 1], "InitProducerId tx producer_id=2000 epoch=0", "{log:#?}");

        producer.begin_transaction().unwrap();
        producer.send("t", record("after", 0)).await.unwrap().await.unwrap();
        producer.commit_transaction().await.unwrap();
        let state = broker.state.lock().unwrap();
        assert_eq!(state.committed_values("t", 0), ["after"]);
        let (_, last) = state.topics["t"][0]
            .batches
            .iter()
            .rev()
            .find(|(_, b)| !crate::protocol::record::BatchHeader::parse(b).unwrap().is_control())
            .unwrap();
        let h = crate::protocol::record::BatchHeader::parse(last).unwrap();
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (2000, 1, 0));
    }

    #[tokio::test]
    async fn coordinator_errors_that_mean_not_now_are_retried() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        {
            let mut state = broker.state.lock().unwrap();
            state.inject.insert(ApiKey::FindCoordinator, vec![ErrorCode::COORDINATOR_NOT_AVAILABLE]);
            state.inject.insert(
                ApiKey::InitProducerId,
                vec![ErrorCode::COORDINATOR_LOAD_IN_PROGRESS, ErrorCode::NOT_COORDINATOR],
            );
            state.inject.insert(ApiKey::AddPartitionsToTxn, vec![ErrorCode::CONCURRENT_TRANSACTIONS]);
            state.inject.insert(ApiKey::EndTxn, vec![ErrorCode::CONCURRENT_TRANSACTIONS]);
        }
        let producer = Producer::new(config(&broker.addr)).await.unwrap();
        producer.init_transactions().await.unwrap();
        let log = requests(&broker);
        let lookups = log.iter().filter(|r| r.starts_with("FindCoordinator key_type=1")).count();
        assert_eq!((lookups, log.iter().filter(|r| r.starts_with("InitProducerId")).count()), (3, 3), "{log:#?}");
        producer.begin_transaction().unwrap();
        let f = producer.send("t", record("v", 0)).await.unwrap();
        producer.commit_transaction().await.unwrap();
        f.await.unwrap();
        let log = requests(&broker);
        assert_eq!(log.iter().filter(|r| r.starts_with("AddPartitionsToTxn")).count(), 2);
        assert_eq!(log.iter().filter(|r| *r == "EndTxn commit").count(), 2);
        check_added_before_produce(&log);
        assert_eq!(broker.state.lock().unwrap().committed_values("t", 0), ["v"]);
    }

    /// The previous transaction completing (CONCURRENT_TRANSACTIONS on the first
    /// AddPartitionsToTxn) costs a 20 ms retry, not `retry.backoff.ms`.
    #[tokio::test]
    async fn concurrent_transactions_at_the_start_are_retried_soon() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        let producer =
            Producer::new(ProducerConfig { retry_backoff_ms: 60_000, ..config(&broker.addr) }).await.unwrap();
        producer.init_transactions().await.unwrap();
        broker
            .state
            .lock()
            .unwrap()
            .inject
            .insert(ApiKey::AddPartitionsToTxn, vec![ErrorCode::CONCURRENT_TRANSACTIONS]);
        let started = std::time::Instant::now();
        producer.begin_transaction().unwrap();
        let f = producer.send("t", record("v", 0)).await.unwrap();
        producer.commit_transaction().await.unwrap();
        f.await.unwrap();
        // A 60 s backoff would show; the margin is for a loaded test machine.
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
        let log = requests(&broker);
        assert_eq!(log.iter().filter(|r| r.starts_with("AddPartitionsToTxn")).count(), 2);
        assert_eq!(broker.state.lock().unwrap().committed_values("t", 0), ["v"]);
    }

    #[tokio::test]
    async fn offsets_of_a_fenced_generation_make_the_transaction_abortable() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        broker.state.lock().unwrap().group_generations.insert("g".into(), 6);
        let producer = Producer::new(config(&broker.addr)).await.unwrap();
        producer.init_transactions().await.unwrap();
        producer.begin_transaction().unwrap();
        producer.send("t", record("v", 0)).await.unwrap();
        let zombie = ConsumerGroupMetadata {
            group_id: "g".into(),
            generation_id: 5,
            member_id: "m-1".into(),
            group_instance_id: None,
        };
        let offsets: BTreeMap<TopicPartition, OffsetAndMetadata> =
            [(TopicPartition::new("in", 0), OffsetAndMetadata::new(7))].into();
        let err = producer.send_offsets_to_transaction(&offsets, &zombie).await.unwrap_err();
        assert!(matches!(err, Error::TransactionAbortable { .. }), "{err}");
        assert_eq!(err.code(), Some(ErrorCode::ILLEGAL_GENERATION));
        assert!(matches!(producer.commit_transaction().await, Err(Error::TransactionAbortable { .. })));
        producer.abort_transaction().await.unwrap();
        let state = broker.state.lock().unwrap();
        assert!(state.committed_values("t", 0).is_empty());
        assert!(!state.group_offsets.contains_key("g"));
    }

    #[tokio::test]
    async fn calls_out_of_order_are_errors() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        let plain = Producer::new(ProducerConfig { transactional_id: None, ..config(&broker.addr) }).await.unwrap();
        assert!(matches!(
            plain.init_transactions().await,
            Err(Error::NotTransactional { operation: "init_transactions" })
        ));
        assert!(matches!(plain.begin_transaction(), Err(Error::NotTransactional { .. })));

        let producer = Producer::new(config(&broker.addr)).await.unwrap();
        let state_of = |e: Error| match e {
            Error::InvalidTransactionState { operation, state } => (operation, state),
            other => panic!("{other}"),
        };
        assert_eq!(state_of(producer.send("t", record("v", 0)).await.unwrap_err()), ("send", "UNINITIALIZED"));
        assert_eq!(state_of(producer.begin_transaction().unwrap_err()), ("begin_transaction", "UNINITIALIZED"));
        producer.init_transactions().await.unwrap();
        assert_eq!(state_of(producer.init_transactions().await.unwrap_err()), ("init_transactions", "READY"));
        assert_eq!(state_of(producer.send("t", record("v", 0)).await.unwrap_err()), ("send", "READY"));
        assert_eq!(state_of(producer.commit_transaction().await.unwrap_err()), ("commit_transaction", "READY"));
        assert_eq!(state_of(producer.abort_transaction().await.unwrap_err()), ("abort_transaction", "READY"));
        producer.begin_transaction().unwrap();
        assert_eq!(state_of(producer.begin_transaction().unwrap_err()), ("begin_transaction", "IN_TRANSACTION"));

        for bad in [
            ProducerConfig { acks: 1, ..config(&broker.addr) },
            ProducerConfig { enable_idempotence: false, ..config(&broker.addr) },
            ProducerConfig { max_in_flight_requests_per_connection: 6, ..config(&broker.addr) },
            ProducerConfig { transactional_id: Some(String::new()), ..config(&broker.addr) },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Config(_))));
        }
    }

    #[tokio::test]
    async fn read_committed_consumers_see_only_committed_transactions() {
        let broker = TestBroker::start(&[("t", 1)]).await;
        let producer = Producer::new(config(&broker.addr)).await.unwrap();
        producer.init_transactions().await.unwrap();
        for (values, commit) in [(&["a", "b"][..], true), (&["c", "d"][..], false), (&["e"][..], true)] {
            producer.begin_transaction().unwrap();
            for v in values {
                producer.send("t", record(v, 0)).await.unwrap();
            }
            if commit {
                producer.commit_transaction().await.unwrap();
            } else {
                // On the wire before the abort, so the log holds them.
                producer.flush().await.unwrap();
                producer.abort_transaction().await.unwrap();
            }
        }
        // An open transaction holds the last stable offset back.
        producer.begin_transaction().unwrap();
        producer.send("t", record("open", 0)).await.unwrap();
        producer.flush().await.unwrap();

        let read = async |isolation_level| {
            let consumer = Consumer::new(ConsumerConfig {
                bootstrap_servers: vec![broker.addr.clone()],
                auto_offset_reset: AutoOffsetReset::Earliest,
                fetch_max_wait_ms: 20,
                isolation_level,
                ..ConsumerConfig::default()
            })
            .await
            .unwrap();
            consumer.assign(vec![TopicPartition::new("t", 0)]).await.unwrap();
            let mut values = Vec::new();
            loop {
                let records = consumer.poll(Duration::from_millis(200)).await.unwrap();
                if records.is_empty() {
                    break;
                }
                values.extend(records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()));
            }
            values
        };
        assert_eq!(read(IsolationLevel::ReadCommitted).await, ["a", "b", "e"]);
        assert_eq!(read(IsolationLevel::ReadUncommitted).await, ["a", "b", "c", "d", "e", "open"]);
        producer.close().await.unwrap();
    }
}
