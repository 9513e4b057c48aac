//! `bertkit serve` end to end over real HTTP: every endpoint, the official tritonclient and
//! openai clients, /predict /ner /qa against `bertkit predict`, embeddings against transformers'
//! reference, 10,000 requests at concurrency 64, garbage, 413/422/429, the API key, client
//! disconnects, and SIGTERM draining in-flight requests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::serve::{get, post, post_raw, request, Response, Server};
use common::{bertkit, jsonl, python_script, repo, run_ok};
use serde_json::{json, Value};

// ---------------------------------------------------------------- plans and servers

const TINY: &str = "tests/fixtures/hf-reference/tiny_heads";

struct Plans {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Plans {
    fn model(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name)
    }
    fn plan(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.plan"))
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tiny task models (with a finetune.json, as `bertkit finetune` writes) and MiniLM,
/// exported to fp32 plans once for all tests.
fn plans() -> &'static Plans {
    static PLANS: OnceLock<Plans> = OnceLock::new();
    PLANS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let specs = [
            (
                "cls",
                "sequence_classification",
                json!({"task": "classify", "max_seq_length": 64, "classify": {
                    "glue": null, "text_column": "text", "text_pair_column": null,
                    "label_column": "label", "problem_type": "single_label_classification",
                    "label_separator": ","}}),
            ),
            (
                "ner",
                "token_classification",
                json!({"task": "ner", "max_seq_length": 64, "ner": {
                    "tokens_column": "tokens", "tags_column": "tags", "scheme": "iob2"}}),
            ),
            (
                "qa",
                "question_answering",
                json!({"task": "qa", "max_seq_length": 64, "qa": {
                    "doc_stride": 16, "max_query_length": 16, "n_best": 20,
                    "max_answer_length": 30, "version_2": false,
                    "null_score_diff_threshold": 0.0}}),
            ),
        ];
        for (name, fixture, spec) in specs {
            let model = root.join("models").join(name);
            std::fs::create_dir_all(&model).unwrap();
            for f in std::fs::read_dir(repo().join(TINY).join(fixture)).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
            }
            std::fs::write(model.join("finetune.json"), spec.to_string()).unwrap();
            run_ok(bertkit().args([
                "export",
                "--model",
                s(&model),
                "--out",
                s(&root.join(format!("{name}.plan"))),
                "--seq-buckets",
                "16,32,64",
                "--max-length",
                "64",
                "--no-tune",
            ]));
        }
        let minilm = repo().join("assets/all-MiniLM-L6-v2");
        assert!(minilm.exists(), "run scripts/fetch-assets.sh first");
        run_ok(bertkit().args([
            "export",
            "--model",
            s(&minilm),
            "--out",
            s(&root.join("minilm.plan")),
            "--no-tune",
        ]));
        Plans { _dir: dir, root }
    })
}

fn plan_arg(name: &str) -> Vec<String> {
    vec![
        "--plan".into(),
        format!("{name}={}", s(&plans().plan(name))),
    ]
}

/// `bertkit predict` on `rows` with the model folder the plan came from.
fn predict(model: &str, rows: &[Value]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&input, text).unwrap();
    run_ok(bertkit().args([
        "predict",
        "--model",
        s(&plans().model(model)),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ]));
    jsonl(&output)
}

fn close(a: &Value, b: &Value, tol: f64) -> bool {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= tol)
}

const REVIEWS: [&str; 6] = [
    "a quietly moving film",
    "the plot makes no sense at all",
    "naïve but charming, with a fine cast",
    "I laughed, I cried",
    "two hours I will never get back",
    "Ünïcödé and emoji 🎬 survive",
];

// ---------------------------------------------------------------- the tests

#[test]
fn every_endpoint_answers_over_http_and_matches_predict_and_the_reference() {
    let mut args = Vec::new();
    for p in ["cls", "ner", "qa", "minilm"] {
        args.extend(plan_arg(p));
    }
    args.extend(["--payload-limit".into(), "200000".into()]);
    args.extend(["--grpc-port".into(), "0".into()]);
    let server = Server::start(&args);
    let a = server.addr.as_str();
    let g = server.grpc.clone().expect("no gRPC line");

    // Health and metadata (KServe v2).
    assert_eq!(get(a, "/v2/health/live").status, 200);
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    assert_eq!(get(a, "/v2").json()["name"], "bertkit");
    let meta = get(a, "/v2/models/cls").json();
    assert_eq!(meta["outputs"][0]["name"], "logits");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 3]));
    assert_eq!(get(a, "/v2/models/cls/ready").status, 200);
    assert_eq!(get(a, "/v2/models/cls/versions/1/ready").status, 200);
    assert_eq!(get(a, "/v2/models/cls/versions/2/ready").status, 404);
    assert_eq!(get(a, "/v2/models/cls/config").json()["max_batch_size"], 32);
    let info = get(a, "/info").json();
    let names: Vec<&str> = info["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cls", "ner", "qa", "minilm"]);
    assert_eq!(info["models"][3]["task"], "embedding");
    assert_eq!(get(a, "/v1/models").json()["data"][1]["id"], "ner");

    // /predict equals `bertkit predict` on the same inputs.
    let rows: Vec<Value> = REVIEWS.iter().map(|t| json!({ "text": t })).collect();
    let expected = predict("cls", &rows);
    let got = post(a, "/predict", &json!({ "inputs": REVIEWS })).json();
    for (g, e) in got.as_array().unwrap().iter().zip(&expected) {
        assert_eq!(g["label"], e["label"], "{g} vs {e}");
        assert!(close(&g["logits"], &e["logits"], 1e-4), "{g} vs {e}");
    }
    let one = post(a, "/predict", &json!({ "inputs": REVIEWS[0] })).json();
    assert!(one.is_object(), "a single input gives one result: {one}");
    assert!(close(&one["logits"], &expected[0]["logits"], 1e-4));

    // /ner equals `bertkit predict` (pre-split words); text input adds character spans.
    let sentences = [
        vec!["John", "Smith", "lives", "in", "New", "York", "."],
        vec!["The", "European", "Commission", "said", "on", "Thursday"],
    ];
    let expected = predict(
        "ner",
        &sentences
            .iter()
            .map(|t| json!({ "tokens": t }))
            .collect::<Vec<_>>(),
    );
    let got = post(a, "/ner", &json!({ "tokens": sentences })).json();
    for (g, e) in got.as_array().unwrap().iter().zip(&expected) {
        assert_eq!(g["tags"], e["tags"], "{g} vs {e}");
        assert_eq!(
            g["entities"].as_array().unwrap().len(),
            e["entities"].as_array().unwrap().len()
        );
    }
    let text = "John Smith lives in New York.";
    let got = post(a, "/ner", &json!({ "inputs": text })).json();
    assert_eq!(got["tokens"], json!(sentences[0]), "{got}");
    assert_eq!(got["tags"], expected[0]["tags"]);
    for e in got["entities"].as_array().unwrap() {
        let (from, to) = (
            e["start_char"].as_u64().unwrap(),
            e["end_char"].as_u64().unwrap(),
        );
        let span: String = text
            .chars()
            .skip(from as usize)
            .take((to - from) as usize)
            .collect();
        assert_eq!(
            span.split(|c: char| c.is_whitespace() || c == '.')
                .find(|w| !w.is_empty()),
            e["text"].as_str().unwrap().split(' ').find(|w| *w != "."),
            "{e}"
        );
    }

    // /qa equals `bertkit predict`, over a context longer than one window.
    let context = "The harbour of the old town opened in 1887 after a decade of building. \
                   Ships from the northern islands brought timber, wool and salted fish, and \
                   the town grew quickly around the new quays. A railway reached it in 1902.";
    let questions = ["When did the harbour open?", "What did the ships bring?"];
    let rows: Vec<Value> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"id": format!("q{i}"), "question": q, "context": context}))
        .collect();
    let expected = predict("qa", &rows);
    let got = post(a, "/qa", &json!({ "inputs": rows })).json();
    for (g, e) in got.as_array().unwrap().iter().zip(&expected) {
        for k in ["id", "answer", "start", "end"] {
            assert_eq!(g[k], e[k], "{k}: {g} vs {e}");
        }
        assert!((g["score"].as_f64().unwrap() - e["score"].as_f64().unwrap()).abs() < 1e-4);
    }
    let single = post(
        a,
        "/qa",
        &json!({"question": questions[0], "context": context}),
    )
    .json();
    assert_eq!(single["answer"], expected[0]["answer"]);

    // Embeddings: transformers' reference (mean pooling, normalized), from every endpoint.
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/hf-reference/minilm_reference.json"))
            .unwrap(),
    )
    .unwrap();
    let inputs = reference["inputs"].clone();
    let want = reference["mean_pooled_normalized"].as_array().unwrap();
    let got = post(a, "/embed", &json!({ "inputs": inputs })).json();
    for (g, w) in got.as_array().unwrap().iter().zip(want) {
        assert!(close(g, w, 1e-4), "embedding differs from transformers");
    }
    // OpenAI takes single texts (the reference also has a pair).
    let singles: Vec<(usize, &Value)> = inputs
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_string())
        .collect();
    let texts: Vec<&Value> = singles.iter().map(|(_, t)| *t).collect();
    let v1 = post(
        a,
        "/v1/embeddings",
        &json!({"input": texts, "model": "minilm"}),
    )
    .json();
    assert_eq!(v1["object"], "list", "{v1}");
    assert!(v1["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v1["data"].as_array().unwrap().len(), singles.len());
    for (d, (i, _)) in v1["data"].as_array().unwrap().iter().zip(&singles) {
        assert!(close(&d["embedding"], &got[*i], 1e-6));
    }
    // The ids /tokenize gives are transformers' ids.
    let toks = post(
        a,
        "/tokenize",
        &json!({"inputs": inputs, "model": "minilm"}),
    )
    .json();
    for (t, ids) in toks
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["input_ids"].as_array().unwrap())
    {
        let got: Vec<u64> = t
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .filter(|&x| x != 0)
            .collect();
        assert_eq!(got, want);
    }

    // Spans are in characters of the original text (accents stripped by the vocabulary).
    let t = post(
        a,
        "/tokenize",
        &json!({"inputs": "héllo wörld", "model": "minilm"}),
    )
    .json();
    let spans: Vec<(bool, u64, u64)> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["special"].as_bool().unwrap(),
                x["start"].as_u64().unwrap(),
                x["stop"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        spans,
        [(true, 0, 0), (false, 0, 5), (false, 6, 11), (true, 0, 0)],
        "{t}"
    );

    // KServe with the binary tensor extension, written by hand: BYTES in, FP32 out.
    let texts = [REVIEWS[0], REVIEWS[2]];
    let mut blob = Vec::new();
    for t in texts {
        blob.extend((t.len() as u32).to_le_bytes());
        blob.extend(t.as_bytes());
    }
    let header = json!({
        "id": "abc",
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2],
                    "parameters": {"binary_data_size": blob.len()}}],
        "outputs": [{"name": "embeddings", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&blob);
    let len = header.len().to_string();
    let r = request(
        a,
        "POST",
        "/v2/models/minilm/infer",
        &[("Inference-Header-Content-Length", &len)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(head["id"], "abc");
    assert_eq!(head["outputs"][0]["shape"], json!([2, 384]));
    let floats: Vec<f64> = r.body[n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    assert_eq!(floats.len(), 2 * 384);
    let want = post(a, "/embed", &json!({ "inputs": texts })).json();
    assert!(close(&json!(floats[..384]), &want[0], 1e-6));
    assert!(close(&json!(floats[384..]), &want[1], 1e-6));

    // The official clients.
    let c = python_script(
        "check_serve_clients.py",
        &[a.as_ref(), "cls".as_ref(), "minilm".as_ref(), g.as_ref()],
        "tritonclient[http,grpc], openai, numpy",
    );
    for k in ["live", "ready", "model_ready"] {
        assert_eq!(c[k], true, "{c}");
    }
    assert_eq!(c["outputs"], json!(["logits", "probabilities"]));
    for k in ["binary", "json"] {
        assert_eq!(c[format!("{k}_shape")], json!([3, 3]), "{c}");
        assert!(c[format!("{k}_max_diff")].as_f64().unwrap() < 1e-6, "{c}");
        assert_eq!(c[format!("{k}_id")], "r1");
        for s in c[format!("{k}_prob_sums")].as_array().unwrap() {
            assert!((s.as_f64().unwrap() - 1.0).abs() < 1e-5);
        }
    }
    assert!(c["ids_max_diff"].as_f64().unwrap() < 1e-6, "{c}");
    assert!(
        c["unknown_model_error"].as_str().unwrap().contains("404"),
        "{c}"
    );
    for k in ["default", "float"] {
        assert_eq!(c[format!("openai_{k}_shape")], json!([3, 384]), "{c}");
        assert!(
            c[format!("openai_{k}_max_diff")].as_f64().unwrap() < 1e-6,
            "{c}"
        );
    }
    assert_eq!(c["openai_models"], json!(["cls", "ner", "qa", "minilm"]));
    assert_eq!(c["openai_dimensions_shape"], json!([3, 64]), "{c}");
    assert!(
        c["openai_dimensions_max_diff"].as_f64().unwrap() < 1e-6,
        "{c}"
    );
    for k in ["gzip", "deflate"] {
        assert!(c[format!("{k}_max_diff")].as_f64().unwrap() < 1e-6, "{c}");
    }
    let index = c["repository_index"].as_array().unwrap();
    let names: Vec<&str> = index.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cls", "ner", "qa", "minilm"], "{c}");
    assert!(index.iter().all(|m| m["state"] == "READY"), "{c}");
    assert_eq!(c["stats_name"], "cls");
    // Every call on cls so far succeeded; at least the client's own ones are counted.
    assert!(c["stats_success"].as_u64().unwrap() >= 6, "{c}");
    assert!(c["stats_inference_count"].as_u64().unwrap() >= 18, "{c}");
    assert_eq!(c["stats_all"], json!(["cls", "ner", "qa", "minilm"]));
    // tritonclient.grpc: the same answers as over HTTP.
    for k in ["live", "ready", "model_ready"] {
        assert_eq!(c[format!("grpc_{k}")], true, "{c}");
    }
    assert_eq!(c["grpc_unknown_model_ready"], false, "{c}");
    assert_eq!(c["grpc_server"], "bertkit");
    assert_eq!(c["grpc_outputs"], json!(["logits", "probabilities"]));
    assert_eq!(c["grpc_config_max_batch_size"], 32, "{c}");
    assert_eq!(c["grpc_config_inputs"][0], "TEXT");
    for k in ["logits", "probabilities"] {
        assert_eq!(c[format!("grpc_{k}_shape")], json!([3, 3]), "{c}");
    }
    for k in [
        "logits",
        "probabilities",
        "ids",
        "gzip",
        "deflate",
        "embeddings",
    ] {
        assert!(
            c[format!("grpc_{k}_max_diff")].as_f64().unwrap() < 1e-6,
            "{k}: {c}"
        );
    }
    assert_eq!(c["grpc_embeddings_shape"], json!([3, 384]), "{c}");
    assert_eq!(c["grpc_id"], "g1");
    assert_eq!(c["grpc_asked_outputs"], json!(["probabilities"]));
    assert_eq!(
        c["grpc_repository_index"],
        json!(["cls", "ner", "qa", "minilm"])
    );
    // The gRPC calls are counted with the HTTP ones: since the HTTP statistics were read, one
    // HTTP and five gRPC inferences ran on cls.
    assert!(
        c["grpc_stats_success"].as_u64().unwrap() >= c["stats_success"].as_u64().unwrap() + 6,
        "{c}"
    );
    let e = c["grpc_unknown_model_error"].as_str().unwrap();
    assert!(
        e.contains("NOT_FOUND") && e.contains("no-such-model"),
        "{c}"
    );
    assert_eq!(c["grpc_health"], json!([8, 1]), "SERVING: {c}");
    // Loading and unloading are off unless asked for.
    let r = post(a, "/v2/repository/models/cls/load", &json!({}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("--model-control-mode explicit"));

    // Bad requests: 4xx with a message, and the server keeps serving.
    let bad = |r: Response, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let e = r.json();
        assert!(
            e["error"].as_str().unwrap().contains(needle),
            "expected {needle:?} in {e}"
        );
    };
    let mut seed = 0x2545f4914f6cdd1du64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    bad(post_raw(a, "/predict", &random), 400, "invalid JSON");
    bad(
        post_raw(a, "/v2/models/cls/infer", &random),
        400,
        "invalid JSON",
    );
    bad(
        post_raw(a, "/predict", b"{\"inputs\": \"caf\xe9 au lait\"}"),
        400,
        "invalid JSON",
    );
    let deep = format!(
        "{{\"inputs\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    bad(
        post_raw(a, "/predict", &deep.as_bytes()[..150_000]),
        400,
        "invalid JSON",
    );
    bad(
        post_raw(a, "/predict", deep.as_bytes()),
        413,
        "payload limit",
    );
    bad(
        post(a, "/predict", &json!({"inputs": 5})),
        400,
        "must be a string",
    );
    bad(post(a, "/predict", &json!([1, 2])), 400, "JSON object");
    bad(
        post(a, "/predict", &json!({"inputs": "x", "model": "minilm"})),
        400,
        "embedding plan",
    );
    bad(
        post(a, "/predict", &json!({"inputs": "x", "model": "nope"})),
        404,
        "unknown model",
    );
    bad(
        post(a, "/predict", &json!({"inputs": []})),
        400,
        "no inputs",
    );
    bad(
        post(a, "/predict", &json!({"inputs": vec!["x"; 65]})),
        422,
        "--max-client-batch-size",
    );
    let long = "word ".repeat(100);
    bad(
        post(a, "/predict", &json!({"inputs": long})),
        422,
        "more than the limit of 64",
    );
    assert_eq!(
        post(a, "/predict", &json!({"inputs": long, "truncate": true})).status,
        200
    );
    let infer = |inputs: Value| post(a, "/v2/models/cls/infer", &json!({ "inputs": inputs }));
    bad(
        infer(json!([{"name": "TEXT", "datatype": "BYTES", "shape": [3], "data": ["a", "b"]}])),
        400,
        "holds 3 elements",
    );
    bad(
        infer(json!([{"name": "TEXT", "datatype": "FP32", "shape": [1], "data": [1.0]}])),
        400,
        "not supported",
    );
    bad(
        infer(
            json!([{"name": "TEXT", "datatype": "BYTES", "shape": [1, 2, 3], "data": ["a", "b", "c", "d", "e", "f"]}]),
        ),
        400,
        "text inputs are [N] or [N, 1]",
    );
    bad(
        infer(json!([{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["a"]}])),
        400,
        "unknown input",
    );
    bad(
        infer(
            json!([{"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 999999, 2]}]),
        ),
        400,
        "outside the vocabulary",
    );
    bad(
        infer(
            json!([{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [1, 2],
                      "parameters": {"binary_data_size": 64}}]),
        ),
        400,
        "binary data",
    );
    bad(
        request(
            a,
            "POST",
            "/v2/models/cls/infer",
            &[("Inference-Header-Content-Length", "99999")],
            b"{}",
        ),
        400,
        "within the body",
    );
    bad(
        post(
            a,
            "/v2/models/cls/infer",
            &json!({"inputs": [{"name": "TEXT"}]}),
        ),
        400,
        "datatype",
    );
    bad(get(a, "/no/such/endpoint"), 404, "no such endpoint");
    assert_eq!(get(a, "/predict").status, 405);
    // Not HTTP at all, then a connection that goes away mid-request.
    {
        let mut s = TcpStream::connect(a).unwrap();
        let _ = s.write_all(&random);
        let mut sink = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut sink);
        let mut s = TcpStream::connect(a).unwrap();
        let _ = s.write_all(b"POST /predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"inp");
    }
    assert_eq!(get(a, "/v2/health/ready").status, 200);

    // 10,000 requests at concurrency 64: no errors, every answer the serial one.
    let expected: Arc<Vec<Value>> = Arc::new(
        REVIEWS
            .iter()
            .map(|t| post(a, "/predict", &json!({ "inputs": t })).json())
            .collect(),
    );
    let started = Instant::now();
    let threads: Vec<_> = (0..64)
        .map(|c| {
            let (addr, expected) = (server.addr.clone(), Arc::clone(&expected));
            std::thread::spawn(move || {
                let mut wrong = Vec::new();
                for r in 0..10_000 / 64 + usize::from(c < 10_000 % 64) {
                    let i = (c * 7 + r) % REVIEWS.len();
                    let resp = post(&addr, "/predict", &json!({ "inputs": REVIEWS[i] }));
                    if resp.status != 200 {
                        wrong.push(format!("{} {}", resp.status, resp.text()));
                        continue;
                    }
                    let got = resp.json();
                    if got["label"] != expected[i]["label"]
                        || !close(&got["logits"], &expected[i]["logits"], 1e-5)
                    {
                        wrong.push(format!("{got} != {}", expected[i]));
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} bad answers, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    eprintln!(
        "10,000 requests at concurrency 64 in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The metrics saw it, and batching happened.
    let m = get(a, "/metrics");
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let m = m.text();
    let value = |prefix: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
    };
    assert!(value("bertkit_requests_success_total{endpoint=\"/predict\"}") >= 10_000.0);
    assert!(
        value("bertkit_requests_failure_total{endpoint=\"/predict\",reason=\"input_too_long\"}")
            >= 1.0
    );
    let batches = value("bertkit_batch_size_count{model=\"cls\"}");
    let inputs = value("bertkit_batch_size_sum{model=\"cls\"}");
    assert!(inputs >= 10_000.0);
    assert!(
        inputs / batches > 1.5,
        "no batching: {inputs} inputs in {batches} batches"
    );
    for family in [
        "bertkit_queue_duration_seconds_bucket",
        "bertkit_tokenization_duration_seconds_count{model=\"cls\"}",
        "bertkit_inference_duration_seconds_sum{model=\"cls\"}",
        "bertkit_queue_depth{model=\"cls\"} 0",
        "bertkit_tokens_total{model=\"cls\"}",
        "bertkit_requests_in_flight",
    ] {
        assert!(m.contains(family), "no {family}");
    }
}

#[test]
fn overload_api_key_disconnects_and_sigterm_drain() {
    // The batcher holds requests 3 s (queue delay) so they stay in flight long enough.
    let mut args = plan_arg("cls");
    for a in [
        "--max-queue-delay-us",
        "3000000",
        "--max-concurrent-requests",
        "4",
        "--api-key",
        "s3cret",
    ] {
        args.push(a.into());
    }
    let mut server = Server::start(&args);
    let a = server.addr.clone();
    let auth = [
        ("Authorization", "Bearer s3cret"),
        ("Content-Type", "application/json"),
    ];
    let body = json!({"inputs": "a quietly moving film"}).to_string();

    // The key: health needs none, everything else does.
    assert_eq!(get(&a, "/v2/health/ready").status, 200);
    assert_eq!(get(&a, "/info").status, 401);
    assert_eq!(post(&a, "/predict", &json!({"inputs": "x"})).status, 401);
    let wrong = request(
        &a,
        "POST",
        "/predict",
        &[("Authorization", "Bearer nope")],
        body.as_bytes(),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(request(&a, "GET", "/info", &auth, b"").status, 200);

    let in_flight = |n: usize| -> Vec<std::thread::JoinHandle<Response>> {
        (0..n)
            .map(|_| {
                let (a, body) = (a.clone(), body.clone());
                std::thread::spawn(move || {
                    request(
                        &a,
                        "POST",
                        "/predict",
                        &[
                            ("Authorization", "Bearer s3cret"),
                            ("Content-Type", "application/json"),
                        ],
                        body.as_bytes(),
                    )
                })
            })
            .collect()
    };

    // Waits until the metrics say `needle` (at most 20 s).
    let wait_for = |needle: &str| {
        let t = Instant::now();
        loop {
            let m = request(&a, "GET", "/metrics", &auth, b"").text();
            if m.contains(needle) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no {needle:?} in\n{m}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The four requests and the metrics request asking.
    let four_in_flight = "bertkit_requests_in_flight 5\n";

    // Four in flight: the fifth is refused at once with 429.
    let held = in_flight(4);
    wait_for(four_in_flight);
    let t = Instant::now();
    let refused = request(&a, "POST", "/predict", &auth, body.as_bytes());
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "429 was not immediate"
    );
    for h in held {
        assert_eq!(h.join().unwrap().status, 200);
    }

    // A client that goes away: its input is dropped from the queue, not run.
    {
        let mut s = TcpStream::connect(&a).unwrap();
        let head = format!(
            "POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        wait_for("bertkit_queue_depth{model=\"cls\"} 1\n");
    }
    wait_for("bertkit_cancelled_total{model=\"cls\"} 1\n");
    let m = request(&a, "GET", "/metrics", &auth, b"").text();
    assert!(
        m.contains("bertkit_cancelled_total{model=\"cls\"} 1"),
        "{m}"
    );
    assert!(m.contains("reason=\"cancelled\"} 1"), "{m}");
    assert!(m.contains("reason=\"overloaded\"} 1"), "{m}");
    assert!(m.contains("reason=\"unauthorized\"} 1"), "{m}");

    // SIGTERM with four requests in flight: all four are answered, then it exits 0.
    let held = in_flight(4);
    wait_for(four_in_flight);
    server.terminate();
    for h in held {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["label"].is_string());
    }
    server.exited_ok();
    let said: Vec<String> = server.lines.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("draining")), "{said:?}");
    assert!(
        TcpStream::connect(&a).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn bench_serve_reports_throughput_and_latency() {
    let server = Server::start(&plan_arg("cls"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let text: String = REVIEWS
        .iter()
        .map(|t| format!("{}\n", json!({ "text": t })))
        .collect();
    std::fs::write(&input, text).unwrap();
    let out = run_ok(bertkit().args([
        "bench-serve",
        "--url",
        &format!("http://{}", server.addr),
        "--concurrency",
        "8",
        "--requests",
        "300",
        "--input",
        s(&input),
        "--json",
    ]));
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["endpoint"], "/predict");
    assert_eq!(r["ok"], 300, "{r}");
    assert_eq!(r["errors"], 0);
    let (p50, p99) = (r["p50_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99, "{r}");
    assert!(r["requests_per_s"].as_f64().unwrap() > 0.0);
    let m = get(&server.addr, "/metrics").text();
    assert!(
        m.contains("bertkit_requests_success_total{endpoint=\"/predict\"} 300"),
        "{m}"
    );
    let local = run_ok(bertkit().args([
        "bench-serve",
        "--in-process",
        "--plan",
        s(&plans().plan("cls")),
        "--requests",
        "300",
        "--input",
        s(&input),
        "--json",
    ]));
    let l: Value = serde_json::from_str(local.trim()).unwrap();
    assert_eq!(l["inputs"], 300);
    assert!(l["inputs_per_s"].as_f64().unwrap() > 0.0);
    // A server that is not there is an error, not a report.
    drop(server);
    let out = bertkit()
        .args([
            "bench-serve",
            "--url",
            "http://127.0.0.1:9",
            "--requests",
            "1",
            "--input",
            s(&input),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Runs `bertkit serve --port 0 ARGS`, which must fail; returns its stderr.
fn serve_fails(args: &[&str]) -> String {
    let out = bertkit()
        .args(["serve", "--port", "0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "expected a failure: {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_plan_or_option_stops_the_server_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_fails(&["--plan", s(&dir.path().join("missing.plan"))]);
    assert!(err.contains("missing.plan"), "{err}");
    let cls = s(&plans().plan("cls")).to_string();
    let twice = format!("a={cls}");
    let err = serve_fails(&["--plan", &twice, "--plan", &twice]);
    assert!(err.contains("two plans are named \"a\""), "{err}");
    let err = serve_fails(&["--plan", &cls, "--max-input-length", "100"]);
    assert!(err.contains("64 positions"), "{err}");
    let err = serve_fails(&["--plan", &cls, "--max-batch-tokens", "10"]);
    assert!(err.contains("cannot hold one input"), "{err}");
}
