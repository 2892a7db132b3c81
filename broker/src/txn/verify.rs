//! KIP-890 part 1, the partition leader's side: before the first transactional batch of a
//! transaction lands in a partition, ask the transactional id's coordinator whether the producer
//! added that partition to its ongoing transaction. Here when this broker coordinates the id,
//! otherwise with AddPartitionsToTxn v4 (`verify_only`) to the broker that does, over one cached
//! connection per peer (a verification happens once per transaction and partition, not per batch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spate_client::connection::{Connection, ConnectionConfig};
use spate_client::protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use spate_client::protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ProducerId, TopicName, TransactionalId,
};
use spate_client::protocol::{str_bytes, ApiKey, ErrorCode};
use tracing::debug;

use super::{TransactionCoordinator, TRANSACTION_STATE_TOPIC};
use crate::broker::Broker;
use crate::group::partition_for;

/// How long a leader waits for a remote coordinator's answer. The produce request's client
/// retries (NOT_ENOUGH_REPLICAS) rather than waiting out its whole request timeout.
pub(super) const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a peer connection takes to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// AddPartitionsToTxn's first version with `verify_only`.
const VERIFY_VERSION: i16 = 4;

/// One cached connection per peer broker, by node id, for one purpose: verification asks the
/// coordinators (`TransactionCoordinator::peers`), WriteTxnMarkers goes to partition leaders
/// (`marker_peers`). Each commit or first write would otherwise pay a TCP connect and the
/// ApiVersions handshake. A connection that fails a request is forgotten and made again.
pub struct PeerConnections {
    /// Names the connections in the peers' logs: `client.id` `spate-txn-<purpose>-<node id>`.
    purpose: &'static str,
    request_timeout: Duration,
    peers: Mutex<HashMap<i32, (String, Connection)>>,
}

impl PeerConnections {
    pub fn new(purpose: &'static str, request_timeout: Duration) -> PeerConnections {
        PeerConnections { purpose, request_timeout, peers: Mutex::default() }
    }

    pub(super) async fn get(&self, broker: &Broker, node_id: i32, address: String) -> spate_client::Result<Connection> {
        {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, conn)) = peers.get(&node_id) {
                if *at == address && !conn.is_closed() {
                    return Ok(conn.clone());
                }
            }
        }
        let config = ConnectionConfig {
            client_id: Some(format!("spate-txn-{}-{}", self.purpose, broker.config.node_id)),
            request_timeout: self.request_timeout,
            connect_timeout: self.request_timeout.min(CONNECT_TIMEOUT),
            max_response_bytes: 16 << 20,
        };
        let conn = Connection::connect(&address, &config).await?;
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).insert(node_id, (address, conn.clone()));
        Ok(conn)
    }

    pub(super) fn forget(&self, node_id: i32) {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).remove(&node_id);
    }
}

/// One code per partition of `partitions` (NONE: in the transaction), or one code for all
/// (the producer is fenced or unknown, or the coordinator cannot answer now).
pub async fn verify(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
) -> Result<Vec<ErrorCode>, ErrorCode> {
    let image = broker.image();
    let Some(topic) = image.topics.get(TRANSACTION_STATE_TOPIC) else {
        return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE);
    };
    let index = partition_for(transactional_id, topic.partitions.len() as i32);
    let leader = topic.partitions.get(index as usize).map(|p| p.leader).unwrap_or(-1);
    if leader == broker.config.node_id {
        return TransactionCoordinator::verify_partitions(
            broker,
            transactional_id,
            producer_id,
            producer_epoch,
            partitions,
        );
    }
    let Some(address) = super::peer_address(&image, leader) else {
        return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE);
    };
    let topics = super::by_topic(partitions);
    let transaction = AddPartitionsToTxnTransaction::default()
        .with_transactional_id(TransactionalId(str_bytes(transactional_id.to_string())))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(producer_epoch)
        .with_verify_only(true)
        .with_topics(
            topics
                .iter()
                .map(|(t, ps)| {
                    AddPartitionsToTxnTopic::default()
                        .with_name(TopicName(str_bytes(t.to_string())))
                        .with_partitions(ps.clone())
                })
                .collect(),
        );
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![transaction]);
    let peers = &broker.txns.peers;
    let response: AddPartitionsToTxnResponse = match peers.get(broker, leader, address).await {
        // A coordinator on an older broker (a rolling upgrade) cannot be asked: writes are let
        // through unverified, as before, rather than stalled.
        Ok(conn)
            if !conn
                .broker_versions()
                .range(ApiKey::AddPartitionsToTxn)
                .is_some_and(|(min, max)| (min..=max).contains(&VERIFY_VERSION)) =>
        {
            debug!(leader, "the coordinator's broker predates AddPartitionsToTxn v4; not verifying");
            return Ok(vec![ErrorCode::NONE; partitions.len()]);
        }
        Ok(conn) => match conn.send(ApiKey::AddPartitionsToTxn, VERIFY_VERSION, &request).await {
            Ok(r) => r,
            Err(err) => {
                debug!(leader, error = %err, "transaction verification failed");
                peers.forget(leader);
                return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE);
            }
        },
        Err(err) => {
            debug!(leader, error = %err, "cannot reach the transaction coordinator to verify");
            return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE);
        }
    };
    if response.error_code != 0 {
        return Err(ErrorCode(response.error_code));
    }
    let mut codes: HashMap<(&str, i32), i16> = HashMap::new();
    for result in &response.results_by_transaction {
        for t in &result.topic_results {
            for p in &t.results_by_partition {
                codes.insert((t.name.as_str(), p.partition_index), p.partition_error_code);
            }
        }
    }
    // A partition the answer leaves out was not confirmed.
    Ok(partitions
        .iter()
        .map(|(t, p)| codes.get(&(t.as_str(), *p)).map_or(ErrorCode::INVALID_TXN_STATE, |c| ErrorCode(*c)))
        .collect())
}

/// What a producer sees when verification did not confirm: Kafka hands coordinator trouble to
/// produce clients as the retriable NOT_ENOUGH_REPLICAS (they know no coordinator errors on
/// Produce), and a fenced producer as INVALID_PRODUCER_EPOCH.
pub fn produce_error(code: ErrorCode) -> ErrorCode {
    match code {
        ErrorCode::COORDINATOR_NOT_AVAILABLE
        | ErrorCode::NOT_COORDINATOR
        | ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
        | ErrorCode::CONCURRENT_TRANSACTIONS
        | ErrorCode::REQUEST_TIMED_OUT => ErrorCode::NOT_ENOUGH_REPLICAS,
        ErrorCode::PRODUCER_FENCED => ErrorCode::INVALID_PRODUCER_EPOCH,
        other => other,
    }
}
