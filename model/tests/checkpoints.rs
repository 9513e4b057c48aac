//! Import -> export -> import is exact, the exported folder has HF's names and shapes, and a
//! checkpoint that does not fit the model is one clear error.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bertkit_model::backend::Cpu;
use bertkit_model::checkpoint::{self, LoadOptions};
use bertkit_model::weights::{HostTensor, ParamSink, ParamSource};
use bertkit_model::{Bert, BertConfig, Layout, Task};
use common::*;

fn params(model: &Bert<Cpu>) -> BTreeMap<String, HostTensor> {
    let mut sink = ParamSink::default();
    model.save(&mut sink);
    sink.tensors
}

/// Every tensor of a safetensors file under its canonical name (as read by bertkit).
fn file_tensors(path: &Path) -> BTreeMap<String, HostTensor> {
    ParamSource::from_safetensors(path, 0, 0.02)
        .unwrap()
        .tensors()
        .clone()
}

fn raw_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
}

fn round_trip(dir: &Path, expected_task: Task) {
    let device = Default::default();
    let (model, _) = checkpoint::load::<Cpu>(dir, &LoadOptions::default(), &device).unwrap();
    assert_eq!(model.task, expected_task);
    let out = tempfile::tempdir().unwrap();
    checkpoint::save(&model, out.path(), Some(dir), Layout::HuggingFace).unwrap();
    let (again, report) =
        checkpoint::load::<Cpu>(out.path(), &LoadOptions::default(), &device).unwrap();
    assert!(report.is_exact());
    assert_eq!(again.task, expected_task);
    assert_eq!(
        params(&model),
        params(&again),
        "re-imported parameters differ"
    );
    assert_eq!(again.config.hidden_size, model.config.hidden_size);
    assert!(!out.path().join(checkpoint::METADATA_FILE).exists());

    // The exported file holds exactly the original's tensors, bit for bit, under HF names.
    let original = dir.join(checkpoint::WEIGHTS_FILE);
    let exported = out.path().join(checkpoint::WEIGHTS_FILE);
    let want: Vec<String> = raw_names(&original)
        .into_iter()
        .filter(|n| !n.ends_with("position_ids"))
        .collect();
    assert_eq!(raw_names(&exported), want, "exported tensor names");
    assert_eq!(file_tensors(&exported), file_tensors(&original));

    let config = BertConfig::from_file(&out.path().join("config.json")).unwrap();
    assert_eq!(
        config.architectures.unwrap(),
        vec![expected_task.architecture()]
    );
    assert!(out.path().join("tokenizer.json").exists());
}

#[test]
fn round_trip_is_exact_for_every_head() {
    let r = reference_dir();
    round_trip(&r.join("tiny_pretraining"), Task::Pretraining);
    round_trip(
        &r.join("tiny_heads/sequence_classification"),
        Task::SequenceClassification,
    );
    round_trip(
        &r.join("tiny_heads/token_classification"),
        Task::TokenClassification,
    );
    round_trip(
        &r.join("tiny_heads/question_answering"),
        Task::QuestionAnswering,
    );
}

#[test]
fn round_trip_is_exact_for_minilm() {
    round_trip(&minilm_dir(), Task::Base);
}

/// sentence-transformers' files (pooling, normalization, prompts) survive an export byte for
/// byte; a head model gets none of them (they describe an embedding model).
#[test]
fn sentence_transformers_files_survive_export() {
    let dir = minilm_dir();
    let device = Default::default();
    let (model, _) = checkpoint::load::<Cpu>(&dir, &LoadOptions::default(), &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    checkpoint::save(&model, out.path(), Some(&dir), Layout::HuggingFace).unwrap();
    for name in [
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    ] {
        let want = std::fs::read(dir.join(name)).unwrap();
        let got = std::fs::read(out.path().join(name))
            .unwrap_or_else(|e| panic!("{name} was not exported: {e}"));
        assert_eq!(got, want, "{name} differs from the original");
    }

    let options = LoadOptions {
        task: Some(Task::SequenceClassification),
        allow_head_mismatch: true,
        seed: 1,
    };
    let (head, _) = checkpoint::load::<Cpu>(&dir, &options, &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    checkpoint::save(&head, out.path(), Some(&dir), Layout::Bertkit).unwrap();
    assert!(!out.path().join("modules.json").exists());
    assert!(!out.path().join("1_Pooling").exists());

    // A module path leaving the folder is refused, naming modules.json.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("modules.json"),
        r#"[{"idx": 1, "name": "1", "path": "../../etc", "type": "x"}]"#,
    )
    .unwrap();
    let err = checkpoint::copy_sentence_transformers_files(bad.path(), out.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("modules.json") && err.contains("../../etc"),
        "{err}"
    );
}

#[test]
fn bertkit_checkpoint_records_its_task() {
    let device = Default::default();
    let dir = reference_dir().join("tiny_heads/question_answering");
    let (model, _) = checkpoint::load::<Cpu>(&dir, &LoadOptions::default(), &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    checkpoint::save(&model, out.path(), Some(&dir), Layout::Bertkit).unwrap();
    let (_, task) = checkpoint::read_config(out.path()).unwrap();
    assert_eq!(task, Task::QuestionAnswering);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bertkit.json")).unwrap())
            .unwrap();
    assert_eq!(meta["format"], "bertkit-checkpoint");
    assert_eq!(meta["format_version"], 1);
}

#[test]
fn wrong_task_lists_unexpected_and_missing_tensors() {
    let device = Default::default();
    let dir = reference_dir().join("tiny_heads/sequence_classification");
    let options = LoadOptions {
        task: Some(Task::QuestionAnswering),
        ..Default::default()
    };
    let err = checkpoint::load::<Cpu>(&dir, &options, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("sequence_classification/model.safetensors"),
        "{err}"
    );
    assert!(
        err.contains("2 missing") && err.contains("qa_outputs.weight [2, 32]"),
        "{err}"
    );
    assert!(err.contains("4 unexpected"), "{err}");
    assert!(
        err.contains("classifier.bias") && err.contains("pooler.dense.weight"),
        "{err}"
    );
}

#[test]
fn fresh_head_on_a_pretrained_body_is_reported() {
    let device = Default::default();
    let dir = reference_dir().join("tiny_pretraining");
    let options = LoadOptions {
        task: Some(Task::TokenClassification),
        allow_head_mismatch: true,
        seed: 3,
    };
    let (model, report) = checkpoint::load::<Cpu>(&dir, &options, &device).unwrap();
    assert_eq!(report.fresh, vec!["classifier.weight", "classifier.bias"]);
    assert!(report.unused.contains(&"cls.predictions.bias".to_string()));
    assert!(report.unused.contains(&"pooler.dense.weight".to_string()));
    // The body is the checkpoint's, the head BERT-initialized.
    let body = checkpoint::load::<Cpu>(&dir, &LoadOptions::default(), &device)
        .unwrap()
        .0;
    let (a, b) = (params(&model), params(&body));
    assert_eq!(
        a["embeddings.word_embeddings.weight"],
        b["embeddings.word_embeddings.weight"]
    );
    assert!(a["classifier.bias"].data.iter().all(|v| *v == 0.0));
}

#[test]
fn mis_shaped_head_is_an_error_naming_the_tensor() {
    let device = Default::default();
    let src = reference_dir().join("tiny_heads/sequence_classification");
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut config = BertConfig::from_file(&src.join("config.json")).unwrap();
    config.set_labels(&["a".into(), "b".into(), "c".into(), "d".into()]);
    config.save(&dir.path().join("config.json")).unwrap();
    let err = checkpoint::load::<Cpu>(dir.path(), &LoadOptions::default(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("2 mis-shaped"), "{err}");
    assert!(
        err.contains("classifier.weight: checkpoint has [3, 32], model expects [4, 32]"),
        "{err}"
    );
}

#[test]
fn missing_files_are_named() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let err = checkpoint::load::<Cpu>(dir.path(), &LoadOptions::default(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"hidden_size\": 32, \"num_attention_heads\": 4}",
    )
    .unwrap();
    let err = checkpoint::load::<Cpu>(dir.path(), &LoadOptions::default(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no weights found"), "{err}");
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": ").unwrap();
    let err = checkpoint::load::<Cpu>(dir.path(), &LoadOptions::default(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json") && err.contains("EOF"), "{err}");
}

#[test]
fn fresh_models_are_seeded() {
    let device = Default::default();
    let config = BertConfig::from_json(
        r#"{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 16}"#,
    )
    .unwrap();
    let a = checkpoint::init::<Cpu>(&config, Task::Pretraining, 5, &device).unwrap();
    let b = checkpoint::init::<Cpu>(&config, Task::Pretraining, 5, &device).unwrap();
    let c = checkpoint::init::<Cpu>(&config, Task::Pretraining, 6, &device).unwrap();
    assert_eq!(params(&a), params(&b));
    assert_ne!(params(&a), params(&c));
    let p = params(&a);
    // HF zeroes the padding row of the word embeddings.
    assert!(p["embeddings.word_embeddings.weight"].data[..16]
        .iter()
        .all(|v| *v == 0.0));
    assert!(p["embeddings.LayerNorm.weight"]
        .data
        .iter()
        .all(|v| *v == 1.0));
    assert!(p["cls.predictions.bias"].data.iter().all(|v| *v == 0.0));
}

#[test]
fn pytorch_bin_reads_like_safetensors() {
    let device = Default::default();
    let dir = repo().join("tests/fixtures/pytorch-bin");
    let (from_bin, report) =
        checkpoint::load::<Cpu>(&dir.join("bin"), &LoadOptions::default(), &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(from_bin.task, Task::MaskedLm);
    let (from_st, _) =
        checkpoint::load::<Cpu>(&dir.join("safetensors"), &LoadOptions::default(), &device)
            .unwrap();
    assert_eq!(params(&from_bin), params(&from_st));
}
