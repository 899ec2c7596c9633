//! The Connect protocol's unary calls, generic over a descriptor pool: `POST /<package.Service>/<Method>` with a
//! protobuf (`application/proto`) or proto3 JSON (`application/json`) body, optionally gzip-compressed, within
//! `Connect-Timeout-Ms`; answered with the response message in the request's codec or with Connect's error JSON.
//! Calls reach the service through the same [`Handler`]s as REST, so they meet the same limits and errors.
//!
//! `Connect-Protocol-Version` may be left out (as connect-go servers allow by default); when sent it must be `1`.
//! Connect's GET form of idempotent calls and its streaming protocol are not served: a streaming request is
//! answered with `unimplemented` in the streaming format, so Connect clients read it as an error.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use prost::Message;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::Status;

use super::{
    BodyError, Call, Handler, MAX_JSON_DEPTH, copy_passthrough_headers, json, json_depth, read_limited, wire_json,
};
use crate::decode_limits::{DecodeLimits, decode_off_worker};
use crate::rpc_status::{connect_code_name, connect_status_response};

/// Request headers passed on to the call as metadata, as REST passes them.
const FORWARDED_HEADERS: [&str; 2] = ["authorization", "x-request-id"];

/// The body codec of a unary call, named by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

impl Codec {
    /// The codec of a unary content type (`application/proto`, `application/json`, parameters ignored).
    pub fn of(content_type: &str) -> Option<Codec> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/proto") {
            Some(Codec::Proto)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Codec::Json)
        } else {
            None
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Codec::Proto => "application/proto",
            Codec::Json => "application/json",
        }
    }
}

/// How a request body is compressed (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// The encoding named by a `Content-Encoding` value; anything but `gzip` and `identity` is refused as
    /// Connect servers refuse it (unimplemented, naming what is supported).
    pub fn of(value: Option<&str>) -> Result<Encoding, Status> {
        match value.map(str::trim) {
            None | Some("") => Ok(Encoding::Identity),
            Some(v) if v.eq_ignore_ascii_case("identity") => Ok(Encoding::Identity),
            Some(v) if v.eq_ignore_ascii_case("gzip") => Ok(Encoding::Gzip),
            Some(v) => Err(Status::unimplemented(format!(
                "unknown compression {:?}: supported encodings are gzip, identity",
                shown(v)
            ))),
        }
    }
}

/// At most 64 characters of a header value, for an error message that quotes it.
fn shown(value: &str) -> String {
    value.chars().take(64).collect()
}

/// Parses `Connect-Timeout-Ms`: a positive count of milliseconds in at most 10 ASCII digits (Connect's
/// grammar). Zero is accepted as a deadline already past.
pub fn parse_timeout(raw: &str) -> Result<Duration, Status> {
    if raw.is_empty() || raw.len() > 10 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Status::invalid_argument(format!(
            "Connect-Timeout-Ms must be 1 to 10 digits of milliseconds, not {:?}",
            shown(raw)
        )));
    }
    raw.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| Status::invalid_argument("Connect-Timeout-Ms is not a number"))
}

/// Turns a request body into the encoded request message of `method`: decompressed within `max_bytes`, then
/// protobuf bytes as they are (the handler decodes them under the message limits) or proto3 JSON parsed under
/// the repeated-field limits, the REST nesting bound and with unknown fields refused, then encoded.
pub fn decode_request(
    method: &MethodDescriptor,
    codec: Codec,
    encoding: Encoding,
    body: Bytes,
    limits: &DecodeLimits,
    max_bytes: usize,
) -> Result<Bytes, Status> {
    let body = match encoding {
        Encoding::Identity => body,
        Encoding::Gzip => gunzip(&body, max_bytes)?,
    };
    match codec {
        Codec::Proto => Ok(body),
        // An empty body is the empty message in either codec.
        Codec::Json if body.is_empty() => Ok(Bytes::new()),
        Codec::Json => {
            let input = method.input();
            decode_off_worker(body.len(), || limits.check_json(&input, &body))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let value: serde_json::Value = decode_off_worker(body.len(), || serde_json::from_slice(&body))
                .map_err(|e| Status::invalid_argument(format!("the request body is not valid JSON: {e}")))?;
            if json_depth(&value) > MAX_JSON_DEPTH {
                return Err(Status::invalid_argument(format!(
                    "the request body is nested deeper than {MAX_JSON_DEPTH} levels"
                )));
            }
            let serde_json::Value::Object(object) = value else {
                return Err(Status::invalid_argument("the request body must be a JSON object"));
            };
            let message = json::message_from_json(input, object).map_err(|e| Status::invalid_argument(e.0))?;
            Ok(Bytes::from(message.encode_to_vec()))
        }
    }
}

/// Decompresses a gzip body, refusing one that inflates past `max_bytes` without inflating the rest.
fn gunzip(body: &[u8], max_bytes: usize) -> Result<Bytes, Status> {
    let mut out = Vec::new();
    let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX).saturating_add(1);
    decode_off_worker(body.len(), || {
        flate2::read::GzDecoder::new(body).take(limit).read_to_end(&mut out)
    })
    .map_err(|e| Status::invalid_argument(format!("the request body is not valid gzip: {e}")))?;
    if out.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(Bytes::from(out))
}

fn too_large(max_bytes: usize) -> Status {
    Status::out_of_range(format!("the request body is larger than {max_bytes} bytes"))
}

/// Serves Connect unary calls of the methods of a descriptor pool by calling their handlers.
#[derive(Clone)]
pub struct Connect {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    pool: DescriptorPool,
    /// By full method name (`pkg.Service.Method`); streaming methods have none.
    handlers: HashMap<String, Handler>,
    max_body_bytes: usize,
    limits: DecodeLimits,
}

impl Connect {
    /// Serves the methods of `descriptor_set` that `handlers` (keyed by full method name) serve; fails on a
    /// handler of a method the set does not have.
    pub fn new<'a>(
        descriptor_set: &[u8],
        handlers: impl IntoIterator<Item = (&'a str, Handler)>,
        max_body_bytes: usize,
        limits: DecodeLimits,
    ) -> anyhow::Result<Connect> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let mut by_name = HashMap::new();
        for (name, handler) in handlers {
            let known = name.rsplit_once('.').and_then(|(service, method)| {
                pool.get_service_by_name(service)?
                    .methods()
                    .find(|m| m.name() == method)
            });
            if known.is_none() {
                anyhow::bail!("connect: {name} has a handler but no method in the descriptors");
            }
            by_name.insert(name.to_owned(), handler);
        }
        Ok(Connect {
            inner: std::sync::Arc::new(Inner {
                pool,
                handlers: by_name,
                max_body_bytes,
                limits,
            }),
        })
    }

    /// Handles one Connect request; every outcome, errors included, is a complete response.
    pub async fn handle(&self, request: Request<AxumBody>) -> Response<AxumBody> {
        let (parts, body) = request.into_parts();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let path = parts.uri.path().to_owned();
        let Some(codec) = Codec::of(&content_type) else {
            return streaming_refusal(&content_type, &path);
        };
        match self.unary(parts, body, codec, &path).await {
            Ok(response) => response,
            Err(failure) => {
                let mut response = connect_status_response(&failure.status);
                if let Some(http) = failure.http {
                    *response.status_mut() = http;
                }
                copy_passthrough_headers(failure.status.metadata().as_ref(), response.headers_mut());
                if let Some(allow) = failure.allow {
                    response.headers_mut().insert(header::ALLOW, allow);
                }
                response
            }
        }
    }

    async fn unary(
        &self,
        parts: http::request::Parts,
        body: AxumBody,
        codec: Codec,
        path: &str,
    ) -> Result<Response<AxumBody>, Failure> {
        let method = self.method(path).ok_or_else(|| Failure {
            // Unknown procedures are answered 404, as Connect servers do, with code unimplemented.
            http: Some(StatusCode::NOT_FOUND),
            ..Failure::from(Status::unimplemented(format!("no procedure {}", shown(path))))
        })?;
        // Connect's unary protocol carries one answer: a server-streaming method is reached through the
        // streaming protocol (bridged onto gRPC) instead.
        let unary = !method.is_server_streaming() && !method.is_client_streaming();
        let Some(handler) = unary
            .then(|| self.inner.handlers.get(method.full_name()).cloned())
            .flatten()
        else {
            return Err(Failure::from(Status::unimplemented(format!(
                "{} is a streaming method: call it over gRPC or gRPC-Web",
                method.full_name()
            ))));
        };
        if parts.method != Method::POST {
            return Err(Failure {
                http: Some(StatusCode::METHOD_NOT_ALLOWED),
                allow: Some(HeaderValue::from_static("POST")),
                ..Failure::from(Status::unimplemented(format!("{path} accepts only POST")))
            });
        }
        if let Some(version) = parts.headers.get("connect-protocol-version")
            && version.as_bytes() != b"1"
        {
            return Err(Failure::from(Status::invalid_argument(
                "Connect-Protocol-Version must be 1",
            )));
        }
        let timeout = match parts.headers.get("connect-timeout-ms") {
            None => None,
            Some(raw) => Some(parse_timeout(raw.to_str().unwrap_or("?"))?),
        };
        let encoding = Encoding::of(
            parts
                .headers
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap_or("?")),
        )?;
        let max = self.inner.max_body_bytes;
        let bytes = read_limited(body, max).await.map_err(|e| match e {
            BodyError::TooLarge => too_large(max),
            BodyError::Unreadable(e) => Status::invalid_argument(format!("the request body could not be read: {e}")),
        })?;
        let message = decode_request(&method, codec, encoding, bytes, &self.inner.limits, max)?;

        let mut headers = HeaderMap::new();
        for name in FORWARDED_HEADERS {
            if let Some(value) = parts.headers.get(name) {
                headers.insert(name, value.clone());
            }
        }
        let call = Call {
            message,
            headers,
            extensions: parts.extensions,
            json_answer: codec == Codec::Json,
        };
        let deadline_exceeded = |timeout: Duration| {
            Status::deadline_exceeded(format!(
                "the call took longer than its Connect-Timeout-Ms of {} ms",
                timeout.as_millis()
            ))
        };
        // The client's deadline; the gate's --request-timeout bounds every call already, so a longer one is
        // capped by it.
        let answer = match timeout {
            Some(timeout) if timeout.is_zero() => return Err(deadline_exceeded(timeout).into()),
            Some(timeout) => tokio::time::timeout(timeout, handler(call))
                .await
                .unwrap_or_else(|_| Err(deadline_exceeded(timeout))),
            None => handler(call).await,
        };
        let reply = match answer {
            Ok(reply) => reply,
            // A failure that says OK is no answer at all.
            Err(status) if status.code() == tonic::Code::Ok => {
                return Err(internal("a method failed with status OK").into());
            }
            Err(status) => return Err(status.into()),
        };
        let body = match codec {
            Codec::Proto => reply.message,
            Codec::Json => match reply.json {
                Some(answer) => Bytes::from(answer.body),
                None => {
                    let (json, _) = wire_json::answer_json(&method.output(), None, &reply.message, None)
                        .map_err(|e| internal(&e))?;
                    Bytes::from(json)
                }
            },
        };
        let mut response = Response::new(AxumBody::from(body));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(codec.content_type()));
        copy_passthrough_headers(&reply.headers, response.headers_mut());
        Ok(response)
    }

    /// The method a path `/<package.Service>/<Method>` names.
    fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.inner
            .pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }
}

/// A failed call: its status, and the HTTP status and `Allow` header where Connect answers other than by the
/// code's mapping.
struct Failure {
    status: Status,
    http: Option<StatusCode>,
    allow: Option<HeaderValue>,
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure {
            status,
            http: None,
            allow: None,
        }
    }
}

fn internal(detail: &str) -> Status {
    tracing::error!(error = detail, "Connect call failed");
    Status::internal("internal error")
}

/// The answer to a request in Connect's streaming protocol, which is not served: HTTP 200 and an end-of-stream
/// message carrying the error, the form in which streaming clients read errors.
fn streaming_refusal(content_type: &str, path: &str) -> Response<AxumBody> {
    let status = Status::unimplemented(format!(
        "the Connect streaming protocol is not served ({path}): call unary methods with application/proto or \
         application/json, streaming ones over gRPC or gRPC-Web"
    ));
    let end = serde_json::json!({"error": {"code": connect_code_name(status.code()), "message": status.message()}});
    let payload = end.to_string();
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    // Flag 0x02 marks the end-of-stream message, which is always JSON.
    frame.put_u8(0x02);
    frame.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    frame.put_slice(payload.as_bytes());
    let mut response = Response::new(AxumBody::from(frame.freeze()));
    let media = content_type.split(';').next().unwrap_or("").trim();
    let value = HeaderValue::from_str(media).unwrap_or(HeaderValue::from_static("application/connect+proto"));
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}
