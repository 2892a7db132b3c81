//! One TCP connection to one broker: a writer task, a reader task, correlation ids, and many
//! requests in flight at once (Kafka answers in order per connection, but we match by
//! correlation id so callers never depend on that).
//!
//! Callers encode their request and decode the response in their own task; the connection's
//! tasks only move frames. Each response frame is bounded by `max_response_bytes` before a byte
//! of it is buffered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use crate::protocol::{self, frame, ApiKey, Codec, ErrorCode};

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Sent in every request header (Kafka's `client.id`).
    pub client_id: Option<String>,
    /// How long one request may wait for its response (`request.timeout.ms`).
    pub request_timeout: Duration,
    /// How long establishing the TCP connection and negotiating versions may take.
    pub connect_timeout: Duration,
    /// Largest response frame accepted; a bigger one closes the connection.
    pub max_response_bytes: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            client_id: Some("spate".into()),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 100 * 1024 * 1024,
        }
    }
}

/// The versions of each API this client can speak. The broker's range is intersected with this
/// one on connect.
pub const CLIENT_API_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    // Transactions, as the Java client sends them (AddPartitionsToTxn v4+ is broker to broker).
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::AddRaftVoter, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
];

/// The range this client speaks for `api_key`, if any.
pub fn client_api_range(api_key: ApiKey) -> Option<(i16, i16)> {
    CLIENT_API_VERSIONS.iter().find(|(k, _, _)| *k == api_key).map(|&(_, min, max)| (min, max))
}

/// The version ranges a broker advertised in its ApiVersions response.
#[derive(Debug, Clone, Default)]
pub struct BrokerApiVersions {
    ranges: HashMap<i16, (i16, i16)>,
}

impl BrokerApiVersions {
    pub fn new(ranges: impl IntoIterator<Item = (i16, i16, i16)>) -> Self {
        BrokerApiVersions { ranges: ranges.into_iter().map(|(k, min, max)| (k, (min, max))).collect() }
    }

    /// The broker's `(min, max)` for an API, if it supports it at all.
    pub fn range(&self, api_key: ApiKey) -> Option<(i16, i16)> {
        self.ranges.get(&(api_key as i16)).copied()
    }

    /// The version to use: the highest both sides speak.
    pub fn pick(&self, peer: &str, api_key: ApiKey) -> Result<i16> {
        let api = api_name(api_key);
        let (client_min, client_max) =
            client_api_range(api_key).ok_or_else(|| Error::ApiNotSupported { peer: "this client".into(), api })?;
        let (broker_min, broker_max) =
            self.range(api_key).ok_or_else(|| Error::ApiNotSupported { peer: peer.to_string(), api })?;
        let version = client_max.min(broker_max);
        if version < client_min.max(broker_min) {
            return Err(Error::UnsupportedApi {
                peer: peer.to_string(),
                api,
                client_min,
                client_max,
                broker_min,
                broker_max,
            });
        }
        Ok(version)
    }
}

/// Kafka's name of an API, for messages.
pub fn api_name(api_key: ApiKey) -> &'static str {
    match api_key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::ElectLeaders => "ElectLeaders",
        ApiKey::AlterPartitionReassignments => "AlterPartitionReassignments",
        ApiKey::ListPartitionReassignments => "ListPartitionReassignments",
        ApiKey::UnregisterBroker => "UnregisterBroker",
        ApiKey::DescribeQuorum => "DescribeQuorum",
        ApiKey::AddRaftVoter => "AddRaftVoter",
        ApiKey::RemoveRaftVoter => "RemoveRaftVoter",
        _ => "an api this client does not use",
    }
}

/// Frames queued for the writer before `send` waits: bounds memory when the socket is slow.
const OUTGOING_QUEUE_FRAMES: usize = 1024;
/// Bytes the writer gathers before a write; larger frames go to the socket directly.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
const READ_CHUNK_BYTES: usize = 64 * 1024;

type ResponseSender = oneshot::Sender<Result<Bytes>>;

/// Requests waiting for a response, and why the connection closed once it has.
struct Pending {
    waiting: HashMap<i32, ResponseSender>,
    closed: Option<String>,
}

struct Shared {
    peer: String,
    config: ConnectionConfig,
    next_correlation_id: AtomicI32,
    pending: Arc<Mutex<Pending>>,
    outgoing: mpsc::Sender<Bytes>,
    versions: BrokerApiVersions,
    reader: AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The writer ends when `outgoing` drops; the reader would wait for the peer's EOF.
        self.reader.abort();
    }
}

/// A cheap-to-clone handle to one broker connection. The connection closes when the last handle
/// drops.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer", &self.shared.peer).finish()
    }
}

impl Connection {
    /// Connects to `addr` (`host:port`), sets TCP_NODELAY and negotiates API versions.
    pub async fn connect(addr: &str, config: &ConnectionConfig) -> Result<Connection> {
        let peer = addr.to_string();
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout { peer: peer.clone(), timeout_ms: config.connect_timeout.as_millis() as u64 })?
            .map_err(|source| Error::Io { peer: peer.clone(), source })?;
        stream.set_nodelay(true).map_err(|source| Error::Io { peer: peer.clone(), source })?;
        let mut conn = Connection::start(stream, peer.clone(), config.clone());
        let versions = tokio::time::timeout(config.connect_timeout, conn.negotiate_versions())
            .await
            .map_err(|_| Error::Timeout { peer, timeout_ms: config.connect_timeout.as_millis() as u64 })??;
        Arc::get_mut(&mut conn.shared).expect("no other handle exists before connect returns").versions = versions;
        Ok(conn)
    }

    /// Wraps an established stream without negotiating versions (every API then looks
    /// unsupported until [`Connection::connect`] is used); for tests and the broker's own use.
    fn start(stream: TcpStream, peer: String, config: ConnectionConfig) -> Connection {
        let (read_half, write_half) = stream.into_split();
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE_FRAMES);
        let pending = Arc::new(Mutex::new(Pending { waiting: HashMap::new(), closed: None }));
        let reader = tokio::spawn(read_loop(read_half, peer.clone(), config.max_response_bytes, pending.clone()));
        tokio::spawn(write_loop(write_half, rx, peer.clone(), pending.clone()));
        Connection {
            shared: Arc::new(Shared {
                peer,
                config,
                next_correlation_id: AtomicI32::new(0),
                pending,
                outgoing: tx,
                versions: BrokerApiVersions::default(),
                reader: reader.abort_handle(),
            }),
        }
    }

    /// ApiVersions v3, falling back per KIP-511: a broker that does not know v3 answers
    /// UNSUPPORTED_VERSION in the v0 layout, listing the ApiVersions versions it does know.
    async fn negotiate_versions(&self) -> Result<BrokerApiVersions> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(protocol::str_bytes("spate"))
            .with_client_software_version(protocol::str_bytes(env!("CARGO_PKG_VERSION")));
        let mut version = 3;
        for _ in 0..2 {
            let frame = self.request_frame(ApiKey::ApiVersions, version, &request).await?;
            // The body's first field is error_code in every version; the header is always v0.
            let code = frame.get(4..6).map(|b| i16::from_be_bytes([b[0], b[1]])).unwrap_or(0);
            let decode_version = if ErrorCode(code) == ErrorCode::UNSUPPORTED_VERSION { 0 } else { version };
            let (_, response): (i32, ApiVersionsResponse) =
                protocol::decode_response(ApiKey::ApiVersions, decode_version, &mut frame.clone())
                    .map_err(|source| Error::Protocol { peer: self.peer().to_string(), source })?;
            let code = ErrorCode(response.error_code);
            if code == ErrorCode::UNSUPPORTED_VERSION && version > 0 {
                let broker_max = response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map(|k| k.max_version)
                    .unwrap_or(0);
                version = broker_max.clamp(0, version - 1);
                continue;
            }
            if !code.is_ok() {
                return Err(Error::broker(code, format!("ApiVersions from {}", self.peer())));
            }
            return Ok(BrokerApiVersions::new(
                response.api_keys.iter().map(|k| (k.api_key, k.min_version, k.max_version)),
            ));
        }
        Err(Error::ApiNotSupported { peer: self.peer().to_string(), api: "ApiVersions" })
    }

    /// The broker this connection talks to, as `host:port`.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Whether the connection has failed or been closed by the peer.
    pub fn is_closed(&self) -> bool {
        self.shared.pending.lock().expect("pending lock").closed.is_some()
    }

    /// The broker's advertised version ranges.
    pub fn broker_versions(&self) -> &BrokerApiVersions {
        &self.shared.versions
    }

    /// The version of `api_key` to use with this broker: min(our max, broker max), or an error
    /// when the ranges do not overlap.
    pub fn version(&self, api_key: ApiKey) -> Result<i16> {
        self.shared.versions.pick(&self.shared.peer, api_key)
    }

    /// Sends a request of the given version and waits (at most `request_timeout`) for its
    /// response.
    pub async fn send<Req: Codec, Resp: Codec>(&self, api_key: ApiKey, version: i16, request: &Req) -> Result<Resp> {
        let mut frame = self.request_frame(api_key, version, request).await?;
        let (_, response) = protocol::decode_response(api_key, version, &mut frame)
            .map_err(|source| Error::Protocol { peer: self.peer().to_string(), source })?;
        Ok(response)
    }

    /// Sends a request at the negotiated version of its API, returning the version used with the
    /// response so callers can interpret version-dependent fields.
    pub async fn call<Req: Codec, Resp: Codec>(&self, api_key: ApiKey, request: &Req) -> Result<(i16, Resp)> {
        let version = self.version(api_key)?;
        Ok((version, self.send(api_key, version, request).await?))
    }

    /// Sends a request that has no response (Produce with acks=0). Returns once the frame is
    /// queued for the socket.
    pub async fn send_no_response<Req: Codec>(&self, api_key: ApiKey, version: i16, request: &Req) -> Result<()> {
        let correlation_id = self.shared.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(api_key, version, correlation_id, request)?;
        if let Some(reason) = &self.shared.pending.lock().expect("pending lock").closed {
            return Err(Error::ConnectionLost { peer: self.peer().to_string(), reason: reason.clone() });
        }
        self.shared.outgoing.send(frame).await.map_err(|_| Error::ConnectionClosed { peer: self.peer().to_string() })
    }

    fn encode<Req: Codec>(&self, api_key: ApiKey, version: i16, correlation_id: i32, request: &Req) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        protocol::encode_request(
            api_key,
            version,
            correlation_id,
            self.shared.config.client_id.as_deref(),
            request,
            &mut buf,
        )
        .map_err(|e| Error::Encode { what: api_name(api_key), reason: e.to_string() })?;
        Ok(buf.freeze())
    }

    /// Sends one request and returns its raw response frame (header included).
    async fn request_frame<Req: Codec>(&self, api_key: ApiKey, version: i16, request: &Req) -> Result<Bytes> {
        self.enqueue(api_key, version, request).await?.frame().await
    }

    /// Queues a request for the socket and returns a handle to its response. Requests queued
    /// one after another by one task reach the broker in that order, which idempotent produce
    /// relies on; waiting for the responses can then happen anywhere.
    pub async fn enqueue<Req: Codec>(&self, api_key: ApiKey, version: i16, request: &Req) -> Result<PendingResponse> {
        let correlation_id = self.shared.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(api_key, version, correlation_id, request)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            if let Some(reason) = &pending.closed {
                return Err(Error::ConnectionLost { peer: self.peer().to_string(), reason: reason.clone() });
            }
            pending.waiting.insert(correlation_id, tx);
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.request_timeout;
        if self.shared.outgoing.send(frame).await.is_err() {
            self.forget(correlation_id);
            return Err(Error::ConnectionClosed { peer: self.peer().to_string() });
        }
        Ok(PendingResponse { conn: self.clone(), api_key, version, correlation_id, deadline, rx })
    }

    fn forget(&self, correlation_id: i32) {
        self.shared.pending.lock().expect("pending lock").waiting.remove(&correlation_id);
    }
}

/// A request on the wire, waiting for its response (at most `request_timeout` from when it was
/// queued).
pub struct PendingResponse {
    conn: Connection,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    deadline: tokio::time::Instant,
    rx: oneshot::Receiver<Result<Bytes>>,
}

impl PendingResponse {
    /// Waits for the response and decodes it as the version it was sent with.
    pub async fn response<Resp: Codec>(self) -> Result<Resp> {
        let (api_key, version, conn) = (self.api_key, self.version, self.conn.clone());
        let mut frame = self.frame().await?;
        let (_, response) = protocol::decode_response(api_key, version, &mut frame)
            .map_err(|source| Error::Protocol { peer: conn.peer().to_string(), source })?;
        Ok(response)
    }

    async fn frame(self) -> Result<Bytes> {
        match tokio::time::timeout_at(self.deadline, self.rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::ConnectionClosed { peer: self.conn.peer().to_string() }),
            Err(_) => {
                // As the Java client does, a request that timed out closes its connection: the
                // broker may be paused or cut off, and every other request on the connection
                // would wait out its own timeout too. Their callers see the connection lost
                // now and retry elsewhere; the next use of this broker reconnects.
                self.conn.forget(self.correlation_id);
                let timeout_ms = self.conn.shared.config.request_timeout.as_millis() as u64;
                let peer = self.conn.peer().to_string();
                close(&self.conn.shared.pending, &peer, format!("a request timed out after {timeout_ms} ms"));
                Err(Error::Timeout { peer, timeout_ms })
            }
        }
    }
}

/// Marks the connection closed and fails every waiting request.
fn close(pending: &Mutex<Pending>, peer: &str, reason: String) {
    let waiting = {
        let mut p = pending.lock().expect("pending lock");
        if p.closed.is_none() {
            p.closed = Some(reason.clone());
        }
        std::mem::take(&mut p.waiting)
    };
    for (_, tx) in waiting {
        let _ = tx.send(Err(Error::ConnectionLost { peer: peer.to_string(), reason: reason.clone() }));
    }
}

async fn read_loop(mut reader: OwnedReadHalf, peer: String, max_response_bytes: usize, pending: Arc<Mutex<Pending>>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let reason = loop {
        match frame::decode_frame(&mut buf, max_response_bytes) {
            Ok(Some(frame)) => {
                let correlation_id = match protocol::peek_correlation_id(&frame) {
                    Ok(id) => id,
                    Err(e) => break e.to_string(),
                };
                let waiter = pending.lock().expect("pending lock").waiting.remove(&correlation_id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(Ok(frame));
                    }
                    None => debug!(%peer, correlation_id, "dropping a response nobody waits for"),
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break "closed by the peer".to_string(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    debug!(%peer, %reason, "connection reader stopped");
    close(&pending, &peer, reason);
}

async fn write_loop(writer: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>, peer: String, pending: Arc<Mutex<Pending>>) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    let result: std::io::Result<()> = async {
        while let Some(frame) = rx.recv().await {
            writer.write_all(&frame).await?;
            // Gather whatever else is queued into the same write before flushing.
            while let Ok(frame) = rx.try_recv() {
                writer.write_all(&frame).await?;
            }
            writer.flush().await?;
        }
        writer.shutdown().await
    }
    .await;
    match result {
        Ok(()) => close(&pending, &peer, "closed by this client".into()),
        Err(e) => {
            warn!(%peer, error = %e, "connection write failed");
            close(&pending, &peer, e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::api_versions_response::ApiVersion;
    use crate::protocol::messages::{MetadataRequest, MetadataResponse};
    use tokio::net::TcpListener;

    /// A fake broker: answers ApiVersions (rejecting v3 when `reject_v3`), and answers Metadata
    /// requests in reverse order of arrival per pair, so responses come back out of order and
    /// correlation ids must do the matching. Metadata's throttle_time_ms echoes the correlation
    /// id.
    async fn fake_broker(reject_v3: bool, metadata_max: i16) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut held: Option<BytesMut> = None;
            loop {
                let frame = loop {
                    if let Some(f) = frame::decode_frame(&mut buf, 1 << 20).unwrap() {
                        break Some(f);
                    }
                    if stream.read_buf(&mut buf).await.unwrap() == 0 {
                        break None;
                    }
                };
                let Some(mut frame) = frame else { return };
                let (api_key, header) = protocol::decode_request_header(&mut frame).unwrap();
                let version = header.request_api_version;
                let mut out = BytesMut::new();
                match api_key {
                    ApiKey::ApiVersions if reject_v3 && version == 3 => {
                        let resp = ApiVersionsResponse::default()
                            .with_error_code(ErrorCode::UNSUPPORTED_VERSION.0)
                            .with_api_keys(vec![ApiVersion::default()
                                .with_api_key(ApiKey::ApiVersions as i16)
                                .with_min_version(0)
                                .with_max_version(2)]);
                        protocol::encode_response(api_key, 0, header.correlation_id, &resp, &mut out).unwrap();
                    }
                    ApiKey::ApiVersions => {
                        let resp = ApiVersionsResponse::default().with_api_keys(vec![
                            ApiVersion::default().with_api_key(18).with_min_version(0).with_max_version(version),
                            ApiVersion::default().with_api_key(3).with_min_version(0).with_max_version(metadata_max),
                        ]);
                        protocol::encode_response(api_key, version, header.correlation_id, &resp, &mut out).unwrap();
                    }
                    ApiKey::Metadata => {
                        let resp = MetadataResponse::default().with_throttle_time_ms(header.correlation_id);
                        protocol::encode_response(api_key, version, header.correlation_id, &resp, &mut out).unwrap();
                        match held.take() {
                            None => {
                                held = Some(out);
                                continue;
                            }
                            Some(first) => {
                                stream.write_all(&out).await.unwrap();
                                out = first;
                            }
                        }
                    }
                    _ => panic!("unexpected api {api_key:?}"),
                }
                stream.write_all(&out).await.unwrap();
            }
        });
        (addr, handle)
    }

    #[tokio::test]
    async fn negotiates_versions_and_matches_out_of_order_responses() {
        let (addr, server) = fake_broker(false, 9).await;
        let conn = Connection::connect(&addr, &ConnectionConfig::default()).await.unwrap();
        assert_eq!(conn.broker_versions().range(ApiKey::ApiVersions), Some((0, 3)));
        // Broker max 9 is below ours (12): pick 9.
        assert_eq!(conn.version(ApiKey::Metadata).unwrap(), 9);
        assert!(matches!(conn.version(ApiKey::Produce), Err(Error::ApiNotSupported { .. })));

        let mut calls = Vec::new();
        for _ in 0..10 {
            let conn = conn.clone();
            calls.push(tokio::spawn(async move {
                let req = MetadataRequest::default();
                let resp: MetadataResponse = conn.send(ApiKey::Metadata, 9, &req).await.unwrap();
                resp.throttle_time_ms
            }));
        }
        let mut ids = Vec::new();
        for c in calls {
            ids.push(c.await.unwrap());
        }
        ids.sort();
        ids.dedup();
        // Correlation id 0 was ApiVersions; every metadata call got its own answer.
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        drop(conn);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn falls_back_when_broker_rejects_api_versions_v3() {
        let (addr, _server) = fake_broker(true, 12).await;
        let conn = Connection::connect(&addr, &ConnectionConfig::default()).await.unwrap();
        // The fake answered v2 with max_version 2 for ApiVersions.
        assert_eq!(conn.broker_versions().range(ApiKey::ApiVersions), Some((0, 2)));
        assert_eq!(conn.version(ApiKey::Metadata).unwrap(), 12);
    }

    #[tokio::test]
    async fn rejects_disjoint_version_ranges() {
        let versions = BrokerApiVersions::new([(ApiKey::Produce as i16, 10, 11), (ApiKey::Fetch as i16, 0, 3)]);
        assert!(matches!(versions.pick("b", ApiKey::Produce), Err(Error::UnsupportedApi { broker_min: 10, .. })));
        assert!(matches!(versions.pick("b", ApiKey::Fetch), Err(Error::UnsupportedApi { client_min: 4, .. })));
    }

    #[tokio::test]
    async fn oversized_response_fails_pending_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
            // A size prefix far above the client's limit.
            stream.write_all(&(64 * 1024 * 1024i32).to_be_bytes()).await.unwrap();
            let _ = stream.read(&mut buf).await;
        });
        let stream = TcpStream::connect(&addr).await.unwrap();
        let config = ConnectionConfig { max_response_bytes: 1024, ..ConnectionConfig::default() };
        let conn = Connection::start(stream, addr, config);
        let err = conn.send::<_, MetadataResponse>(ApiKey::Metadata, 9, &MetadataRequest::default()).await.unwrap_err();
        assert!(matches!(&err, Error::ConnectionLost { reason, .. } if reason.contains("exceeds")), "{err}");
        assert!(conn.is_closed());
        assert!(err.is_retriable());
    }

    #[tokio::test]
    async fn request_timeout_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            let _ = done_rx.await;
        });
        let stream = TcpStream::connect(&addr).await.unwrap();
        let config = ConnectionConfig { request_timeout: Duration::from_millis(50), ..ConnectionConfig::default() };
        let conn = Connection::start(stream, addr, config);
        let err = conn.send::<_, MetadataResponse>(ApiKey::Metadata, 9, &MetadataRequest::default()).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { timeout_ms: 50, .. }));
        assert!(conn.shared.pending.lock().unwrap().waiting.is_empty());
        // The connection is given up so the pool reconnects (or fails over) next time.
        assert!(conn.is_closed());
        let again = conn.send::<_, MetadataResponse>(ApiKey::Metadata, 9, &MetadataRequest::default()).await;
        assert!(matches!(again, Err(Error::ConnectionLost { .. })));
        drop(done_tx);
    }
}
