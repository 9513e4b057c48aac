//! `bertkit serve --otlp-endpoint`: the spans the real binary sends to a collector (a stand-in
//! OTLP/HTTP receiver here), read back with OpenTelemetry's own protobuf definitions
//! (scripts/check_otlp.py): one SERVER span per request, the caller's W3C trace joined,
//! unsampled traces and probes left out, everything flushed on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::python_script;
use common::serve::{request, tiny_classifier_plan, Server};
use serde_json::{json, Value};

/// A stand-in collector: answers every POST 200 `{}` and hands on (path, body).
fn collector() -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let _ = tx.send((path, body));
                    let _ = w.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                    );
                }
            });
        }
    });
    (format!("http://{addr}"), rx)
}

#[test]
fn each_request_is_a_span_in_the_callers_trace_at_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_classifier_plan(dir.path());
    let (endpoint, bodies) = collector();
    let args: Vec<String> = ["--plan", &format!("cls={}", plan.display())]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut server = Server::start_with(
        &args,
        &[
            ("BERTKIT_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "reviews"),
        ],
        std::process::Stdio::inherit(),
    );
    let a = server.addr.clone();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let body =
        json!({"inputs": ["a quietly moving film", "two hours I will never get back"]}).to_string();
    let predict = |headers: &[(&str, &str)]| {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        let r = request(&a, "POST", "/predict", &h, body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-request-id").unwrap().to_string()
    };
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let joined = predict(&[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))]);
    let fresh = predict(&[]);
    // The caller decided not to sample: no span.
    predict(&[(
        "traceparent",
        "00-11111111111111111111111111111111-2222222222222222-00",
    )]);
    // Probes and scrapes: no span.
    assert_eq!(request(&a, "GET", "/v2/health/ready", &[], b"").status, 200);
    assert_eq!(request(&a, "GET", "/metrics", &[], b"").status, 200);
    assert_eq!(request(&a, "GET", "/v2/models/nope", &[], b"").status, 404);

    // SIGTERM flushes what is queued before the server exits.
    server.terminate();
    server.exited_ok();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut lines = String::new();
    while let Ok((path, body)) = bodies.recv_timeout(Duration::from_millis(200)) {
        assert_eq!(path, "/v1/traces");
        let v: Value = serde_json::from_slice(&body).unwrap();
        lines.push_str(&format!("{v}\n"));
    }
    let file = dir.path().join("bodies.jsonl");
    std::fs::write(&file, lines).unwrap();
    let got = python_script("check_otlp.py", &[file.as_os_str()], "opentelemetry-proto");
    assert!(got["resources"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["service.name"] == "reviews"));
    let spans = got["spans"].as_array().unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["POST /predict", "POST /predict", "GET /v2/models/{model}"],
        "{got}"
    );
    let by_id = |id: &str| {
        spans
            .iter()
            .find(|s| s["attributes"]["bertkit.request_id"] == id)
            .unwrap_or_else(|| panic!("no span of request {id}: {got}"))
    };
    let s = by_id(&joined);
    assert_eq!(s["trace_id"], trace);
    assert_eq!(s["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(s["kind"], "SPAN_KIND_SERVER");
    assert_eq!(s["scope"], "bertkit-serve");
    assert_eq!(s["attributes"]["http.request.method"], "POST");
    assert_eq!(s["attributes"]["http.route"], "/predict");
    assert_eq!(s["attributes"]["http.response.status_code"], 200);
    assert_eq!(s["attributes"]["bertkit.model"], "cls");
    assert_eq!(s["attributes"]["bertkit.inputs"], 2);
    assert!(s["attributes"]["bertkit.tokens"].as_i64().unwrap() > 10);
    assert!(s["attributes"]["bertkit.inference_ms"].as_f64().unwrap() > 0.0);
    let (start, end) = (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap());
    assert!(before <= start && start <= end && end <= after, "{s}");
    let f = by_id(&fresh);
    assert_eq!(f["trace_id"].as_str().unwrap().len(), 32);
    assert_ne!(f["trace_id"], trace);
    assert_eq!(f["parent_span_id"], "");
    assert_ne!(f["span_id"], s["span_id"]);
    // A 404 is not a server error: status left unset (0).
    let nf = spans
        .iter()
        .find(|s| s["name"] == "GET /v2/models/{model}")
        .unwrap();
    assert_eq!(nf["attributes"]["http.response.status_code"], 404);
    assert_eq!(nf["status"], 0);
}
