//! ApiVersions (key 18), including KIP-511's answer to versions newer than we speak.

use bytes::Bytes;
use spate_client::protocol::messages::api_versions_response::ApiVersion;
use spate_client::protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use spate_client::protocol::{ApiKey, ErrorCode};
use spate_client::ProtocolError;

use super::{decode, encode, Reply, RequestContext, SUPPORTED_APIS};

fn response(error: ErrorCode) -> ApiVersionsResponse {
    let api_keys = SUPPORTED_APIS
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default().with_error_code(error.0).with_api_keys(api_keys)
}

pub(super) fn handle(ctx: &RequestContext, body: &mut Bytes) -> Result<Reply, ProtocolError> {
    // v3 carries client software name/version; nothing in it changes the answer.
    let _request: ApiVersionsRequest = decode("ApiVersions request", ctx, body)?;
    Ok(Reply::Now(ctx.respond(&response(ErrorCode::NONE))))
}

/// The v0-encoded UNSUPPORTED_VERSION answer with our version ranges (KIP-511).
pub(super) fn unsupported_version(correlation_id: i32) -> Bytes {
    encode(ApiKey::ApiVersions, 0, correlation_id, &response(ErrorCode::UNSUPPORTED_VERSION))
}
