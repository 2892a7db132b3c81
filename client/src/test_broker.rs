//! An in-memory broker for the client's own tests: one node on 127.0.0.1:0 that speaks
//! ApiVersions, Metadata, InitProducerId, Produce (checking idempotent sequences), ListOffsets
//! and Fetch, with a hook to fail produce requests. Not a model of the real broker; just enough
//! to drive the clients through their paths.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::connection::CLIENT_API_VERSIONS;
use crate::protocol::messages::api_versions_response::ApiVersion;
use crate::protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use crate::protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use crate::protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use crate::protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use crate::protocol::messages::*;
use crate::protocol::record::{set_base_offset, validate_batches};
use crate::protocol::{self, frame, str_bytes, ApiKey, ErrorCode};

#[derive(Default)]
pub(crate) struct PartitionLog {
    /// (base offset, batch bytes with the offset set)
    pub batches: Vec<(i64, Bytes)>,
    pub log_end_offset: i64,
    pub next_sequence: HashMap<i64, i32>,
}

#[derive(Default)]
pub(crate) struct BrokerState {
    pub topics: HashMap<String, Vec<PartitionLog>>,
    /// Produce requests still to answer with NOT_LEADER_OR_FOLLOWER for every partition.
    pub fail_produce_requests: usize,
    pub produce_requests: usize,
    /// Batches answered OUT_OF_ORDER_SEQUENCE_NUMBER.
    pub out_of_order: usize,
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
                let resp = InitProducerIdResponse::default().with_producer_id(ProducerId(1000)).with_producer_epoch(0);
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
                let mut responses = Vec::new();
                let mut state_out_of_order = 0;
                for t in req.topic_data {
                    let mut partition_responses = Vec::new();
                    for p in t.partition_data {
                        let mut r = PartitionProduceResponse::default().with_index(p.index);
                        let log = &mut state.topics.get_mut(t.name.0.as_str()).unwrap()[p.index as usize];
                        let records = p.records.unwrap();
                        let headers = validate_batches(&records).unwrap();
                        let h = headers[0];
                        let expected = log.next_sequence.get(&h.producer_id).copied().unwrap_or(0);
                        if fail {
                            r.error_code = ErrorCode::NOT_LEADER_OR_FOLLOWER.0;
                        } else if h.has_producer_id() && h.base_sequence != expected {
                            r.error_code = if h.base_sequence < expected {
                                ErrorCode::DUPLICATE_SEQUENCE_NUMBER.0
                            } else {
                                state_out_of_order += 1;
                                ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER.0
                            };
                        } else {
                            if h.has_producer_id() {
                                log.next_sequence.insert(h.producer_id, h.last_sequence() + 1);
                            }
                            r.base_offset = log.log_end_offset;
                            let mut bytes = BytesMut::from(&records[..]);
                            set_base_offset(&mut bytes, log.log_end_offset);
                            log.batches.push((log.log_end_offset, bytes.freeze()));
                            log.log_end_offset += h.records_count as i64;
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
                                    let mut data = PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_high_watermark(log.log_end_offset);
                                    if p.fetch_offset > log.log_end_offset {
                                        return data.with_error_code(ErrorCode::OFFSET_OUT_OF_RANGE.0);
                                    }
                                    let mut bytes = BytesMut::new();
                                    for (base, batch) in &log.batches {
                                        let count =
                                            crate::protocol::record::BatchHeader::parse(batch).unwrap().records_count;
                                        if base + count as i64 > p.fetch_offset
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
