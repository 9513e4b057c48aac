//! `bertkit export` end to end: a fine-tuned MiniLM classifier at every precision against its
//! checkpoint on held-out movie reviews (argmax agreement, accuracy drop), ONNX through
//! onnxruntime against transformers' outputs, the HF layout, bench-plan, refusals.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::{bertkit, python_script, repo, run_ok};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn asset(path: &str) -> PathBuf {
    let p = repo().join("assets").join(path);
    assert!(
        p.exists(),
        "run scripts/fetch-assets.sh first ({})",
        p.display()
    );
    p
}

fn tiny(task: &str) -> PathBuf {
    repo()
        .join("tests/fixtures/hf-reference/tiny_heads")
        .join(task)
}

#[test]
fn a_finetuned_minilm_keeps_its_decisions_at_every_precision() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sentiment");
    let validation = asset("data/sentiment/validation.jsonl");
    run_ok(bertkit().args([
        "finetune",
        "--task",
        "classify",
        "--model",
        s(&asset("all-MiniLM-L6-v2")),
        "--train",
        s(&asset("data/sentiment/train.jsonl")),
        "--validation",
        s(&validation),
        "--text-column",
        "sentence",
        "--out",
        s(&model),
        "--max-train-examples",
        "1280",
        "--max-eval-examples",
        "100",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-seq-length",
        "64",
        "--lr",
        "1e-4",
    ]));
    // 600 held-out reviews with their labels, as export's calibration file.
    let calibration = dir.path().join("reviews.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&validation)
        .unwrap()
        .lines()
        .skip(100)
        .take(600)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            serde_json::json!({"text": v["sentence"], "label": v["label"]}).to_string()
        })
        .collect();
    std::fs::write(&calibration, lines.join("\n")).unwrap();
    // int8: all four projections of a layer (the default, as ONNX Runtime quantizes every
    // MatMul), and with the FFN output projection kept in f32.
    for variant in ["fp32", "fp16", "bf16", "int8", "int8-ffn-out-f32"] {
        let precision = if variant.starts_with("int8") {
            "int8"
        } else {
            variant
        };
        let plan = dir.path().join(format!("sentiment-{variant}.plan"));
        let mut cmd = bertkit();
        cmd.args([
            "export",
            "--model",
            s(&model),
            "--out",
            s(&plan),
            "--precision",
            precision,
            "--calibration",
            s(&calibration),
            "--max-length",
            "64",
        ]);
        // int8 and bf16 plans tune their kernel choice (fp32 and fp16 only the threads).
        if precision != "int8" && precision != "bf16" {
            cmd.arg("--no-tune");
        }
        if variant == "int8-ffn-out-f32" {
            cmd.arg("--int8-ffn-out-f32");
        }
        let printed = run_ok(&mut cmd);
        let meta = json(&plan.join("plan.json"));
        assert_eq!(meta["task"], "sequence-classification");
        assert_eq!(meta["labels"], serde_json::json!(["negative", "positive"]));
        let p = &meta["parity"];
        assert_eq!(p["samples"], 600);
        assert_eq!(p["passed"], true, "{printed}");
        let agreement = p["argmax_agreement"].as_f64().unwrap();
        let (before, after) = (
            p["checkpoint_accuracy"].as_f64().unwrap(),
            p["plan_accuracy"].as_f64().unwrap(),
        );
        eprintln!(
            "{variant}: max abs {:.3e}, agreement {agreement:.4}, accuracy {before:.4} -> \
             {after:.4}",
            p["max_abs_error"].as_f64().unwrap()
        );
        assert!(printed.contains("accuracy: checkpoint"), "{printed}");
        assert!(
            before > 0.6,
            "the fine-tuned checkpoint learned little: {before}"
        );
        if precision == "fp32" {
            assert!(p["max_abs_error"].as_f64().unwrap() <= 1e-4, "{p}");
            assert_eq!(agreement, 1.0);
        } else {
            // int8 flips the few reviews whose logits nearly tie: 99.17% agreement in both
            // int8 variants on the machine of docs/PERFORMANCE.md, where ONNX Runtime's int8 of
            // the same checkpoint agrees on 95.17% (scripts/bench/int8_agreement_peer.py). The
            // bar leaves room for the fine-tuning itself to land elsewhere on another CPU.
            let bar = if precision == "int8" { 0.985 } else { 0.99 };
            assert!(agreement >= bar, "{variant}: {agreement}");
            assert!(
                (before - after).abs() <= 0.02,
                "{variant}: {before} -> {after}"
            );
        }
        if precision == "bf16" {
            // Where the CPU has AVX-512 BF16, tuning times bf16 products against the weights
            // widened to f32 (on the Intel Xeon VM measured, the f32 kernel was faster); elsewhere
            // the weights are always widened and there is nothing to choose.
            let t = &meta["tuning"];
            let kernels = t["kernels"].as_str().unwrap_or_default();
            let trials = t["trials"].as_array().unwrap();
            if kernels.contains("bf16=avx512-bf16") {
                let chosen = t["bf16_kernel"].as_str().unwrap_or_default();
                assert!(["bf16", "widened-f32"].contains(&chosen), "{t}");
                for k in ["bf16", "widened-f32"] {
                    let with = format!("bf16_kernel={k}");
                    assert!(
                        trials
                            .iter()
                            .any(|x| x["setting"].as_str().unwrap().contains(&with)),
                        "{t}"
                    );
                }
                assert!(
                    printed.contains(&format!("bf16 kernel {chosen}")),
                    "{printed}"
                );
            } else {
                assert!(t.get("bf16_kernel").is_none(), "{t}");
            }
        }
        if precision == "int8" {
            let f32_ffn_out = variant == "int8-ffn-out-f32";
            let optimizations = meta["optimizations"].to_string();
            assert_eq!(optimizations.contains("ffn-output-in-f32"), f32_ffn_out);
            // The FFN output projection's weight is int8 unless kept in f32.
            let weights = std::fs::read(plan.join("weights.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
            let dtype = st.tensor("layer.0.ffn_out.w").unwrap().dtype();
            let want = if f32_ffn_out {
                safetensors::Dtype::F32
            } else {
                safetensors::Dtype::I8
            };
            assert_eq!(dtype, want, "{variant}");
            let t = &meta["tuning"];
            assert!(t["trials"].as_array().unwrap().len() >= 2, "{t}");
            assert!(t["int8_kernel"].is_string());
            // The instruction sets the kernels ran on, e.g. "f32=avx512 int8=avx512-vnni".
            let kernels = t["kernels"].as_str().unwrap_or_default();
            assert!(
                kernels.starts_with("f32=") && kernels.contains(" int8="),
                "{t}"
            );
        }
    }
}

#[test]
fn onnx_export_runs_in_onnxruntime_like_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for (task, outputs) in [
        ("sequence_classification", vec!["logits"]),
        ("question_answering", vec!["start_logits", "end_logits"]),
    ] {
        let out = dir.path().join(format!("{task}/model.onnx"));
        let printed = run_ok(bertkit().args([
            "export",
            "--format",
            "onnx",
            "--model",
            s(&tiny(task)),
            "--out",
            s(&out),
        ]));
        assert!(printed.contains("opset 17"), "{printed}");
        // transformers' outputs for padded inputs (tests/fixtures/hf-reference).
        let reference = json(&tiny(task).join("reference_outputs.json"));
        let mut inputs = serde_json::json!({
            "input_ids": reference["input_ids"],
            "attention_mask": reference["attention_mask"],
            "token_type_ids": reference["token_type_ids"],
            "expected": {},
        });
        for o in &outputs {
            inputs["expected"][o] = reference[o].clone();
        }
        let inputs_path = dir.path().join(format!("{task}.json"));
        std::fs::write(&inputs_path, inputs.to_string()).unwrap();
        let result = python_script(
            "check_onnx.py",
            &[OsStr::new(&out), inputs_path.as_os_str()],
            "onnxruntime",
        );
        for o in &outputs {
            let d = result["max_abs_diff"][o].as_f64().unwrap();
            assert!(d <= 1e-4, "{task} {o}: {d}");
        }
    }
    // An existing file is kept unless --overwrite.
    let out = dir.path().join("sequence_classification/model.onnx");
    let out_str = s(&out);
    let failed = bertkit()
        .args(["export", "--format", "onnx", "--model"])
        .arg(tiny("sequence_classification"))
        .args(["--out", out_str])
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("--overwrite"));
}

#[test]
fn hf_format_and_bench_plan() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    run_ok(bertkit().args([
        "export",
        "--format",
        "hf",
        "--model",
        s(&tiny("token_classification")),
        "--out",
        s(&hf),
    ]));
    assert_eq!(
        json(&hf.join("config.json"))["architectures"][0],
        "BertForTokenClassification"
    );
    let plan = dir.path().join("ner.plan");
    let printed = run_ok(bertkit().args([
        "export",
        "--model",
        s(&tiny("token_classification")),
        "--out",
        s(&plan),
        "--precision",
        "int8",
    ]));
    assert!(printed.contains("parity passed"), "{printed}");
    let line = run_ok(bertkit().args([
        "bench-plan",
        "--plan",
        s(&plan),
        "--batch",
        "2",
        "--seq",
        "16",
        "--iters",
        "3",
        "--mixed-lengths",
    ]));
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["peer"], "bertkit-int8");
    assert!(v["ms_median"].as_f64().unwrap() > 0.0);
    assert_eq!(v["batch"], 2);
    // A refused option is named.
    let out = bertkit()
        .args(["export", "--model"])
        .arg(tiny("token_classification"))
        .args(["--out"])
        .arg(dir.path().join("x.plan"))
        .args(["--precision", "fp8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fp8"));
}
