//! Compressed bodies, as tritonclient's `request_compression_algorithm` and
//! `response_compression_algorithm` send and ask for them: request bodies in gzip or deflate
//! (zlib, as HTTP's `deflate` means) are inflated within the payload limit; answers are
//! compressed with the first of gzip and deflate the client accepts.

use std::io::{Read, Write};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use flate2::Compression;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

/// The body as sent, inflated when its Content-Encoding says it is compressed. More than
/// `limit` bytes inflated is 413, as a plain body that large would be.
pub fn decode_request(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let name = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let mut out = Vec::new();
    let read = match name.as_str() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!(
                    "Content-Encoding {other:?} is not supported: send gzip, deflate or identity"
                ),
            ))
        }
    };
    read.map_err(|e| ApiError::invalid(format!("the {name} request body does not inflate: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body inflates to more than the payload limit of {limit} bytes \
                 (--payload-limit)"
            ),
        ));
    }
    Ok(Bytes::from(out))
}

/// The coding to answer in: gzip, else deflate, whichever Accept-Encoding allows (q > 0).
pub fn accepted(headers: &HeaderMap) -> Option<Coding> {
    let mut gzip = false;
    let mut deflate = false;
    let mut any = false;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        for item in v.to_str().unwrap_or("").split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match name.as_str() {
                "gzip" | "x-gzip" => gzip = true,
                "deflate" => deflate = true,
                "*" => any = true,
                _ => {}
            }
        }
    }
    if gzip || any {
        Some(Coding::Gzip)
    } else if deflate {
        Some(Coding::Deflate)
    } else {
        None
    }
}

/// `body` compressed in `coding`, and the headers that say so.
pub fn encode(coding: Coding, body: &[u8], headers: &mut HeaderMap) -> std::io::Result<Vec<u8>> {
    let out = match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(body)?;
            e.finish()?
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
            e.write_all(body)?;
            e.finish()?
        }
    };
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.name()),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bodies_round_trip_in_both_codings_and_inflate_within_the_limit() {
        let body = br#"{"inputs": ["a quietly moving film"]}"#.repeat(20);
        for coding in [Coding::Gzip, Coding::Deflate] {
            let mut h = HeaderMap::new();
            let packed = encode(coding, &body, &mut h).unwrap();
            assert!(packed.len() < body.len());
            let back = decode_request(&h, Bytes::from(packed.clone()), body.len()).unwrap();
            assert_eq!(&back[..], &body[..]);
            let e = decode_request(&h, Bytes::from(packed), body.len() - 1).unwrap_err();
            assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        }
        let h = with(header::CONTENT_ENCODING, "gzip");
        let e = decode_request(&h, Bytes::from_static(b"not gzip"), 100).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let h = with(header::CONTENT_ENCODING, "br");
        let e = decode_request(&h, Bytes::from_static(b"x"), 100).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn the_accepted_coding_honours_q_zero() {
        let h = |v| with(header::ACCEPT_ENCODING, v);
        assert_eq!(accepted(&h("gzip, deflate")), Some(Coding::Gzip));
        assert_eq!(accepted(&h("deflate")), Some(Coding::Deflate));
        assert_eq!(
            accepted(&h("gzip;q=0, deflate;q=0.5")),
            Some(Coding::Deflate)
        );
        assert_eq!(accepted(&h("br")), None);
        assert_eq!(accepted(&HeaderMap::new()), None);
    }
}
