//! KServe v2 over gRPC (`inference.GRPCInferenceService`, what `tritonclient.grpc` calls) and
//! the standard health check (`grpc.health.v1.Health/Check`, Kubernetes' gRPC probe), on a
//! port of its own (`--grpc-port`), over HTTP/2 without TLS.
//!
//! A call passes, in order:
//! - [`handle`]: the gRPC framing — POST with `application/grpc`, one length-prefixed message
//!   read within the payload limit and the body timeout, inflated when the client compressed it
//!   (`grpc-encoding` gzip or deflate);
//! - [`service`]: each method as a request to the HTTP API on the same router, so that a gRPC
//!   call passes the same API key, in-flight limit, batcher, statistics, metrics and access log
//!   as its HTTP twin, and gets the same numbers: ModelInfer is sent as KServe's binary tensor
//!   form and its binary answer read back into `raw_output_contents`;
//! - back here: the answer framed, with `grpc-status` in the trailers (or, for a failure, a
//!   trailers-only response), the HTTP answer's `x-request-id` and timing headers as metadata.
//!
//! [`messages`] holds the protobuf messages; [`client`] is a small unary client (bench-serve's
//! gRPC load, the tests).

pub mod client;
pub mod messages;
mod service;

use std::time::Duration;

use axum::body::Body;
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use std::sync::Arc;

use crate::error::ApiError;
use crate::http::conn::OverCapacity;
use crate::http::encoding;
use crate::metrics::Metrics;

/// What a gRPC request may take (the server's payload limit and body timeout), and where a
/// call refused before it reaches the HTTP routes is counted.
#[derive(Clone)]
pub struct Limits {
    pub payload_limit: usize,
    pub body_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// The metrics endpoint of calls refused before they map onto an HTTP route.
pub const REFUSED_ENDPOINT: &str = "grpc";

/// gRPC's status codes (the ones this server answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    /// The code of an HTTP status, as gRPC's HTTP mapping and Triton give them.
    pub fn of_http(status: StatusCode) -> Code {
        match status.as_u16() {
            200..=299 => Code::Ok,
            400 | 415 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            408 => Code::DeadlineExceeded,
            409 => Code::FailedPrecondition,
            413 => Code::ResourceExhausted,
            429 | 502 | 503 | 504 => Code::Unavailable,
            500 => Code::Internal,
            501 => Code::Unimplemented,
            _ => Code::Unknown,
        }
    }

    /// The code of a `grpc-status` value.
    pub fn of_number(n: u32) -> Code {
        [
            Code::Ok,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::Unauthenticated,
        ]
        .into_iter()
        .find(|c| *c as u32 == n)
        .unwrap_or(Code::Unknown)
    }
}

/// A failed call: its code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, message)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(Code::of_http(e.status), e.message)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} ({}): {}",
            self.code, self.code as u32, self.message
        )
    }
}

pub const CONTENT_TYPE: &str = "application/grpc";

/// One gRPC call on the gRPC port.
pub async fn handle(app: Router, limits: Limits, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let grpc = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(CONTENT_TYPE));
    if parts.method != Method::POST || !grpc {
        // gRPC's rule for what is not a gRPC request: an HTTP error, no grpc-status.
        let mut r = Response::new(Body::from(
            "this port speaks gRPC (POST, content-type application/grpc); \
             the HTTP API is on --port\n",
        ));
        *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return r;
    }
    let message = match read_message(&parts.headers, body, &limits).await {
        Ok(m) => m,
        Err(s) => {
            let reason = match s.code {
                Code::ResourceExhausted => "payload_too_large",
                Code::DeadlineExceeded => "body_timeout",
                Code::Unimplemented => "unsupported_encoding",
                _ => "invalid_request",
            };
            limits.metrics.request_refused(REFUSED_ENDPOINT, reason);
            return failure(&s, HeaderMap::new());
        }
    };
    let call = service::Call {
        app,
        metadata: forwarded(&parts.headers),
        over_capacity: parts.extensions.get::<OverCapacity>().is_some(),
    };
    match service::dispatch(&call, parts.uri.path(), message).await {
        Ok((reply, meta)) => success(reply, meta),
        Err((status, meta)) => {
            if status.code == Code::Unimplemented {
                limits
                    .metrics
                    .request_refused(REFUSED_ENDPOINT, "unimplemented");
            }
            failure(&status, meta)
        }
    }
}

/// The request headers passed on to the HTTP API: the client's metadata (`authorization`,
/// `x-request-id`, ...), not gRPC's own or HTTP/2's.
fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in headers {
        let name = k.as_str();
        let skip = name.starts_with("grpc-")
            || matches!(
                name,
                "content-type"
                    | "content-length"
                    | "content-encoding"
                    | "accept-encoding"
                    | "te"
                    | "host"
                    | "connection"
            );
        if !skip {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// The one message of a unary call: read within the limits, unframed, inflated.
async fn read_message(
    headers: &HeaderMap,
    body: Incoming,
    limits: &Limits,
) -> Result<Bytes, Status> {
    let too_large = || {
        Status::new(
            Code::ResourceExhausted,
            format!(
                "the request message is larger than the payload limit of {} bytes \
                 (--payload-limit)",
                limits.payload_limit
            ),
        )
    };
    let collected = tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.payload_limit + 5).collect(),
    )
    .await
    .map_err(|_| {
        Status::new(
            Code::DeadlineExceeded,
            format!(
                "the request message did not arrive within {} s (--body-timeout-s)",
                limits.body_timeout.as_secs_f64()
            ),
        )
    })?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(Status::invalid(format!("reading the request: {e}"))),
    };
    let (compressed, message) = unframe(&bytes)?;
    if !compressed {
        return Ok(message);
    }
    let coding = headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(coding, "gzip" | "deflate") {
        return Err(Status::new(
            Code::Unimplemented,
            format!("grpc-encoding {coding:?} is not supported: gzip, deflate or identity"),
        ));
    }
    let mut as_http = HeaderMap::new();
    as_http.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(if coding == "gzip" { "gzip" } else { "deflate" }),
    );
    encoding::decode_request(&as_http, message, limits.payload_limit).map_err(Status::from)
}

/// A unary request's body: one message behind its 5-byte prefix (compressed flag, big-endian
/// length).
pub fn unframe(body: &Bytes) -> Result<(bool, Bytes), Status> {
    if body.len() < 5 {
        return Err(Status::invalid(
            "the request has no message (a gRPC message starts with a 5-byte prefix)",
        ));
    }
    let compressed = match body[0] {
        0 => false,
        1 => true,
        f => return Err(Status::invalid(format!("unknown message flag {f}"))),
    };
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - 5 != len {
        return Err(Status::invalid(format!(
            "the message prefix says {len} bytes, the request carries {} (a unary call takes one \
             message)",
            body.len() - 5
        )));
    }
    Ok((compressed, body.slice(5..)))
}

/// `message` behind its 5-byte prefix, uncompressed.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn grpc_headers(meta: HeaderMap) -> HeaderMap {
    let mut h = meta;
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h
}

fn success(reply: Vec<u8>, meta: HeaderMap) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert(HeaderName::from_static("grpc-status"), HeaderValue::from(0));
    let body =
        Full::new(Bytes::from(frame(&reply))).with_trailers(async move { Some(Ok(trailers)) });
    let mut r = Response::new(Body::new(body));
    *r.headers_mut() = grpc_headers(meta);
    r
}

/// A failure as a trailers-only response: the status in the headers, no body.
fn failure(status: &Status, meta: HeaderMap) -> Response<Body> {
    let mut h = grpc_headers(meta);
    h.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(status.code as u32),
    );
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&status.message)) {
        h.insert(HeaderName::from_static("grpc-message"), v);
    }
    let mut r = Response::new(Body::empty());
    *r.headers_mut() = h;
    r
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`, as `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`percent_encode`] (invalid escapes kept as they are).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_framed_and_unframed() {
        let framed = Bytes::from(frame(b"hello"));
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(
            unframe(&framed).unwrap(),
            (false, Bytes::from_static(b"hello"))
        );
        // A prefix that does not match the bytes, a short body, an unknown flag.
        let mut long = framed.to_vec();
        long.push(0);
        assert_eq!(
            unframe(&Bytes::from(long)).unwrap_err().code,
            Code::InvalidArgument
        );
        assert!(unframe(&Bytes::from_static(&[0, 0])).is_err());
        assert!(unframe(&Bytes::from_static(&[7, 0, 0, 0, 0])).is_err());
    }

    #[test]
    fn messages_are_percent_encoded_both_ways() {
        let m = "model \"x\" is 100% ready — naïve\n";
        let e = percent_encode(m);
        assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)), "{e}");
        assert!(e.contains("100%25"));
        assert_eq!(percent_decode(&e), m);
    }

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        for (http, code) in [
            (200, Code::Ok),
            (400, Code::InvalidArgument),
            (401, Code::Unauthenticated),
            (404, Code::NotFound),
            (413, Code::ResourceExhausted),
            (422, Code::InvalidArgument),
            (429, Code::Unavailable),
            (503, Code::Unavailable),
            (500, Code::Internal),
        ] {
            assert_eq!(
                Code::of_http(StatusCode::from_u16(http).unwrap()),
                code,
                "{http}"
            );
            assert_eq!(Code::of_number(code as u32), code);
        }
    }
}
