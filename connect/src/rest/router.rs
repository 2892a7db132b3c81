//! The HTTP routes of Kafka Connect's REST API over a [`Herder`], with Kafka Connect's paths,
//! status codes, JSON shapes and error bodies (`{"error_code": N, "message": "…"}`, also for
//! unknown paths and unparsable bodies), and its forwarding of requests to the leader.
//!
//! Forwarding follows Kafka's `RestServer`/`HerderRequestHandler`: a handler whose herder answers
//! [`HerderError::NotLeader`] marks its response; the [`forward_to_leader`] layer re-sends the
//! request (method, path, query, body) to the leader with `forward=true` when the request came
//! from a user (no `forward` parameter), `forward=false` when it was itself forwarded, and
//! answers 409 when a `forward=false` request still lands on a non-leader: two hops at most,
//! so a stale leader URL during a rebalance cannot make requests loop.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tracing::debug;

use super::client::RestClient;
use super::{ConnectorOffsets, Herder, HerderError};
use crate::config::Props;
use crate::error::ConnectError;

/// Bound on a request body. A connector config is a few KiB; offsets for many partitions stay
/// well under this.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// Kafka Connect's 409 message when a herder's config snapshot is behind (`RebalanceNeededException`).
const STALE_CONFIG_MESSAGE: &str =
    "Cannot complete request momentarily due to stale configuration (typically caused by a concurrent config change)";
/// Kafka Connect's 409 message when a forwarded request reaches a worker that is not the leader.
const FORWARD_CONFLICT_MESSAGE: &str =
    "Cannot complete request because of a conflicting operation (e.g. worker rebalance)";

/// Sends requests that reached a follower on to the leader.
#[derive(Clone, Debug, Default)]
pub struct Forwarder {
    client: RestClient,
}

impl Forwarder {
    /// A forwarder that sends with `client` (its timeout bounds how long a forwarded request
    /// may take at the leader).
    pub fn new(client: RestClient) -> Self {
        Forwarder { client }
    }
}

/// All of Kafka Connect's routes over `herder`, forwarding through `forward` when the herder
/// says it is not the leader. Serve it with [`super::serve`].
pub fn router<H: Herder>(herder: Arc<H>, forward: Forwarder) -> Router {
    Router::new()
        .route("/", get(server_info::<H>))
        .route("/connectors", get(list_connectors::<H>).post(create_connector::<H>))
        .route("/connectors/", get(list_connectors::<H>).post(create_connector::<H>))
        .route("/connectors/{name}", get(connector_info::<H>).delete(delete_connector::<H>))
        .route("/connectors/{name}/config", get(connector_config::<H>).put(put_connector_config::<H>))
        .route("/connectors/{name}/status", get(connector_status::<H>))
        .route("/connectors/{name}/tasks", get(task_configs::<H>))
        .route("/connectors/{name}/tasks/{task}/status", get(task_status::<H>))
        .route("/connectors/{name}/tasks/{task}/restart", post(restart_task::<H>))
        .route("/connectors/{name}/topics", get(connector_topics::<H>))
        .route("/connectors/{name}/topics/reset", put(reset_connector_topics::<H>))
        .route("/connectors/{name}/restart", post(restart_connector::<H>))
        .route("/connectors/{name}/pause", put(pause_connector::<H>))
        .route("/connectors/{name}/resume", put(resume_connector::<H>))
        .route("/connectors/{name}/stop", put(stop_connector::<H>))
        .route(
            "/connectors/{name}/offsets",
            get(connector_offsets::<H>).patch(alter_connector_offsets::<H>).delete(reset_connector_offsets::<H>),
        )
        .route("/connector-plugins", get(plugins::<H>))
        .route("/connector-plugins/", get(plugins::<H>))
        .route("/connector-plugins/{plugin}/config", get(plugin_config::<H>))
        .route("/connector-plugins/{plugin}/config/validate", put(validate_config::<H>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(herder)
        .layer(middleware::from_fn_with_state(forward, forward_to_leader))
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
}

/// An error answer, or the mark that the request goes to the leader.
#[derive(Debug)]
enum ApiError {
    Http { status: StatusCode, message: String },
    NotLeader { leader_url: String, body: Option<Value> },
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::Http { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// Keeps the request's body with a forwarding mark, so the leader gets the same request.
    fn with_body(self, body: &Value) -> Self {
        match self {
            ApiError::NotLeader { leader_url, .. } => ApiError::NotLeader { leader_url, body: Some(body.clone()) },
            other => other,
        }
    }
}

impl From<HerderError> for ApiError {
    fn from(e: HerderError) -> Self {
        match e {
            HerderError::NotLeader { leader_url } => ApiError::NotLeader { leader_url, body: None },
            HerderError::Rebalancing => ApiError::new(StatusCode::CONFLICT, STALE_CONFIG_MESSAGE),
            HerderError::Error(e) => {
                let status = match &e {
                    ConnectError::NotFound(_) => StatusCode::NOT_FOUND,
                    ConnectError::Config { .. } | ConnectError::UnknownPlugin { .. } => StatusCode::BAD_REQUEST,
                    ConnectError::Conflict(_) => StatusCode::CONFLICT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                ApiError::new(status, e.to_string())
            }
        }
    }
}

/// The response extension that tells [`forward_to_leader`] where to send the request.
#[derive(Clone, Debug)]
struct ForwardTo {
    leader_url: String,
    body: Option<Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Http { status, message } => error_response(status, message),
            ApiError::NotLeader { leader_url, body } => {
                // Replaced by the leader's answer in `forward_to_leader`; this status is only
                // seen if the layer is missing.
                let mut response = StatusCode::MISDIRECTED_REQUEST.into_response();
                response.extensions_mut().insert(ForwardTo { leader_url, body });
                response
            }
        }
    }
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error_code": status.as_u16(), "message": message }))).into_response()
}

type ApiResult = Result<Response, ApiError>;

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "HTTP 404 Not Found".to_owned())
}

async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "HTTP 405 Method Not Allowed".to_owned())
}

/// Re-sends a request whose handler was answered `NotLeader` to the leader, and relays its
/// answer (status and body).
async fn forward_to_leader(State(forwarder): State<Forwarder>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let mut response = next.run(request).await;
    let Some(target) = response.extensions_mut().remove::<ForwardTo>() else {
        return response;
    };
    let forward = query_pairs(query.as_deref()).iter().rev().find(|(k, _)| k == "forward").map(|(_, v)| jersey_bool(v));
    if forward == Some(false) {
        return error_response(StatusCode::CONFLICT, FORWARD_CONFLICT_MESSAGE.to_owned());
    }
    // A user's request may take one more hop at the leader; a forwarded one may not.
    let query = with_forward_flag(query.as_deref(), forward.is_none());
    let url = format!("{}{path}?{query}", target.leader_url.trim_end_matches('/'));
    debug!(%method, %url, "forwarding request to the leader");
    match forwarder.client.request(method, &url, target.body).await {
        Ok((status, body)) => {
            let Ok(status) = StatusCode::from_u16(status) else {
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    format!("the leader at {url} answered status {status}"),
                );
            };
            if body.is_null() {
                status.into_response()
            } else {
                (status, Json(body)).into_response()
            }
        }
        Err(e) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, format!("IO Error trying to forward REST request: {e}"))
        }
    }
}

/// `query` without its `forward` parameters, plus `forward={forward}`.
fn with_forward_flag(query: Option<&str>, forward: bool) -> String {
    let mut out = String::new();
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let key = part.split('=').next().unwrap_or("");
        if key != "forward" {
            out.push_str(part);
            out.push('&');
        }
    }
    out.push_str(if forward { "forward=true" } else { "forward=false" });
    out
}

/// The query's parameters, decoded; a malformed query reads as none (Jersey ignores what it
/// cannot parse, and every parameter here has a default).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .and_then(|q| axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&format!("/?{q}").parse().ok()?).ok())
        .map(|q| q.0)
        .unwrap_or_default()
}

/// Java's `Boolean.valueOf`, which Jersey uses for boolean query parameters.
fn jersey_bool(value: &str) -> bool {
    value.eq_ignore_ascii_case("true")
}

/// The boolean query parameter `key`, or `default` when absent.
fn flag(pairs: &[(String, String)], key: &str, default: bool) -> bool {
    pairs.iter().rev().find(|(k, _)| k == key).map_or(default, |(_, v)| jersey_bool(v))
}

/// The request body as JSON; an unreadable, oversized or unparsable body is a JSON error.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty; a JSON body is required"));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// A JSON object of config values as [`Props`]. Numbers and booleans become their text
/// (clients send `"tasks.max": 1`); nulls, arrays and objects are refused.
fn props_from_json(value: &Value, what: &str) -> Result<Props, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request(format!("{what} must be a JSON object of string values")));
    };
    let mut props = Props::new();
    for (key, v) in map {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null | Value::Array(_) | Value::Object(_) => {
                return Err(ApiError::bad_request(format!(
                    "{what}: the value of {key} must be a string, number or boolean"
                )))
            }
        };
        props.insert(key.clone(), text);
    }
    Ok(props)
}

/// Kafka's `checkAndPutConnectorConfigName`: the config's `name`, when given, must be the
/// connector's; when absent it is added.
fn check_and_put_name(name: &str, config: &mut Props) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request("Connector name is required"));
    }
    match config.get("name") {
        Some(included) if included != name => Err(ApiError::bad_request(format!(
            "Connector name configuration ({included}) doesn't match connector name in the URL ({name})"
        ))),
        Some(_) => Ok(()),
        None => {
            config.insert("name".to_owned(), name.to_owned());
            Ok(())
        }
    }
}

/// A task id from the path; like Jersey, a non-integer id matches no resource.
fn task_id(raw: &str) -> Result<u32, ApiError> {
    raw.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "HTTP 404 Not Found"))
}

fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    (status, Json(value)).into_response()
}

async fn server_info<H: Herder>(State(herder): State<Arc<H>>) -> ApiResult {
    Ok(json_response(StatusCode::OK, &herder.server_info().await?))
}

async fn list_connectors<H: Herder>(State(herder): State<Arc<H>>, RawQuery(query): RawQuery) -> ApiResult {
    let pairs = query_pairs(query.as_deref());
    let names = herder.connectors().await?;
    // Kafka takes repeated `expand` parameters; a comma-separated list is accepted as well.
    let expansions: Vec<&str> =
        pairs.iter().filter(|(k, _)| k == "expand").flat_map(|(_, v)| v.split(',')).map(str::trim).collect();
    if !pairs.iter().any(|(k, _)| k == "expand") {
        return Ok(json_response(StatusCode::OK, &names));
    }
    let mut out = Map::new();
    'connectors: for name in names {
        let mut expanded = Map::new();
        for &expansion in &expansions {
            let value = match expansion {
                "status" => {
                    herder.connector_status(&name).await.map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
                }
                "info" => herder.connector_info(&name).await.map(|i| serde_json::to_value(i).unwrap_or(Value::Null)),
                _ => continue,
            };
            match value {
                Ok(v) => {
                    expanded.insert(expansion.to_owned(), v);
                }
                // Deleted while we looked it up: left out, as Kafka does.
                Err(HerderError::Error(ConnectError::NotFound(_))) => continue 'connectors,
                Err(e) => return Err(e.into()),
            }
        }
        out.insert(name, Value::Object(expanded));
    }
    Ok(json_response(StatusCode::OK, &out))
}

async fn create_connector<H: Herder>(State(herder): State<Arc<H>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = json_body(body)?;
    let Value::Object(request) = &body else {
        return Err(ApiError::bad_request("the request body must be a JSON object with \"name\" and \"config\""));
    };
    let name = match request.get("name") {
        Some(Value::String(name)) => name.trim().to_owned(),
        _ => return Err(ApiError::bad_request("Connector name is required")),
    };
    let mut config = match request.get("config") {
        Some(config) => props_from_json(config, "config")?,
        None => return Err(ApiError::bad_request("Connector config is required")),
    };
    // KIP-980: the herder starts every new connector RUNNING, so other initial states are
    // refused rather than silently ignored.
    match request.get("initial_state") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.eq_ignore_ascii_case("RUNNING") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "initial_state {other} is not supported by this worker; create the connector, then PUT \
                 /connectors/{name}/pause or /stop"
            )))
        }
    }
    check_and_put_name(&name, &mut config)?;
    let (_, info) =
        herder.put_connector_config(&name, config, false).await.map_err(|e| ApiError::from(e).with_body(&body))?;
    let mut response = json_response(StatusCode::CREATED, &info);
    if let Ok(location) = HeaderValue::from_str(&format!("/connectors/{}", info.name)) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

async fn connector_info<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    Ok(json_response(StatusCode::OK, &herder.connector_info(&name).await?))
}

async fn connector_config<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    Ok(json_response(StatusCode::OK, &herder.connector_config(&name).await?))
}

async fn put_connector_config<H: Herder>(
    State(herder): State<Arc<H>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = json_body(body)?;
    let mut config = props_from_json(&body, "the connector config")?;
    check_and_put_name(&name, &mut config)?;
    let (created, info) =
        herder.put_connector_config(&name, config, true).await.map_err(|e| ApiError::from(e).with_body(&body))?;
    if created {
        let mut response = json_response(StatusCode::CREATED, &info);
        if let Ok(location) = HeaderValue::from_str(&format!("/connectors/{}", info.name)) {
            response.headers_mut().insert(LOCATION, location);
        }
        Ok(response)
    } else {
        Ok(json_response(StatusCode::OK, &info))
    }
}

async fn delete_connector<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    herder.delete_connector(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn connector_status<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    Ok(json_response(StatusCode::OK, &herder.connector_status(&name).await?))
}

async fn task_configs<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    Ok(json_response(StatusCode::OK, &herder.task_configs(&name).await?))
}

async fn task_status<H: Herder>(State(herder): State<Arc<H>>, Path((name, task)): Path<(String, String)>) -> ApiResult {
    let task = task_id(&task)?;
    Ok(json_response(StatusCode::OK, &herder.task_status(&name, task).await?))
}

async fn restart_task<H: Herder>(
    State(herder): State<Arc<H>>,
    Path((name, task)): Path<(String, String)>,
) -> ApiResult {
    let task = task_id(&task)?;
    herder.restart_task(&name, task).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn connector_topics<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    let topics = herder.connector_topics(&name).await?;
    Ok(json_response(StatusCode::OK, &json!({ name: { "topics": topics } })))
}

async fn reset_connector_topics<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    herder.reset_connector_topics(&name).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn restart_connector<H: Herder>(
    State(herder): State<Arc<H>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let pairs = query_pairs(query.as_deref());
    let include_tasks = flag(&pairs, "includeTasks", false);
    let only_failed = flag(&pairs, "onlyFailed", false);
    let status = herder.restart_connector(&name, include_tasks, only_failed).await?;
    // Kafka keeps the old 204 for a plain restart and answers 202 with the status otherwise.
    if !include_tasks && !only_failed {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(match status {
        Some(status) => json_response(StatusCode::ACCEPTED, &status),
        None => StatusCode::ACCEPTED.into_response(),
    })
}

async fn pause_connector<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    herder.pause_connector(&name).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn resume_connector<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    herder.resume_connector(&name).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn stop_connector<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    herder.stop_connector(&name).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn connector_offsets<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    Ok(json_response(StatusCode::OK, &herder.connector_offsets(&name).await?))
}

async fn alter_connector_offsets<H: Herder>(
    State(herder): State<Arc<H>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = json_body(body)?;
    let offsets: ConnectorOffsets = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::bad_request(format!("the request body is not an offsets object: {e}")))?;
    if offsets.offsets.is_empty() {
        return Err(ApiError::bad_request("Partitions / offsets need to be provided for an alter offsets request"));
    }
    let message =
        herder.alter_connector_offsets(&name, offsets).await.map_err(|e| ApiError::from(e).with_body(&body))?;
    Ok(json_response(StatusCode::OK, &json!({ "message": message })))
}

async fn reset_connector_offsets<H: Herder>(State(herder): State<Arc<H>>, Path(name): Path<String>) -> ApiResult {
    let message = herder.reset_connector_offsets(&name).await?;
    Ok(json_response(StatusCode::OK, &json!({ "message": message })))
}

async fn plugins<H: Herder>(State(herder): State<Arc<H>>, RawQuery(query): RawQuery) -> ApiResult {
    let connectors_only = flag(&query_pairs(query.as_deref()), "connectorsOnly", true);
    Ok(json_response(StatusCode::OK, &herder.plugins(connectors_only).await?))
}

async fn plugin_config<H: Herder>(State(herder): State<Arc<H>>, Path(plugin): Path<String>) -> ApiResult {
    match herder.plugin_config(&plugin).await {
        Ok(keys) => Ok(json_response(StatusCode::OK, &keys)),
        // Kafka answers an unknown plugin here with 404 (elsewhere it is a bad config, 400).
        Err(HerderError::Error(e @ ConnectError::UnknownPlugin { .. })) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Kafka's `normalizedPluginName`: `FileStreamSourceConnector` and `FileStreamSource` match.
fn normalized_plugin_name(name: &str) -> &str {
    match name.strip_suffix("Connector") {
        Some(stem) if !stem.is_empty() => stem,
        _ => name,
    }
}

async fn validate_config<H: Herder>(
    State(herder): State<Arc<H>>,
    Path(plugin): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = json_body(body)?;
    let config = props_from_json(&body, "the connector config")?;
    if let Some(included) = config.get("connector.class") {
        if !normalized_plugin_name(included).ends_with(normalized_plugin_name(&plugin)) {
            return Err(ApiError::bad_request(format!(
                "Included connector type {included} does not match request type {plugin}"
            )));
        }
    }
    let infos = herder.validate_config(&plugin, config).await.map_err(|e| ApiError::from(e).with_body(&body))?;
    Ok(json_response(StatusCode::OK, &infos))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use hyper::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::rest::{
        serve, ConfigInfos, ConfigKeyInfo, ConnectorInfo, ConnectorStateInfo, ConnectorTaskId, HerderResult,
        PartitionOffset, PluginInfo, ServerInfo, StateInfo, TaskInfo, TaskState,
    };

    /// An in-memory herder: connectors with a state, one task each. With `leader_url` set, every
    /// write answers `NotLeader`; with `rebalancing`, every call answers `Rebalancing`.
    #[derive(Default)]
    struct FakeHerder {
        connectors: Mutex<BTreeMap<String, (Props, String)>>,
        leader_url: Option<String>,
        rebalancing: bool,
    }

    fn not_found(name: &str) -> HerderError {
        ConnectError::NotFound(format!("Connector {name}")).into()
    }

    impl FakeHerder {
        fn write_check(&self) -> HerderResult<()> {
            if self.rebalancing {
                return Err(HerderError::Rebalancing);
            }
            match &self.leader_url {
                Some(url) => Err(HerderError::NotLeader { leader_url: url.clone() }),
                None => Ok(()),
            }
        }

        fn with<T>(&self, name: &str, f: impl FnOnce(&mut (Props, String)) -> T) -> HerderResult<T> {
            let mut map = self.connectors.lock().unwrap();
            map.get_mut(name).map(f).ok_or_else(|| not_found(name))
        }

        fn set_state(&self, name: &str, state: &str) -> HerderResult<()> {
            self.write_check()?;
            self.with(name, |c| c.1 = state.to_owned())
        }

        fn status(&self, name: &str) -> HerderResult<ConnectorStateInfo> {
            let state = self.with(name, |c| c.1.clone())?;
            Ok(ConnectorStateInfo {
                name: name.to_owned(),
                connector: StateInfo { state: state.clone(), worker_id: "127.0.0.1:8083".into(), trace: None },
                tasks: vec![TaskState { id: 0, state, worker_id: "127.0.0.1:8083".into(), trace: None }],
                kind: Some("source".into()),
                metrics: None,
            })
        }

        fn info(&self, name: &str) -> HerderResult<ConnectorInfo> {
            let config = self.with(name, |c| c.0.clone())?;
            Ok(ConnectorInfo {
                name: name.to_owned(),
                config,
                tasks: vec![ConnectorTaskId { connector: name.to_owned(), task: 0 }],
                kind: Some("source".into()),
            })
        }
    }

    fn key_info(name: &str) -> ConfigKeyInfo {
        ConfigKeyInfo {
            name: name.to_owned(),
            kind: "STRING".into(),
            required: true,
            default_value: None,
            importance: "HIGH".into(),
            documentation: "the file".into(),
            group: None,
            width: "NONE".into(),
            display_name: name.to_owned(),
            dependents: vec![],
            order_in_group: -1,
        }
    }

    impl Herder for FakeHerder {
        async fn server_info(&self) -> HerderResult<ServerInfo> {
            if self.rebalancing {
                return Err(HerderError::Rebalancing);
            }
            Ok(ServerInfo { version: "test".into(), commit: "abc".into(), kafka_cluster_id: "cluster".into() })
        }
        async fn connectors(&self) -> HerderResult<Vec<String>> {
            Ok(self.connectors.lock().unwrap().keys().cloned().collect())
        }
        async fn connector_info(&self, name: &str) -> HerderResult<ConnectorInfo> {
            self.info(name)
        }
        async fn connector_config(&self, name: &str) -> HerderResult<Props> {
            self.with(name, |c| c.0.clone())
        }
        async fn put_connector_config(
            &self,
            name: &str,
            config: Props,
            allow_replace: bool,
        ) -> HerderResult<(bool, ConnectorInfo)> {
            self.write_check()?;
            if !config.contains_key("connector.class") {
                return Err(ConnectError::config("connector.class", "is required").into());
            }
            let created = {
                let mut map = self.connectors.lock().unwrap();
                if map.contains_key(name) && !allow_replace {
                    return Err(ConnectError::Conflict(format!("Connector {name} already exists")).into());
                }
                map.insert(name.to_owned(), (config, "RUNNING".into())).is_none()
            };
            Ok((created, self.info(name)?))
        }
        async fn delete_connector(&self, name: &str) -> HerderResult<()> {
            self.write_check()?;
            self.connectors.lock().unwrap().remove(name).map(|_| ()).ok_or_else(|| not_found(name))
        }
        async fn connector_status(&self, name: &str) -> HerderResult<ConnectorStateInfo> {
            self.status(name)
        }
        async fn task_configs(&self, name: &str) -> HerderResult<Vec<TaskInfo>> {
            let config = self.with(name, |c| c.0.clone())?;
            Ok(vec![TaskInfo { id: ConnectorTaskId { connector: name.to_owned(), task: 0 }, config }])
        }
        async fn task_status(&self, name: &str, task: u32) -> HerderResult<TaskState> {
            let status = self.status(name)?;
            status
                .tasks
                .into_iter()
                .find(|t| t.id == task)
                .ok_or_else(|| ConnectError::NotFound(format!("Task {name}-{task}")).into())
        }
        async fn connector_topics(&self, name: &str) -> HerderResult<Vec<String>> {
            self.with(name, |c| c.0.get("topic").cloned().into_iter().collect())
        }
        async fn reset_connector_topics(&self, name: &str) -> HerderResult<()> {
            self.with(name, |_| ())
        }
        async fn restart_connector(
            &self,
            name: &str,
            include_tasks: bool,
            only_failed: bool,
        ) -> HerderResult<Option<ConnectorStateInfo>> {
            self.set_state(name, "RUNNING")?;
            if include_tasks || only_failed {
                let mut status = self.status(name)?;
                status.connector.state = "RESTARTING".into();
                Ok(Some(status))
            } else {
                Ok(None)
            }
        }
        async fn restart_task(&self, name: &str, _task: u32) -> HerderResult<()> {
            self.set_state(name, "RUNNING")
        }
        async fn pause_connector(&self, name: &str) -> HerderResult<()> {
            self.set_state(name, "PAUSED")
        }
        async fn resume_connector(&self, name: &str) -> HerderResult<()> {
            self.set_state(name, "RUNNING")
        }
        async fn stop_connector(&self, name: &str) -> HerderResult<()> {
            self.set_state(name, "STOPPED")
        }
        async fn connector_offsets(&self, name: &str) -> HerderResult<ConnectorOffsets> {
            self.with(name, |_| ConnectorOffsets {
                offsets: vec![PartitionOffset {
                    partition: json!({"filename": "/tmp/a.log"}),
                    offset: Some(json!({"position": 42})),
                }],
            })
        }
        async fn alter_connector_offsets(&self, name: &str, offsets: ConnectorOffsets) -> HerderResult<String> {
            self.write_check()?;
            self.with(name, |_| {
                format!("The offsets for this connector have been altered successfully ({})", offsets.offsets.len())
            })
        }
        async fn reset_connector_offsets(&self, name: &str) -> HerderResult<String> {
            self.write_check()?;
            self.with(name, |_| "The offsets for this connector have been reset successfully".to_owned())
        }
        async fn plugins(&self, connectors_only: bool) -> HerderResult<Vec<PluginInfo>> {
            let mut out =
                vec![PluginInfo { class: "FileStreamSource".into(), kind: "source".into(), version: "1".into() }];
            if !connectors_only {
                out.push(PluginInfo {
                    class: "InsertField".into(),
                    kind: "transformation".into(),
                    version: "1".into(),
                });
            }
            Ok(out)
        }
        async fn plugin_config(&self, plugin: &str) -> HerderResult<Vec<ConfigKeyInfo>> {
            if plugin != "FileStreamSource" {
                return Err(ConnectError::UnknownPlugin { class: plugin.to_owned() }.into());
            }
            Ok(vec![key_info("file")])
        }
        async fn validate_config(&self, plugin: &str, config: Props) -> HerderResult<ConfigInfos> {
            let errors: Vec<String> = if config.contains_key("file") {
                vec![]
            } else {
                vec!["Missing required configuration \"file\"".into()]
            };
            Ok(ConfigInfos {
                name: plugin.to_owned(),
                error_count: errors.len(),
                groups: vec!["Common".into()],
                configs: vec![ConfigInfo {
                    definition: key_info("file"),
                    value: crate::rest::ConfigValueInfo {
                        name: "file".into(),
                        value: config.get("file").cloned(),
                        recommended_values: vec![],
                        errors,
                        visible: true,
                    },
                }],
            })
        }
    }

    use crate::rest::ConfigInfo;

    async fn bind() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (listener, url)
    }

    /// Serves `herder` on `listener` until the test's runtime ends.
    fn start(listener: TcpListener, herder: Arc<FakeHerder>) {
        let app = router(herder, Forwarder::default());
        tokio::spawn(serve(listener, app, std::future::pending()));
    }

    async fn started(herder: FakeHerder) -> (String, Arc<FakeHerder>) {
        let (listener, url) = bind().await;
        let herder = Arc::new(herder);
        start(listener, herder.clone());
        (url, herder)
    }

    async fn call(url: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        RestClient::default().request(method, &format!("{url}{path}"), body).await.unwrap()
    }

    /// Sends raw bytes as a request body (for bodies RestClient cannot produce) and reads the
    /// answer's status and JSON body.
    async fn raw(url: &str, method: &str, path: &str, declared_len: usize, body: &[u8]) -> (u16, Value) {
        let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {declared_len}\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (and close) before reading all of an oversized body.
        let _ = stream.write_all(body).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    fn assert_error(answer: &(u16, Value), status: u16) {
        assert_eq!(answer.0, status, "{answer:?}");
        assert_eq!(answer.1["error_code"], json!(status), "{answer:?}");
        assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer:?}");
    }

    fn file_source(name: &str) -> Value {
        json!({"name": name, "config": {"connector.class": "FileStreamSource", "file": "/tmp/a.log", "topic": "logs", "tasks.max": 1, "batch.size": 2000, "errors.log.enable": true}})
    }

    #[tokio::test]
    async fn every_endpoint_answers_kafka_connects_status_and_shape() {
        let (url, herder) = started(FakeHerder::default()).await;
        let get = |path: &'static str| call(&url, Method::GET, path, None);

        let root = get("/").await;
        assert_eq!(root, (200, json!({"version": "test", "commit": "abc", "kafka_cluster_id": "cluster"})));

        // Create: numbers and booleans become strings; the name goes into the config.
        let created = call(&url, Method::POST, "/connectors", Some(file_source("a"))).await;
        assert_eq!(created.0, 201, "{created:?}");
        assert_eq!(created.1["name"], "a");
        assert_eq!(created.1["config"]["tasks.max"], "1");
        assert_eq!(created.1["config"]["batch.size"], "2000");
        assert_eq!(created.1["config"]["errors.log.enable"], "true");
        assert_eq!(created.1["config"]["name"], "a");
        assert_eq!(created.1["tasks"], json!([{"connector": "a", "task": 0}]));
        assert_eq!(created.1["type"], "source");
        assert_eq!(herder.connectors.lock().unwrap()["a"].0["tasks.max"], "1");
        assert_error(&call(&url, Method::POST, "/connectors", Some(file_source("a"))).await, 409);

        assert_eq!(get("/connectors").await, (200, json!(["a"])));
        let status = get("/connectors?expand=status").await;
        assert_eq!(status.0, 200);
        assert_eq!(status.1["a"]["status"]["connector"]["state"], "RUNNING");
        assert!(status.1["a"].get("info").is_none());
        let info = get("/connectors?expand=info").await;
        assert_eq!(info.1["a"]["info"]["config"]["topic"], "logs");
        assert!(info.1["a"].get("status").is_none());
        let both = get("/connectors?expand=status&expand=info").await;
        assert_eq!(both.1["a"]["status"]["name"], "a");
        assert_eq!(both.1["a"]["info"]["name"], "a");

        let one = get("/connectors/a").await;
        assert_eq!((one.0, &one.1["name"]), (200, &json!("a")));
        let config = get("/connectors/a/config").await;
        assert_eq!((config.0, &config.1["file"]), (200, &json!("/tmp/a.log")));

        // PUT config: 200 when it exists, 201 when created, 400 when the names disagree.
        let updated = call(
            &url,
            Method::PUT,
            "/connectors/a/config",
            Some(json!({"connector.class": "FileStreamSource", "file": "/tmp/b.log", "tasks.max": 2})),
        )
        .await;
        assert_eq!(updated.0, 200, "{updated:?}");
        assert_eq!(updated.1["config"]["tasks.max"], "2");
        assert_eq!(updated.1["config"]["name"], "a");
        let created_b = call(
            &url,
            Method::PUT,
            "/connectors/b/config",
            Some(json!({"connector.class": "FileStreamSource", "name": "b"})),
        )
        .await;
        assert_eq!(created_b.0, 201, "{created_b:?}");
        assert_error(
            &call(&url, Method::PUT, "/connectors/b/config", Some(json!({"connector.class": "X", "name": "c"}))).await,
            400,
        );

        let status = get("/connectors/a/status").await;
        assert_eq!(status.0, 200);
        assert_eq!(status.1["connector"], json!({"state": "RUNNING", "worker_id": "127.0.0.1:8083"}));
        assert_eq!(status.1["tasks"][0]["id"], 0);
        let tasks = get("/connectors/a/tasks").await;
        assert_eq!(tasks.0, 200);
        assert_eq!(tasks.1[0]["id"], json!({"connector": "a", "task": 0}));
        assert_eq!(tasks.1[0]["config"]["file"], "/tmp/b.log");
        let task = get("/connectors/a/tasks/0/status").await;
        assert_eq!(task, (200, json!({"id": 0, "state": "RUNNING", "worker_id": "127.0.0.1:8083"})));
        assert_error(&get("/connectors/a/tasks/7/status").await, 404);
        assert_error(&get("/connectors/a/tasks/x/status").await, 404);

        assert_eq!(
            call(&url, Method::PUT, "/connectors/b/config", Some(json!({"connector.class": "S", "topic": "t"})))
                .await
                .0,
            200
        );
        assert_eq!(get("/connectors/b/topics").await, (200, json!({"b": {"topics": ["t"]}})));
        assert_eq!(call(&url, Method::PUT, "/connectors/b/topics/reset", None).await, (202, Value::Null));

        assert_eq!(call(&url, Method::POST, "/connectors/a/restart", None).await, (204, Value::Null));
        assert_eq!(
            call(&url, Method::POST, "/connectors/a/restart?includeTasks=false&onlyFailed=false", None).await.0,
            204
        );
        let restarted =
            call(&url, Method::POST, "/connectors/a/restart?includeTasks=true&onlyFailed=false", None).await;
        assert_eq!(restarted.0, 202);
        assert_eq!(restarted.1["connector"]["state"], "RESTARTING");
        assert_eq!(call(&url, Method::POST, "/connectors/a/restart?onlyFailed=TRUE", None).await.0, 202);
        assert_eq!(call(&url, Method::POST, "/connectors/a/tasks/0/restart", None).await, (204, Value::Null));

        assert_eq!(call(&url, Method::PUT, "/connectors/a/pause", None).await, (202, Value::Null));
        assert_eq!(get("/connectors/a/status").await.1["connector"]["state"], "PAUSED");
        assert_eq!(call(&url, Method::PUT, "/connectors/a/resume", None).await, (202, Value::Null));
        assert_eq!(get("/connectors/a/status").await.1["connector"]["state"], "RUNNING");
        assert_eq!(call(&url, Method::PUT, "/connectors/a/stop", None).await, (202, Value::Null));
        assert_eq!(get("/connectors/a/status").await.1["connector"]["state"], "STOPPED");

        let offsets = get("/connectors/a/offsets").await;
        assert_eq!(
            offsets,
            (200, json!({"offsets": [{"partition": {"filename": "/tmp/a.log"}, "offset": {"position": 42}}]}))
        );
        let altered = call(
            &url,
            Method::PATCH,
            "/connectors/a/offsets",
            Some(json!({"offsets": [{"partition": {"filename": "/tmp/a.log"}, "offset": {"position": 7}}, {"partition": {"filename": "/tmp/b.log"}, "offset": null}]})),
        )
        .await;
        assert_eq!(altered.0, 200);
        assert_eq!(altered.1["message"], "The offsets for this connector have been altered successfully (2)");
        assert_error(&call(&url, Method::PATCH, "/connectors/a/offsets", Some(json!({"offsets": []}))).await, 400);
        assert_error(&call(&url, Method::PATCH, "/connectors/a/offsets", Some(json!({"offsets": 3}))).await, 400);
        let reset = call(&url, Method::DELETE, "/connectors/a/offsets", None).await;
        assert_eq!(reset, (200, json!({"message": "The offsets for this connector have been reset successfully"})));

        assert_eq!(
            get("/connector-plugins").await,
            (200, json!([{"class": "FileStreamSource", "type": "source", "version": "1"}]))
        );
        assert_eq!(get("/connector-plugins?connectorsOnly=false").await.1.as_array().map(Vec::len), Some(2));
        let keys = get("/connector-plugins/FileStreamSource/config").await;
        assert_eq!(keys.0, 200);
        assert_eq!(keys.1[0]["name"], "file");
        assert_eq!(keys.1[0]["order_in_group"], -1);
        assert_error(&get("/connector-plugins/Nope/config").await, 404);

        let valid = call(
            &url,
            Method::PUT,
            "/connector-plugins/FileStreamSource/config/validate",
            Some(json!({"connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector", "file": "/x", "tasks.max": 1})),
        )
        .await;
        assert_eq!(valid.0, 200, "{valid:?}");
        assert_eq!(valid.1["error_count"], 0);
        assert_eq!(valid.1["configs"][0]["value"]["value"], "/x");
        let invalid =
            call(&url, Method::PUT, "/connector-plugins/FileStreamSourceConnector/config/validate", Some(json!({})))
                .await;
        assert_eq!(invalid.0, 200);
        assert_eq!(invalid.1["error_count"], 1);
        assert_eq!(invalid.1["configs"][0]["value"]["errors"][0], "Missing required configuration \"file\"");
        assert_error(
            &call(
                &url,
                Method::PUT,
                "/connector-plugins/FileStreamSource/config/validate",
                Some(json!({"connector.class": "FileStreamSink"})),
            )
            .await,
            400,
        );

        assert_eq!(call(&url, Method::DELETE, "/connectors/a", None).await, (204, Value::Null));
        let gone = get("/connectors/a").await;
        assert_error(&gone, 404);
        assert_eq!(gone.1["message"], "Connector a not found");
        assert_error(&call(&url, Method::DELETE, "/connectors/a", None).await, 404);
        assert_error(&call(&url, Method::PUT, "/connectors/a/pause", None).await, 404);
        assert_eq!(get("/connectors").await, (200, json!(["b"])));
    }

    #[tokio::test]
    async fn bad_requests_get_kafka_error_json() {
        let (url, _herder) = started(FakeHerder::default()).await;

        assert_error(&call(&url, Method::GET, "/nope", None).await, 404);
        assert_error(&call(&url, Method::GET, "/connectors/a/nope/deeper", None).await, 404);
        assert_error(&call(&url, Method::DELETE, "/connectors", None).await, 405);

        // Missing name, missing config, a config value that is not a scalar, a non-object.
        assert_error(&call(&url, Method::POST, "/connectors", Some(json!({"config": {}}))).await, 400);
        assert_error(&call(&url, Method::POST, "/connectors", Some(json!({"name": "  "}))).await, 400);
        assert_error(&call(&url, Method::POST, "/connectors", Some(json!({"name": "a"}))).await, 400);
        assert_error(
            &call(&url, Method::POST, "/connectors", Some(json!({"name": "a", "config": {"topics": ["a"]}}))).await,
            400,
        );
        assert_error(&call(&url, Method::POST, "/connectors", Some(json!([1, 2]))).await, 400);
        assert_error(&call(&url, Method::POST, "/connectors", None).await, 400);
        assert_error(
            &call(
                &url,
                Method::POST,
                "/connectors",
                Some(json!({"name": "a", "config": {"connector.class": "S"}, "initial_state": "PAUSED"})),
            )
            .await,
            400,
        );
        // The herder's config error is a 400 too.
        assert_error(&call(&url, Method::POST, "/connectors", Some(json!({"name": "a", "config": {}}))).await, 400);

        let bad_json = raw(&url, "POST", "/connectors", 9, b"{\"name\": ").await;
        assert_error(&bad_json, 400);
        let bad_json = raw(&url, "PUT", "/connectors/a/config", 3, b"{x}").await;
        assert_error(&bad_json, 400);

        let big = vec![b' '; REQUEST_BYTES_MAX + 1];
        assert_error(&raw(&url, "POST", "/connectors", big.len(), &big).await, 413);
    }

    #[tokio::test]
    async fn rebalancing_is_a_409_with_kafkas_message() {
        let (url, _herder) = started(FakeHerder { rebalancing: true, ..FakeHerder::default() }).await;
        let answer = call(&url, Method::GET, "/", None).await;
        assert_error(&answer, 409);
        assert_eq!(answer.1["message"], STALE_CONFIG_MESSAGE);
        assert_error(&call(&url, Method::POST, "/connectors", Some(file_source("a"))).await, 409);
    }

    #[tokio::test]
    async fn a_follower_forwards_writes_to_the_leader() {
        let (leader_url, leader) = started(FakeHerder::default()).await;
        let (follower_url, follower) =
            started(FakeHerder { leader_url: Some(leader_url.clone()), ..FakeHerder::default() }).await;

        let created = call(&follower_url, Method::POST, "/connectors", Some(file_source("a"))).await;
        assert_eq!(created.0, 201, "{created:?}");
        assert_eq!(created.1["config"]["tasks.max"], "1");
        assert!(leader.connectors.lock().unwrap().contains_key("a"));
        assert!(follower.connectors.lock().unwrap().is_empty());

        // The leader's errors come back as they are.
        assert_error(&call(&follower_url, Method::POST, "/connectors", Some(file_source("a"))).await, 409);
        // Query parameters travel with the request.
        let restarted = call(&follower_url, Method::POST, "/connectors/a/restart?includeTasks=true", None).await;
        assert_eq!(restarted.0, 202, "{restarted:?}");
        assert_eq!(restarted.1["name"], "a");
        assert_eq!(call(&follower_url, Method::PUT, "/connectors/a/pause", None).await, (202, Value::Null));
        assert_eq!(leader.connectors.lock().unwrap()["a"].1, "PAUSED");
        let altered = call(
            &follower_url,
            Method::PATCH,
            "/connectors/a/offsets",
            Some(json!({"offsets": [{"partition": {"f": 1}, "offset": null}]})),
        )
        .await;
        assert_eq!(altered.0, 200, "{altered:?}");
        assert_eq!(call(&follower_url, Method::DELETE, "/connectors/a", None).await, (204, Value::Null));
        assert!(leader.connectors.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn forwarding_stops_after_two_hops() {
        // A worker that names itself as the leader: the user's request is forwarded with
        // forward=true, that one with forward=false, and that one is refused.
        let (listener, url) = bind().await;
        start(listener, Arc::new(FakeHerder { leader_url: Some(url.clone()), ..FakeHerder::default() }));
        let answer = call(&url, Method::POST, "/connectors", Some(file_source("a"))).await;
        assert_error(&answer, 409);
        assert_eq!(answer.1["message"], FORWARD_CONFLICT_MESSAGE);
        // A leader that cannot be reached is a 500 with the reason.
        let (_, dead_url) = bind().await;
        let (url, _) = started(FakeHerder { leader_url: Some(dead_url), ..FakeHerder::default() }).await;
        assert_error(&call(&url, Method::PUT, "/connectors/a/stop", None).await, 500);
    }

    #[test]
    fn the_forward_flag_replaces_any_given() {
        assert_eq!(with_forward_flag(None, true), "forward=true");
        assert_eq!(with_forward_flag(Some("includeTasks=true&forward=true"), false), "includeTasks=true&forward=false");
        assert_eq!(normalized_plugin_name("FileStreamSourceConnector"), "FileStreamSource");
        assert_eq!(normalized_plugin_name("Connector"), "Connector");
    }

    #[tokio::test]
    async fn serve_stops_on_shutdown() {
        let (listener, url) = bind().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server =
            tokio::spawn(serve(listener, router(Arc::new(FakeHerder::default()), Forwarder::default()), async {
                let _ = rx.await;
            }));
        assert_eq!(call(&url, Method::GET, "/connectors", None).await.0, 200);
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
