//! Connections: the accept loop and what one connection may hold.
//!
//! Each connection is served by hyper — HTTP/1.1 on the HTTP port, HTTP/2 on the gRPC port
//! ([`Protocol`]) — under a watchdog that closes it when it spends too long in one phase:
//! - **headers**: from the connection's start, or from the first byte of a request on a kept-alive
//!   connection, until the request's head is complete (`--header-timeout-s`); a client sending
//!   partial headers (Slowloris) is cut off here;
//! - **idle**: between the end of a response and the first byte of the next request
//!   (`--keep-alive-timeout-s`);
//! - the body has its own deadline, enforced where it is read (`super::guard`).
//!
//! On HTTP/2 the header phase is the connection's start only (its frames, pings included, are
//! not request heads), and an idle connection is closed with GOAWAY, which gRPC clients answer
//! by reconnecting.
//!
//! hyper's own `header_read_timeout` is not used: its clock starts whenever hyper waits for a
//! request head, so on a kept-alive connection it would also cut idle time at the header
//! timeout, and the two could not be set apart. (axum's `serve` installs no timer, so there
//! it is inert.)
//!
//! Open connections are capped (`--max-connections`). Past the cap comes a small overflow band
//! whose connections are answered on one request without keep-alive: health checks normally,
//! everything else 503. Past the band a connection gets a 503 written at once and is closed, so
//! a flood of connections costs file descriptors only briefly.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::grpc;
use crate::metrics::Metrics;

/// What a listener speaks.
#[derive(Clone)]
pub enum Protocol {
    /// The HTTP API (HTTP/1.1).
    Http,
    /// KServe's gRPC API ([`grpc`]), HTTP/2 without TLS.
    Grpc(grpc::Limits),
}

/// What one connection may hold, and how many may be open.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served normally; more are answered 503 (health checks excepted).
    pub max_connections: usize,
    /// Longest wait for a request's complete head.
    pub header_timeout: Duration,
    /// Longest wait between requests on a kept-alive connection.
    pub keep_alive_timeout: Duration,
}

impl ConnectionLimits {
    /// Connections past the cap that are still read (one request each), so that health checks
    /// get through and the others get a proper 503: an eighth of the cap, 8 to
    /// [`MAX_OVERFLOW`].
    pub fn overflow(&self) -> usize {
        (self.max_connections / 8).clamp(8, MAX_OVERFLOW)
    }
}

/// The most connections the overflow band past the cap holds.
pub const MAX_OVERFLOW: usize = 256;

/// Marks a request that came on a connection past the cap (health only).
#[derive(Debug, Clone, Copy)]
pub struct OverCapacity;

/// The 503 written to a connection past the overflow band, without reading it.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 1\r\ncontent-length: 72\r\n\r\n\
{\"error\":\"too many open connections (--max-connections); retry later\"}\n";

/// The connection phases the watchdog times.
struct Activity {
    started: Instant,
    /// Bytes after an idle phase start a request head (HTTP/1; not HTTP/2, whose pings and
    /// window updates arrive between requests).
    heads_after_idle: bool,
    /// Requests being handled (their responses not yet fully written).
    busy: AtomicUsize,
    /// A request head is being read (set at connection start and by the first byte after idle).
    head: AtomicBool,
    /// When the current phase began, in ms since `started`.
    since_ms: AtomicU64,
}

impl Activity {
    fn new(heads_after_idle: bool) -> Activity {
        Activity {
            started: Instant::now(),
            heads_after_idle,
            busy: AtomicUsize::new(0),
            head: AtomicBool::new(true),
            since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Bytes arrived: if the connection was idle, a request head has started.
    fn bytes_read(&self) {
        if self.heads_after_idle
            && self.busy.load(Ordering::Acquire) == 0
            && !self.head.load(Ordering::Acquire)
        {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.head.store(true, Ordering::Release);
        }
    }

    /// A request's head is complete and its handling begins.
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.head.store(false, Ordering::Release);
        Busy(Arc::clone(self))
    }

    /// The phase that is timed now and when it times out: `None` while a request is handled.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Phase)> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.started + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        Some(if self.head.load(Ordering::Acquire) {
            (since + limits.header_timeout, Phase::Headers)
        } else {
            (since + limits.keep_alive_timeout, Phase::Idle)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    Idle,
}

/// Held while a request is handled; dropped when its response body has been written (or the
/// request was abandoned), which starts the idle phase.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.since_ms.store(a.now_ms(), Ordering::Release);
        a.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as busy until hyper has written it all.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, reporting arriving bytes to the watchdog.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts open connections; the last one closing wakes the drain.
struct Open {
    count: AtomicUsize,
    all_closed: Notify,
}

struct OpenGuard {
    open: Arc<Open>,
    metrics: Arc<Metrics>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.metrics.connection_closed();
        if self.open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.all_closed.notify_waiters();
        }
    }
}

/// Accepts and serves connections until `stop`; then stops accepting, lets each connection
/// finish its current request (kept-alive connections close after it), and returns when all
/// are closed. The caller bounds that wait.
pub async fn serve_connections(
    listener: TcpListener,
    protocol: Protocol,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    let open = Arc::new(Open {
        count: AtomicUsize::new(0),
        all_closed: Notify::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let hard_cap = limits.max_connections + limits.overflow();
    let mut last_accept_error: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors (or a transient error): say so at most once a
                    // second, and give connections time to close instead of spinning.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!("accepting a connection failed: {e}");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let n = open.count.fetch_add(1, Ordering::AcqRel) + 1;
        metrics.connection_opened();
        let guard = OpenGuard {
            open: Arc::clone(&open),
            metrics: Arc::clone(&metrics),
        };
        if n > hard_cap {
            metrics.connection_refused();
            if let Protocol::Grpc(_) = protocol {
                // An HTTP/2 client cannot read an HTTP/1 answer: closed, it sees UNAVAILABLE.
                drop((stream, guard));
                continue;
            }
            // A fresh socket's send buffer is empty: this write does not block. It goes through
            // the std socket because tokio's `try_write` answers WouldBlock until the reactor
            // has seen the socket's first writable event, which under load it may not have yet
            // (the client then got a bare close instead of the 503).
            if let Ok(mut s) = stream.into_std() {
                let _ = std::io::Write::write(&mut s, REFUSED);
            }
            drop(guard);
            continue;
        }
        let over = n > limits.max_connections;
        tokio::spawn(connection(
            stream,
            protocol.clone(),
            app.clone(),
            limits,
            over,
            stop_rx.clone(),
            guard,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    loop {
        let closed = open.all_closed.notified();
        if open.count.load(Ordering::Acquire) == 0 {
            break;
        }
        closed.await;
    }
}

/// Serves one connection under the watchdog.
async fn connection(
    stream: TcpStream,
    protocol: Protocol,
    app: Router,
    mut limits: ConnectionLimits,
    over_capacity: bool,
    stop: watch::Receiver<bool>,
    guard: OpenGuard,
) {
    let metrics = Arc::clone(&guard.metrics);
    let _ = stream.set_nodelay(true);
    if over_capacity {
        // One request, answered quickly, then closed.
        limits.header_timeout = limits.header_timeout.min(Duration::from_secs(2));
    }
    let activity = Arc::new(Activity::new(matches!(protocol, Protocol::Http)));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let track = Arc::clone(&activity);
    let speaks = protocol.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let busy = track.begin();
        if over_capacity {
            req.extensions_mut().insert(OverCapacity);
        }
        let app = app.clone();
        let protocol = speaks.clone();
        async move {
            let response = match protocol {
                Protocol::Http => match app.oneshot(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
                Protocol::Grpc(limits) => grpc::handle(app, limits, req).await,
            };
            Ok::<_, Infallible>(response.map(|inner| Tracked { inner, _busy: busy }))
        }
    });
    match protocol {
        Protocol::Http => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.keep_alive(!over_capacity);
            let conn = builder.serve_connection(io, service);
            watch(conn, &activity, &limits, stop, &metrics).await;
        }
        Protocol::Grpc(_) => {
            let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(io, service);
            watch(conn, &activity, &limits, stop, &metrics).await;
        }
    }
    drop(guard);
}

/// Serves `conn` until it ends, closing it when a phase outlasts its limit, and gracefully
/// (after its current requests) when the server stops.
async fn watch<C: GracefulConnection<Error = hyper::Error>>(
    conn: C,
    activity: &Activity,
    limits: &ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    metrics: &Metrics,
) {
    tokio::pin!(conn);
    let mut shutting_down = *stop.borrow();
    if shutting_down {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = activity.deadline(limits);
        // While a request is handled, look again after a header timeout (its end restarts
        // the clock).
        let wake = deadline.map_or_else(
            || tokio::time::Instant::now() + limits.header_timeout,
            |(at, _)| at.into(),
        );
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection closed: {e}");
                }
                break;
            }
            _ = tokio::time::sleep_until(wake) => {
                let Some((at, phase)) = activity.deadline(limits) else { continue };
                if Instant::now() < at {
                    continue;
                }
                match phase {
                    Phase::Headers => {
                        // Partial headers for too long: drop the connection (closes it).
                        metrics.connection_timeout("headers");
                        break;
                    }
                    Phase::Idle => {
                        metrics.connection_timeout("idle");
                        if shutting_down {
                            break;
                        }
                        // Idle between requests: hyper closes it at once.
                        conn.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                }
            }
            changed = stop.changed(), if !shutting_down => {
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
                shutting_down = true;
            }
        }
    }
}
