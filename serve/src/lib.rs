//! bertkit-serve: `bertkit serve` puts plans (`bertkit export`) behind HTTP.
//!
//! The rooms, in the order a request passes them (text-embeddings-inference's split):
//! - [`grpc`]: KServe v2 over gRPC on its own port, each call passed to the HTTP routes;
//! - [`http`]: routes — KServe v2 ([`http::kserve`]) with Triton's statistics and model
//!   repository ([`http::repository`]), the JSON endpoints ([`http::api`]), OpenAI embeddings
//!   ([`http::openai`]) — and the layer every request passes: CORS ([`http::cors`]), the API
//!   key, compressed bodies ([`http::encoding`]), the in-flight limit (429), and the request's
//!   trace ([`http::trace`]: id, timing headers, access log, statistics);
//! - [`model`]: a served plan and its pipeline: tokenize, queue, post-process;
//! - [`tokenize`]: the tokenization worker pool;
//! - [`queue`]: the batcher (token budget, length buckets, queue delay) and the model worker;
//! - [`metrics`]: Prometheus text; [`otlp`]: a span per request to an OpenTelemetry collector;
//! - [`bench`]: `bertkit bench-serve`, the load generator, and the in-process peer it is
//!   compared with.

pub mod bench;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod model;
pub mod otlp;
pub mod queue;
pub mod tokenize;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::Notify;

pub use http::conn::ConnectionLimits;
pub use model::{ModelSettings, PlanArg};

use crate::http::AppState;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::tokenize::TokenizerPool;

/// Everything `bertkit serve` takes.
#[derive(Clone)]
pub struct ServeOptions {
    pub plans: Vec<PlanArg>,
    pub host: String,
    pub port: u16,
    /// KServe's gRPC API on this port (0: a free one); `None`: no gRPC.
    pub grpc_port: Option<u16>,
    pub model: ModelSettings,
    pub max_concurrent_requests: usize,
    pub max_client_batch_size: usize,
    pub payload_limit: usize,
    /// Longest time a request body may take to arrive (408 beyond).
    pub body_timeout: Duration,
    /// Open connections, header and keep-alive timeouts.
    pub connections: ConnectionLimits,
    pub api_key: Option<String>,
    pub tokenization_workers: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// Triton's explicit model control: load, reload and unload plans at run time
    /// (`POST /v2/repository/models/{name}/load|unload`); off by default.
    pub model_control: bool,
    /// Where a load of a plan the server was not started with looks: `DIR/NAME` or
    /// `DIR/NAME.plan`.
    pub model_repository: Option<std::path::PathBuf>,
    /// Origins browsers may call from (CORS); `*` for any. Empty: no CORS headers.
    pub cors_allow_origins: Vec<String>,
    /// An OTLP/HTTP collector (`http://HOST:4318`) that gets a span per request.
    pub otlp_endpoint: Option<String>,
}

/// Runs the server until SIGTERM/SIGINT (drained: `Ok`) or a plan fails to load (`Err`).
pub fn serve(options: ServeOptions) -> Result<()> {
    let rt = http_runtime()?;
    rt.block_on(async {
        let listeners = Listeners::bind(&options).await?;
        run(options, listeners, shutdown_signal()).await
    })
}

/// The runtime of the HTTP side (connections, routing, post-processing); its threads flush
/// subnormals (`bertkit_model::denormals`) whoever starts it.
pub fn http_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bertkit-http")
        .on_thread_start(bertkit_model::denormals::set_in_this_thread)
        .build()
        .context("starting the HTTP runtime")
}

/// A server on a runtime of its own in this process (the quickstart uses it), stopped the
/// way SIGTERM stops `bertkit serve`.
pub struct LocalServer {
    pub url: String,
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl LocalServer {
    /// Starts serving and waits until ready (at most a minute).
    pub fn start(options: ServeOptions) -> Result<LocalServer> {
        let rt = http_runtime()?;
        let listeners = rt.block_on(Listeners::bind(&options))?;
        let url = format!("http://{}", listeners.http.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(run(options, listeners, async move {
            let _ = stopped.await;
        }));
        let started = std::time::Instant::now();
        loop {
            let ready = bench::call(
                &url,
                "GET",
                "/v2/health/ready",
                None,
                Duration::from_secs(5),
            );
            if let Ok((200, _)) = ready {
                break;
            }
            if task.is_finished() || started.elapsed() > Duration::from_secs(60) {
                let (_, failure) = (stop.send(()), rt.block_on(task));
                failure.context("the server task")??;
                bail!("the server did not get ready within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(LocalServer {
            url,
            rt,
            stop,
            task,
        })
    }

    /// Stops accepting, drains, and returns how the server ended.
    pub fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.rt.block_on(self.task).context("the server task")?
    }
}

/// Binds the server's address (port 0: a free one).
pub async fn bind(host: &str, port: u16) -> Result<tokio::net::TcpListener> {
    let addr = format!("{host}:{port}");
    tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// The server's sockets: the HTTP API, and the gRPC API when asked for.
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    pub grpc: Option<tokio::net::TcpListener>,
}

impl Listeners {
    pub async fn bind(options: &ServeOptions) -> Result<Listeners> {
        let http = bind(&options.host, options.port).await?;
        let grpc = match options.grpc_port {
            Some(port) => Some(bind(&options.host, port).await.context("the gRPC port")?),
            None => None,
        };
        Ok(Listeners { http, grpc })
    }
}

/// Raises the open-file limit to its hard limit and caps the connections to what fits under
/// it (with room for the plans, logs and the overflow band), saying so when it has to.
fn fit_connections_to_fd_limit(wanted: usize) -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit write and read the struct given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return wanted;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        let files = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
        // Past the cap the overflow band is read too; keep 128 for everything else.
        let room = files.saturating_sub(128 + http::conn::MAX_OVERFLOW);
        if wanted > room {
            let fitted = room.max(1);
            eprintln!(
                "bertkit serve: --max-connections {wanted} does not fit the open-file limit \
                 ({files}); serving at most {fitted} connections"
            );
            return fitted;
        }
    }
    wanted
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The server: listens at once (live), loads and warms the plans in the background (then
/// ready), and on `stop` stops accepting, turns not-ready and drains for at most the
/// shutdown timeout.
pub async fn run(
    options: ServeOptions,
    listeners: Listeners,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if options.plans.is_empty() {
        bail!("no plan to serve: pass --plan DIR (a folder written by `bertkit export`)");
    }
    for (i, p) in options.plans.iter().enumerate() {
        if options.plans[..i].iter().any(|q| q.name == p.name) {
            bail!(
                "two plans are named {:?}: serve one under another name with --plan NAME=DIR",
                p.name
            );
        }
    }
    let local = listeners
        .http
        .local_addr()
        .context("the listening address")?;
    let mut options = options;
    options.connections.max_connections =
        fit_connections_to_fd_limit(options.connections.max_connections);
    println!("bertkit serve: listening on http://{local}");
    if let Some(g) = &listeners.grpc {
        let addr = g.local_addr().context("the gRPC address")?;
        println!("bertkit serve: gRPC on {addr}");
    }
    let metrics = Arc::new(Metrics::default());
    let pool = Arc::new(
        TokenizerPool::new(options.tokenization_workers).context("starting the tokenizers")?,
    );
    let otlp = match &options.otlp_endpoint {
        Some(e) => {
            let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "bertkit".into());
            Some(otlp::Exporter::start(e, &service)?)
        }
        None => None,
    };
    let state = Arc::new(AppState::new(
        options.clone(),
        Arc::clone(&metrics),
        Arc::clone(&pool),
        otlp,
    ));
    let app = http::router(Arc::clone(&state));
    let releaser = tokio::spawn(http::memory_releaser());

    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader = Arc::clone(&state);
    let plans = options.plans.clone();
    let settings = options.model.clone();
    tokio::task::spawn_blocking(move || {
        let mut models = Vec::new();
        for p in &plans {
            match Model::load(p, &settings, Arc::clone(&pool), Arc::clone(&metrics)) {
                Ok(m) => {
                    println!(
                        "bertkit serve: model {:?} ({}, {}) from {}",
                        m.name,
                        m.task().name(),
                        serde_json::to_value(m.meta().precision)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default(),
                        p.dir.display()
                    );
                    models.push(Arc::new(m));
                }
                Err(e) => {
                    let _ =
                        fail_tx.send(e.context(format!("loading the plan {}", p.dir.display())));
                    return;
                }
            }
        }
        loader.set_models(models);
        println!("bertkit serve: ready");
    });

    // Stop accepting on every listener at once.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let draining = Arc::new(Notify::new());
    let (st, fail, notify) = (
        Arc::clone(&state),
        Arc::clone(&failure),
        Arc::clone(&draining),
    );
    let shutdown = async move {
        let load_failed = async {
            match fail_rx.await {
                Ok(e) => e,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop => println!("bertkit serve: stopping: draining in-flight requests"),
            e = load_failed => {
                *fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        }
        st.start_draining();
        notify.notify_one();
        let _ = stop_tx.send(true);
    };
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let http_server = http::conn::serve_connections(
        listeners.http,
        http::conn::Protocol::Http,
        app.clone(),
        options.connections,
        Arc::clone(&state.metrics),
        stopped(),
    );
    let grpc_limits = grpc::Limits {
        payload_limit: options.payload_limit,
        body_timeout: options.body_timeout,
        metrics: Arc::clone(&state.metrics),
    };
    let grpc_server = async {
        if let Some(l) = listeners.grpc {
            http::conn::serve_connections(
                l,
                http::conn::Protocol::Grpc(grpc_limits),
                app,
                options.connections,
                Arc::clone(&state.metrics),
                stopped(),
            )
            .await;
        }
    };
    let server = async {
        tokio::join!(http_server, grpc_server, shutdown);
    };
    let timeout = options.shutdown_timeout;
    tokio::select! {
        _ = server => {}
        _ = async { draining.notified().await; tokio::time::sleep(timeout).await } => {
            eprintln!(
                "bertkit serve: requests were still in flight after the shutdown timeout ({} s); \
                 stopping anyway",
                timeout.as_secs_f64()
            );
        }
    }
    releaser.abort();
    if let Some(otlp) = &state.otlp {
        otlp.shutdown().await;
    }
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    println!("bertkit serve: stopped");
    Ok(())
}
