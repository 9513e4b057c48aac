//! `bertkit serve` as Triton and text-embeddings-inference users drive it beyond inference:
//! request ids and timing headers, the access log, statistics, the model repository (index,
//! load, hot reload, unload), CORS, compressed bodies, /rerank, embedding prompts and
//! dimensions, and flags from environment variables. All over real HTTP against the binary.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::serve::{get, post, request, Response, Server};
use common::{bertkit, copy_dir, repo, run_ok};
use safetensors::tensor::TensorView;
use serde_json::{json, Value};

const FIXTURE: &str = "tests/fixtures/hf-reference/tiny_heads/sequence_classification";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn export(model: &Path, out: &Path, extra: &[&str]) {
    run_ok(
        bertkit()
            .args(["export", "--model", s(model), "--out", s(out), "--no-tune"])
            .args(extra),
    );
}

/// The tiny 3-label classifier turned into a cross-encoder: its first label's row alone, so
/// that its one logit equals the classifier's first logit on the same pair.
fn cross_encoder(dir: &Path) {
    copy_dir(&repo().join(FIXTURE), dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors.tensors() {
        let (shape, data) = match name.as_str() {
            "classifier.weight" => (vec![1, t.shape()[1]], t.data()[..t.shape()[1] * 4].to_vec()),
            "classifier.bias" => (vec![1], t.data()[..4].to_vec()),
            _ => (t.shape().to_vec(), t.data().to_vec()),
        };
        owned.push((name, t.dtype(), shape, data));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, sh, data)| (n.clone(), TensorView::new(*d, sh.clone(), data).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["id2label"] = json!({"0": "LABEL_0"});
    config["label2id"] = json!({"LABEL_0": 0});
    std::fs::write(&path, config.to_string()).unwrap();
}

fn header(r: &Response, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
        .parse()
        .unwrap()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn what_triton_and_tei_users_reach_for_beyond_inference() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Plans: the classifier, a cross-encoder, and MiniLM with two sentence-transformers prompts.
    let cls_model = root.join("models/cls");
    copy_dir(&repo().join(FIXTURE), &cls_model);
    let buckets = ["--seq-buckets", "16,32,64", "--max-length", "64"];
    export(&cls_model, &root.join("cls.plan"), &buckets);
    let ce_model = root.join("models/ce");
    cross_encoder(&ce_model);
    export(&ce_model, &root.join("ce.plan"), &buckets);
    let minilm = root.join("models/minilm");
    copy_dir(&repo().join("assets/all-MiniLM-L6-v2"), &minilm);
    std::fs::write(
        minilm.join("config_sentence_transformers.json"),
        json!({"prompts": {"query": "query: ", "passage": "passage: "}}).to_string(),
    )
    .unwrap();
    export(&minilm, &root.join("minilm.plan"), &[]);
    let plan = serde_json::from_slice::<Value>(
        &std::fs::read(root.join("minilm.plan/plan.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(plan["prompts"]["query"], "query: ");
    // A repository folder with one more plan, loadable at run time.
    std::fs::create_dir_all(root.join("repo")).unwrap();
    copy_dir(&root.join("cls.plan"), &root.join("repo/spare.plan"));

    let log_path = root.join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let plans = format!(
        "cls={},ce={},minilm={}",
        s(&root.join("cls.plan")),
        s(&root.join("ce.plan")),
        s(&root.join("minilm.plan"))
    );
    // Every setting from the environment, as a Helm chart would give them.
    let server = Server::start_with(
        &[],
        &[
            ("BERTKIT_PLAN", plans.as_str()),
            ("BERTKIT_MAX_CLIENT_BATCH_SIZE", "5"),
            ("BERTKIT_MODEL_CONTROL_MODE", "explicit"),
            ("BERTKIT_MODEL_REPOSITORY", s(&root.join("repo"))),
            ("BERTKIT_CORS_ALLOW_ORIGIN", "https://app.example"),
            ("BERTKIT_JSON_LOGS", "true"),
            ("BERTKIT_TRUNCATE", "false"),
        ],
        Stdio::from(log),
    );
    let a = server.addr.as_str();
    let r = post(
        a,
        "/embed",
        &json!({"inputs": ["a", "b", "c", "d", "e", "f"]}),
    );
    assert_eq!(r.status, 422, "BERTKIT_MAX_CLIENT_BATCH_SIZE: {}", r.text());

    // Request ids: echoed when usable, made up otherwise; TEI's timing headers.
    let texts = ["a quietly moving film", "the plot makes no sense at all"];
    let body = json!({"inputs": texts, "model": "minilm"}).to_string();
    let r = request(
        a,
        "POST",
        "/embed",
        &[
            ("Content-Type", "application/json"),
            ("x-request-id", "req-42"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    let tokens: u64 = post(a, "/tokenize", &json!({"inputs": texts, "model": "minilm"}))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(header(&r, "x-compute-tokens"), tokens);
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    assert_eq!(header(&r, "x-compute-characters"), chars as u64);
    let total = header(&r, "x-total-time");
    assert_eq!(header(&r, "x-compute-time"), total);
    let parts = header(&r, "x-tokenization-time")
        + header(&r, "x-queue-time")
        + header(&r, "x-inference-time");
    assert!(parts <= total + 2, "{:?}", r.headers);
    assert_eq!(r.header("x-compute-type"), Some("cpu"));
    let full = r.json();
    let other = get(a, "/v2/health/ready");
    let id = other.header("x-request-id").unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(other.header("x-inference-time").is_none());

    // Matryoshka dimensions: the first 64 values, unit length again (MiniLM's plan normalizes).
    let r = post(a, "/embed", &json!({"inputs": texts, "dimensions": 64})).json();
    for (cut, whole) in r.as_array().unwrap().iter().zip(full.as_array().unwrap()) {
        let (cut, whole) = (floats(cut), floats(whole));
        assert_eq!(cut.len(), 64);
        let n = norm(&whole[..64]);
        for (c, w) in cut.iter().zip(&whole[..64]) {
            assert!((c - w / n).abs() < 1e-6, "{c} vs {}", w / n);
        }
    }
    for bad in [0, 385] {
        let r = post(a, "/embed", &json!({"inputs": texts, "dimensions": bad}));
        assert_eq!(r.status, 422, "{}", r.text());
    }
    // Prompts: the named prompt is put before each text.
    let with = post(
        a,
        "/embed",
        &json!({"inputs": texts, "prompt_name": "query"}),
    )
    .json();
    let prompted: Vec<String> = texts.iter().map(|t| format!("query: {t}")).collect();
    let by_hand = post(a, "/embed", &json!({ "inputs": prompted })).json();
    for (x, y) in with
        .as_array()
        .unwrap()
        .iter()
        .zip(by_hand.as_array().unwrap())
    {
        for (p, q) in floats(x).iter().zip(floats(y)) {
            assert!((p - q).abs() < 1e-6);
        }
    }
    assert_ne!(with, full);
    let r = post(
        a,
        "/embed",
        &json!({"inputs": texts, "prompt_name": "nope"}),
    );
    assert_eq!(r.status, 422);
    assert!(r.text().contains("passage, query"), "{}", r.text());

    // /rerank: the cross-encoder's sigmoid scores, best first; its logit is the classifier's
    // first logit on the same pair.
    let query = "what is a good film";
    let docs = [
        "a quietly moving film",
        "the plot makes no sense",
        "I laughed, I cried",
    ];
    let pairs: Vec<Value> = docs.iter().map(|d| json!([query, d])).collect();
    let logits: Vec<f64> = post(a, "/predict", &json!({"inputs": pairs, "model": "cls"}))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["logits"][0].as_f64().unwrap())
        .collect();
    let ranked = post(
        a,
        "/rerank",
        &json!({"query": query, "texts": docs, "return_text": true}),
    )
    .json();
    let ranked = ranked.as_array().unwrap();
    assert_eq!(ranked.len(), 3);
    let mut last = f64::INFINITY;
    for r in ranked {
        let i = r["index"].as_u64().unwrap() as usize;
        let score = r["score"].as_f64().unwrap();
        assert!(
            (score - 1.0 / (1.0 + (-logits[i]).exp())).abs() < 1e-5,
            "{r}"
        );
        assert!(score <= last);
        last = score;
        assert_eq!(r["text"], docs[i]);
    }
    let raw = post(
        a,
        "/rerank",
        &json!({"query": query, "texts": docs, "raw_scores": true}),
    )
    .json();
    let top = &raw[0];
    let i = top["index"].as_u64().unwrap() as usize;
    assert!((top["score"].as_f64().unwrap() - logits[i]).abs() < 1e-5);
    assert!(top.get("text").is_none());
    let r = post(
        a,
        "/rerank",
        &json!({"query": query, "texts": docs, "model": "cls"}),
    );
    assert_eq!(
        r.status,
        422,
        "a 3-label classifier is no reranker: {}",
        r.text()
    );

    // Statistics in Triton's shape: the successful and failed requests that reached minilm.
    let too_long = "word ".repeat(600);
    assert_eq!(
        post(a, "/embed", &json!({"inputs": too_long, "model": "minilm"})).status,
        422
    );
    let stats = get(a, "/v2/models/minilm/stats").json()["model_stats"][0].clone();
    let inf = &stats["inference_stats"];
    // /embed: req-42, dimensions, the prompt and by hand (/tokenize runs no model).
    let success = inf["success"]["count"].as_u64().unwrap();
    assert_eq!(success, 4, "{stats}");
    // Too many inputs, two bad dimensions, an unknown prompt, too long.
    assert_eq!(inf["fail"]["count"].as_u64().unwrap(), 5, "{stats}");
    for k in ["queue", "compute_input", "compute_infer", "compute_output"] {
        assert_eq!(inf[k]["count"].as_u64().unwrap(), success, "{k}: {stats}");
    }
    assert!(inf["compute_infer"]["ns"].as_u64().unwrap() > 0);
    assert!(stats["inference_count"].as_u64().unwrap() >= 8);
    let batches: u64 = stats["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["compute_infer"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(batches, stats["execution_count"].as_u64().unwrap());
    assert_eq!(
        get(a, "/v2/models/stats").json()["model_stats"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // CORS: a preflight from the allowed origin, before any key; none for another origin.
    let pre = |origin: &str| {
        request(
            a,
            "OPTIONS",
            "/embed",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            b"",
        )
    };
    let ok = pre("https://app.example");
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let no = pre("https://elsewhere.example");
    assert_ne!(no.status, 204);
    assert!(no.header("access-control-allow-origin").is_none());
    let r = request(
        a,
        "POST",
        "/embed",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "https://app.example"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(r
        .header("access-control-expose-headers")
        .unwrap()
        .contains("x-request-id"));

    // A gzip request body and a gzip answer.
    let r = request(
        a,
        "POST",
        "/embed",
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Accept-Encoding", "gzip"),
        ],
        &gzip(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&plain).unwrap(), full);
    let bomb = gzip(&vec![b' '; 3_000_000]);
    let r = request(
        a,
        "POST",
        "/embed",
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        &bomb,
    );
    assert_eq!(r.status, 413, "inflated past --payload-limit: {}", r.text());

    // The repository: index, load from the repository folder, hot reload, unload.
    let index = |a: &str| -> Vec<(String, String)> {
        let r = request(a, "POST", "/v2/repository/index", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let state =
        |v: &[(String, String)], n: &str| v.iter().find(|(m, _)| m == n).map(|(_, s)| s.clone());
    let i = index(a);
    assert_eq!(state(&i, "cls").as_deref(), Some("READY"));
    assert_eq!(state(&i, "spare").as_deref(), Some("UNAVAILABLE"));
    let load = |name: &str| post(a, &format!("/v2/repository/models/{name}/load"), &json!({}));
    assert_eq!(load("spare").status, 200);
    assert_eq!(state(&index(a), "spare").as_deref(), Some("READY"));
    let predict = |model: &str| post(a, "/predict", &json!({"inputs": texts, "model": model}));
    assert_eq!(predict("spare").json(), predict("cls").json());
    assert_eq!(load("missing").status, 404);
    // Reload cls while requests keep coming: none of them fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, addr) = (Arc::clone(&stop), a.to_string());
    let load_body = json!({"inputs": texts, "model": "cls"});
    let client = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        while !stop2.load(Ordering::SeqCst) || statuses.len() < 5 {
            statuses.push(post(&addr, "/predict", &load_body).status);
        }
        statuses
    });
    for _ in 0..2 {
        assert_eq!(load("cls").status, 200);
    }
    stop.store(true, Ordering::SeqCst);
    let statuses = client.join().unwrap();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let r = post(a, "/v2/repository/models/spare/unload", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(predict("spare").status, 404);
    assert_eq!(state(&index(a), "spare").as_deref(), Some("UNAVAILABLE"));
    assert_eq!(
        post(a, "/v2/repository/models/spare/unload", &json!({})).status,
        404
    );
    let r = post(
        a,
        "/v2/repository/models/cls/load",
        &json!({"parameters": {"config": "{}"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // The access log: one JSON line per request, with its id and time split.
    drop(server);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["request_id"] == "req-42")
        .unwrap_or_else(|| panic!("no access-log line for req-42 in:\n{text}"));
    assert_eq!(line["route"], "/embed");
    assert_eq!(line["model"], "minilm");
    assert_eq!(line["status"], 200);
    assert_eq!(line["inputs"], 2);
    assert_eq!(line["tokens"].as_u64().unwrap(), tokens);
    for k in ["total_ms", "tokenization_ms", "queue_ms", "inference_ms"] {
        assert!(line[k].as_f64().is_some(), "{k}: {line}");
    }
    assert!(line["total_ms"].as_f64().unwrap() > 0.0);
}
