//! A small HTTP/1.1 JSON client for Kafka Connect's REST API: the router forwards requests to
//! the leader with it, and `spate connectors` talks to a worker with it. Plain HTTP only (the
//! worker listens on plain HTTP too); every request has a deadline and every answer a size
//! bound, because the other side is a peer we do not control.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value as Json;

use crate::error::{ConnectError, Result};

/// The request method, re-exported so callers need not depend on hyper.
pub use hyper::Method;

/// Default deadline for a whole request (connect, send, read the answer). Kafka Connect's own
/// forwarding client waits up to 90 s for the leader; a CLI user wants an answer sooner.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default bound on an answer's body: a status or offsets answer of a big connector fits well.
pub const RESPONSE_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Deadline for the TCP connect alone, so a dead leader fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A JSON-over-HTTP/1.1 client. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct RestClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    request_timeout: Duration,
    response_bytes_max: usize,
}

impl Default for RestClient {
    fn default() -> Self {
        RestClient::new(REQUEST_TIMEOUT_DEFAULT, RESPONSE_BYTES_MAX_DEFAULT)
    }
}

impl RestClient {
    /// A client whose requests fail after `request_timeout` and whose answers above
    /// `response_bytes_max` bytes are refused.
    pub fn new(request_timeout: Duration, response_bytes_max: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT.min(request_timeout)));
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new()).build(connector);
        RestClient { inner, request_timeout, response_bytes_max }
    }

    /// Sends `method url` with `body` as JSON and returns the status code and the answer's
    /// JSON: `null` for an empty body (204), a JSON string holding the text when the answer is
    /// not JSON (a proxy's error page, say). Any status is a success here; the caller reads it.
    pub async fn request(&self, method: Method, url: &str, body: Option<Json>) -> Result<(u16, Json)> {
        let what = format!("{method} {url}");
        let fail = |reason: String| ConnectError::external("REST client", what.clone(), reason);
        let uri: hyper::Uri = url.parse().map_err(|e| fail(format!("bad URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(fail("only http:// URLs are supported".to_owned()));
        }
        let mut builder =
            Request::builder().method(method).uri(uri).header(ACCEPT, HeaderValue::from_static("application/json"));
        let payload = match body {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(serde_json::to_vec(&json).map_err(|e| fail(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(payload)).map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| fail(error_chain(&e)))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), self.response_bytes_max)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the answer: {e} (limit {} bytes)", self.response_bytes_max)))?
                .to_bytes();
            Ok::<_, ConnectError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {} ms", self.request_timeout.as_millis())))??;
        let json = if bytes.iter().all(u8::is_ascii_whitespace) {
            Json::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, json))
    }
}

/// hyper's errors say "client error (Connect)" and keep the useful part in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
