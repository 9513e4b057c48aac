//! Parity with Hugging Face transformers: the real all-MiniLM-L6-v2 and tiny random models with
//! every head reproduce the reference outputs in tests/fixtures/hf-reference.

mod common;

use bertkit_model::backend::Cpu;
use bertkit_model::checkpoint::{self, LoadOptions};
use bertkit_model::nn::to_host;
use bertkit_model::pooling::{l2_normalize, pool};
use bertkit_model::{BertTokenizer, Pooling, Task};
use common::*;

#[test]
fn minilm_tokenizer_matches_hf() {
    let r = read_json(&reference_dir().join("minilm_reference.json"));
    let tok = BertTokenizer::from_dir(&minilm_dir()).unwrap();
    let batch = tok.batch(&inputs(&r), None).unwrap();
    assert_eq!(batch, reference_batch(&r));
}

#[test]
fn minilm_vocab_txt_tokenizer_matches_hf() {
    let r = read_json(&reference_dir().join("minilm_reference.json"));
    let tok = BertTokenizer::from_vocab(&minilm_dir().join("vocab.txt"), true).unwrap();
    assert_eq!(tok.batch(&inputs(&r), None).unwrap(), reference_batch(&r));
}

#[test]
fn minilm_outputs_match_hf() {
    let r = read_json(&reference_dir().join("minilm_reference.json"));
    let device = Default::default();
    let (model, report) =
        checkpoint::load::<Cpu>(&minilm_dir(), &LoadOptions::default(), &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(model.task, Task::Base);
    let input = reference_batch(&r).to_input::<Cpu>(&device);
    let out = model.forward(&input);
    assert_close(
        "last_hidden_state",
        &host(out.last_hidden_state.clone()),
        &flatten(&r["last_hidden_state"]),
    );
    assert_close(
        "pooler_output",
        &host(out.pooler_output.unwrap()),
        &flatten(&r["pooler_output"]),
    );
    // Padding positions are meaningless and numerically touchy; report real tokens apart.
    let mask = ints(&r["attention_mask"]);
    let hidden = host(out.last_hidden_state.clone());
    let want = flatten(&r["last_hidden_state"]);
    let h = hidden.len() / mask.len();
    let real: Vec<usize> = (0..hidden.len()).filter(|i| mask[i / h] == 1).collect();
    assert_close(
        "last_hidden_state (real tokens)",
        &real.iter().map(|&i| hidden[i]).collect::<Vec<_>>(),
        &real.iter().map(|&i| want[i]).collect::<Vec<_>>(),
    );
    let mean = pool(out.last_hidden_state, &input.attention_mask, Pooling::Mean);
    assert_close(
        "mean_pooled",
        &host(mean.clone()),
        &flatten(&r["mean_pooled"]),
    );
    assert_close(
        "mean_pooled_normalized",
        &host(l2_normalize(mean)),
        &flatten(&r["mean_pooled_normalized"]),
    );
}

#[test]
fn tiny_pretraining_heads_match_hf() {
    let (out, r) = run_tiny("tiny_pretraining");
    let logits = out.prediction_logits.unwrap();
    let [b, t, _] = logits.dims();
    assert_close(
        "prediction_logits[..64]",
        &host(logits.clone().narrow(2, 0, 64)),
        &flatten(&r["prediction_logits_first64"]),
    );
    let lse = logits.clone().exp().sum_dim(2).log().reshape([b, t]);
    assert_close(
        "prediction_logsumexp",
        &host(lse),
        &flatten(&r["prediction_logsumexp"]),
    );
    let argmax: Vec<i64> = to_host(logits.argmax(2).float())
        .data
        .iter()
        .map(|&x| x as i64)
        .collect();
    assert_eq!(argmax, ints(&r["prediction_argmax"]), "prediction_argmax");
    assert_close(
        "seq_relationship_logits",
        &host(out.seq_relationship_logits.unwrap()),
        &flatten(&r["seq_relationship_logits"]),
    );
}

#[test]
fn tiny_sequence_classification_matches_hf() {
    let (out, r) = run_tiny("tiny_heads/sequence_classification");
    assert_close(
        "logits",
        &host(out.sequence_logits.unwrap()),
        &flatten(&r["logits"]),
    );
}

#[test]
fn tiny_token_classification_matches_hf() {
    let (out, r) = run_tiny("tiny_heads/token_classification");
    assert!(
        out.pooler_output.is_none(),
        "HF builds no pooler for token classification"
    );
    assert_close(
        "logits",
        &host(out.token_logits.unwrap()),
        &flatten(&r["logits"]),
    );
}

#[test]
fn tiny_question_answering_matches_hf() {
    let (out, r) = run_tiny("tiny_heads/question_answering");
    assert_close(
        "start_logits",
        &host(out.start_logits.unwrap()),
        &flatten(&r["start_logits"]),
    );
    assert_close(
        "end_logits",
        &host(out.end_logits.unwrap()),
        &flatten(&r["end_logits"]),
    );
}
