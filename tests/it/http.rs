//! Plain HTTP clients for the REST and gRPC-Web tests: HTTP/1.1 and HTTP/2 (prior knowledge), with gRPC-Web
//! framed by hand as a browser library would.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP response with its body read.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

#[derive(Clone)]
pub struct HttpClient {
    base: String,
    /// Sent as `Authorization: Bearer …` unless a call sets its own.
    token: Option<String>,
    h1: Client<HttpConnector, Full<Bytes>>,
    h2: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// A client authenticated as an administrator.
    pub fn new(addr: std::net::SocketAddr) -> HttpClient {
        HttpClient::with_token(addr, Some(crate::support::admin_token()))
    }

    pub fn with_token(addr: std::net::SocketAddr, token: Option<String>) -> HttpClient {
        HttpClient {
            base: format!("http://{addr}"),
            token,
            h1: Client::builder(TokioExecutor::new()).build_http(),
            h2: Client::builder(TokioExecutor::new()).http2_only(true).build_http(),
        }
    }

    /// Sends a request over HTTP/1.1 (or HTTP/2 with `http2`).
    pub async fn send(
        &self,
        http2: bool,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> HttpResponse {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = self
            .token
            .as_ref()
            .filter(|_| !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")))
        {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let client = if http2 { &self.h2 } else { &self.h1 };
        let response = client.request(request).await.expect("HTTP exchange");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A REST call with an optional JSON body.
    /// The value of one metric line of `/metrics`, its name with any labels as written there.
    pub async fn metric(&self, name: &str) -> f64 {
        let response = self.rest(Method::GET, "/metrics", None, &[]).await;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    pub async fn rest(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(false, method, path, &all, body).await
    }

    /// A unary gRPC-Web call: returns the response message bytes (if any) and the trailers.
    pub async fn grpc_web(
        &self,
        http2: bool,
        text: bool,
        path: &str,
        message: &[u8],
        headers: &[(&str, &str)],
    ) -> (Option<Bytes>, HeaderMap) {
        let mut frame = BytesMut::new();
        frame.put_u8(0);
        frame.put_u32(u32::try_from(message.len()).expect("small message"));
        frame.put_slice(message);
        let (content_type, body) = if text {
            ("application/grpc-web-text", Bytes::from(STANDARD.encode(&frame)))
        } else {
            ("application/grpc-web+proto", frame.freeze())
        };
        let mut all = vec![
            ("content-type", content_type),
            ("x-grpc-web", "1"),
            ("accept", content_type),
        ];
        all.extend_from_slice(headers);
        let response = self.send(http2, Method::POST, path, &all, body).await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "gRPC-Web answers 200 and carries the status in trailers"
        );
        let mut body = if text {
            decode_text_chunks(&response.body)
        } else {
            response.body.clone()
        };
        let mut message_out = None;
        let mut trailers = HeaderMap::new();
        // A trailers-only answer carries the status in the headers.
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            if let Some(v) = response.headers.get(name) {
                trailers.insert(name, v.clone());
            }
        }
        while body.remaining() >= 5 {
            let flag = body.get_u8();
            let len = body.get_u32() as usize;
            let payload = body.split_to(len);
            if flag & 0x80 == 0 {
                message_out = Some(payload);
            } else {
                for line in String::from_utf8_lossy(&payload)
                    .split("\r\n")
                    .filter(|l| !l.is_empty())
                {
                    if let Some((name, value)) = line.split_once(':') {
                        trailers.insert(
                            HeaderName::from_bytes(name.trim().as_bytes()).expect("trailer name"),
                            HeaderValue::from_str(value.trim()).expect("trailer value"),
                        );
                    }
                }
            }
        }
        (message_out, trailers)
    }
}

/// A grpc-web-text body is a series of separately base64-encoded frames, each padded on its own.
fn decode_text_chunks(text: &[u8]) -> Bytes {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = match rest.iter().position(|b| *b == b'=') {
            Some(first_pad) => {
                let pads = rest[first_pad..].iter().take_while(|b| **b == b'=').count();
                first_pad + pads
            }
            None => rest.len(),
        };
        out.extend(STANDARD.decode(&rest[..end]).expect("base64 chunk"));
        rest = &rest[end..];
    }
    Bytes::from(out)
}

/// Connection hygiene: header limits, silent, idle and stalled connections.
mod connections {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::support::{Backend, TestApp, admin_token, create, user};

    /// A bound for waits that must end; far above the timeouts the tests configure.
    const BOUND: Duration = Duration::from_secs(20);

    /// Reads until the server closes the connection, returning what it sent; panics past `BOUND`.
    async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        let read = tokio::time::timeout(BOUND, async {
            let mut buffer = [0u8; 4096];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the server kept the connection open");
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http1_header_block_over_64_kib_is_refused_with_431() {
        let app = TestApp::start(Backend::Sqlite).await;
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 100 * 1024));
        head.extend_from_slice(b"\r\n\r\n");
        // The server may stop reading once it has answered.
        let _ = stream.write_all(&head).await;
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(60)])
        );
        // Below the limit is fine.
        let big = "a".repeat(60 * 1024);
        let response = super::HttpClient::new(app.addr)
            .send(false, http::Method::GET, "/healthz", &[("x-ok", &big)], Vec::new())
            .await;
        assert_eq!(response.status, StatusCode::OK);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
        let app = TestApp::start_with(Backend::Sqlite, |c| c.header_timeout = Duration::from_millis(300)).await;
        let mut silent = TcpStream::connect(app.addr).await.expect("connect");
        assert!(read_until_closed(&mut silent).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
        let app = TestApp::start_with(Backend::Sqlite, |c| {
            c.header_timeout = Duration::from_secs(60);
            c.idle_timeout = Duration::from_millis(300);
        })
        .await;
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_the_client_does_not_read_is_dropped_after_the_request_timeout() {
        let app = TestApp::start_with(Backend::Sqlite, |c| c.request_timeout = Duration::from_secs(1)).await;
        let mut c = app.client.clone();
        for n in 0..3 {
            create(&mut c, user(&format!("unread{n}@example.com"))).await;
        }
        // A zero stream window: the server may send headers but no byte of any body.
        let stalled: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(0)
            .build_http();
        let request = Request::get(format!("http://{}/v1/users", app.addr))
            .header("authorization", format!("Bearer {}", admin_token()))
            .body(Empty::new())
            .expect("request");
        let response = tokio::time::timeout(BOUND, stalled.request(request))
            .await
            .expect("headers arrive")
            .expect("HTTP exchange");
        assert_eq!(response.status(), StatusCode::OK);
        let body = tokio::time::timeout(BOUND, response.into_body().collect())
            .await
            .expect("the server gives up on the stalled stream instead of holding it");
        assert!(
            body.is_err(),
            "no byte could be sent, so the stream must end in a reset"
        );
        // Everyone else is still served.
        let listed = c.list_users(user_service::pb::ListUsersRequest::default()).await;
        assert_eq!(listed.expect("list").into_inner().users.len(), 3);
    }
}
