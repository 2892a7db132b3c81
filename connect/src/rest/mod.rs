//! Kafka Connect's REST API: same paths, JSON shapes and status codes, so curl habits and
//! clients such as kafka-connect-py work. The router is generic over [`Herder`] (the worker's
//! side of every request); a herder that is not the group leader answers writes with
//! [`HerderError::NotLeader`] and the router forwards the request to the leader's URL.

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::config::Props;
use crate::error::ConnectError;

pub mod client;
pub mod router;

pub use client::RestClient;
pub use router::{router, Forwarder};

/// What a herder call can fail with, beyond [`ConnectError`].
#[derive(Debug)]
pub enum HerderError {
    /// This worker is not the leader; the request goes to `leader_url` (Kafka Connect forwards).
    NotLeader { leader_url: String },
    /// A rebalance is in progress or the leader is unknown (409).
    Rebalancing,
    /// Anything else; mapped to a status code by kind (NotFound 404, Config 400, Conflict 409,
    /// others 500).
    Error(ConnectError),
}

impl From<ConnectError> for HerderError {
    fn from(e: ConnectError) -> Self {
        HerderError::Error(e)
    }
}

/// Result of a herder call.
pub type HerderResult<T> = std::result::Result<T, HerderError>;

/// `GET /`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    pub version: String,
    pub commit: String,
    pub kafka_cluster_id: String,
}

/// `{"connector": "name", "task": 0}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectorTaskId {
    pub connector: String,
    pub task: u32,
}

/// `GET /connectors/{name}` and the answer to creating one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorInfo {
    pub name: String,
    pub config: Props,
    pub tasks: Vec<ConnectorTaskId>,
    /// "source" or "sink" (absent while unknown).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A connector's or a task's state in a status answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateInfo {
    /// UNASSIGNED, RUNNING, PAUSED, STOPPED, FAILED, RESTARTING.
    pub state: String,
    pub worker_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// A task's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskState {
    pub id: u32,
    pub state: String,
    pub worker_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// `GET /connectors/{name}/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorStateInfo {
    pub name: String,
    pub connector: StateInfo,
    pub tasks: Vec<TaskState>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Spate's addition: per-task metrics (records in/out, errors, DLQ'd, bytes, lag, batch
    /// latency). Kafka clients ignore unknown fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Json>,
}

/// `GET /connectors/{name}/tasks` entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskInfo {
    pub id: ConnectorTaskId,
    pub config: Props,
}

/// `GET /connector-plugins` entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PluginInfo {
    pub class: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
}

/// One source partition's offset (KIP-875), or a sink's `{"kafka_topic", "kafka_partition"}`
/// → `{"kafka_offset"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionOffset {
    pub partition: Json,
    /// `null` in a PATCH removes the partition's offset.
    pub offset: Option<Json>,
}

/// `GET|PATCH /connectors/{name}/offsets` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorOffsets {
    pub offsets: Vec<PartitionOffset>,
}

/// `PUT /connector-plugins/{plugin}/config/validate` answer: Kafka's `ConfigInfos`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigInfos {
    pub name: String,
    pub error_count: usize,
    pub groups: Vec<String>,
    pub configs: Vec<ConfigInfo>,
}

/// One key in [`ConfigInfos`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigInfo {
    pub definition: ConfigKeyInfo,
    pub value: ConfigValueInfo,
}

/// A key's definition (also `GET /connector-plugins/{plugin}/config` entries).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigKeyInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub required: bool,
    pub default_value: Option<String>,
    pub importance: String,
    pub documentation: String,
    pub group: Option<String>,
    pub width: String,
    pub display_name: String,
    pub dependents: Vec<String>,
    /// Kafka 4 writes `order_in_group`; earlier versions wrote `order` (read as well).
    #[serde(alias = "order")]
    pub order_in_group: i32,
}

/// A key's value and errors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigValueInfo {
    pub name: String,
    pub value: Option<String>,
    pub recommended_values: Vec<String>,
    pub errors: Vec<String>,
    pub visible: bool,
}

/// The worker side of every REST request. Implemented by the distributed herder
/// ([`crate::runtime`]) and by test doubles.
pub trait Herder: Send + Sync + 'static {
    /// `GET /`.
    fn server_info(&self) -> impl Future<Output = HerderResult<ServerInfo>> + Send;
    /// `GET /connectors`.
    fn connectors(&self) -> impl Future<Output = HerderResult<Vec<String>>> + Send;
    /// `GET /connectors/{name}`.
    fn connector_info(&self, name: &str) -> impl Future<Output = HerderResult<ConnectorInfo>> + Send;
    /// `GET /connectors/{name}/config`.
    fn connector_config(&self, name: &str) -> impl Future<Output = HerderResult<Props>> + Send;
    /// `POST /connectors` (`allow_replace = false`: 409 when it exists) and
    /// `PUT /connectors/{name}/config` (`true`). Returns whether it was created.
    fn put_connector_config(
        &self,
        name: &str,
        config: Props,
        allow_replace: bool,
    ) -> impl Future<Output = HerderResult<(bool, ConnectorInfo)>> + Send;
    /// `DELETE /connectors/{name}`.
    fn delete_connector(&self, name: &str) -> impl Future<Output = HerderResult<()>> + Send;
    /// `GET /connectors/{name}/status`.
    fn connector_status(&self, name: &str) -> impl Future<Output = HerderResult<ConnectorStateInfo>> + Send;
    /// `GET /connectors/{name}/tasks`.
    fn task_configs(&self, name: &str) -> impl Future<Output = HerderResult<Vec<TaskInfo>>> + Send;
    /// `GET /connectors/{name}/tasks/{id}/status`.
    fn task_status(&self, name: &str, task: u32) -> impl Future<Output = HerderResult<TaskState>> + Send;
    /// `GET /connectors/{name}/topics`: the topics the connector has used.
    fn connector_topics(&self, name: &str) -> impl Future<Output = HerderResult<Vec<String>>> + Send;
    /// `PUT /connectors/{name}/topics/reset`.
    fn reset_connector_topics(&self, name: &str) -> impl Future<Output = HerderResult<()>> + Send;
    /// `POST /connectors/{name}/restart?includeTasks=&onlyFailed=`. Returns the status to
    /// answer 202 with when tasks are included, `None` for a plain 204.
    fn restart_connector(
        &self,
        name: &str,
        include_tasks: bool,
        only_failed: bool,
    ) -> impl Future<Output = HerderResult<Option<ConnectorStateInfo>>> + Send;
    /// `POST /connectors/{name}/tasks/{id}/restart`.
    fn restart_task(&self, name: &str, task: u32) -> impl Future<Output = HerderResult<()>> + Send;
    /// `PUT /connectors/{name}/pause`.
    fn pause_connector(&self, name: &str) -> impl Future<Output = HerderResult<()>> + Send;
    /// `PUT /connectors/{name}/resume`.
    fn resume_connector(&self, name: &str) -> impl Future<Output = HerderResult<()>> + Send;
    /// `PUT /connectors/{name}/stop`.
    fn stop_connector(&self, name: &str) -> impl Future<Output = HerderResult<()>> + Send;
    /// `GET /connectors/{name}/offsets`.
    fn connector_offsets(&self, name: &str) -> impl Future<Output = HerderResult<ConnectorOffsets>> + Send;
    /// `PATCH /connectors/{name}/offsets` (the connector must be STOPPED: 400 otherwise).
    /// Returns the message to answer with.
    fn alter_connector_offsets(
        &self,
        name: &str,
        offsets: ConnectorOffsets,
    ) -> impl Future<Output = HerderResult<String>> + Send;
    /// `DELETE /connectors/{name}/offsets` (the connector must be STOPPED).
    fn reset_connector_offsets(&self, name: &str) -> impl Future<Output = HerderResult<String>> + Send;
    /// `GET /connector-plugins?connectorsOnly=`.
    fn plugins(&self, connectors_only: bool) -> impl Future<Output = HerderResult<Vec<PluginInfo>>> + Send;
    /// `GET /connector-plugins/{plugin}/config`.
    fn plugin_config(&self, plugin: &str) -> impl Future<Output = HerderResult<Vec<ConfigKeyInfo>>> + Send;
    /// `PUT /connector-plugins/{plugin}/config/validate`.
    fn validate_config(&self, plugin: &str, config: Props) -> impl Future<Output = HerderResult<ConfigInfos>> + Send;
}

/// Serves `router` (from [`router()`]) on `listener` until `shutdown` completes, then lets
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
