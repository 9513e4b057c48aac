//! A small unary gRPC client over one HTTP/2 connection (calls multiplex on it):
//! `bertkit bench-serve --endpoint grpc` and the tests use it.

use anyhow::{Context, Result};
use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

use super::{percent_decode, unframe, Code, Status, CONTENT_TYPE};

#[derive(Clone)]
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Client {
    /// Connects to `addr` (`host:port`, or a URL such as `http://host:port`).
    pub async fn connect(addr: &str) -> Result<Client> {
        let authority = addr
            .trim_start_matches("http://")
            .trim_start_matches("grpc://")
            .trim_end_matches('/')
            .to_string();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .with_context(|| format!("the HTTP/2 handshake with {authority}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { sender, authority })
    }

    /// Calls `method` (`/package.Service/Method`) with `request` and `metadata` headers: the
    /// reply or the call's failure, and the reply's metadata (its headers); `Err` only when
    /// the connection or the framing fails.
    pub async fn call<Q: Message, R: Message + Default>(
        &mut self,
        method: &str,
        request: &Q,
        metadata: &[(&str, &str)],
    ) -> Result<(std::result::Result<R, Status>, HeaderMap)> {
        let mut req = hyper::Request::post(format!("http://{}{method}", self.authority))
            .header("content-type", CONTENT_TYPE)
            .header("te", "trailers");
        for (k, v) in metadata {
            req = req.header(*k, *v);
        }
        let body = Full::new(Bytes::from(super::frame(&request.encode_to_vec())));
        self.sender.ready().await.context("the connection closed")?;
        let resp = self
            .sender
            .send_request(req.body(body)?)
            .await
            .context("sending the call")?;
        let (parts, body) = resp.into_parts();
        if !parts.status.is_success() {
            anyhow::bail!("the server answered HTTP {}", parts.status);
        }
        let collected = body.collect().await.context("reading the reply")?;
        // The status is in the trailers, or in the headers of a trailers-only reply.
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let get = |k: &str| {
            trailers
                .get(k)
                .or_else(|| parts.headers.get(k))
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let code = get("grpc-status")
            .context("the reply has no grpc-status")?
            .parse::<u32>()
            .context("grpc-status is not a number")?;
        if code != 0 {
            let message = percent_decode(&get("grpc-message").unwrap_or_default());
            return Ok((
                Err(Status::new(Code::of_number(code), message)),
                parts.headers,
            ));
        }
        let (_, message) = unframe(&collected.to_bytes()).map_err(|s| anyhow::anyhow!("{s}"))?;
        let reply = R::decode(message).context("the reply does not decode")?;
        Ok((Ok(reply), parts.headers))
    }
}
