//! Activation checkpointing (`StepSettings::checkpoint_activations`) changes memory, not numbers:
//! with dropout on, the step that recomputes each layer in the backward pass has the loss and the
//! gradients of the step that keeps every activation, in every precision. The same holds for
//! the step that keeps every activation but differentiates one layer at a time and hands the
//! finished layers' gradients to the all-reduce in buckets (`step::accumulate_by_layer`, what a
//! data-parallel step runs).

use bertkit_model::backend::Cpu;
use bertkit_model::checkpoint::init;
use bertkit_model::config::BertConfig;
use bertkit_model::heads::{Bert, Task};
use bertkit_model::tokenizer::Batch as InputBatch;
use bertkit_train::activations::{ByLayer, Segment};
use bertkit_train::distributed::ProcessGroup;
use bertkit_train::loader::Batch;
use bertkit_train::masking::IGNORE_LABEL;
use bertkit_train::pretrain::objective::{micro_loss, StepCounts};
use bertkit_train::rng::Rng;
use bertkit_train::step::{accumulate_by_layer, accumulate_gradients, Precision, StepSettings};
use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

type AD = Autodiff<Cpu>;

/// The backend's dropout generator is one per process: the tests take turns.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn model(dropout: f64) -> Bert<AD> {
    let config = BertConfig::from_json(&format!(
        r#"{{"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 32,
            "hidden_dropout_prob": {dropout}, "attention_probs_dropout_prob": {dropout}}}"#
    ))
    .expect("a valid config");
    init::<AD>(&config, Task::Pretraining, 7, &Default::default()).expect("a model")
}

/// `batch` sequences of 12 tokens, the last one padded after 7, a fifth of the real tokens
/// labelled for MLM, NSP labels.
fn batch(seed: u64, batch: usize) -> Batch {
    let (seq, mut rng) = (12, Rng::new(seed));
    let n = batch * seq;
    let input_ids: Vec<i64> = (0..n).map(|_| 5 + rng.below(59) as i64).collect();
    let lengths: Vec<usize> = (0..batch)
        .map(|b| if b + 1 == batch { 7 } else { seq })
        .collect();
    let attention_mask: Vec<i64> = (0..n)
        .map(|i| i64::from(i % seq < lengths[i / seq]))
        .collect();
    let mlm_labels = (0..n)
        .map(|i| {
            if attention_mask[i] == 1 && rng.below(5) == 0 {
                input_ids[i]
            } else {
                IGNORE_LABEL
            }
        })
        .collect();
    Batch {
        inputs: InputBatch {
            batch_size: batch,
            seq_len: seq,
            token_type_ids: (0..n).map(|i| i64::from(i % seq >= 6)).collect(),
            input_ids,
            attention_mask,
            lengths,
        },
        mlm_labels,
        next_sentence_label: Some((0..batch).map(|_| rng.below(2) as i64).collect()),
        prediction_slots: None,
        epoch: 0,
    }
}

/// Every parameter's gradient (in visiting order) and the summed `[loss, stats...]` of one
/// step over two micro-batches.
fn gradients(
    model: &Bert<AD>,
    precision: Precision,
    checkpoint_activations: bool,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    gradients_with(model, precision, checkpoint_activations, false, false)
}

/// [`gradients`], with `by_layer` through `accumulate_by_layer` in a group of one (its
/// buckets are packed, "reduced" and unpacked).
fn gradients_with(
    model: &Bert<AD>,
    precision: Precision,
    checkpoint_activations: bool,
    by_layer: bool,
    padding_free: bool,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let batches = [batch(1, 3), batch(2, 2)];
    let counts = StepCounts::of(&batches);
    let settings = StepSettings {
        lr: 0.0,
        max_grad_norm: 1.0,
        precision,
        loss_scale: if precision == Precision::Fp16 {
            1024.0
        } else {
            1.0
        },
        dropout_seed: [5, 3],
        checkpoint_activations,
        padding_free,
    };
    let device = Default::default();
    let loss = |m: &Bert<AD>, e: &mut dyn bertkit_train::activations::Encode<AD>, i: usize| {
        micro_loss(m, e, &batches[i], counts, &device)
    };
    let (grads, sums) = if by_layer {
        let mut group = ProcessGroup::single();
        accumulate_by_layer(model, 2, &settings, &mut group, &device, loss).expect("no collective")
    } else {
        accumulate_gradients(model, 2, &settings, 0, &device, loss)
    };
    (collect(model, &grads), sums)
}

fn collect(model: &Bert<AD>, grads: &GradientsParams) -> Vec<Vec<f32>> {
    struct Collect<'a>(&'a GradientsParams, Vec<Vec<f32>>);
    impl ModuleVisitor<AD> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            let g = self
                .0
                .get::<Cpu, D>(param.id)
                .map(|g| g.into_data().convert::<f32>().to_vec::<f32>().expect("f32"))
                .unwrap_or_default();
            self.1.push(g);
        }
    }
    let mut c = Collect(grads, Vec::new());
    model.visit(&mut c);
    c.1
}

/// The largest difference between matching gradients, relative to the largest gradient of each
/// parameter; every parameter must have one.
fn worst_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            !x.is_empty() && x.len() == y.len(),
            "parameter {i}: no gradient"
        );
        let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / scale);
        }
    }
    worst
}

#[test]
fn recomputing_layers_gives_the_same_loss_and_gradients_in_f32() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let m = model(0.1);
    let (kept, kept_sums) = gradients(&m, Precision::F32, false);
    let (recomputed, recomputed_sums) = gradients(&m, Precision::F32, true);
    // The forward passes run the same operations on the same dropout masks.
    assert_eq!(kept_sums, recomputed_sums);
    let worst = worst_difference(&kept, &recomputed);
    assert!(worst < 1e-6, "gradients differ by {worst} of their largest");

    // Dropout was on (the masks were replayed, not absent): without it the loss differs.
    let (_, no_dropout) = gradients(&model(0.0), Precision::F32, false);
    assert_ne!(kept_sums[0], no_dropout[0]);
}

#[test]
fn recomputing_layers_gives_the_same_gradients_in_bf16_and_fp16() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let m = model(0.1);
    for precision in [Precision::Bf16, Precision::Fp16] {
        let (kept, kept_sums) = gradients(&m, precision, false);
        let (recomputed, recomputed_sums) = gradients(&m, precision, true);
        assert_eq!(kept_sums, recomputed_sums, "{precision}");
        // Only the tied word embeddings add their two gradients in another order and type.
        let worst = worst_difference(&kept, &recomputed);
        assert!(worst < 1e-2, "{precision}: gradients differ by {worst}");
    }
}

#[test]
fn differentiating_layer_by_layer_for_the_all_reduce_gives_the_same_gradients() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let m = model(0.1);
    for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
        let (kept, kept_sums) = gradients_with(&m, precision, false, false, false);
        for recompute in [false, true] {
            let (by_layer, sums) = gradients_with(&m, precision, recompute, true, false);
            assert_eq!(kept_sums, sums, "{precision}, recompute {recompute}");
            // f32: the same operations; the tied word embeddings add their two gradients in
            // another order (and, in bf16/fp16, type).
            let tolerance = if precision == Precision::F32 {
                1e-6
            } else {
                1e-2
            };
            let worst = worst_difference(&kept, &by_layer);
            assert!(
                worst < tolerance,
                "{precision}, recompute {recompute}: gradients differ by {worst}"
            );
        }
    }
}

/// The recovery for a kept layer graph that burn-autodiff lost (`ByLayer::backward`): each
/// layer recomputed from its input under its seed gives the gradients of its kept graph, with
/// dropout on.
#[test]
fn a_lost_layer_graph_is_recomputed_to_the_same_gradients() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let m = model(0.1);
    let b = batch(4, 3);
    let counts = StepCounts::of(std::slice::from_ref(&b));
    let device = Default::default();
    let run = |lost: bool| {
        let mut encoder = ByLayer::keep(11);
        if lost {
            encoder = encoder.as_if_graphs_were_lost();
        }
        AD::seed(&device, 11);
        let micro = micro_loss(&m, &mut encoder, &b, counts, &device);
        let mut segments = Vec::new();
        let mut all = GradientsAccumulator::<Bert<AD>>::new();
        encoder.backward(micro.loss, &m, |segment, grads| {
            segments.push(segment);
            all.accumulate(&m, grads);
        });
        (collect(&m, &all.grads()), segments)
    };
    let (kept, kept_segments) = run(false);
    let (recovered, segments) = run(true);
    assert_eq!(segments, kept_segments);
    assert_eq!(
        segments,
        [
            Segment::Heads,
            Segment::Layer(2),
            Segment::Layer(1),
            Segment::Layer(0),
            Segment::Embeddings
        ]
    );
    let worst = worst_difference(&kept, &recovered);
    assert!(worst < 1e-6, "gradients differ by {worst} of their largest");
}

/// Padding-free training (`StepSettings::padding_free`): the encoder on the real tokens only,
/// packed, gives the padded batch's loss and gradients without dropout, whether the layers are
/// kept, recomputed or differentiated one at a time; with dropout, recomputing replays the
/// packed masks exactly.
#[test]
fn padding_free_gives_the_padded_loss_and_gradients() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let m = model(0.0);
    let (padded, padded_sums) = gradients_with(&m, Precision::F32, false, false, false);
    for (recompute, by_layer, padding_free) in [
        (false, false, true),
        (true, false, true),
        (false, true, true),
        (true, true, true),
        (false, true, false),
    ] {
        let (packed, sums) = gradients_with(&m, Precision::F32, recompute, by_layer, padding_free);
        let what = format!("recompute {recompute}, by layer {by_layer}");
        assert_eq!(sums.len(), padded_sums.len(), "{what}");
        for (a, b) in sums.iter().zip(&padded_sums) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{what}: {sums:?} vs {padded_sums:?}"
            );
        }
        let worst = worst_difference(&padded, &packed);
        assert!(worst < 1e-4, "{what}: gradients differ by {worst}");
    }

    let m = model(0.1);
    let (kept, kept_sums) = gradients_with(&m, Precision::F32, false, false, true);
    let (recomputed, recomputed_sums) = gradients_with(&m, Precision::F32, true, false, true);
    assert_eq!(kept_sums, recomputed_sums);
    let worst = worst_difference(&kept, &recomputed);
    assert!(worst < 1e-6, "dropout: gradients differ by {worst}");
    let (_, padded_dropout) = gradients_with(&m, Precision::F32, false, false, false);
    assert_ne!(
        kept_sums[0], padded_dropout[0],
        "packed dropout draws its own masks"
    );
}

/// Stable shapes (`batch.stable_shapes`): the MLM head on `batch x max_predictions` rows, the
/// padding weighted 0, gives the loss, statistics and gradients of the masked rows alone.
#[test]
fn padded_prediction_rows_change_no_number() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let m = model(0.0);
    let device = Default::default();
    let plain = [batch(1, 3), batch(2, 2)];
    let padded = plain.clone().map(|mut b| {
        b.prediction_slots = Some(b.inputs.batch_size * 20);
        b
    });
    let counts = StepCounts::of(&plain);
    assert_eq!(counts, StepCounts::of(&padded));
    let settings = StepSettings {
        lr: 0.0,
        max_grad_norm: 1.0,
        precision: Precision::F32,
        loss_scale: 1.0,
        dropout_seed: [5, 3],
        checkpoint_activations: false,
        padding_free: false,
    };
    let run = |batches: &[Batch; 2]| {
        let (grads, sums) = accumulate_gradients(&m, 2, &settings, 0, &device, |m, e, i| {
            micro_loss(m, e, &batches[i], counts, &device)
        });
        (collect(&m, &grads), sums)
    };
    let (g_plain, s_plain) = run(&plain);
    let (g_padded, s_padded) = run(&padded);
    for (a, b) in s_plain.iter().zip(&s_padded) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{s_plain:?} vs {s_padded:?}"
        );
    }
    // The MLM accuracy counts only the real rows (the padding's weight is 0): exactly equal.
    assert_eq!(s_plain[2], s_padded[2]);
    // Relative to the largest gradient of all: the key projections' biases have a zero
    // gradient in exact arithmetic (softmax ignores a shift), so theirs is rounding noise.
    let largest = g_plain.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut worst = 0.0f32;
    for (x, y) in g_plain.iter().zip(&g_padded) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / largest);
        }
    }
    assert!(worst < 1e-5, "gradients differ by {worst} of the largest");
}
