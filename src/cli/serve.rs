//! `bertkit serve` (plans behind HTTP) and `bertkit bench-serve` (load against a server, or
//! the plan runtime in-process on the same inputs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use bertkit_serve::bench::{self, LoadOptions};
use bertkit_serve::{ConnectionLimits, ModelSettings, PlanArg, ServeOptions};
use clap::{Args, Parser};

/// Triton's --model-control-mode (poll is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelControlMode {
    None,
    Explicit,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A plan folder from `bertkit export`, served under its folder name without the
    /// extension; `NAME=DIR` names it. Repeat for several plans.
    #[arg(
        env = "BERTKIT_PLAN",
        long = "plan",
        required = true,
        value_delimiter = ','
    )]
    pub plans: Vec<PlanArg>,
    /// The address to bind; 0.0.0.0 to accept connections from other machines.
    #[arg(env = "BERTKIT_HOST", long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start).
    #[arg(env = "BERTKIT_PORT", long, default_value_t = 8000)]
    pub port: u16,
    /// Also serve KServe v2 over gRPC (what `tritonclient.grpc` calls; Triton's is 8001) and
    /// the standard gRPC health check on this port; 0 picks a free one. Off when not given.
    #[arg(env = "BERTKIT_GRPC_PORT", long)]
    pub grpc_port: Option<u16>,
    /// Most tokens per batch, padding to the batch's length bucket counted.
    #[arg(env = "BERTKIT_MAX_BATCH_TOKENS", long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Most inputs per batch (default: the plan's max batch).
    #[arg(env = "BERTKIT_MAX_BATCH_SIZE", long)]
    pub max_batch_size: Option<usize>,
    /// How long the batcher waits for more inputs when a batch is not full (Triton's
    /// max_queue_delay_microseconds); 0 runs what is waiting at once.
    #[arg(env = "BERTKIT_MAX_QUEUE_DELAY_US", long, default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// Requests handled at once; more get 429 at once.
    #[arg(env = "BERTKIT_MAX_CONCURRENT_REQUESTS", long, default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Most inputs in one request (422 beyond).
    #[arg(env = "BERTKIT_MAX_CLIENT_BATCH_SIZE", long, default_value_t = 64)]
    pub max_client_batch_size: usize,
    /// Most tokens per input, special tokens included (default: the plan's max length);
    /// longer inputs get 422 unless --truncate.
    #[arg(env = "BERTKIT_MAX_INPUT_LENGTH", long)]
    pub max_input_length: Option<usize>,
    /// Cut inputs longer than --max-input-length instead of refusing them.
    #[arg(env = "BERTKIT_TRUNCATE", long)]
    pub truncate: bool,
    /// Largest request body in bytes (413 beyond; a larger Content-Length is refused before
    /// any of the body is read).
    #[arg(env = "BERTKIT_PAYLOAD_LIMIT", long, default_value_t = 2_000_000)]
    pub payload_limit: usize,
    /// Open client connections served; past this a small overflow band answers health checks
    /// and 503 to everything else, and further connections get 503 at once.
    #[arg(env = "BERTKIT_MAX_CONNECTIONS", long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Longest wait for a request's complete headers, from the connection's start or from the
    /// request's first byte; slower clients are disconnected.
    #[arg(env = "BERTKIT_HEADER_TIMEOUT_S", long, default_value_t = 10.0)]
    pub header_timeout_s: f64,
    /// Longest wait for a request's whole body (408 beyond). The body is read before the
    /// request is admitted, so a slow body holds no --max-concurrent-requests slot.
    #[arg(env = "BERTKIT_BODY_TIMEOUT_S", long, default_value_t = 30.0)]
    pub body_timeout_s: f64,
    /// How long a kept-alive connection may stay idle between requests.
    #[arg(env = "BERTKIT_KEEP_ALIVE_TIMEOUT_S", long, default_value_t = 60.0)]
    pub keep_alive_timeout_s: f64,
    /// Require `Authorization: Bearer KEY` (except on the health endpoints).
    #[arg(long, env = "BERTKIT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Threads of each plan's runtime (default: the plan's tuned value).
    #[arg(env = "BERTKIT_THREADS", long)]
    pub threads: Option<usize>,
    /// Threads that tokenize requests (default: the number of CPUs).
    #[arg(env = "BERTKIT_TOKENIZATION_WORKERS", long)]
    pub tokenization_workers: Option<usize>,
    /// On SIGTERM, how long to wait for in-flight requests.
    #[arg(env = "BERTKIT_SHUTDOWN_TIMEOUT_S", long, default_value_t = 30.0)]
    pub shutdown_timeout_s: f64,
    /// `explicit` allows loading, reloading and unloading plans at run time (Triton's
    /// `POST /v2/repository/models/NAME/load|unload`); `none` serves the --plan list as started.
    #[arg(env = "BERTKIT_MODEL_CONTROL_MODE", long, value_enum, default_value_t = ModelControlMode::None)]
    pub model_control_mode: ModelControlMode,
    /// A folder of plan folders (`NAME` or `NAME.plan`) that explicit loads may name, beside
    /// the --plan ones; listed by `POST /v2/repository/index`.
    #[arg(env = "BERTKIT_MODEL_REPOSITORY", long)]
    pub model_repository: Option<PathBuf>,
    /// Answer browsers from this origin (CORS: preflights and Access-Control-Allow-Origin);
    /// repeat, or comma-separate, for several; `*` for any. Off when not given.
    #[arg(env = "BERTKIT_CORS_ALLOW_ORIGIN", long, value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,
    /// Log lines (the access log included) as JSON objects, one per line.
    #[arg(env = "BERTKIT_JSON_LOGS", long)]
    pub json_logs: bool,
    /// Send a span per request (W3C `traceparent` joins the caller's trace) to this
    /// OpenTelemetry collector's OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318 (plain HTTP;
    /// `service.name` from OTEL_SERVICE_NAME, default bertkit).
    #[arg(env = "BERTKIT_OTLP_ENDPOINT", long)]
    pub otlp_endpoint: Option<String>,
}

/// The quickstart's last stage: serves `plan` on a free local port in this process, sends a
/// few requests (/predict, KServe v2 infer, /metrics), prints the answers, and stops it the way
/// SIGTERM does (stop accepting, drain).
pub fn demo(plan: &std::path::Path, texts: &[&str]) -> Result<()> {
    // `bertkit serve`'s defaults, then what the demo changes.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let mut a = Flags::try_parse_from(["serve", "--plan", "quickstart"])?.serve;
    a.plans = vec![PlanArg {
        name: "quickstart".into(),
        dir: plan.to_path_buf(),
    }];
    a.port = 0;
    a.truncate = true;
    a.max_concurrent_requests = 64;
    a.payload_limit = 1 << 20;
    a.api_key = None;
    a.tokenization_workers = Some(1);
    a.shutdown_timeout_s = 10.0;
    let server = bertkit_serve::LocalServer::start(a.options()?)?;
    let url = server.url.clone();
    let timeout = Duration::from_secs(30);
    let (status, answer) = bench::call(
        &url,
        "POST",
        "/predict",
        Some(&serde_json::json!({ "inputs": texts })),
        timeout,
    )?;
    println!("    POST {url}/predict -> {status}");
    for (text, a) in texts.iter().zip(answer.as_array().into_iter().flatten()) {
        println!(
            "      {text:?} -> {} (score {:.3})",
            a["label"].as_str().unwrap_or("?"),
            a["score"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let infer = serde_json::json!({"inputs": [{"name": "TEXT", "datatype": "BYTES",
        "shape": [1], "data": [texts[0]]}]});
    let (status, answer) = bench::call(
        &url,
        "POST",
        "/v2/models/quickstart/infer",
        Some(&infer),
        timeout,
    )?;
    println!(
        "    POST {url}/v2/models/quickstart/infer (KServe v2) -> {status}: probabilities {}",
        answer["outputs"][1]["data"]
    );
    let (status, _) = bench::call(&url, "GET", "/metrics", None, timeout)?;
    println!("    GET {url}/metrics -> {status} (Prometheus text)");
    server.stop()
}

impl ServeArgs {
    fn options(&self) -> Result<ServeOptions> {
        if !self.shutdown_timeout_s.is_finite() || self.shutdown_timeout_s < 0.0 {
            bail!("--shutdown-timeout-s must be a non-negative number of seconds");
        }
        let seconds = |flag: &str, v: f64| -> Result<Duration> {
            if !v.is_finite() || v <= 0.0 || v > 1e6 {
                bail!("{flag} must be a positive number of seconds, got {v}");
            }
            Ok(Duration::from_secs_f64(v))
        };
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(ServeOptions {
            plans: self.plans.clone(),
            host: self.host.clone(),
            port: self.port,
            grpc_port: self.grpc_port,
            model: ModelSettings {
                threads: self.threads,
                max_batch_tokens: self.max_batch_tokens,
                max_batch_size: self.max_batch_size,
                max_queue_delay: Duration::from_micros(self.max_queue_delay_us),
                max_input_length: self.max_input_length,
                truncate: self.truncate,
            },
            max_concurrent_requests: self.max_concurrent_requests,
            max_client_batch_size: self.max_client_batch_size,
            payload_limit: self.payload_limit,
            body_timeout: seconds("--body-timeout-s", self.body_timeout_s)?,
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                header_timeout: seconds("--header-timeout-s", self.header_timeout_s)?,
                keep_alive_timeout: seconds("--keep-alive-timeout-s", self.keep_alive_timeout_s)?,
            },
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            tokenization_workers: self.tokenization_workers.unwrap_or(cpus),
            shutdown_timeout: Duration::from_secs_f64(self.shutdown_timeout_s),
            model_control: self.model_control_mode == ModelControlMode::Explicit,
            model_repository: self.model_repository.clone(),
            cors_allow_origins: self.cors_allow_origin.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
        })
    }
}

pub fn serve(a: &ServeArgs) -> Result<()> {
    bertkit_serve::serve(a.options()?)
}

#[derive(Debug, Clone, Args)]
pub struct BenchServeArgs {
    /// The server (e.g. http://127.0.0.1:8000).
    #[arg(long, required_unless_present = "in_process")]
    pub url: Option<String>,
    /// Instead of a server: run the plan runtime in this process on the same inputs
    /// (batches of the plan's max batch) — the peer served throughput is compared with.
    #[arg(long, requires = "plan")]
    pub in_process: bool,
    /// The plan for --in-process.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Clients sending at once (each waits for its answer before the next request).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Requests in all (inputs for --in-process).
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Inputs: JSONL with "text" (and "text_pair"), or one text per line.
    #[arg(long)]
    pub input: PathBuf,
    /// predict, embed, ner, infer (KServe v2), v1/embeddings (default: by the model's task), or
    /// grpc (KServe v2 ModelInfer over gRPC: --url is the gRPC address; needs --model).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The model to call (default: the first one the server lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Inputs per request (for --in-process: per batch, default the plan's max batch).
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long, env = "BERTKIT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Runtime threads for --in-process (default: the plan's tuned value).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn bench_serve(a: &BenchServeArgs) -> Result<()> {
    let inputs = bench::read_inputs(&a.input)?;
    if a.in_process {
        let plan = a.plan.as_deref().unwrap_or(std::path::Path::new("."));
        let r = bench::run_in_process(plan, &inputs, a.requests, a.batch, a.threads)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "in-process {}: {} inputs in batches of {} on {} threads: {:.3} s, {:.1} inputs/s",
                r.plan, r.inputs, r.batch, r.threads, r.seconds, r.inputs_per_s
            );
        }
        return Ok(());
    }
    if !a.timeout_s.is_finite() || a.timeout_s <= 0.0 {
        bail!("--timeout-s must be a positive number of seconds");
    }
    let r = bench::run_load(
        &LoadOptions {
            url: a.url.clone().unwrap_or_default(),
            endpoint: a.endpoint.clone(),
            model: a.model.clone(),
            concurrency: a.concurrency.max(1),
            requests: a.requests,
            batch: a.batch.unwrap_or(1),
            api_key: a.api_key.clone(),
            timeout: Duration::from_secs_f64(a.timeout_s),
        },
        &inputs,
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}{} at concurrency {}: {} requests ({} inputs each), {} ok, {} errors {:?}",
            r.url,
            r.endpoint,
            r.concurrency,
            r.requests,
            r.inputs_per_request,
            r.ok,
            r.errors,
            r.errors_by_status
        );
        println!(
            "{:.3} s: {:.1} requests/s, {:.1} inputs/s; latency p50 {:.2} ms, p90 {:.2} ms, \
             p99 {:.2} ms, max {:.2} ms",
            r.seconds, r.requests_per_s, r.inputs_per_s, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
        );
    }
    if r.errors > 0 {
        bail!("{} of {} requests failed", r.errors, r.requests);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Args;

    /// TEI's rule, for Helm values without args: every `bertkit serve` flag reads
    /// `BERTKIT_<FLAG>` as well.
    #[test]
    fn every_serve_flag_has_its_environment_variable() {
        let command = super::ServeArgs::augment_args(clap::Command::new("serve"));
        let mut flags = 0;
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let want = format!("BERTKIT_{}", long.to_uppercase().replace('-', "_"));
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(env, Some(want.as_str()), "--{long}");
            flags += 1;
        }
        assert!(flags >= 25, "{flags} flags");
    }
}
