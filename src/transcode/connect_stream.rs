//! Connect's streaming protocol with protobuf messages, bridged onto the gRPC services: its envelopes are gRPC's
//! length-prefixed messages, so a request is passed on as gRPC with its body unchanged, and the answer's gRPC
//! status (trailers, or trailers-only headers) becomes Connect's end-of-stream message. This is what lets
//! `buf curl --reflect` (which reflects over the protocol of the call, Connect by default) reach reflection.

use axum::body::Body as AxumBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use crate::rpc_status::connect_error_json;

/// Whether a content type is the streaming protocol with protobuf messages, the one bridged.
pub fn is_streaming_proto(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|media| media.eq_ignore_ascii_case("application/connect+proto"))
}

/// Rewrites the headers of a Connect streaming request as gRPC's: the content type, `te: trailers`, the deadline
/// as `grpc-timeout`. A compressed stream is refused (the gRPC services take uncompressed messages only): answer
/// the status with [`end_of_stream_response`].
pub fn to_grpc(mut request: Request<AxumBody>) -> Result<Request<AxumBody>, tonic::Status> {
    let headers = request.headers_mut();
    if let Some(encoding) = headers.get("connect-content-encoding")
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(tonic::Status::unimplemented(
            "compressed Connect streams are not served: send them with identity encoding",
        ));
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = headers.remove("connect-timeout-ms") {
        let millis = timeout
            .to_str()
            .ok()
            .and_then(|t| super::connect::parse_timeout(t).ok());
        match millis {
            Some(millis) => {
                if let Ok(value) = HeaderValue::from_str(&format!("{}m", millis.as_millis())) {
                    headers.insert("grpc-timeout", value);
                }
            }
            None => {
                return Err(tonic::Status::invalid_argument(
                    "Connect-Timeout-Ms must be 1 to 10 digits of milliseconds",
                ));
            }
        }
    }
    for name in [
        "connect-protocol-version",
        "connect-accept-encoding",
        "connect-content-encoding",
    ] {
        headers.remove(name);
    }
    Ok(request)
}

/// Rewrites a gRPC answer as Connect's: the messages pass unchanged, the status becomes the end-of-stream
/// message.
pub fn from_grpc(response: Response<AxumBody>) -> Response<AxumBody> {
    let (mut parts, body) = response.into_parts();
    // A trailers-only answer (a refusal) carries its status in the headers and has no messages.
    if parts.headers.contains_key("grpc-status") || parts.status != StatusCode::OK {
        let status = tonic::Status::from_header_map(&parts.headers)
            .unwrap_or_else(|| tonic::Status::unknown(format!("HTTP status {}", parts.status)));
        let mut answer = end_of_stream_response(&status);
        copy_metadata(&parts.headers, answer.headers_mut());
        return answer;
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+proto"),
    );
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(trailers) => {
            let status = tonic::Status::from_header_map(&trailers);
            hyper::body::Frame::data(end_of_stream(status.as_ref(), &trailers))
        }
        Err(frame) => frame,
    });
    Response::from_parts(parts, AxumBody::new(body))
}

/// Response headers that are the call's metadata, not gRPC's framing.
fn copy_metadata(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if !n.starts_with("grpc-") && name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            to.insert(name.clone(), value.clone());
        }
    }
}

/// The end-of-stream envelope: flag 0x02 and `{"error": …, "metadata": …}`, the error left out on success.
fn end_of_stream(status: Option<&tonic::Status>, trailers: &HeaderMap) -> Bytes {
    let mut end = Map::new();
    if let Some(status) = status.filter(|s| s.code() != tonic::Code::Ok) {
        end.insert("error".into(), connect_error_json(status));
    }
    let mut metadata = Map::new();
    for (name, value) in trailers {
        if name.as_str().starts_with("grpc-") {
            continue;
        }
        if let Ok(value) = value.to_str() {
            metadata.insert(name.as_str().to_owned(), json!([value]));
        }
    }
    if !metadata.is_empty() {
        end.insert("metadata".into(), Value::Object(metadata));
    }
    let payload = Value::Object(end).to_string();
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0x02);
    frame.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    frame.put_slice(payload.as_bytes());
    frame.freeze()
}

/// A whole streaming answer that is only its end: HTTP 200 and the end-of-stream message with the error, the
/// form in which Connect streaming clients read errors.
pub fn end_of_stream_response(status: &tonic::Status) -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::from(end_of_stream(Some(status), &HeaderMap::new())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+proto"),
    );
    response
}
