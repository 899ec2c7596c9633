//! REST/JSON transcoding, generic over any service with `google.api.http` annotations: routes HTTP requests by
//! the rules in the descriptor set, calls the method's [`Handler`] with the encoded request (no gRPC framing, no
//! router), and writes its answer (or its status, with the rich details) as JSON. The Connect protocol
//! ([`connect`]) calls the same handlers.

pub mod connect;
pub mod connect_stream;
pub mod json;
pub mod openapi;

pub mod path_template;
pub mod rule;
pub mod streaming;
pub mod wire_json;

use std::sync::Arc;

use axum::body::Body as AxumBody;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::decode_limits::{DecodeLimits, decode_off_worker};
use crate::rpc_status::{error_response, status_response};
use json::{BadRequest, RestInput};
use rule::HttpBinding;

/// Request headers passed on to the call as metadata, so authentication and tracing see REST calls exactly as
/// they see gRPC ones.
const FORWARDED_HEADERS: [&str; 3] = ["authorization", "x-request-id", "grpc-timeout"];

/// One call of a method: its request message encoded, the forwarded request headers (the metadata), and every
/// request extension (what the middleware put there, such as the authenticated caller).
pub struct Call {
    pub message: Bytes,
    pub headers: HeaderMap,
    pub extensions: Extensions,
    /// The caller answers with the whole response message as JSON (a REST binding without `response_body`, a
    /// Connect JSON call): the handler may hand it over already written ([`Reply::json`]) instead of encoded.
    pub json_answer: bool,
}

/// A method's answer: its response message encoded and the headers (metadata) it set. A server-streaming
/// method answers with `stream` instead (and an empty `message`): its messages encoded, each in turn, and a
/// status that ends the stream early. Where the call asked for JSON and the handler wrote it from the typed
/// message, `json` holds it and `message` is empty.
pub struct Reply {
    pub message: Bytes,
    pub headers: HeaderMap,
    pub stream: Option<MessageStream>,
    pub json: Option<JsonAnswer>,
}

/// A whole response message written as its REST JSON, and its top-level `etag` (`None` when the message type
/// has none, empty when it is unset), exactly as [`wire_json::answer_json`] reads them from the encoded message.
#[derive(Debug)]
pub struct JsonAnswer {
    pub body: Vec<u8>,
    pub etag: Option<String>,
}

/// The encoded messages of a server-streaming answer.
pub type MessageStream = futures::stream::BoxStream<'static, Result<Bytes, tonic::Status>>;

/// Calls one method; the transcoder holds one per RPC, by the method's full name (`pkg.Service.Method`).
pub type Handler = Arc<dyn Fn(Call) -> BoxFuture<'static, Result<Reply, tonic::Status>> + Send + Sync>;

/// Deepest JSON nesting a REST body may have: the deepest request (a batch item's attributes) needs 26; the
/// bound keeps the protobuf message built from it within every decoder's recursion limit.
pub const MAX_JSON_DEPTH: usize = 32;

/// Nesting depth of a JSON value (a scalar is 0, `{}` is 1).
pub(crate) fn json_depth(value: &serde_json::Value) -> usize {
    // Iterative, so that the check itself cannot overflow the stack.
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            serde_json::Value::Object(o) => {
                deepest = deepest.max(depth + 1);
                stack.extend(o.values().map(|c| (c, depth + 1)));
            }
            serde_json::Value::Array(a) => {
                deepest = deepest.max(depth + 1);
                stack.extend(a.iter().map(|c| (c, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Serves REST for the RPCs of a descriptor pool by calling their handlers.
#[derive(Clone)]
pub struct Transcoder {
    inner: Arc<Inner>,
}

struct Inner {
    bindings: Vec<HttpBinding>,
    /// The handler of each binding, by index.
    handlers: Vec<Handler>,
    max_body_bytes: usize,
    /// Repeated-field limits, checked on the body's bytes before it is parsed.
    limits: DecodeLimits,
}

impl Transcoder {
    /// Reads the http rules of `descriptor_set` and pairs each with its method's handler from `handlers`
    /// (keyed by full method name); fails on a rule that cannot be served or that no handler serves.
    pub fn new<'a>(
        descriptor_set: &[u8],
        handlers: impl IntoIterator<Item = (&'a str, Handler)>,
        max_body_bytes: usize,
        limits: DecodeLimits,
    ) -> anyhow::Result<Transcoder> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let bindings = rule::bindings(&pool).map_err(|e| anyhow::anyhow!("http rules: {e}"))?;
        let by_name: std::collections::HashMap<&str, Handler> = handlers.into_iter().collect();
        let handlers = bindings
            .iter()
            .map(|binding| {
                by_name.get(binding.rpc.full_name()).cloned().ok_or_else(|| {
                    anyhow::anyhow!(
                        "http rules: {} has a rule but no handler (only unary methods can have one)",
                        binding.rpc.full_name()
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Transcoder {
            inner: Arc::new(Inner {
                bindings,
                handlers,
                max_body_bytes,
                limits,
            }),
        })
    }

    pub fn bindings(&self) -> &[HttpBinding] {
        &self.inner.bindings
    }

    /// Handles one REST request; every outcome, errors included, is a complete response.
    pub async fn handle(&self, request: Request<AxumBody>) -> Response<AxumBody> {
        match self.route(request).await {
            Ok(response) => response,
            Err(response) => response,
        }
    }

    async fn route(&self, request: Request<AxumBody>) -> Result<Response<AxumBody>, Response<AxumBody>> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let mut allowed: Vec<Method> = Vec::new();
        let mut chosen = None;
        for (index, binding) in self.inner.bindings.iter().enumerate() {
            if let Some(bindings) = binding.template.matches(path) {
                if binding.http_method == parts.method {
                    chosen = Some((index, binding, bindings));
                    break;
                }
                if !allowed.contains(&binding.http_method) {
                    allowed.push(binding.http_method.clone());
                }
            }
        }
        let Some((index, binding, path_bindings)) = chosen else {
            if allowed.is_empty() {
                return Err(error_response(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    &format!("no route for {} {path}", parts.method),
                    Vec::new(),
                ));
            }
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNIMPLEMENTED",
                &format!("{path} does not accept {}", parts.method),
                Vec::new(),
            );
            let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            return Err(response);
        };

        let body = self.read_json_body(binding, &parts.headers, body).await?;
        let if_match = parts
            .headers
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_start_matches("W/").trim_matches('"').to_owned())
            .filter(|v| !v.is_empty() && v != "*");
        let message = json::request_message(
            binding,
            RestInput {
                path_bindings,
                query: parts.uri.query(),
                body,
                if_match,
                http_method: &parts.method,
            },
        )
        .map_err(|BadRequest(message)| invalid_argument(&message))?;
        let message = streaming::resume_from_last_event_id(binding, &parts.headers, message)?;
        self.call(index, parts, message).await
    }

    /// Reads and parses the body; absent or empty bodies are `None`.
    async fn read_json_body(
        &self,
        binding: &HttpBinding,
        headers: &HeaderMap,
        body: AxumBody,
    ) -> Result<Option<serde_json::Value>, Response<AxumBody>> {
        let bytes = read_limited(body, self.inner.max_body_bytes)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "INVALID_ARGUMENT",
                    &format!("the request body is larger than {} bytes", self.inner.max_body_bytes),
                    Vec::new(),
                ),
                BodyError::Unreadable(e) => invalid_argument(&format!("the request body could not be read: {e}")),
            })?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return Err(error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_ARGUMENT",
                "the request body must be JSON (Content-Type: application/json)",
                Vec::new(),
            ));
        }
        if let Some(message) = body_message(binding) {
            let limits = &self.inner.limits;
            decode_off_worker(bytes.len(), || limits.check_json(&message, &bytes))
                .map_err(|e| invalid_argument(&e.to_string()))?;
        }
        let value: serde_json::Value = decode_off_worker(bytes.len(), || serde_json::from_slice(&bytes))
            .map_err(|e| invalid_argument(&format!("the request body is not valid JSON: {e}")))?;
        if json_depth(&value) > MAX_JSON_DEPTH {
            return Err(invalid_argument(&format!(
                "the request body is nested deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        Ok(Some(value))
    }

    /// Calls the binding's method and writes its answer.
    async fn call(
        &self,
        index: usize,
        parts: http::request::Parts,
        message: DynamicMessage,
    ) -> Result<Response<AxumBody>, Response<AxumBody>> {
        let binding = &self.inner.bindings[index];
        let mut headers = HeaderMap::new();
        for name in FORWARDED_HEADERS {
            if let Some(value) = parts.headers.get(name) {
                headers.insert(name, value.clone());
            }
        }
        let call = Call {
            message: Bytes::from(message.encode_to_vec()),
            headers,
            extensions: parts.extensions,
            json_answer: binding.response_body.is_none(),
        };
        let accept = parts.headers.get(header::ACCEPT).cloned();
        let reply = match (self.inner.handlers[index])(call).await {
            Ok(reply) => reply,
            // A failure that says OK is no answer at all.
            Err(status) if status.code() == tonic::Code::Ok => {
                return Err(internal("a method failed with status OK"));
            }
            Err(status) => {
                let mut response = status_response(&status);
                copy_passthrough_headers(status.metadata().as_ref(), response.headers_mut());
                return Err(response);
            }
        };
        if let Some(stream) = reply.stream {
            return Ok(streaming::response(binding, accept.as_ref(), stream, &reply.headers));
        }
        let (json, etag) = match reply.json {
            Some(answer) if binding.response_body.is_none() => (answer.body, answer.etag),
            Some(_) => {
                return Err(internal(
                    "a handler wrote the whole answer where one field of it was asked for",
                ));
            }
            None => wire_json::answer_json(
                &binding.rpc.output(),
                binding.response_body.as_deref(),
                &reply.message,
                Some("etag"),
            )
            .map_err(|e| internal(&e))?,
        };
        let etag = etag.filter(|etag| !etag.is_empty());
        let mut response = Response::new(AxumBody::from(json));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(etag) = etag
            && let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\""))
        {
            response.headers_mut().insert(header::ETAG, value);
        }
        copy_passthrough_headers(&reply.headers, response.headers_mut());
        Ok(response)
    }
}

/// The message a binding's body becomes: the request, or one of its fields.
fn body_message(binding: &HttpBinding) -> Option<prost_reflect::MessageDescriptor> {
    let input = binding.rpc.input();
    match &binding.body {
        rule::Body::None => None,
        rule::Body::All => Some(input),
        rule::Body::Field(name) => match input.get_field_by_name(name)?.kind() {
            prost_reflect::Kind::Message(message) => Some(message),
            _ => None,
        },
    }
}

pub(crate) enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// Reads a body of at most `limit` bytes. Past the limit the rest is read and dropped, up to a bound, so that an
/// HTTP/1.1 client still sending gets the 413 instead of a reset connection; beyond the bound the connection
/// is given up.
pub(crate) async fn read_limited(mut body: AxumBody, limit: usize) -> Result<Bytes, BodyError> {
    let drain_bound = limit.saturating_mul(4);
    let mut buffer = BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buffer.extend_from_slice(&data);
        } else if seen > drain_bound {
            break;
        }
    }
    if seen > limit {
        Err(BodyError::TooLarge)
    } else {
        Ok(buffer.freeze())
    }
}

/// Response headers worth passing to REST clients (rate limits, retry hints, an update's changed paths); gRPC
/// framing headers are not.
pub(crate) fn copy_passthrough_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if n.starts_with("ratelimit") || n == "retry-after" || n == "www-authenticate" || n == crate::api::CHANGED_PATHS
        {
            to.insert(name.clone(), value.clone());
        }
    }
}

fn invalid_argument(message: &str) -> Response<AxumBody> {
    error_response(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message, Vec::new())
}

fn internal(detail: &str) -> Response<AxumBody> {
    tracing::error!(error = detail, "REST transcoding failed");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "internal error",
        Vec::new(),
    )
}
