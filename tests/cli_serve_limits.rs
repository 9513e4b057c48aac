//! `bertkit serve` against hostile clients, over real sockets on loopback: stalled bodies and
//! partial headers (Slowloris), connection floods, declared giant bodies, long-input bursts
//! (memory given back), answers independent of what shares their batch, and the request checks
//! (content type, the API key before routing, integer ranges, duplicate keys). Every loop here
//! is bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::serve::{get, post, request, Response, Server};
use common::{bertkit, repo, run_ok};
use serde_json::{json, Value};

const CLS: &str = "tests/fixtures/hf-reference/tiny_heads/sequence_classification";

struct Plans {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// The tiny classifier exported at fp32 and int8, once for all tests.
fn plans() -> &'static Plans {
    static PLANS: OnceLock<Plans> = OnceLock::new();
    PLANS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for precision in ["fp32", "int8"] {
            run_ok(bertkit().args([
                "export",
                "--model",
                repo().join(CLS).to_str().unwrap(),
                "--out",
                root.join(format!("{precision}.plan")).to_str().unwrap(),
                "--precision",
                precision,
                "--seq-buckets",
                "16,32,64",
                "--max-length",
                "64",
                "--no-tune",
            ]));
        }
        Plans { _dir: dir, root }
    })
}

fn start(precision: &str, extra: &[&str]) -> Server {
    let plan: &Path = &plans().root.join(format!("{precision}.plan"));
    let mut args = vec!["--plan".to_string(), format!("cls={}", plan.display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(&args)
}

/// A connection that sent `head` and then stalls.
fn stalled(addr: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Whether the server closed `s` within `limit` (a read returns 0 or fails), reading and
/// returning whatever it sent before.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(got),
        }
    }
    None
}

fn metric(addr: &str, name: &str) -> f64 {
    let text = get(addr, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn predict_ok(addr: &str) -> Response {
    let r = post(
        addr,
        "/predict",
        &json!({"inputs": "a quietly moving film"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

#[test]
fn stalled_bodies_and_partial_headers_are_cut_off_and_hold_no_slot() {
    let server = start(
        "fp32",
        &[
            "--max-concurrent-requests",
            "4",
            "--header-timeout-s",
            "1",
            "--body-timeout-s",
            "2",
            "--keep-alive-timeout-s",
            "1",
            "--payload-limit",
            "100000",
        ],
    );
    let a = server.addr.clone();

    // Three times --max-concurrent-requests stalled chunked bodies: none holds a slot, so a
    // new client is answered at once.
    let head = "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n5\r\n{\"inp\r\n";
    let mut bodies: Vec<TcpStream> = (0..12).map(|_| stalled(&a, head)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    predict_ok(&a);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    // Each stalled body gets 408 when its body timeout runs out, and its connection closes.
    for s in &mut bodies {
        let said =
            closed_within(s, Duration::from_secs(6)).expect("a stalled body kept its connection");
        let said = String::from_utf8_lossy(&said);
        assert!(said.starts_with("HTTP/1.1 408"), "{said}");
        assert!(said.contains("--body-timeout-s"), "{said}");
    }

    // Partial headers, one byte every 200 ms: closed after the header timeout (1 s).
    let mut slow = stalled(&a, "POST /embed HTTP/1.1\r\nHost: x\r\n");
    let t = Instant::now();
    let mut cut = false;
    while t.elapsed() < Duration::from_secs(5) {
        if slow.write_all(b"X").is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !cut {
        cut = closed_within(&mut slow, Duration::from_millis(500)).is_some();
    }
    assert!(cut, "partial headers were not cut off");
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );

    // A connection that never sends anything, and one idle after a request: closed.
    let mut silent = TcpStream::connect(&a).unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(4)).is_some());
    let mut kept = stalled(&a, "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    let said = closed_within(&mut kept, Duration::from_secs(4)).expect("an idle connection stayed");
    assert!(String::from_utf8_lossy(&said).starts_with("HTTP/1.1 200"));

    // A declared body over the payload limit: 413 without waiting for a byte of it.
    let mut giant = stalled(
        &a,
        "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000000\r\n\r\n",
    );
    let t = Instant::now();
    let said =
        closed_within(&mut giant, Duration::from_secs(3)).expect("no answer to a giant body");
    let said = String::from_utf8_lossy(&said);
    assert!(said.starts_with("HTTP/1.1 413"), "{said}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    assert!(metric(&a, "bertkit_timeouts_total{phase=\"body\"}") >= 12.0);
    assert!(metric(&a, "bertkit_timeouts_total{phase=\"headers\"}") >= 2.0);
    assert!(metric(&a, "bertkit_timeouts_total{phase=\"idle\"}") >= 1.0);
    predict_ok(&a);
}

#[test]
fn a_connection_flood_gets_503_while_health_answers() {
    // 16 connections served; the overflow band past them is 8 (answered once: health, or 503).
    let server = start(
        "fp32",
        &["--max-connections", "16", "--header-timeout-s", "30"],
    );
    let a = server.addr.clone();
    let partial = "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n";
    let mut held: Vec<TcpStream> = (0..16).map(|_| stalled(&a, partial)).collect();
    std::thread::sleep(Duration::from_millis(500));

    // Past the cap: health answers, everything else is 503.
    let health = get(&a, "/v2/health/ready");
    assert_eq!(health.status, 200, "{}", health.text());
    let refused = post(&a, "/predict", &json!({"inputs": "x"}));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("--max-connections"),
        "{}",
        refused.text()
    );

    // Fill the overflow band (8); past it a connection gets a 503 written at once. The health
    // and /predict connections above may still be closing on the server's side (their client
    // saw EOF before the server's task ended), so connections are opened until one is refused,
    // each given 100 ms (a band connection waits up to 2 s for its head, then closes silently).
    let mut refused = None;
    for i in 0..12 {
        let mut c = stalled(&a, partial);
        match closed_within(&mut c, Duration::from_millis(100)) {
            Some(said) => {
                refused = Some((i, said));
                break;
            }
            None => held.push(c),
        }
    }
    let (i, said) = refused.expect("12 connections past the band and none refused");
    assert!(
        String::from_utf8_lossy(&said).starts_with("HTTP/1.1 503"),
        "connection {i} past the cap closed having said {:?}",
        String::from_utf8_lossy(&said)
    );
    // 8 fill the band; 6 when both earlier connections were still open.
    assert!((6..=10).contains(&i), "refused after {i} band connections");

    // The flood goes away: served normally again, and the refusals were counted.
    drop(held);
    let t = Instant::now();
    loop {
        let r = post(&a, "/predict", &json!({"inputs": "a quietly moving film"}));
        if r.status == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&a, "bertkit_connections_refused_total") >= 2.0);
}

#[test]
fn content_type_auth_before_routing_integer_ranges_and_duplicate_keys() {
    let server = start("fp32", &["--api-key", "k3y"]);
    let a = server.addr.clone();
    let key = ("Authorization", "Bearer k3y");
    let json_ct = ("Content-Type", "application/json");
    let body = json!({"inputs": "a quietly moving film"}).to_string();

    // Unknown paths say nothing without the key.
    assert_eq!(get(&a, "/no/such/path").status, 401);
    assert_eq!(get(&a, "/v2/health/nope").status, 401);
    assert_eq!(request(&a, "GET", "/no/such/path", &[key], b"").status, 404);
    assert_eq!(get(&a, "/v2/health/live").status, 200);

    // What a web page can POST without a CORS preflight (text/plain, a form, an untyped body
    // from a browser, which names its Origin) is refused.
    let origin = ("Origin", "https://elsewhere.example");
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut h = vec![key, origin];
        if let Some(ct) = ct {
            h.push(("Content-Type", ct));
        }
        let r = request(&a, "POST", "/predict", &h, body.as_bytes());
        assert_eq!(r.status, 415, "{ct:?}: {}", r.text());
        if ct.is_some() {
            let r = request(
                &a,
                "POST",
                "/predict",
                &h[..1].iter().chain(&h[2..]).copied().collect::<Vec<_>>(),
                body.as_bytes(),
            );
            assert_eq!(r.status, 415, "{ct:?} without Origin: {}", r.text());
        }
    }
    // An untyped body from a client that is not a browser (tritonclient sends JSON so).
    let r = request(&a, "POST", "/predict", &[key], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        &a,
        "POST",
        "/predict",
        &[key, ("Content-Type", "application/json; charset=utf-8")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Integer tensors within their datatype's range only.
    let ids = |datatype: &str, v: i64| {
        json!({"inputs": [{"name": "input_ids", "datatype": datatype, "shape": [1, 3],
            "data": [2, v, 3]}]})
        .to_string()
    };
    let infer = |b: String| {
        request(
            &a,
            "POST",
            "/v2/models/cls/infer",
            &[key, json_ct],
            b.as_bytes(),
        )
    };
    for (datatype, bad) in [
        ("INT8", 300),
        ("INT8", -129),
        ("UINT8", 256),
        ("UINT8", -1),
        ("INT16", 40000),
    ] {
        let r = infer(ids(datatype, bad));
        assert_eq!(r.status, 400, "{datatype} {bad}: {}", r.text());
        assert!(r.text().contains("out of range"), "{}", r.text());
    }
    let r = infer(ids("INT8", 7));
    assert_eq!(r.status, 200, "{}", r.text());

    // Duplicate keys: refused, wherever they are.
    for dup in [
        r#"{"inputs": "a", "inputs": "b"}"#,
        r#"{"inputs": ["a"], "truncate": true, "truncate": false}"#,
    ] {
        let r = request(&a, "POST", "/predict", &[key, json_ct], dup.as_bytes());
        assert_eq!(r.status, 400, "{dup}: {}", r.text());
        assert!(r.text().contains("duplicate key"), "{}", r.text());
    }
    let r = infer(
        r#"{"inputs": [{"name": "TEXT", "name": "TEXT_PAIR", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}"#
            .to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("duplicate key"), "{}", r.text());
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// The longest prefix of `s` of at most `n` bytes.
fn prefix(s: &str, n: usize) -> &str {
    let mut n = n.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// The bound docs/DEPLOY.md states for RSS after a burst, over the idle RSS.
const RSS_GROWTH_BOUND_MIB: f64 = 64.0;

#[test]
fn memory_after_a_long_input_burst_stays_within_its_bound() {
    let server = start(
        "int8",
        &[
            "--tokenization-workers",
            "2",
            "--max-concurrent-requests",
            "64",
        ],
    );
    let a = server.addr.clone();
    let pid = server.child.id();
    for _ in 0..50 {
        predict_ok(&a);
    }
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_mib(pid);

    // 10,000 requests from 8 clients: one in 25 carries 1.9 MB of text (truncated, refused as
    // too long, or as a pair of two 0.9 MB texts, which is tokenized whole), the rest are short.
    let words: String = (0..400_000)
        .map(|i| ["film ", "plot ", "naïve ", "x ", "🎬 "][i % 5])
        .collect();
    let long = std::sync::Arc::new(prefix(&words, 1_900_000).to_string());
    let handles: Vec<_> = (0..8)
        .map(|c| {
            let (a, long) = (a.clone(), std::sync::Arc::clone(&long));
            std::thread::spawn(move || {
                let mut wrong = Vec::new();
                for i in 0..1250 {
                    let n = c * 1250 + i;
                    let (body, want) = if n % 25 != 7 {
                        (
                            json!({"inputs": format!("review number {n} was fine")}),
                            200,
                        )
                    } else {
                        match (n / 25) % 5 {
                            0 => (
                                json!({"inputs": [[prefix(&long, 900_000), prefix(&long, 850_000)]],
                                    "truncate": true}),
                                200,
                            ),
                            1 | 2 => (json!({"inputs": long.as_str(), "truncate": true}), 200),
                            _ => (json!({"inputs": long.as_str()}), 422),
                        }
                    };
                    let r = post(&a, "/predict", &body);
                    if r.status != want {
                        wrong.push((n, r.status, r.text()));
                    }
                }
                wrong
            })
        })
        .collect();
    for h in handles {
        let wrong = h.join().unwrap();
        assert!(wrong.is_empty(), "{:?}", &wrong[..wrong.len().min(3)]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_mib(pid);
    eprintln!("RSS idle {idle:.1} MiB, after 10,000 requests {after:.1} MiB");
    assert!(
        after <= idle + RSS_GROWTH_BOUND_MIB,
        "RSS grew from {idle:.1} to {after:.1} MiB"
    );
}

/// The embedding values of one classification answer (its logits, exactly as sent).
fn logits(v: &Value) -> Vec<u32> {
    v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x.as_f64().unwrap() as f32).to_bits())
        .collect()
}

/// KServe infer of `texts` on the model "cls": the answer.
fn infer_texts(addr: &str, texts: &[String]) -> Value {
    let body = json!({"inputs": [{"name": "TEXT", "datatype": "BYTES",
        "shape": [texts.len()], "data": texts}]});
    let r = request(
        addr,
        "POST",
        "/v2/models/cls/infer",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn an_inputs_answer_does_not_depend_on_its_batch() {
    for precision in ["int8", "fp32"] {
        // The batcher waits 20 ms for company, so concurrent requests share batches.
        let server = start(precision, &["--max-queue-delay-us", "20000"]);
        let a = server.addr.clone();
        let probe = "naïve but charming, with a fine cast";
        let alone = logits(&infer_texts(&a, &[probe.to_string()]));
        let handles: Vec<_> = (0..8)
            .map(|c| {
                let a = a.clone();
                std::thread::spawn(move || {
                    let mut answers = Vec::new();
                    for i in 0..6 {
                        // The probe among other inputs of other lengths, at varying positions.
                        let mut texts: Vec<String> = (0..(c + i) % 5)
                            .map(|k| "word ".repeat(1 + (c * 7 + i * 3 + k * 11) % 50))
                            .collect();
                        texts.insert((c + i) % (texts.len() + 1), probe.to_string());
                        let at = texts.iter().position(|t| t == probe).unwrap();
                        let v = infer_texts(&a, &texts);
                        let width = v["outputs"][0]["shape"][1].as_u64().unwrap() as usize;
                        answers.push(logits(&v)[at * width..(at + 1) * width].to_vec());
                    }
                    answers
                })
            })
            .collect();
        for h in handles {
            for got in h.join().unwrap() {
                assert_eq!(
                    got, alone,
                    "{precision}: the probe's logits moved with its batch"
                );
            }
        }
        // Batches of several inputs did run.
        let m = get(&a, "/metrics").text();
        let single = m
            .lines()
            .find_map(|l| l.strip_prefix("bertkit_batch_size_bucket{model=\"cls\",le=\"1\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        let all = m
            .lines()
            .find_map(|l| l.strip_prefix("bertkit_batch_size_count{model=\"cls\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(all > single, "no batch held more than one input:\n{m}");
    }
}
