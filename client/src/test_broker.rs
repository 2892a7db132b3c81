//! An in-memory broker for the client's own tests: one node on 127.0.0.1:0 that speaks
//! ApiVersions, Metadata, InitProducerId, Produce (checking idempotent sequences), ListOffsets
//! and Fetch, with a hook to fail produce requests. Not a model of the real broker; just enough
//! to drive the clients through their paths.
//!
//! For transactional producers it is also the transaction and group coordinator:
//! FindCoordinator, InitProducerId with a transactional id (fencing older epochs),
//! AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn (writing COMMIT/ABORT
//! markers), Produce of transactional batches only to added partitions, and read_committed
//! Fetch up to the last stable offset with the aborted transactions listed. Every request of
//! these APIs is logged in [`BrokerState::requests`] in arrival order, and
//! [`BrokerState::inject`] answers the next ones of an API with an error code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::connection::CLIENT_API_VERSIONS;
use crate::protocol::compression::Compression;
use crate::protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use crate::protocol::messages::api_versions_response::ApiVersion;
use crate::protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use crate::protocol::messages::find_coordinator_response::Coordinator;
use crate::protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use crate::protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use crate::protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use crate::protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use crate::protocol::messages::*;
use crate::protocol::record::{field, set_base_offset, validate_batches, BatchBuilder, Record};
use crate::protocol::{self, frame, str_bytes, ApiKey, ErrorCode};

#[derive(Default)]
pub(crate) struct PartitionLog {
    /// (base offset, batch bytes with the offset set)
    pub batches: Vec<(i64, Bytes)>,
    pub log_end_offset: i64,
    /// Producer id → (epoch, next sequence).
    pub next_sequence: HashMap<i64, (i16, i32)>,
    /// Producer id → first offset of its open transaction here.
    pub ongoing: HashMap<i64, i64>,
    /// (producer id, first offset, marker offset) of aborted transactions.
    pub aborted: Vec<(i64, i64, i64)>,
}

impl PartitionLog {
    /// Where read_committed consumers stop: the first offset of the oldest open transaction.
    pub fn last_stable_offset(&self) -> i64 {
        self.ongoing.values().copied().min().unwrap_or(self.log_end_offset)
    }

    pub(crate) fn append(&mut self, records: &[u8]) -> i64 {
        let base = self.log_end_offset;
        let h = crate::protocol::record::BatchHeader::parse(records).unwrap();
        let mut bytes = BytesMut::from(records);
        set_base_offset(&mut bytes, base);
        self.batches.push((base, bytes.freeze()));
        self.log_end_offset += h.last_offset_delta as i64 + 1;
        base
    }
}

/// A transactional id as the coordinator knows it.
#[derive(Debug, Default)]
pub(crate) struct TxnMetadata {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Partitions (and groups' offsets) in the open transaction.
    pub partitions: BTreeSet<(String, i32)>,
    pub groups: BTreeSet<String>,
    /// Offsets committed by TxnOffsetCommit in the open transaction, by group.
    pub pending_offsets: BTreeMap<String, BTreeMap<(String, i32), i64>>,
}

#[derive(Default)]
pub(crate) struct BrokerState {
    pub topics: HashMap<String, Vec<PartitionLog>>,
    /// Produce requests still to answer with NOT_LEADER_OR_FOLLOWER for every partition.
    pub fail_produce_requests: usize,
    pub produce_requests: usize,
    /// Batches answered OUT_OF_ORDER_SEQUENCE_NUMBER.
    pub out_of_order: usize,
    /// FindCoordinator, InitProducerId, AddPartitionsToTxn, Produce, AddOffsetsToTxn,
    /// TxnOffsetCommit and EndTxn requests, in arrival order, in a short form such as
    /// `"AddPartitionsToTxn t-0 t-1"` or `"Produce t-0 txn"`.
    pub requests: Vec<String>,
    /// The next requests of an API are answered with these codes, one each (for Produce,
    /// every partition of the request gets it).
    pub inject: HashMap<ApiKey, Vec<ErrorCode>>,
    pub transactions: HashMap<String, TxnMetadata>,
    /// Committed offsets of consumer groups (by TxnOffsetCommit and a commit).
    pub group_offsets: BTreeMap<String, BTreeMap<(String, i32), i64>>,
    /// A group's current generation; TxnOffsetCommit of another is ILLEGAL_GENERATION.
    pub group_generations: HashMap<String, i32>,
    next_producer_id: i64,
}

impl BrokerState {
    /// The records of a partition that read_committed consumers see, as values.
    pub fn committed_values(&self, topic: &str, partition: i32) -> Vec<String> {
        let log = &self.topics[topic][partition as usize];
        let lso = log.last_stable_offset();
        let mut out = Vec::new();
        for (base, batch) in &log.batches {
            let h = crate::protocol::record::BatchHeader::parse(batch).unwrap();
            if *base >= lso || h.is_control() {
                continue;
            }
            let aborted =
                log.aborted.iter().any(|&(p, first, marker)| p == h.producer_id && first <= *base && *base < marker);
            if h.is_transactional() && aborted {
                continue;
            }
            let mut records = Vec::new();
            crate::protocol::record::decode_records(batch, 1 << 20, &mut records).unwrap();
            out.extend(records.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
        out
    }

    fn injected(&mut self, api: ApiKey) -> Option<ErrorCode> {
        let codes = self.inject.get_mut(&api)?;
        if codes.is_empty() {
            return None;
        }
        Some(codes.remove(0))
    }

    /// The coordinator's epoch check: an older epoch is fenced.
    fn check_epoch(&self, transactional_id: &str, producer_id: i64, producer_epoch: i16) -> ErrorCode {
        match self.transactions.get(transactional_id) {
            None => ErrorCode::INVALID_PRODUCER_ID_MAPPING,
            Some(t) if t.producer_id != producer_id => ErrorCode::INVALID_PRODUCER_ID_MAPPING,
            Some(t) if t.producer_epoch != producer_epoch => ErrorCode::PRODUCER_FENCED,
            Some(_) => ErrorCode::NONE,
        }
    }

    /// Writes COMMIT or ABORT markers to the transaction's partitions and ends it.
    fn end_transaction(&mut self, transactional_id: &str, commit: bool) {
        let Some(txn) = self.transactions.get_mut(transactional_id) else { return };
        let (producer_id, producer_epoch) = (txn.producer_id, txn.producer_epoch);
        let partitions = std::mem::take(&mut txn.partitions);
        txn.groups.clear();
        let offsets = std::mem::take(&mut txn.pending_offsets);
        for (topic, partition) in partitions {
            let log = &mut self.topics.get_mut(&topic).unwrap()[partition as usize];
            let marker = control_batch(producer_id, producer_epoch, commit);
            let at = log.append(&marker);
            if let Some(first) = log.ongoing.remove(&producer_id) {
                if !commit {
                    log.aborted.push((producer_id, first, at));
                }
            }
        }
        if commit {
            for (group, offsets) in offsets {
                self.group_offsets.entry(group).or_default().extend(offsets);
            }
        }
    }
}

/// A transaction marker: a control batch of one record, key `version 0, type` (0 abort,
/// 1 commit), value `version 0, coordinator_epoch`.
pub(crate) fn control_batch(producer_id: i64, producer_epoch: i16, commit: bool) -> Bytes {
    let key = [0, 0, 0, commit as u8];
    let value = [0, 0, 0, 0, 0, 1];
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        key: Some(Bytes::copy_from_slice(&key)),
        value: Some(Bytes::copy_from_slice(&value)),
        headers: Vec::new(),
        timestamp_ms: 0,
    });
    let mut bytes = BytesMut::from(&b.finish(producer_id, producer_epoch, -1, true).unwrap()[..]);
    bytes[field::ATTRIBUTES + 1] |= 0x20;
    let crc = crc32c::crc32c(&bytes[field::ATTRIBUTES..]);
    bytes[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
    bytes.freeze()
}

pub(crate) struct TestBroker {
    pub addr: String,
    pub state: Arc<Mutex<BrokerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestBroker {
    pub async fn start(topics: &[(&str, usize)]) -> TestBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut state = BrokerState::default();
        for (name, n) in topics {
            state.topics.insert(name.to_string(), (0..*n).map(|_| PartitionLog::default()).collect());
        }
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let port = listener.local_addr().unwrap().port() as i32;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                connections.spawn(serve(stream, shared.clone(), port));
            }
        });
        TestBroker { addr, state, task }
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<BrokerState>>, port: i32) {
    let mut buf = BytesMut::new();
    loop {
        let mut frame = loop {
            match frame::decode_frame(&mut buf, 64 << 20) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => return,
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let (api_key, header) = protocol::decode_request_header(&mut frame).unwrap();
        let v = header.request_api_version;
        let id = header.correlation_id;
        let mut out = BytesMut::new();
        match api_key {
            ApiKey::ApiVersions => {
                let resp = ApiVersionsResponse::default().with_api_keys(
                    CLIENT_API_VERSIONS
                        .iter()
                        .map(|(k, min, max)| {
                            ApiVersion::default().with_api_key(*k as i16).with_min_version(*min).with_max_version(*max)
                        })
                        .collect(),
                );
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::Metadata => {
                let req: MetadataRequest = protocol::decode_body("metadata", &mut frame, v).unwrap();
                let state = state.lock().unwrap();
                let names: Vec<String> = match req.topics {
                    Some(ts) => ts.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect(),
                    None => state.topics.keys().cloned().collect(),
                };
                let topics = names
                    .into_iter()
                    .map(|name| match state.topics.get(&name) {
                        Some(parts) => MetadataResponseTopic::default()
                            .with_name(Some(TopicName(str_bytes(name.as_str()))))
                            .with_partitions(
                                (0..parts.len())
                                    .map(|i| {
                                        MetadataResponsePartition::default()
                                            .with_partition_index(i as i32)
                                            .with_leader_id(BrokerId(0))
                                            .with_replica_nodes(vec![BrokerId(0)])
                                            .with_isr_nodes(vec![BrokerId(0)])
                                    })
                                    .collect(),
                            ),
                        None => MetadataResponseTopic::default()
                            .with_name(Some(TopicName(str_bytes(name.as_str()))))
                            .with_error_code(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0),
                    })
                    .collect();
                let resp = MetadataResponse::default()
                    .with_brokers(vec![MetadataResponseBroker::default()
                        .with_node_id(BrokerId(0))
                        .with_host(str_bytes("127.0.0.1"))
                        .with_port(port)])
                    .with_controller_id(BrokerId(0))
                    .with_topics(topics);
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::InitProducerId => {
                let req: InitProducerIdRequest = protocol::decode_body("init producer id", &mut frame, v).unwrap();
                let mut state = state.lock().unwrap();
                let resp = match req.transactional_id.as_ref().map(|t| t.0.to_string()) {
                    None => InitProducerIdResponse::default().with_producer_id(ProducerId(1000)).with_producer_epoch(0),
                    Some(id) => {
                        state.requests.push(format!(
                            "InitProducerId {id} producer_id={} epoch={}",
                            req.producer_id.0, req.producer_epoch
                        ));
                        if let Some(code) = state.injected(ApiKey::InitProducerId) {
                            InitProducerIdResponse::default().with_error_code(code.0).with_producer_id(ProducerId(-1))
                        } else {
                            if state.transactions.contains_key(&id) {
                                // A new instance (or a new epoch after an abort): fence the
                                // old epoch and abort what it left open.
                                state.end_transaction(&id, false);
                                state.transactions.get_mut(&id).unwrap().producer_epoch += 1;
                            } else {
                                let producer_id = 2000 + state.next_producer_id;
                                state.next_producer_id += 1;
                                state
                                    .transactions
                                    .insert(id.clone(), TxnMetadata { producer_id, ..Default::default() });
                            }
                            let t = &state.transactions[&id];
                            InitProducerIdResponse::default()
                                .with_producer_id(ProducerId(t.producer_id))
                                .with_producer_epoch(t.producer_epoch)
                        }
                    }
                };
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::FindCoordinator => {
                let req: FindCoordinatorRequest = protocol::decode_body("find coordinator", &mut frame, v).unwrap();
                let key = if v >= 4 { req.coordinator_keys[0].to_string() } else { req.key.to_string() };
                let mut state = state.lock().unwrap();
                state.requests.push(format!("FindCoordinator key_type={} {key}", req.key_type));
                let code = state.injected(ApiKey::FindCoordinator).unwrap_or(ErrorCode::NONE);
                let resp = if v >= 4 {
                    FindCoordinatorResponse::default().with_coordinators(vec![Coordinator::default()
                        .with_key(str_bytes(key))
                        .with_node_id(BrokerId(0))
                        .with_host(str_bytes("127.0.0.1"))
                        .with_port(port)
                        .with_error_code(code.0)])
                } else {
                    FindCoordinatorResponse::default()
                        .with_node_id(BrokerId(0))
                        .with_host(str_bytes("127.0.0.1"))
                        .with_port(port)
                        .with_error_code(code.0)
                };
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::AddPartitionsToTxn => {
                let req: AddPartitionsToTxnRequest = protocol::decode_body("add partitions", &mut frame, v).unwrap();
                let txn_id = req.v3_and_below_transactional_id.0.to_string();
                let mut state = state.lock().unwrap();
                let mut names = Vec::new();
                for t in &req.v3_and_below_topics {
                    for p in &t.partitions {
                        names.push(format!("{}-{p}", t.name.0));
                    }
                }
                state.requests.push(format!("AddPartitionsToTxn {}", names.join(" ")));
                let code = state.injected(ApiKey::AddPartitionsToTxn).unwrap_or_else(|| {
                    state.check_epoch(&txn_id, req.v3_and_below_producer_id.0, req.v3_and_below_producer_epoch)
                });
                let mut results = Vec::new();
                for t in &req.v3_and_below_topics {
                    if code.is_ok() {
                        let txn = state.transactions.get_mut(&txn_id).unwrap();
                        txn.partitions.extend(t.partitions.iter().map(|p| (t.name.0.to_string(), *p)));
                    }
                    results.push(
                        AddPartitionsToTxnTopicResult::default().with_name(t.name.clone()).with_results_by_partition(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    AddPartitionsToTxnPartitionResult::default()
                                        .with_partition_index(*p)
                                        .with_partition_error_code(code.0)
                                })
                                .collect(),
                        ),
                    );
                }
                let resp = AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::AddOffsetsToTxn => {
                let req: AddOffsetsToTxnRequest = protocol::decode_body("add offsets", &mut frame, v).unwrap();
                let txn_id = req.transactional_id.0.to_string();
                let mut state = state.lock().unwrap();
                state.requests.push(format!("AddOffsetsToTxn {}", req.group_id.0));
                let code = state
                    .injected(ApiKey::AddOffsetsToTxn)
                    .unwrap_or_else(|| state.check_epoch(&txn_id, req.producer_id.0, req.producer_epoch));
                if code.is_ok() {
                    state.transactions.get_mut(&txn_id).unwrap().groups.insert(req.group_id.0.to_string());
                }
                let resp = AddOffsetsToTxnResponse::default().with_error_code(code.0);
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::TxnOffsetCommit => {
                let req: TxnOffsetCommitRequest = protocol::decode_body("txn offset commit", &mut frame, v).unwrap();
                let txn_id = req.transactional_id.0.to_string();
                let group = req.group_id.0.to_string();
                let mut state = state.lock().unwrap();
                let mut offsets = Vec::new();
                for t in &req.topics {
                    for p in &t.partitions {
                        offsets.push(format!("{}-{}@{}", t.name.0, p.partition_index, p.committed_offset));
                    }
                }
                state.requests.push(format!(
                    "TxnOffsetCommit {group} generation={} member={} instance={} {}",
                    req.generation_id,
                    req.member_id,
                    req.group_instance_id.as_deref().unwrap_or("-"),
                    offsets.join(" ")
                ));
                let code = state.injected(ApiKey::TxnOffsetCommit).unwrap_or_else(|| {
                    match state.check_epoch(&txn_id, req.producer_id.0, req.producer_epoch) {
                        ErrorCode::NONE => match state.group_generations.get(&group) {
                            Some(&g) if req.generation_id >= 0 && req.generation_id != g => {
                                ErrorCode::ILLEGAL_GENERATION
                            }
                            _ => ErrorCode::NONE,
                        },
                        code => code,
                    }
                });
                if code.is_ok() {
                    let txn = state.transactions.get_mut(&txn_id).unwrap();
                    let pending = txn.pending_offsets.entry(group.clone()).or_default();
                    for t in &req.topics {
                        for p in &t.partitions {
                            pending.insert((t.name.0.to_string(), p.partition_index), p.committed_offset);
                        }
                    }
                }
                let topics = req
                    .topics
                    .iter()
                    .map(|t| {
                        TxnOffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    TxnOffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code.0)
                                })
                                .collect(),
                        )
                    })
                    .collect();
                let resp = TxnOffsetCommitResponse::default().with_topics(topics);
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::EndTxn => {
                let req: EndTxnRequest = protocol::decode_body("end txn", &mut frame, v).unwrap();
                let txn_id = req.transactional_id.0.to_string();
                let mut state = state.lock().unwrap();
                state.requests.push(format!("EndTxn {}", if req.committed { "commit" } else { "abort" }));
                let code = state.injected(ApiKey::EndTxn).unwrap_or_else(|| {
                    match state.check_epoch(&txn_id, req.producer_id.0, req.producer_epoch) {
                        // Kafka's coordinator refuses to end a transaction it never heard of.
                        ErrorCode::NONE => {
                            let t = &state.transactions[&txn_id];
                            if t.partitions.is_empty() && t.groups.is_empty() {
                                ErrorCode::INVALID_TXN_STATE
                            } else {
                                ErrorCode::NONE
                            }
                        }
                        code => code,
                    }
                });
                if code.is_ok() {
                    state.end_transaction(&txn_id, req.committed);
                }
                let resp = EndTxnResponse::default().with_error_code(code.0);
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::Produce => {
                let req: ProduceRequest = protocol::decode_body("produce", &mut frame, v).unwrap();
                let mut state = state.lock().unwrap();
                state.produce_requests += 1;
                let fail = state.fail_produce_requests > 0;
                if fail {
                    state.fail_produce_requests -= 1;
                }
                let injected = state.injected(ApiKey::Produce);
                let txn_id = req.transactional_id.as_ref().map(|t| t.0.to_string());
                let mut responses = Vec::new();
                let mut state_out_of_order = 0;
                for t in req.topic_data {
                    let mut partition_responses = Vec::new();
                    for p in t.partition_data {
                        let mut r = PartitionProduceResponse::default().with_index(p.index);
                        let records = p.records.unwrap();
                        let headers = validate_batches(&records).unwrap();
                        let h = headers[0];
                        let topic = t.name.0.to_string();
                        state.requests.push(format!(
                            "Produce {topic}-{}{}",
                            p.index,
                            if h.is_transactional() { " txn" } else { "" }
                        ));
                        // The coordinator's view: a transactional batch needs its partition
                        // added to the producer's open transaction, in the current epoch.
                        let txn_code = if h.is_transactional() {
                            match txn_id.as_ref().and_then(|id| state.transactions.get(id)) {
                                None => ErrorCode::INVALID_TXN_STATE,
                                Some(txn) if txn.producer_epoch > h.producer_epoch => ErrorCode::INVALID_PRODUCER_EPOCH,
                                Some(txn) if !txn.partitions.contains(&(topic.clone(), p.index)) => {
                                    ErrorCode::INVALID_TXN_STATE
                                }
                                Some(_) => ErrorCode::NONE,
                            }
                        } else {
                            ErrorCode::NONE
                        };
                        let log = &mut state.topics.get_mut(topic.as_str()).unwrap()[p.index as usize];
                        let expected = match log.next_sequence.get(&h.producer_id) {
                            Some(&(epoch, sequence)) if epoch == h.producer_epoch => sequence,
                            _ => 0,
                        };
                        if fail {
                            r.error_code = ErrorCode::NOT_LEADER_OR_FOLLOWER.0;
                        } else if let Some(code) = injected {
                            r.error_code = code.0;
                        } else if !txn_code.is_ok() {
                            r.error_code = txn_code.0;
                        } else if h.has_producer_id() && h.base_sequence != expected {
                            r.error_code = if h.base_sequence < expected {
                                ErrorCode::DUPLICATE_SEQUENCE_NUMBER.0
                            } else {
                                state_out_of_order += 1;
                                ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER.0
                            };
                        } else {
                            if h.has_producer_id() {
                                log.next_sequence.insert(h.producer_id, (h.producer_epoch, h.last_sequence() + 1));
                            }
                            let base = log.append(&records);
                            if h.is_transactional() {
                                log.ongoing.entry(h.producer_id).or_insert(base);
                            }
                            r.base_offset = base;
                        }
                        partition_responses.push(r);
                    }
                    responses.push(
                        TopicProduceResponse::default().with_name(t.name).with_partition_responses(partition_responses),
                    );
                }
                state.out_of_order += state_out_of_order;
                drop(state);
                if req.acks == 0 {
                    continue;
                }
                let resp = ProduceResponse::default().with_responses(responses);
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::ListOffsets => {
                let req: ListOffsetsRequest = protocol::decode_body("list offsets", &mut frame, v).unwrap();
                let state = state.lock().unwrap();
                let topics = req
                    .topics
                    .into_iter()
                    .map(|t| {
                        let logs = &state.topics[t.name.0.as_str()];
                        let partitions = t
                            .partitions
                            .into_iter()
                            .map(|p| {
                                let log = &logs[p.partition_index as usize];
                                let offset = if p.timestamp == -2 { 0 } else { log.log_end_offset };
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(p.partition_index)
                                    .with_offset(offset)
                                    .with_timestamp(-1)
                            })
                            .collect();
                        ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(partitions)
                    })
                    .collect();
                let resp = ListOffsetsResponse::default().with_topics(topics);
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            ApiKey::Fetch => {
                let req: FetchRequest = protocol::decode_body("fetch", &mut frame, v).unwrap();
                let read_committed = req.isolation_level == 1;
                let mut any = false;
                let responses: Vec<FetchableTopicResponse> = {
                    let state = state.lock().unwrap();
                    req.topics
                        .into_iter()
                        .map(|t| {
                            let logs = &state.topics[t.topic.0.as_str()];
                            let partitions = t
                                .partitions
                                .into_iter()
                                .map(|p| {
                                    let log = &logs[p.partition as usize];
                                    let lso = log.last_stable_offset();
                                    let mut data = PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_high_watermark(log.log_end_offset)
                                        .with_last_stable_offset(lso);
                                    if p.fetch_offset > log.log_end_offset {
                                        return data.with_error_code(ErrorCode::OFFSET_OUT_OF_RANGE.0);
                                    }
                                    // read_committed: below the last stable offset, with the
                                    // aborted transactions that end at or after the fetch offset.
                                    let upper = if read_committed { lso } else { log.log_end_offset };
                                    if read_committed {
                                        data.aborted_transactions = Some(
                                            log.aborted
                                                .iter()
                                                .filter(|&&(_, first, marker)| {
                                                    marker >= p.fetch_offset && first < upper
                                                })
                                                .map(|&(producer_id, first, _)| {
                                                    AbortedTransaction::default()
                                                        .with_producer_id(ProducerId(producer_id))
                                                        .with_first_offset(first)
                                                })
                                                .collect(),
                                        );
                                    }
                                    let mut bytes = BytesMut::new();
                                    for (base, batch) in &log.batches {
                                        let h = crate::protocol::record::BatchHeader::parse(batch).unwrap();
                                        if h.last_offset() >= p.fetch_offset
                                            && *base < upper
                                            && (bytes.is_empty()
                                                || bytes.len() + batch.len() <= p.partition_max_bytes as usize)
                                        {
                                            bytes.extend_from_slice(batch);
                                        }
                                    }
                                    any |= !bytes.is_empty();
                                    data.records = Some(bytes.freeze());
                                    data
                                })
                                .collect();
                            FetchableTopicResponse::default().with_topic(t.topic).with_partitions(partitions)
                        })
                        .collect()
                };
                if !any {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let resp = FetchResponse::default().with_responses(responses);
                protocol::encode_response(api_key, v, id, &resp, &mut out).unwrap();
            }
            other => panic!("test broker does not handle {other:?}"),
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
