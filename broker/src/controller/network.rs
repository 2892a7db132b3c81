//! Controller-to-controller RPC over tonic (gRPC on HTTP/2), without protoc: one hand-written
//! prost message carries a JSON body, and the service is a hand-written tower `Service` that
//! routes five methods — Raft's AppendEntries, Vote and InstallSnapshot, Forward (a
//! [`ControllerRequest`](super::types::ControllerRequest) sent to the quorum leader) and Join (a
//! broker-only node asking the leader to replicate the metadata log to it).

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::codegen::http;
use tonic::server::UnaryService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use super::storage::{NodeId, TypeConfig};

/// Largest RPC message either side sends or accepts (snapshot chunks are far smaller).
pub const MAX_RPC_BYTES: usize = 16 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings on controller channels, and how long a ping may go unanswered before the
/// connection is dropped and made again.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// At most one warning per peer per this interval; the rest go to debug.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The one message type: a JSON-encoded request or response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcPayload {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    Join,
}

impl Method {
    fn path(self) -> &'static str {
        match self {
            Method::AppendEntries => "/spate.controller.Controller/AppendEntries",
            Method::Vote => "/spate.controller.Controller/Vote",
            Method::InstallSnapshot => "/spate.controller.Controller/InstallSnapshot",
            Method::Forward => "/spate.controller.Controller/Forward",
            Method::Join => "/spate.controller.Controller/Join",
        }
    }

    fn from_path(path: &str) -> Option<Method> {
        [Method::AppendEntries, Method::Vote, Method::InstallSnapshot, Method::Forward, Method::Join]
            .into_iter()
            .find(|m| m.path() == path)
    }
}

/// Serves decoded RPC bodies (the controller implements it).
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, method: Method, data: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, Status>>;
}

/// The tower service tonic's server runs.
#[derive(Clone)]
pub struct RpcService {
    handler: Arc<dyn RpcHandler>,
}

impl RpcService {
    pub fn new(handler: Arc<dyn RpcHandler>) -> Self {
        RpcService { handler }
    }
}

struct Unary {
    handler: Arc<dyn RpcHandler>,
    method: Method,
}

impl UnaryService<RpcPayload> for Unary {
    type Response = RpcPayload;
    type Future = BoxFuture<'static, Result<tonic::Response<RpcPayload>, Status>>;

    fn call(&mut self, request: tonic::Request<RpcPayload>) -> Self::Future {
        let handler = self.handler.clone();
        let method = self.method;
        Box::pin(async move {
            let data = handler.handle(method, request.into_inner().data).await?;
            Ok(tonic::Response::new(RpcPayload { data }))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for RpcService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(method) = Method::from_path(request.uri().path()) else {
            let path = request.uri().path().to_string();
            return Box::pin(async move { Ok(Status::unimplemented(format!("no method {path}")).into_http()) });
        };
        let handler = self.handler.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<RpcPayload, RpcPayload>::default())
                .max_decoding_message_size(MAX_RPC_BYTES)
                .max_encoding_message_size(MAX_RPC_BYTES);
            Ok(grpc.unary(Unary { handler, method }, request).await)
        })
    }
}

/// Serves RPCs on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handler: Arc<dyn RpcHandler>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(RpcService::new(handler), incoming, shutdown)
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "controller rpc server stopped");
    }
}

/// Rate limit for warnings about one peer.
#[derive(Default)]
pub struct WarnLimiter {
    last: Mutex<Option<Instant>>,
}

impl WarnLimiter {
    /// Whether a warning may be logged now (else log at debug).
    pub fn allow(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// A lazily connecting client to one controller.
#[derive(Clone)]
pub struct RpcClient {
    channel: Channel,
}

impl RpcClient {
    pub fn new(addr: SocketAddr) -> RpcClient {
        // A `SocketAddr` always forms a valid URI, so this cannot fail.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1:1"))
            .connect_timeout(CONNECT_TIMEOUT)
            // The channel is long-lived and shared (see NetworkFactory): pings find a connection
            // that a network partition left open but silent, so the channel reconnects instead of
            // timing out every call on it.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        RpcClient { channel: endpoint.connect_lazy() }
    }

    pub async fn call(&self, method: Method, data: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, Status> {
        let call = async {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone())
                .max_decoding_message_size(MAX_RPC_BYTES)
                .max_encoding_message_size(MAX_RPC_BYTES);
            grpc.ready().await.map_err(|e| Status::unavailable(format!("controller unreachable: {e}")))?;
            let mut request = tonic::Request::new(RpcPayload { data });
            request.set_timeout(timeout);
            let path = http::uri::PathAndQuery::from_static(method.path());
            let response = grpc.unary(request, path, ProstCodec::<RpcPayload, RpcPayload>::default()).await?;
            Ok(response.into_inner().data)
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded(format!("{method:?} timed out after {timeout:?}"))),
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(format!("cannot encode: {e}")))
}

pub fn decode<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(data).map_err(|e| Status::invalid_argument(format!("cannot decode: {e}")))
}

/// openraft's view of the network: one [`PeerNetwork`] per replication target.
/// openraft asks for a new client per replication stream, per election and per leadership check
/// (`ensure_linearizable`). Each peer's HTTP/2 channel is made once and shared by all of them:
/// a fresh connection per leadership check must connect and handshake within the heartbeat
/// interval (the RPC deadline openraft gives), which a loaded host or a slow network path misses
/// every time, leaving a leader that can never confirm itself and so never fences anyone. One
/// warning limiter per peer likewise outlives the clients, so a down voter is reported once per
/// interval, not once per retry.
#[derive(Default)]
pub struct NetworkFactory {
    limiters: std::collections::HashMap<NodeId, Arc<WarnLimiter>>,
    clients: std::collections::HashMap<NodeId, (String, RpcClient)>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        let client = match self.clients.get(&target) {
            Some((addr, client)) if *addr == node.addr => Some(client.clone()),
            _ => match node.addr.parse::<SocketAddr>() {
                Ok(addr) => {
                    let client = RpcClient::new(addr);
                    self.clients.insert(target, (node.addr.clone(), client.clone()));
                    Some(client)
                }
                Err(_) => {
                    tracing::warn!(target, addr = %node.addr, "controller voter has an unparsable address");
                    None
                }
            },
        };
        let warn = self.limiters.entry(target).or_default().clone();
        PeerNetwork { target, client, warn }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    client: Option<RpcClient>,
    warn: Arc<WarnLimiter>,
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let Some(client) = &self.client else {
            let status = Status::unavailable("no valid address");
            return Err(RPCError::Unreachable(Unreachable::new(&status)));
        };
        let data = encode(request).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        let reply = match client.call(method, data, timeout).await {
            Ok(reply) => reply,
            Err(status) => {
                if self.warn.allow() {
                    tracing::warn!(target = self.target, code = ?status.code(), error = %status.message(), "controller rpc failed");
                } else {
                    tracing::debug!(target = self.target, code = ?status.code(), error = %status.message(), "controller rpc failed");
                }
                return Err(match status.code() {
                    Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Method::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        // openraft logs every failed replication RPC; a down voter is retried (and logged) at most
        // four times a second.
        Backoff::new(std::iter::repeat(Duration::from_millis(250)))
    }
}
