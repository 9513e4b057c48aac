//! `bertkit embed`, `info` and `convert` end to end, through the binary, on the real
//! all-MiniLM-L6-v2 (fetched by scripts/fetch-assets.sh) against Hugging Face's outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{jsonl, repo};

fn minilm() -> PathBuf {
    let dir = repo().join("assets/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "run scripts/fetch-assets.sh first"
    );
    dir
}

fn reference() -> Value {
    let path = repo().join("tests/fixtures/hf-reference/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bertkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertkit"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "bertkit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The reference inputs as embed's JSONL.
fn write_inputs(dir: &Path) -> PathBuf {
    let lines: Vec<String> = reference()["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| match i {
            Value::String(s) => serde_json::json!({ "text": s }).to_string(),
            Value::Array(p) => serde_json::json!({ "text": p[0], "text_pair": p[1] }).to_string(),
            _ => unreachable!(),
        })
        .collect();
    let path = dir.join("in.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Runs `bertkit embed --model MODEL --input INPUT --output OUTPUT EXTRA...`.
fn embed_cmd(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    bertkit(&args)
}

/// MiniLM embeddings of the reference inputs.
fn embed(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let output = dir.join("out.jsonl");
    ok(embed_cmd(&minilm(), &write_inputs(dir), &output, extra));
    jsonl(&output)
}

fn max_diff(a: &Value, b: &Value) -> f64 {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len());
            x.iter()
                .zip(y)
                .map(|(p, q)| max_diff(p, q))
                .fold(0.0, f64::max)
        }
        _ => (a.as_f64().unwrap() - b.as_f64().unwrap()).abs(),
    }
}

#[test]
fn mean_pooling_matches_hf_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    // Batches of 3 are formed by length, so inputs are reordered inside; output order must not be.
    for (extra, key) in [
        (vec!["--batch-size", "3"], "mean_pooled"),
        (
            vec!["--normalize", "--batch-size", "1"],
            "mean_pooled_normalized",
        ),
    ] {
        let out = embed(dir.path(), &extra);
        assert_eq!(out.len(), 4);
        for (i, line) in out.iter().enumerate() {
            let d = max_diff(&line["embedding"], &r[key][i]);
            assert!(d <= 1e-4, "{key}[{i}]: {d}");
        }
    }
}

#[test]
fn token_and_cls_outputs_match_hf_hidden_states() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let tokens = embed(dir.path(), &["--pooling", "none"]);
    let cls = embed(dir.path(), &["--pooling", "cls"]);
    for i in 0..4 {
        let real = r["attention_mask"][i]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m.as_i64() == Some(1))
            .count();
        let rows = tokens[i]["tokens"].as_array().unwrap();
        assert_eq!(rows.len(), real, "padding must be excluded");
        let want = Value::Array(r["last_hidden_state"][i].as_array().unwrap()[..real].to_vec());
        assert!(max_diff(&tokens[i]["tokens"], &want) <= 1e-4);
        assert!(max_diff(&cls[i]["embedding"], &r["last_hidden_state"][i][0]) <= 1e-4);
    }
}

#[test]
fn max_length_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let out = embed(dir.path(), &["--pooling", "none", "--max-length", "8"]);
    let lens: Vec<usize> = out
        .iter()
        .map(|l| l["tokens"].as_array().unwrap().len())
        .collect();
    assert_eq!(lens, vec![8, 4, 8, 8]);
    let model = minilm();
    let input = write_inputs(dir.path());
    let err = embed_cmd(
        &model,
        &input,
        &dir.path().join("x.jsonl"),
        &["--max-length", "513"],
    );
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("max_position_embeddings (512)"));
}

#[test]
fn bad_input_names_the_line_and_keeps_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm();
    let output = dir.path().join("out.jsonl");
    std::fs::write(&output, "previous results\n").unwrap();
    for (content, expected) in [
        (
            "{\"text\": \"fine\"}\n{\"text\": \"also fine\"}\nnot json\n",
            "line 3: not valid JSON",
        ),
        (
            "{\"text\": \"fine\"}\n{\"txt\": \"typo\"}\n",
            "line 2: no \"text\" field",
        ),
        ("{\"text\": 5}\n", "line 1: \"text\" is not a string"),
    ] {
        let input = dir.path().join("bad.jsonl");
        std::fs::write(&input, content).unwrap();
        let out = embed_cmd(&model, &input, &output, &[]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("bad.jsonl") && stderr.contains(expected),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(&output).unwrap(),
            "previous results\n"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
    }
}

#[test]
fn info_reports_minilm() {
    let out = ok(bertkit(&["info", minilm().to_str().unwrap()]));
    // sentence-transformers/all-MiniLM-L6-v2 has 22,713,216 parameters (HF num_parameters()).
    assert!(out.contains("parameters:  22713216"), "{out}");
    assert!(out.contains("task:        base (BertModel)"), "{out}");
    assert!(out.contains("6 layers, hidden 384, 12 heads"), "{out}");
}

/// The global `--device-attention` flag (and its variable) takes the model crate's names and
/// refuses a typo with the list, before any work.
#[test]
fn device_attention_flag_takes_its_names() {
    let model = minilm();
    let model = model.to_str().unwrap();
    for name in ["probs", "flash"] {
        ok(bertkit(&["--device-attention", name, "info", model]));
        let by_env = Command::new(env!("CARGO_BIN_EXE_bertkit"))
            .env("BERTKIT_DEVICE_ATTENTION", name)
            .args(["info", model])
            .output()
            .unwrap();
        ok(by_env);
    }
    let out = bertkit(&["--device-attention", "flsh", "info", model]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flsh") && err.contains("probs") && err.contains("flash"),
        "{err}"
    );
}

#[test]
fn convert_to_hf_and_back_keeps_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let native = dir.path().join("native");
    ok(bertkit(&[
        "convert",
        "--to",
        "hf",
        minilm().to_str().unwrap(),
        hf.to_str().unwrap(),
    ]));
    ok(bertkit(&[
        "convert",
        "--to",
        "bertkit",
        hf.to_str().unwrap(),
        native.to_str().unwrap(),
    ]));
    assert!(native.join("bertkit.json").exists() && !hf.join("bertkit.json").exists());
    let input = write_inputs(dir.path());
    let embed_with = |model: &Path| {
        let output = dir.path().join("e.jsonl");
        ok(embed_cmd(model, &input, &output, &[]));
        std::fs::read_to_string(output).unwrap()
    };
    assert_eq!(embed_with(&minilm()), embed_with(&native));
}

#[test]
fn quickstart_runs_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(bertkit(&[
        "quickstart",
        "--out",
        dir.path().to_str().unwrap(),
    ]));
    for stage in [
        "[1] corpus",
        "[2] bertkit vocab",
        "[3] bertkit prep",
        "[4] pretraining loader",
        "[5] bertkit pretrain",
        "[6] bertkit info",
        "[7] bertkit embed",
        "[8] bertkit convert",
        "[9] bertkit finetune",
        "[10] bertkit distill",
        "[11] bertkit launch",
        "[12] bertkit export",
        "[13] bertkit serve",
    ] {
        assert!(out.contains(stage), "missing {stage}: {out}");
    }
    // The prepared data is complete and loadable.
    let manifest = bertkit_train::manifest::Manifest::read(&dir.path().join("data")).unwrap();
    assert_eq!(manifest.counts.documents, 24);
    assert!(manifest.settings.nsp);
    assert!(out.contains("tokens to predict"), "{out}");
    assert!(out.contains("embeddings identical bit for bit"));
    // Pretraining ran and the loss fell clearly on the built-in corpus.
    assert!(out.contains("pretrain: 120 steps"), "{out}");
    let losses: Vec<f64> = std::fs::read_to_string(dir.path().join("pretrain/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 6, "{losses:?}");
    assert!(losses[5] < losses[0] - 1.0, "{losses:?}");
    assert!(dir.path().join("hf/model.safetensors").exists());
    // The fine-tuned classifier learned the built-in task.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("finetuned/metrics.json")).unwrap(),
    )
    .unwrap();
    assert!(m["best"]["accuracy"].as_f64().unwrap() >= 0.9, "{m}");
    assert!(out.contains("validation accuracy"), "{out}");
    // Its curves drawn and its model card written.
    assert!(out.contains("curves of"), "{out}");
    assert!(dir.path().join("finetuned/curves.svg").exists());
    assert!(dir.path().join("finetuned/README.md").exists());
    // The 1-layer student, with the teacher's accuracy beside its own.
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("distilled/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(d["student"]["layers"], 1, "{d}");
    // It learned the teacher's hidden states and attention too (its top layer's).
    let terms = &d["distillation"];
    assert_eq!(
        (
            terms["hidden_weight"].clone(),
            terms["attention_weight"].clone()
        ),
        (1.0.into(), 1.0.into()),
        "{d}"
    );
    assert_eq!(terms["layer_map"], serde_json::json!([1]), "{d}");
    assert_eq!(
        d["teacher"]["validation"]["accuracy"], m["best"]["accuracy"],
        "{d}"
    );
    assert!(d["best"]["accuracy"].as_f64().unwrap() >= 0.8, "{d}");
    assert!(
        out.contains("teacher (") && out.contains("student (1 layers"),
        "{out}"
    );
    // Two ranks trained 20 steps; rank 0 alone logged them.
    assert!(out.contains("[rank 0] pretrain: 20 steps"), "{out}");
    let records =
        std::fs::read_to_string(dir.path().join("pretrain-2-ranks/metrics.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 4, "{records}");
    // The int8 plan of the classifier passed its parity check and labels new sentences.
    assert!(out.contains("parity passed"), "{out}");
    // The server answered over HTTP and stopped after draining.
    assert!(out.contains("/predict -> 200"), "{out}");
    assert!(out.contains("(KServe v2) -> 200: probabilities ["), "{out}");
    assert!(out.contains("/metrics -> 200"), "{out}");
    assert!(out.contains("bertkit serve: stopped"), "{out}");
    assert!(
        out.contains("\"the old sailor watched the red boat at dawn.\" -> water"),
        "{out}"
    );
    assert!(
        out.contains("\"a dog followed the long road in the rain.\" -> land"),
        "{out}"
    );
    let meta = bertkit_runtime::PlanMeta::read(&dir.path().join("finetuned-int8.plan")).unwrap();
    assert_eq!(meta.precision, bertkit_runtime::Precision::Int8);
}

/// `--model ORG/NAME` reads the model from the local Hugging Face hub cache (HF_HUB_CACHE or
/// HF_HOME), laid out as huggingface_hub writes it (refs/main, snapshots/COMMIT/ of links into
/// blobs/), offline; a name that is not there is an error naming the cache folder looked in.
#[test]
fn models_by_name_come_from_the_hub_cache() {
    let home = tempfile::tempdir().unwrap();
    let repo_dir = home
        .path()
        .join("hub/models--sentence-transformers--all-MiniLM-L6-v2");
    let commit = "8b3219a92973c328a8e22fadcfa821b5dc75636a";
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(snap.join("1_Pooling")).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    for (i, name) in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "modules.json",
        "1_Pooling/config.json",
    ]
    .iter()
    .enumerate()
    {
        let blob = repo_dir.join("blobs").join(format!("blob{i}"));
        std::os::unix::fs::symlink(minilm().join(name), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(name)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let input = write_inputs(dir.path());
    let by_path = dir.path().join("path.jsonl");
    ok(embed_cmd(&minilm(), &input, &by_path, &[]));
    let by_name = dir.path().join("name.jsonl");
    let run = |model: &str, output: &Path| {
        Command::new(env!("CARGO_BIN_EXE_bertkit"))
            .current_dir(dir.path())
            .env_remove("HF_HUB_CACHE")
            .env("HF_HOME", home.path())
            .args(["embed", "--model", model, "--input"])
            .arg(&input)
            .arg("--output")
            .arg(output)
            .output()
            .unwrap()
    };
    ok(run("sentence-transformers/all-MiniLM-L6-v2", &by_name));
    assert_eq!(
        std::fs::read(&by_path).unwrap(),
        std::fs::read(&by_name).unwrap()
    );
    let info = Command::new(env!("CARGO_BIN_EXE_bertkit"))
        .env("HF_HUB_CACHE", home.path().join("hub"))
        .args(["info", "sentence-transformers/all-MiniLM-L6-v2"])
        .output()
        .unwrap();
    assert!(ok(info).contains("22713216"));

    let out = run(
        "sentence-transformers/all-mpnet-base-v2",
        &dir.path().join("x.jsonl"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("models--sentence-transformers--all-mpnet-base-v2")
            && err.contains("Hugging Face cache"),
        "{err}"
    );
}
