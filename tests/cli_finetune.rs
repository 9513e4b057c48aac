//! `bertkit finetune`, `eval` and `predict` end to end: the real MiniLM on the movie-review
//! sentences and on the SQuAD / CoNLL fixtures, every problem type on a tiny model, GLUE's TSV
//! layout, and bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{bertkit, jsonl, repo, run_ok, toy_csv, toy_rows};
use serde_json::Value;

fn minilm() -> PathBuf {
    let dir = repo().join("assets/all-MiniLM-L6-v2");
    assert!(dir.exists(), "run scripts/fetch-assets.sh first");
    dir
}

fn asset(path: &str) -> PathBuf {
    let p = repo().join("assets/data").join(path);
    assert!(
        p.exists(),
        "run scripts/fetch-assets.sh first ({})",
        p.display()
    );
    p
}

fn tiny() -> PathBuf {
    repo().join("tests/fixtures/hf-reference/tiny_heads/sequence_classification")
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn finetune(args: &[&str]) -> String {
    run_ok(bertkit().arg("finetune").args(args))
}

/// Runs bertkit and returns its stderr, asserting it failed.
fn fails(args: &[&str]) -> String {
    let out = bertkit().args(args).output().unwrap();
    assert!(!out.status.success(), "expected a failure: {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn minilm_learns_movie_review_sentiment() {
    // The reduced CI version of scripts/bench/finetune_sentiment.sh: 1280 training sentences,
    // one epoch, 400 held-out sentences (the full run is in docs/PERFORMANCE.md).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sentiment");
    let train = asset("sentiment/train.jsonl");
    let validation = asset("sentiment/validation.jsonl");
    let printed = finetune(&[
        "--task",
        "classify",
        "--model",
        s(&minilm()),
        "--train",
        s(&train),
        "--validation",
        s(&validation),
        "--text-column",
        "sentence",
        "--out",
        s(&out),
        "--max-train-examples",
        "1280",
        "--max-eval-examples",
        "400",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-seq-length",
        "64",
        "--lr",
        "1e-4",
        "--report-to",
        "tensorboard",
    ]);
    let metrics = json(&out.join("metrics.json"));
    let acc = metrics["best"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.75, "held-out accuracy {acc}: {printed}");
    assert_eq!(metrics["validation"]["examples"], 400);
    assert_eq!(metrics["train"]["examples"], 1280);

    // The folder is a BertForSequenceClassification with the labels, as transformers reads it.
    let config = json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["0"], "negative");
    assert_eq!(config["id2label"]["1"], "positive");
    assert_eq!(config["problem_type"], "single_label_classification");
    assert!(out.join("tensorboard").read_dir().unwrap().next().is_some());
    assert!(
        !out.join("metrics.jsonl").exists(),
        "--report-to tensorboard wrote metrics.jsonl"
    );

    // The model card parses with huggingface_hub, as the Hub reads it.
    let card = model_card(&out);
    assert_eq!(card["data"]["pipeline_tag"], "text-classification");
    assert_eq!(card["data"]["base_model"], s(&minilm()));
    assert_eq!(
        card["data"]["labels"],
        serde_json::json!(["negative", "positive"])
    );
    assert_eq!(
        card["data"]["datasets"],
        serde_json::json!(["train.jsonl", "validation.jsonl"])
    );
    assert_eq!(card["eval_results"][0]["metric_type"], "accuracy");
    assert_eq!(card["eval_results"][0]["metric_value"].as_f64(), Some(acc));
    assert_eq!(card["eval_results"][0]["dataset_name"], "validation.jsonl");
    let body = card["text"].as_str().unwrap();
    assert!(
        body.contains("bertkit finetune --task classify --model") && body.contains("--lr 1e-4"),
        "{body}"
    );

    // eval reproduces the best accuracy; predict's labels give the same accuracy.
    let evaluated: Value = serde_json::from_str(&run_ok(bertkit().args([
        "eval",
        "--model",
        s(&out),
        "--data",
        s(&validation),
        "--max-examples",
        "400",
    ])))
    .unwrap();
    assert!((evaluated["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9);
    let input = dir.path().join("input.jsonl");
    let rows: Vec<Value> = jsonl(&validation).into_iter().take(400).collect();
    let mut text = String::new();
    for r in &rows {
        text.push_str(&serde_json::json!({ "sentence": r["sentence"] }).to_string());
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let output = dir.path().join("predictions.jsonl");
    run_ok(bertkit().args([
        "predict",
        "--model",
        s(&out),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ]));
    let preds = jsonl(&output);
    assert_eq!(preds.len(), 400);
    let right = preds
        .iter()
        .zip(&rows)
        .filter(|(p, r)| p["label"] == r["label"])
        .count();
    assert!(
        (right as f64 / 400.0 - acc).abs() < 1e-9,
        "{right} vs {acc}"
    );
    let p0 = &preds[0];
    let sum: f64 = p0["scores"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(
        (sum - 1.0).abs() < 1e-5 && p0["score"].as_f64().unwrap() >= 0.5,
        "{p0}"
    );

    // convert --to hf keeps the head and the labels.
    let hf = dir.path().join("hf");
    run_ok(bertkit().args(["convert", "--to", "hf", s(&out), s(&hf)]));
    assert_eq!(json(&hf.join("config.json"))["id2label"]["1"], "positive");
    assert!(!hf.join("bertkit.json").exists());
    // Its card keeps the fine-tuning's metrics, data and command, and adds the conversion.
    let card = model_card(&hf);
    assert_eq!(card["data"]["base_model"], s(&out));
    assert_eq!(card["eval_results"][0]["metric_type"], "accuracy");
    assert_eq!(card["eval_results"][0]["metric_value"].as_f64(), Some(acc));
    assert_eq!(card["data"]["labels"][1], "positive");
    let body = card["text"].as_str().unwrap();
    assert!(
        body.contains("bertkit finetune --task") && body.contains("bertkit convert --to hf"),
        "{body}"
    );
}

/// `MODEL/README.md` as huggingface_hub's ModelCard reads it (scripts/check_model_card.py).
fn model_card(dir: &Path) -> Value {
    common::python_script("check_model_card.py", &[dir.as_os_str()], "huggingface_hub")
}

#[test]
fn ner_and_qa_fit_the_fixtures_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let conll = asset("ner/conll2003_fixture.txt");
    let ner = dir.path().join("ner");
    finetune(&[
        "--task",
        "ner",
        "--model",
        s(&minilm()),
        "--train",
        s(&conll),
        "--validation",
        s(&conll),
        "--out",
        s(&ner),
        "--epochs",
        "20",
        "--batch-size",
        "2",
        "--lr",
        "5e-4",
        "--warmup-ratio",
        "0",
        "--tag-scheme",
        "iob1",
    ]);
    let m = json(&ner.join("metrics.json"));
    assert_eq!(m["best"]["f1"], 1.0, "{m}");
    let config = json(&ner.join("config.json"));
    assert_eq!(config["architectures"][0], "BertForTokenClassification");
    assert_eq!(config["id2label"].as_object().unwrap().len(), 4);
    let input = write(
        dir.path(),
        "ner.jsonl",
        "{\"tokens\": [\"AI2\", \"engineer\", \"Joel\", \"lives\", \"in\", \"Seattle\", \".\"]}\n",
    );
    let output = dir.path().join("ner-out.jsonl");
    run_ok(bertkit().args([
        "predict",
        "--model",
        s(&ner),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ]));
    let p = &jsonl(&output)[0];
    assert_eq!(
        p["tags"],
        serde_json::json!(["I-ORG", "O", "I-PER", "O", "O", "I-LOC", "O"]),
        "{p}"
    );
    let types: Vec<&str> = p["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ORG", "PER", "LOC"]);
    assert_eq!(p["entities"][1]["text"], "Joel");

    let squad = asset("qa/squad_v1_fixture.json");
    let qa = dir.path().join("qa");
    finetune(&[
        "--task",
        "qa",
        "--model",
        s(&minilm()),
        "--train",
        s(&squad),
        "--validation",
        s(&squad),
        "--out",
        s(&qa),
        "--epochs",
        "15",
        "--batch-size",
        "4",
        "--lr",
        "3e-4",
        "--warmup-ratio",
        "0",
        "--max-seq-length",
        "128",
        "--doc-stride",
        "32",
    ]);
    let m = json(&qa.join("metrics.json"));
    assert_eq!(m["best"]["exact_match"], 100.0, "{m}");
    // The windows: the fixture's long paragraph needs more than one at 128 tokens.
    assert!(m["train"]["features"].as_u64().unwrap() > 5, "{m}");
    assert_eq!(
        json(&qa.join("config.json"))["architectures"][0],
        "BertForQuestionAnswering"
    );
    let spec = json(&qa.join("finetune.json"));
    assert_eq!(spec["qa"]["doc_stride"], 32);
    let evaluated: Value = serde_json::from_str(&run_ok(bertkit().args([
        "eval",
        "--model",
        s(&qa),
        "--data",
        s(&squad),
    ])))
    .unwrap();
    assert_eq!(evaluated["exact_match"], 100.0);
    // Predictions point into the context.
    let examples = json(&squad);
    let para = &examples["data"][0]["paragraphs"][0];
    let context = para["context"].as_str().unwrap();
    let q = &para["qas"][0];
    let line = serde_json::json!({"id": q["id"], "question": q["question"], "context": context});
    let input = write(dir.path(), "qa.jsonl", &format!("{line}\n"));
    let output = dir.path().join("qa-out.jsonl");
    run_ok(bertkit().args([
        "predict",
        "--model",
        s(&qa),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ]));
    let p = &jsonl(&output)[0];
    let (start, end) = (
        p["start"].as_u64().unwrap() as usize,
        p["end"].as_u64().unwrap() as usize,
    );
    let chars: String = context.chars().skip(start).take(end - start).collect();
    assert_eq!(p["answer"].as_str().unwrap(), chars);
    assert_eq!(p["answer"], q["answers"][0]["text"], "{p}");
}

/// HF Trainer's flag names work as aliases, and a value outside a closed set is refused with
/// the list of values.
#[test]
fn hf_trainer_flag_names_and_closed_sets() {
    let dir = tempfile::tempdir().unwrap();
    let csv = toy_csv(dir.path(), "toy.csv", 24);
    let out = dir.path().join("out");
    let printed = finetune(&[
        "--task",
        "classify",
        "--model",
        s(&tiny()),
        "--train",
        s(&csv),
        "--validation",
        s(&csv),
        "--output-dir",
        s(&out),
        "--num-train-epochs",
        "2",
        "--per-device-train-batch-size",
        "4",
        "--gradient-accumulation-steps",
        "3",
        "--learning-rate",
        "1e-3",
        "--logging-steps",
        "1",
        "--precision",
        "f32",
    ]);
    // 24 examples in micro-batches of 4, 3 per step: 2 steps an epoch.
    let m = json(&out.join("metrics.json"));
    assert_eq!(m["train"]["steps"], 4, "{printed}");
    assert_eq!(
        jsonl(&out.join("metrics.jsonl"))
            .iter()
            .filter(|r| r["split"] == "train")
            .count(),
        4
    );
    // By default both metrics.jsonl and TensorBoard, as for pretraining.
    assert!(out.join("tensorboard").is_dir());
    // `bertkit plot` draws them: one loss line with a point per logged step, one line per
    // evaluation metric.
    run_ok(bertkit().args(["plot", s(&out)]));
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    let series = |name: &str| -> usize {
        let at = svg
            .find(&format!("data-series=\"{name}\""))
            .unwrap_or_else(|| panic!("no {name} curve: {svg}"));
        let points = &svg[at..];
        let points = &points[points.find("points=\"").unwrap() + 8..];
        points[..points.find('"').unwrap()].split(' ').count()
    };
    assert_eq!(series("loss"), 4);
    assert_eq!(series("accuracy"), 2);
    assert_eq!(series("matthews_correlation"), 2);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("| learning rate | 1e-3 |") && card.contains("| precision | fp32 |"),
        "{card}"
    );
    // --overwrite-output-dir replaces the model.
    let again = fails(&[
        "finetune",
        "--task",
        "classify",
        "--model",
        s(&tiny()),
        "--train",
        s(&csv),
        "--validation",
        s(&csv),
        "--output-dir",
        s(&out),
    ]);
    assert!(again.contains("--overwrite"), "{again}");
    finetune(&[
        "--task",
        "classify",
        "--model",
        s(&tiny()),
        "--train",
        s(&csv),
        "--validation",
        s(&csv),
        "--output-dir",
        s(&out),
        "--overwrite-output-dir",
        "--max-steps",
        "1",
    ]);
    assert_eq!(json(&out.join("metrics.json"))["train"]["steps"], 1);

    for (flag, typo, listed) in [
        ("--task", "clasify", "classify, ner, qa"),
        ("--precision", "fp64", "fp32, bf16, fp16"),
        (
            "--problem-type",
            "multilabel",
            "single-label, multi-label, regression",
        ),
        ("--glue", "sst-2", "cola, sst2, mrpc"),
        ("--format", "xlsx", "csv, tsv, jsonl, parquet, conll, squad"),
        ("--tag-scheme", "bioes", "iob2, bio, iob1"),
    ] {
        let task = if flag == "--task" {
            "--format"
        } else {
            "--task"
        };
        let value = if flag == "--task" { "csv" } else { "classify" };
        let err = fails(&[
            "finetune",
            flag,
            typo,
            task,
            value,
            "--model",
            "m",
            "--train",
            "t",
            "--validation",
            "v",
            "--out",
            "o",
        ]);
        assert!(
            err.contains(typo) && err.contains(listed),
            "{flag} {typo}: {err}"
        );
    }
    let err = fails(&[
        "export",
        "--model",
        "m",
        "--out",
        "o",
        "--precision",
        "int4",
    ]);
    assert!(err.contains("fp32, fp16, bf16, int8"), "{err}");
}

#[test]
fn every_problem_type_and_glue_layout_trains_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let rows = toy_rows(64);
    // Multi-label: JSON lists of labels.
    let mut ml = String::new();
    for (i, (text, label, _)) in rows.iter().enumerate() {
        let labels: Vec<&str> = if i % 3 == 0 {
            vec![label, "dawn"]
        } else {
            vec![label]
        };
        ml.push_str(&serde_json::json!({"text": text, "label": labels}).to_string());
        ml.push('\n');
    }
    let ml = write(dir.path(), "multi.jsonl", &ml);
    let out = dir.path().join("multi");
    finetune(&[
        "--task",
        "classify",
        "--model",
        s(&tiny()),
        "--train",
        s(&ml),
        "--validation",
        s(&ml),
        "--out",
        s(&out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
    ]);
    let config = json(&out.join("config.json"));
    assert_eq!(config["problem_type"], "multi_label_classification");
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "dawn", "1": "land", "2": "water"})
    );
    let m = json(&out.join("metrics.json"));
    assert!(
        m["best"]["micro_f1"].is_number() && m["best"]["subset_accuracy"].is_number(),
        "{m}"
    );

    // Regression: float labels in a CSV.
    let mut csv = String::from("text,score\n");
    for (text, _, score) in &rows {
        csv.push_str(&format!("\"{text}\",{score}\n"));
    }
    let csv = write(dir.path(), "reg.csv", &csv);
    let out = dir.path().join("reg");
    finetune(&[
        "--task",
        "classify",
        "--model",
        s(&tiny()),
        "--train",
        s(&csv),
        "--validation",
        s(&csv),
        "--label-column",
        "score",
        "--out",
        s(&out),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
    ]);
    assert_eq!(json(&out.join("config.json"))["problem_type"], "regression");
    let m = json(&out.join("metrics.json"));
    assert!(m["best"]["pearson"].as_f64().unwrap() > 0.5, "{m}");

    // GLUE: SST-2's and STS-B's official TSV layouts, with their metrics.
    let mut sst = String::from("sentence\tlabel\n");
    let mut sts = String::from(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n",
    );
    for (i, (text, label, score)) in rows.iter().enumerate() {
        sst.push_str(&format!("{text}\t{}\n", (*label == "water") as u8));
        sts.push_str(&format!(
            "{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{text}\ta \"{label}\" thing\t{}\n",
            score.abs()
        ));
    }
    let sst = write(dir.path(), "sst.tsv", &sst);
    let out = dir.path().join("sst2");
    finetune(&[
        "--glue",
        "sst2",
        "--task",
        "classify",
        "--model",
        s(&tiny()),
        "--train",
        s(&sst),
        "--validation",
        s(&sst),
        "--out",
        s(&out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
    ]);
    let m = json(&out.join("metrics.json"));
    assert!(m["best"]["accuracy"].is_number(), "{m}");
    assert_eq!(
        json(&out.join("config.json"))["id2label"],
        serde_json::json!({"0": "0", "1": "1"})
    );
    let sts = write(dir.path(), "sts.tsv", &sts);
    let out = dir.path().join("stsb");
    finetune(&[
        "--glue",
        "stsb",
        "--task",
        "classify",
        "--model",
        s(&tiny()),
        "--train",
        s(&sts),
        "--validation",
        s(&sts),
        "--out",
        s(&out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ]);
    let m = json(&out.join("metrics.json"));
    let keys: Vec<&String> = m["best"].as_object().unwrap().keys().collect();
    assert!(
        keys.contains(&&"pearson".to_string()) && keys.contains(&&"spearman".to_string()),
        "{m}"
    );
    assert_eq!(
        json(&out.join("finetune.json"))["classify"]["text_pair_column"],
        "sentence2"
    );
}

#[test]
fn bad_input_is_named_by_file_and_line_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let good = { toy_csv(dir.path(), "train.csv", 16) };
    let base = |train: &Path, validation: &Path, out: &str| -> Vec<String> {
        [
            "finetune",
            "--task",
            "classify",
            "--model",
            s(&tiny()),
            "--train",
            s(train),
            "--validation",
            s(validation),
            "--out",
            s(&dir.path().join(out)),
            "--epochs",
            "1",
            "--batch-size",
            "8",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let refs = |v: &[String]| {
        v.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\u{1}")
    };
    let run_fail = |v: Vec<String>| {
        let joined = refs(&v);
        let args: Vec<&str> = joined.split('\u{1}').collect();
        fails(&args)
    };

    // An unknown label in the validation file, on its line 3.
    let bad_label = write(
        dir.path(),
        "unknown.csv",
        "text,label\nthe cat saw the sea,water\nthe cat saw a dog,sky\n",
    );
    let err = run_fail(base(&good, &bad_label, "a"));
    assert!(
        err.contains("unknown.csv:3") && err.contains("\"sky\""),
        "{err}"
    );
    // A missing column.
    let err = run_fail(
        [
            base(&good, &good, "b"),
            vec!["--text-column".into(), "sentence".into()],
        ]
        .concat(),
    );
    assert!(
        err.contains("train.csv") && err.contains("\"sentence\"") && err.contains("text, label"),
        "{err}"
    );
    // An empty text and a malformed row (three fields).
    let broken = write(dir.path(), "broken.csv", "text,label\nthe cat saw the sea,water\n,land\nthe cat,saw,land\nthe dog saw the road,land\n");
    let err = run_fail(base(&broken, &good, "c"));
    assert!(err.contains("broken.csv:"), "{err}");
    // Skipped with a count instead.
    let out = dir.path().join("d");
    let printed = {
        let v = [base(&broken, &good, "d"), vec!["--skip-invalid".into()]].concat();
        let joined = refs(&v);
        let args: Vec<&str> = joined.split('\u{1}').collect();
        let o = bertkit().args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(
        printed.contains("skipped 2 invalid training rows"),
        "{printed}"
    );
    assert_eq!(
        json(&out.join("metrics.json"))["train"]["skipped_invalid"],
        2
    );
    assert_eq!(json(&out.join("metrics.json"))["train"]["examples"], 2);
    // An existing model folder is not overwritten.
    let err = run_fail(base(&good, &good, "d"));
    assert!(err.contains("already holds a model"), "{err}");

    // A QA answer that is not in its context.
    let squad = write(
        dir.path(),
        "squad.json",
        r#"{"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "The harbour opened in 1887.", "qas": [{"id": "q1", "question": "When?", "answers": [{"text": "1888", "answer_start": 22}]}]}]}]}"#,
    );
    let err = fails(&[
        "finetune",
        "--task",
        "qa",
        "--model",
        s(&tiny()),
        "--train",
        s(&squad),
        "--validation",
        s(&squad),
        "--out",
        s(&dir.path().join("qa")),
    ]);
    assert!(
        err.contains("squad.json") && err.contains("q1") && err.contains("not in its context"),
        "{err}"
    );
}

/// `--save-steps` writes checkpoints through the pretraining's checkpoint code; a run resumed
/// from one (`--resume auto`) ends bit for bit where the uninterrupted run did: the same
/// checkpoints, best model, evaluations and logged losses; a damaged checkpoint is reported
/// and skipped; a changed setting is refused.
#[test]
fn finetuning_resumes_bit_for_bit_from_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let csv = toy_csv(dir.path(), "toy.csv", 24);
    let a = dir.path().join("a");
    // 24 examples, batches of 4: 6 steps an epoch, 18 in all; checkpoints at 4, 8, 12 (after
    // epoch 2's evaluation) and 16. Dropout is on (the tiny model's 0.1).
    let args = |out: &Path| -> Vec<String> {
        [
            "--task",
            "classify",
            "--model",
            s(&tiny()),
            "--train",
            s(&csv),
            "--validation",
            s(&csv),
            "--out",
            s(out),
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--save-steps",
            "4",
            "--save-total-limit",
            "10",
            "--logging-steps",
            "1",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let args_a = args(&a);
    finetune(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
    let ckpts = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        ckpts(&a),
        [
            "step-00000004",
            "step-00000008",
            "step-00000012",
            "step-00000016"
        ]
    );
    let state = json(&a.join("checkpoints/step-00000012/trainer_state.json"));
    assert_eq!(state["epochs_evaluated"], 2, "{state}");
    assert_eq!(state["evaluations"].as_array().unwrap().len(), 2);

    // An interrupted run: its folder as it was after step 8 plus a damaged step-8 checkpoint
    // (a truncated model file), so the resume starts at step 4.
    let b = dir.path().join("b");
    common::copy_dir(&a, &b);
    for step in ["12", "16"] {
        std::fs::remove_dir_all(b.join(format!("checkpoints/step-000000{step}"))).unwrap();
    }
    let damaged = b.join("checkpoints/step-00000008/model.safetensors");
    let bytes = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let args_b = args(&b);
    let mut resume: Vec<&str> = args_b.iter().map(String::as_str).collect();
    resume.extend(["--resume", "auto"]);
    let out = bertkit().arg("finetune").args(&resume).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipping checkpoint") && stderr.contains("step-00000008"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resuming from") && stderr.contains("(step 4)"),
        "{stderr}"
    );
    for file in [
        "model.safetensors",
        "checkpoints/step-00000016/model.safetensors",
        "checkpoints/step-00000016/optimizer.safetensors",
        "checkpoints/step-00000012/model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file} differs after the resume"
        );
    }
    let (ma, mb) = (json(&a.join("metrics.json")), json(&b.join("metrics.json")));
    assert_eq!(ma["evaluations"], mb["evaluations"]);
    assert_eq!(ma["best"], mb["best"]);
    let losses = |out: &Path| -> Vec<(u64, f64)> {
        jsonl(&out.join("metrics.jsonl"))
            .iter()
            .filter(|r| r["split"] == "train")
            .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(losses(&a).len(), 18);

    // Another batch size cannot continue these checkpoints; without --resume the folder is
    // refused.
    let mut cmd: Vec<&str> = vec!["finetune"];
    cmd.extend(args_b.iter().map(String::as_str));
    let at = cmd.iter().position(|a| *a == "--batch-size").unwrap();
    cmd[at + 1] = "8";
    cmd.extend(["--resume", "auto"]);
    let err = fails(&cmd);
    assert!(
        err.contains("batch_size: 4") && err.contains("batch_size: 8"),
        "{err}"
    );
    let mut cmd = vec!["finetune"];
    cmd.extend(args_b.iter().map(String::as_str));
    let err = fails(&cmd);
    assert!(
        err.contains("already has checkpoints") && err.contains("--resume auto"),
        "{err}"
    );
}

/// A fine-tuning run from a recipe: the file's keys are the flags, `--set` changes the file,
/// the command line wins over both; configs/finetune/*.toml are all valid recipes; a key that
/// is no flag is refused naming the file.
#[test]
fn recipes_configure_finetuning() {
    let dir = tempfile::tempdir().unwrap();
    let csv = toy_csv(dir.path(), "toy.csv", 24);
    let out = dir.path().join("out");
    let recipe = write(
        dir.path(),
        "toy.toml",
        &format!(
            "task = \"classify\"\nmodel = {:?}\ntrain = {:?}\nvalidation = {:?}\nout = {:?}\n\
             epochs = 3\nbatch_size = 4\nlr = 1e-3\nreport_to = \"jsonl\"\noverwrite = true\n",
            s(&tiny()),
            s(&csv),
            s(&csv),
            s(&out)
        ),
    );
    finetune(&[
        "--config",
        s(&recipe),
        "--set",
        "epochs=1",
        "--learning-rate",
        "5e-4",
        "--logging-steps",
        "1",
    ]);
    let m = json(&out.join("metrics.json"));
    assert_eq!(m["train"]["steps"], 6, "--set epochs=1: 24 / 4 = 6 steps");
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("| learning rate | 5e-4 |"), "{card}");
    assert!(!out.join("tensorboard").exists(), "report_to = jsonl");

    // Activation checkpointing, switched on in the recipe's terms: the same run, the same
    // numbers (dropout included; to float rounding, as the layers' gradients are added up in
    // another order).
    let recomputed = dir.path().join("recomputed");
    finetune(&[
        "--config",
        s(&recipe),
        "--set",
        "epochs=1",
        "--set",
        "gradient_checkpointing=true",
        "--learning-rate",
        "5e-4",
        "--logging-steps",
        "1",
        "--output-dir",
        s(&recomputed),
    ]);
    let losses = |out: &Path| -> Vec<f64> {
        jsonl(&out.join("metrics.jsonl"))
            .iter()
            .filter(|r| r["split"] == "train")
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    let (kept, again) = (losses(&out), losses(&recomputed));
    assert_eq!(kept.len(), again.len());
    assert!(!kept.is_empty());
    for (a, b) in kept.iter().zip(&again) {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "{kept:?} vs {again:?}");
    }

    let bad = write(
        dir.path(),
        "bad.toml",
        "task = \"classify\"\nbatch_sise = 4\n",
    );
    let err = fails(&["finetune", "--config", s(&bad)]);
    assert!(
        err.contains("bad.toml") && err.contains("batch_sise"),
        "{err}"
    );
    let err = fails(&["finetune", "--config", s(&recipe), "--set", "lr=fast"]);
    assert!(err.contains("fast") && err.contains("toy.toml"), "{err}");

    let mut recipes: Vec<PathBuf> = std::fs::read_dir(repo().join("configs/finetune"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    recipes.sort();
    assert!(recipes.len() >= 11, "{recipes:?}");
    for r in &recipes {
        // Every key is a flag and every value parses: the run gets as far as the model.
        let err = fails(&[
            "finetune",
            "--config",
            s(r),
            "--set",
            "model=no-such-model-dir",
        ]);
        assert!(
            err.contains("no-such-model-dir") && err.contains("no such model folder"),
            "{}: {err}",
            r.display()
        );
    }
}
