//! How a gRPC status reads in every protocol: its canonical code name (metrics, REST bodies), its HTTP status, the
//! REST error body `{"error": {code, message, status, details}}` with the rich details as JSON, and the headers a
//! failed call carries (`Retry-After`, `WWW-Authenticate`); and the same for Connect: its code names and its
//! error JSON `{code, message, details}`. The service, the gate and the transcoders share it.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use prost::Message;
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The HTTP status of a gRPC code (google.rpc.Code mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The canonical name of a code (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whole seconds to wait for `delay`, rounded up: a client that waits them is never early.
pub fn retry_after_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

/// Sets `Retry-After` from the status's retry delay, if it has one.
pub fn set_retry_after(headers: &mut HeaderMap, status: &Status) {
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds(delay)));
    }
}

/// The `WWW-Authenticate` challenge of a REST UNAUTHENTICATED answer (RFC 6750): `Bearer`, naming the
/// `invalid_token` error when the gate refused the credentials.
pub fn bearer_challenge(invalid_token: bool) -> HeaderValue {
    HeaderValue::from_static(if invalid_token {
        "Bearer error=\"invalid_token\""
    } else {
        "Bearer"
    })
}

/// The JSON body of a REST error.
fn error_json(status: StatusCode, code_name: &str, message: &str, details: Vec<Value>) -> Value {
    json!({
        "error": {
            "code": status.as_u16(),
            "message": message,
            "status": code_name,
            "details": details,
        }
    })
}

/// The REST error body of a status, as [`status_response`] writes it: also the last message of a REST stream
/// that fails part-way.
pub fn status_json(status: &Status) -> Value {
    error_json(
        http_status(status.code()),
        code_name(status.code()),
        status.message(),
        details_json(status),
    )
}

/// A JSON error response.
pub fn error_response(status: StatusCode, code_name: &str, message: &str, details: Vec<Value>) -> Response<Body> {
    let body = error_json(status, code_name, message, details);
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The rich details of a status as proto3 JSON objects with their `@type`.
pub fn details_json(status: &Status) -> Vec<Value> {
    status
        .get_error_details_vec()
        .into_iter()
        .filter_map(|detail| {
            use tonic_types::ErrorDetail as D;
            Some(match detail {
                D::ErrorInfo(i) => json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": i.reason, "domain": i.domain, "metadata": i.metadata,
                }),
                D::BadRequest(b) => json!({
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": b.field_violations.iter()
                        .map(|v| json!({"field": v.field, "description": v.description}))
                        .collect::<Vec<_>>(),
                }),
                D::PreconditionFailure(p) => json!({
                    "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
                    "violations": p.violations.iter()
                        .map(|v| json!({"type": v.r#type, "subject": v.subject, "description": v.description}))
                        .collect::<Vec<_>>(),
                }),
                D::RetryInfo(r) => json!({
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": r.retry_delay.map(|d| format!("{}s", d.as_secs_f64())),
                }),
                D::QuotaFailure(q) => json!({
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": q.violations.iter()
                        .map(|v| json!({"subject": v.subject, "description": v.description}))
                        .collect::<Vec<_>>(),
                }),
                D::ResourceInfo(r) => json!({
                    "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                    "resourceType": r.resource_type, "resourceName": r.resource_name,
                    "owner": r.owner, "description": r.description,
                }),
                D::RequestInfo(r) => json!({
                    "@type": "type.googleapis.com/google.rpc.RequestInfo",
                    "requestId": r.request_id, "servingData": r.serving_data,
                }),
                D::Help(h) => json!({
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": h.links.iter().map(|l| json!({"description": l.description, "url": l.url})).collect::<Vec<_>>(),
                }),
                D::LocalizedMessage(m) => json!({
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": m.locale, "message": m.message,
                }),
                // Debug info carries internals; it never leaves the server. Newer detail kinds are dropped
                // rather than guessed at.
                _ => return None,
            })
        })
        .collect()
}

/// The REST response of a failed call. UNAUTHENTICATED adds `WWW-Authenticate: Bearer` (RFC 6750), and a retry
/// delay becomes `Retry-After`.
pub fn status_response(status: &Status) -> Response<Body> {
    let http = http_status(status.code());
    let details = details_json(status);
    let mut response = error_response(http, code_name(status.code()), status.message(), details);
    if status.code() == Code::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, bearer_challenge(false));
    }
    set_retry_after(response.headers_mut(), status);
    response
}

/// The Connect name of a code (`invalid_argument`; `canceled` is spelled with one `l`).
pub fn connect_code_name(code: Code) -> &'static str {
    match code {
        // Connect has no `ok` error; a failure that says OK is reported as unknown.
        Code::Ok | Code::Unknown => "unknown",
        Code::Cancelled => "canceled",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Connect's error JSON of a status: `{"code", "message", "details": [{"type", "value", "debug"}]}`, each detail
/// as its full message name and its encoded bytes in base64 without padding (what Connect clients decode), with
/// its JSON form as `debug` for people reading the body. Debug info stays on the server, as on REST.
pub fn connect_error_json(status: &Status) -> Value {
    use base64::Engine;
    let anys = tonic_types::pb::Status::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default();
    let readable = details_json(status);
    let details: Vec<Value> = anys
        .iter()
        .filter_map(|any| {
            let name = any.type_url.rsplit('/').next().unwrap_or_default();
            let mut debug = readable
                .iter()
                .find(|d| d["@type"].as_str().and_then(|t| t.rsplit('/').next()) == Some(name))?
                .clone();
            if let Some(object) = debug.as_object_mut() {
                object.remove("@type");
            }
            Some(json!({
                "type": name,
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
                "debug": debug,
            }))
        })
        .collect();
    let mut body = json!({"code": connect_code_name(status.code()), "message": status.message()});
    if !details.is_empty() {
        body["details"] = Value::Array(details);
    }
    body
}

/// The Connect response of a failed unary call: the HTTP status of its code (the same mapping as REST), the
/// error JSON, and `Retry-After` / `WWW-Authenticate` as on REST.
pub fn connect_status_response(status: &Status) -> Response<Body> {
    let mut response = Response::new(Body::from(connect_error_json(status).to_string()));
    *response.status_mut() = http_status(status.code());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status.code() == Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, bearer_challenge(false));
    }
    set_retry_after(headers, status);
    response
}
