//! Shared helpers of the model crate's integration tests: fixture paths and reference JSON.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bertkit_model::backend::Cpu;
use bertkit_model::checkpoint::{self, LoadOptions};
use bertkit_model::nn::to_host;
use bertkit_model::{Batch, BertOutput, TextInput};
use burn::tensor::Tensor;
use serde_json::Value;

pub const TOL: f32 = 1e-4;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn reference_dir() -> PathBuf {
    repo().join("tests/fixtures/hf-reference")
}

/// The real all-MiniLM-L6-v2, fetched by scripts/fetch-assets.sh.
pub fn minilm_dir() -> PathBuf {
    let dir = repo().join("assets/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets.sh",
        dir.display()
    );
    dir
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn flatten(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

pub fn ints(v: &Value) -> Vec<i64> {
    flatten(v).into_iter().map(|x| x as i64).collect()
}

/// The reference batch as given (ids, types, mask), without tokenizing.
pub fn reference_batch(r: &Value) -> Batch {
    let rows = r["input_ids"].as_array().unwrap();
    let seq_len = rows[0].as_array().unwrap().len();
    let attention_mask = ints(&r["attention_mask"]);
    Batch {
        batch_size: rows.len(),
        seq_len,
        input_ids: ints(&r["input_ids"]),
        token_type_ids: ints(&r["token_type_ids"]),
        lengths: attention_mask
            .chunks(seq_len)
            .map(|row| row.iter().filter(|&&m| m == 1).count())
            .collect(),
        attention_mask,
    }
}

/// The reference inputs: a string, or a pair as a two-element list.
pub fn inputs(r: &Value) -> Vec<TextInput> {
    r["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| match i {
            Value::String(s) => TextInput::single(s.clone()),
            Value::Array(p) => TextInput::pair(p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            other => panic!("bad input {other}"),
        })
        .collect()
}

pub fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let max = max_abs_diff(got, want);
    assert!(max <= TOL, "{name}: max abs diff {max} > {TOL}");
    eprintln!("{name}: max abs diff {max:.2e}");
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

pub fn host<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    to_host(t).data
}

/// Loads a tiny reference model and runs it on its reference batch.
pub fn run_tiny(name: &str) -> (BertOutput<Cpu>, Value) {
    let dir = reference_dir().join(name);
    let r = read_json(&dir.join("reference_outputs.json"));
    let device = Default::default();
    let (model, report) = checkpoint::load::<Cpu>(&dir, &LoadOptions::default(), &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    let out = model.forward(&reference_batch(&r).to_input::<Cpu>(&device));
    (out, r)
}
