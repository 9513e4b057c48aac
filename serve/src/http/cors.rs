//! CORS for the origins given with `--cors-allow-origin`: preflights answered before the API
//! key is asked for (browsers send none on them), and the allow / expose headers on every
//! answer to an allowed origin.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// Response headers a page may read: the request id and the timing headers.
const EXPOSED: &str = "x-request-id, x-compute-type, x-compute-time, x-total-time, \
    x-tokenization-time, x-queue-time, x-inference-time, x-compute-characters, \
    x-compute-tokens, inference-header-content-length";

/// Request headers a page may send when its preflight names none.
const ALLOWED: &str = "authorization, content-type, x-request-id, \
    inference-header-content-length, content-encoding";

/// The Access-Control-Allow-Origin value for a request from `headers`' Origin: `*` when any
/// origin is allowed, the origin itself when it is listed, else none.
pub fn allowed_origin(allow: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    if allow.is_empty() {
        return None;
    }
    if allow.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    allow
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
        .then(|| origin.clone())
}

/// The answer to a CORS preflight from an allowed origin (`None`: not a preflight, or not
/// allowed, and the request goes on as any other).
pub fn preflight(allow: &[String], method: &Method, headers: &HeaderMap) -> Option<Response> {
    if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let origin = allowed_origin(allow, headers)?;
    let requested = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(ALLOWED));
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    Some(r)
}

/// Adds the allow and expose headers to an answer for an allowed origin (from
/// [`allowed_origin`]).
pub fn decorate(origin: Option<HeaderValue>, response: &mut Response) {
    if let Some(origin) = origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h
    }

    #[test]
    fn only_listed_origins_are_allowed() {
        let list = vec!["https://app.example.com".to_string()];
        assert_eq!(
            allowed_origin(&list, &from("https://app.example.com")).unwrap(),
            "https://app.example.com"
        );
        assert!(allowed_origin(&list, &from("https://evil.example.com")).is_none());
        assert!(allowed_origin(&list, &HeaderMap::new()).is_none());
        assert!(allowed_origin(&[], &from("https://app.example.com")).is_none());
        assert_eq!(
            allowed_origin(&["*".into()], &from("https://x.y")).unwrap(),
            "*"
        );
    }
}
