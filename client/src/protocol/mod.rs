//! The sans-IO Kafka wire layer, shared by the client and the broker (as Kafka's broker shares
//! its `clients` module): framing with size bounds, request/response codecs, record batch v2,
//! compression codecs and error codes. No sockets, no tokio.
//!
//! Request and response structs come from the `kafka-protocol` crate (exactly pinned in the
//! workspace). This module is the only place that names it: [`messages`] re-exports the
//! generated structs so the pin and any work-arounds live here, and the codec functions below
//! are the only way bytes become structs.

pub mod bounds;
pub mod compression;
mod error_code;
pub mod frame;
pub mod record;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

pub use error_code::ErrorCode;
/// The generated request/response structs, by Kafka's own names.
pub use kafka_protocol::messages;
pub use kafka_protocol::messages::ApiKey;
pub use kafka_protocol::protocol::StrBytes;

use crate::error::ProtocolError;
use messages::{RequestHeader, ResponseHeader};

/// A message type the codecs accept (every generated request and response struct).
pub trait Codec: Encodable + Decodable + HeaderVersion {}
impl<T: Encodable + Decodable + HeaderVersion> Codec for T {}

/// Builds a [`StrBytes`] from a Rust string.
pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// What the broker learns from a request's header before decoding the body.
#[derive(Debug, Clone)]
pub struct RequestPreamble {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// Reads api key, version and correlation id, which sit at fixed positions in every header
/// version, so even a request we cannot decode can be answered or logged with them.
pub fn peek_request_preamble(frame: &[u8]) -> Result<RequestPreamble, ProtocolError> {
    if frame.len() < 8 {
        return Err(ProtocolError::malformed("request header", format!("{} bytes is too short", frame.len())));
    }
    let mut b = frame;
    Ok(RequestPreamble { api_key: b.get_i16(), api_version: b.get_i16(), correlation_id: b.get_i32() })
}

/// Decodes the request header, leaving `frame` at the start of the body.
pub fn decode_request_header(frame: &mut Bytes) -> Result<(ApiKey, RequestHeader), ProtocolError> {
    let pre = peek_request_preamble(frame)?;
    let api_key = ApiKey::try_from(pre.api_key).map_err(|_| ProtocolError::UnknownApiKey { api_key: pre.api_key })?;
    let header_version = api_key.request_header_version(pre.api_version);
    let header =
        RequestHeader::decode(frame, header_version).map_err(|e| ProtocolError::malformed("request header", e))?;
    Ok((api_key, header))
}

/// Decodes a request body received from a peer. The generated decoders reserve memory for
/// array counts before reading elements, so the body is first walked by [`bounds`], which
/// refuses counts that cannot fit in the bytes that follow; only then is it decoded.
pub fn decode_request_body<M: Codec>(
    what: &'static str,
    api_key: ApiKey,
    body: &mut Bytes,
    version: i16,
) -> Result<M, ProtocolError> {
    bounds::check_array_bounds(api_key, version, body)?;
    decode_body(what, body, version)
}

/// Decodes a message body of the given version (for bodies whose array counts are trusted or
/// already checked; peer requests go through [`decode_request_body`]).
pub fn decode_body<M: Codec>(what: &'static str, body: &mut Bytes, version: i16) -> Result<M, ProtocolError> {
    M::decode(body, version).map_err(|e| ProtocolError::malformed(what, e))
}

/// Appends a size-prefixed response frame to `out`.
pub fn encode_response<M: Codec>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &M,
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let header_version = api_key.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    encode_frame(out, |buf| {
        header.encode(buf, header_version)?;
        response.encode(buf, version)
    })
    .map_err(|e| ProtocolError::malformed("response", e))
}

/// Appends a size-prefixed request frame to `out`.
pub fn encode_request<M: Codec>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: Option<&str>,
    request: &M,
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(client_id.map(str_bytes));
    encode_frame(out, |buf| {
        header.encode(buf, header_version)?;
        request.encode(buf, version)
    })
    .map_err(|e| ProtocolError::malformed("request", e))
}

/// Writes a size prefix, then the body, then patches the prefix. Generic over the error type so
/// the generated codecs' `anyhow` errors are converted by the callers above.
fn encode_frame<E>(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut) -> Result<(), E>) -> Result<(), E> {
    let start = out.len();
    out.put_i32(0);
    body(out)?;
    let size = (out.len() - start - frame::SIZE_PREFIX_BYTES) as i32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Decodes a response frame: its header (correlation id) and body. As for requests, the body
/// is first walked by [`bounds`] (its response schemas), so a broker's impossible array count
/// is an error here rather than a reservation that aborts the client or the replica fetcher.
/// `version` is the version the body is decoded as.
pub fn decode_response<M: Codec>(api_key: ApiKey, version: i16, frame: &mut Bytes) -> Result<(i32, M), ProtocolError> {
    let correlation_id = decode_response_header(api_key, version, frame)?;
    bounds::check_response_array_bounds(api_key, version, frame)?;
    let body = M::decode(frame, version).map_err(|e| ProtocolError::malformed("response", e))?;
    Ok((correlation_id, body))
}

/// Decodes a response header, leaving `frame` at the start of the body; returns the
/// correlation id. The header version follows from the body's (v0 for every ApiVersions
/// response, including the v0 body a broker sends when it does not know the version asked for);
/// flexible headers' tagged fields are read by their sizes, which cannot exceed the frame.
pub fn decode_response_header(api_key: ApiKey, version: i16, frame: &mut Bytes) -> Result<i32, ProtocolError> {
    let header_version = api_key.response_header_version(version);
    let header =
        ResponseHeader::decode(frame, header_version).map_err(|e| ProtocolError::malformed("response header", e))?;
    Ok(header.correlation_id)
}

/// Reads only the correlation id of a response frame (the first field of every header version).
pub fn peek_correlation_id(frame: &[u8]) -> Result<i32, ProtocolError> {
    if frame.len() < 4 {
        return Err(ProtocolError::malformed("response header", "shorter than a correlation id"));
    }
    Ok(i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]))
}
