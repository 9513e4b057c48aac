//! ONNX export: onnxruntime (scripts/check_onnx.py, run with $BERTKIT_PYTHON) reproduces bertkit's
//! own forward pass for the tiny models with each head and the real all-MiniLM-L6-v2, at two batch
//! sizes and sequence lengths (the dimensions are free), with padding in the batch.

use std::path::{Path, PathBuf};
use std::process::Command;

use bertkit_export::onnx::{export_onnx, OnnxSummary};
use bertkit_model::backend::Cpu;
use bertkit_model::checkpoint;
use bertkit_model::nn::to_host;
use bertkit_model::{Batch, BertConfig, BertTokenizer, Layout, LoadOptions, Task, TextInput};
use burn::tensor::Tensor;
use serde_json::{json, Value};

const TOL: f64 = 1e-4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/hf-reference").join(name)
}

fn minilm_dir() -> PathBuf {
    let dir = repo().join("assets/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets.sh",
        dir.display()
    );
    dir
}

/// Runs `scripts/SCRIPT ARGS` with $BERTKIT_PYTHON (else python3); fails the test with its
/// stderr and `needs` (the packages it imports) unless it succeeds; returns its stdout as JSON.
fn python_script(script: &str, args: &[&std::ffi::OsStr], needs: &str) -> Value {
    let python = std::env::var("BERTKIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(repo().join("scripts").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed (needs {needs}: scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Row-major data of `shape` as nested JSON lists.
fn nested(shape: &[usize], data: &[f32]) -> Value {
    match shape {
        [] => json!(data[0]),
        [n] => json!(data[..*n]),
        [n, rest @ ..] => {
            let step: usize = rest.iter().product();
            Value::Array(
                (0..*n)
                    .map(|i| nested(rest, &data[i * step..(i + 1) * step]))
                    .collect(),
            )
        }
    }
}

fn nested_ids(batch: &Batch, ids: &[i64]) -> Value {
    Value::Array(
        ids.chunks(batch.seq_len.max(1))
            .map(|row| json!(row))
            .collect(),
    )
}

fn host<const D: usize>(t: Tensor<Cpu, D>) -> Value {
    let h = to_host(t);
    nested(&h.shape, &h.data)
}

/// Exports `dir` into a temporary folder.
fn export(dir: &Path) -> (tempfile::TempDir, OnnxSummary) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model.onnx");
    let summary = export_onnx(dir, &out).unwrap();
    assert_eq!(summary.path, out);
    assert_eq!(summary.opset, 17);
    assert_eq!(summary.bytes, std::fs::metadata(&out).unwrap().len());
    assert!(summary.num_nodes > 0);
    // Written atomically: nothing but the model is left in the folder.
    let files: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    (tmp, summary)
}

/// bertkit's forward pass on `batch`, as the ONNX outputs of the model's task.
fn expected(dir: &Path, batch: &Batch) -> Value {
    let device = Default::default();
    let (model, _) = checkpoint::load::<Cpu>(dir, &LoadOptions::default(), &device).unwrap();
    let out = model.forward(&batch.to_input::<Cpu>(&device));
    match model.task {
        Task::Base => json!({
            "last_hidden_state": host(out.last_hidden_state),
            "pooler_output": host(out.pooler_output.unwrap()),
        }),
        Task::SequenceClassification => json!({"logits": host(out.sequence_logits.unwrap())}),
        Task::TokenClassification => json!({"logits": host(out.token_logits.unwrap())}),
        Task::QuestionAnswering => json!({
            "start_logits": host(out.start_logits.unwrap()),
            "end_logits": host(out.end_logits.unwrap()),
        }),
        other => panic!("no ONNX outputs for {other}"),
    }
}

fn shape_of(v: &Value) -> Vec<u64> {
    match v {
        Value::Array(items) => {
            let mut s = vec![items.len() as u64];
            if let Some(first) = items.first() {
                s.extend(shape_of(first));
            }
            s
        }
        _ => vec![],
    }
}

/// Exports the model in `dir`, then runs onnxruntime on two batches (sizes 2 and 3, different
/// lengths, padding in each) against bertkit's forward pass; returns the largest difference.
fn check_model(dir: &Path, outputs: &[&str]) -> f64 {
    let (tmp, summary) = export(dir);
    assert_eq!(summary.outputs, outputs);
    let tok = BertTokenizer::from_dir(dir).unwrap();
    let batches = [
        vec![
            TextInput::pair("What is this model for?", "It is a small model for tests."),
            TextInput::single("Hello world"),
        ],
        vec![
            TextInput::single("short"),
            TextInput::single("A slightly longer sentence, with punctuation and numbers: 42!"),
            TextInput::pair("one", "two three"),
        ],
    ];
    let mut worst = 0.0f64;
    let mut seen_lengths = Vec::new();
    for (k, inputs) in batches.iter().enumerate() {
        let batch = tok.batch(inputs, None).unwrap();
        seen_lengths.push(batch.seq_len);
        assert!(
            batch.attention_mask.contains(&0),
            "the batch has no padding"
        );
        let want = expected(dir, &batch);
        let spec = json!({
            "input_ids": nested_ids(&batch, &batch.input_ids),
            "attention_mask": nested_ids(&batch, &batch.attention_mask),
            "token_type_ids": nested_ids(&batch, &batch.token_type_ids),
            "expected": want,
        });
        let inputs_path = tmp.path().join(format!("inputs{k}.json"));
        std::fs::write(&inputs_path, spec.to_string()).unwrap();
        let r = python_script(
            "check_onnx.py",
            &[summary.path.as_os_str(), inputs_path.as_os_str()],
            "onnxruntime",
        );
        assert_eq!(r["outputs"], json!(outputs), "{}", dir.display());
        for name in outputs {
            let diff = r["max_abs_diff"][*name].as_f64().unwrap();
            eprintln!(
                "{} batch {}x{}: {name} max abs diff {diff:.2e}",
                dir.display(),
                batch.batch_size,
                batch.seq_len
            );
            assert!(diff <= TOL, "{}: {name} differs by {diff}", dir.display());
            worst = worst.max(diff);
            let shape: Vec<u64> = r["shapes"][*name]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(shape, shape_of(&want[*name]), "{name}");
            assert_eq!(shape[0], batch.batch_size as u64, "{name}: batch dim");
            // Every output but the pooled ones (pooler_output, sequence classification logits)
            // has a sequence dimension.
            let pooled = *name == "pooler_output" || (*name == "logits" && shape.len() == 2);
            if !pooled {
                assert_eq!(shape[1], batch.seq_len as u64, "{name}: sequence dim");
            }
        }
    }
    assert_ne!(seen_lengths[0], seen_lengths[1], "two sequence lengths");
    worst
}

#[test]
fn sequence_classification_matches_bertkit() {
    check_model(&fixture("tiny_heads/sequence_classification"), &["logits"]);
}

#[test]
fn token_classification_matches_bertkit() {
    check_model(&fixture("tiny_heads/token_classification"), &["logits"]);
}

#[test]
fn question_answering_matches_bertkit() {
    check_model(
        &fixture("tiny_heads/question_answering"),
        &["start_logits", "end_logits"],
    );
}

#[test]
fn minilm_matches_bertkit() {
    check_model(&minilm_dir(), &["last_hidden_state", "pooler_output"]);
}

/// The other activations (tanh GELU, ReLU) and another LayerNorm epsilon, on fresh models with
/// weights large enough that the activation matters.
#[test]
fn other_activations_match_bertkit() {
    for act in ["gelu_new", "relu"] {
        let config = BertConfig::from_json(&format!(
            r#"{{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "max_position_embeddings": 64, "hidden_act": "{act}",
                "initializer_range": 0.3, "layer_norm_eps": 1e-5}}"#
        ))
        .unwrap();
        let model = checkpoint::init::<Cpu>(&config, Task::Base, 7, &Default::default()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let tokenizer_dir = fixture("tiny_heads/token_classification");
        checkpoint::save(
            &model,
            tmp.path(),
            Some(&tokenizer_dir),
            Layout::HuggingFace,
        )
        .unwrap();
        check_model(tmp.path(), &["last_hidden_state", "pooler_output"]);
    }
}

#[test]
fn unsupported_task_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model.onnx");
    let err = export_onnx(&fixture("tiny_pretraining"), &out).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("pretraining"), "{msg}");
    assert!(
        msg.contains("base, sequence-classification, token-classification, question-answering"),
        "{msg}"
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn unwritable_output_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("no-such-folder").join("model.onnx");
    let err = export_onnx(&fixture("tiny_heads/token_classification"), &out).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&out.display().to_string()), "{msg}");
    // A folder in the way of the file: the rename fails, and no temporary file is left behind.
    let dir_out = tmp.path().join("taken");
    std::fs::create_dir(&dir_out).unwrap();
    std::fs::write(dir_out.join("keep"), "x").unwrap();
    let err = export_onnx(&fixture("tiny_heads/token_classification"), &dir_out).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&dir_out.display().to_string()), "{msg}");
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["taken"]);
}

/// Exporting over an existing file replaces it.
#[test]
fn export_replaces_an_existing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model.onnx");
    std::fs::write(&out, "old").unwrap();
    let summary = export_onnx(&fixture("tiny_heads/question_answering"), &out).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), summary.bytes);
    assert!(summary.bytes > 1000);
}
