//! An input's output must not depend on the batch it runs in: each sequence's output alone
//! equals, bit for bit, its output inside busy batches of mixed lengths (several batch sizes, the
//! sequence at several places, 1 and 2 threads). Tiny random plans, fp32 and int8 (both int8
//! kernels), with embedding, sequence-classification and token-classification outputs.

use std::collections::BTreeMap;

use bertkit_runtime::cpu::matmul::{bf16_isa, quantize_weight};
use bertkit_runtime::cpu::Encoder;
use bertkit_runtime::plan::{
    names, Head, PlanMeta, PlanTask, Pooling, PoolingMode, Precision, Shape, Target,
    TokenizerSettings,
};
use bertkit_runtime::{Bf16Kernel, Encoded, Int8Kernel, Kernels};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

// Sizes that leave remainders everywhere: hidden 48 (k a multiple of 16), intermediate 100 (not
// a multiple of 8 or 16), head dim 12.
const HIDDEN: usize = 48;
const HEADS: usize = 4;
const INTER: usize = 100;
const LAYERS: usize = 2;
const VOCAB: usize = 64;
const MAX_POS: usize = 96;
const TYPES: usize = 2;
const LABELS: usize = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 7) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n
    }

    fn vec(&mut self, len: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..len).map(|_| offset + scale * self.f32()).collect()
    }
}

fn shape() -> Shape {
    Shape {
        vocab_size: VOCAB,
        hidden_size: HIDDEN,
        num_hidden_layers: LAYERS,
        num_attention_heads: HEADS,
        intermediate_size: INTER,
        hidden_act: bertkit_model::config::HiddenAct::Gelu,
        max_position_embeddings: MAX_POS,
        type_vocab_size: TYPES,
        layer_norm_eps: 1e-12,
    }
}

fn meta(task: PlanTask, precision: Precision) -> PlanMeta {
    let head = match task {
        PlanTask::Embedding => None,
        PlanTask::SequenceClassification => Some(Head {
            module: "classifier".into(),
            num_outputs: LABELS,
            pooler: true,
        }),
        _ => Some(Head {
            module: "classifier".into(),
            num_outputs: LABELS,
            pooler: false,
        }),
    };
    PlanMeta {
        prompts: Default::default(),
        default_prompt_name: None,
        format: "bertkit-plan".into(),
        format_version: 1,
        bertkit_version: env!("CARGO_PKG_VERSION").into(),
        task,
        architecture: "BertModel".into(),
        shape: shape(),
        hf_config: serde_json::Value::Null,
        head,
        labels: Vec::new(),
        problem_type: None,
        pooling: (task == PlanTask::Embedding).then_some(Pooling {
            mode: PoolingMode::Mean,
            normalize: true,
        }),
        tokenizer: TokenizerSettings {
            file: "tokenizer.json".into(),
            max_length: MAX_POS,
            truncation: "longest_first".into(),
            lowercase: true,
        },
        precision,
        compute: "f32".into(),
        target: Target::Cpu,
        max_batch: 64,
        seq_buckets: vec![MAX_POS],
        execution: "padding-free".into(),
        optimizations: Vec::new(),
        files: BTreeMap::new(),
        parity: None,
        tuning: None,
        source: "random".into(),
        task_settings: None,
    }
}

/// A random plan's `weights.safetensors` in the layout export writes: for int8, the four linear
/// layers of each encoder layer quantized per output channel (as export does by default); the
/// pooler and head f32.
fn weights(precision: Precision, seed: u64) -> Vec<u8> {
    weights_rounded(precision, seed, precision == Precision::Bf16)
}

/// bf16's value nearest to `v` (ties to even), as export rounds a bf16 plan's weights.
fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The same, with `bf16_values` the encoder layers' linear weights rounded to bf16 values: kept
/// as bf16 in a bf16 plan, as f32 otherwise (the fp32 plan of a bf16 plan's values).
fn weights_rounded(precision: Precision, seed: u64, bf16_values: bool) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let float = |tensors: &mut Vec<_>, name: String, shape: Vec<usize>, v: Vec<f32>| {
        tensors.push((name, Dtype::F32, shape, f32s(&v)));
    };
    let (h, i) = (HIDDEN, INTER);
    float(
        &mut tensors,
        names::WORD.into(),
        vec![VOCAB, h],
        rng.vec(VOCAB * h, 1.0, 0.0),
    );
    float(
        &mut tensors,
        names::POSITION.into(),
        vec![MAX_POS, h],
        rng.vec(MAX_POS * h, 0.5, 0.0),
    );
    float(
        &mut tensors,
        names::TOKEN_TYPE.into(),
        vec![TYPES, h],
        rng.vec(TYPES * h, 0.5, 0.0),
    );
    let ln = |tensors: &mut Vec<_>, rng: &mut Rng, name: &str| {
        float(
            tensors,
            format!("{name}.gamma"),
            vec![h],
            rng.vec(h, 0.2, 1.0),
        );
        float(
            tensors,
            format!("{name}.beta"),
            vec![h],
            rng.vec(h, 0.1, 0.0),
        );
    };
    ln(&mut tensors, &mut rng, names::EMB_LN);
    // `layer`: an encoder layer's (int8 or bf16 in those plans), not the pooler's or head's.
    let linear =
        |tensors: &mut Vec<_>, rng: &mut Rng, name: &str, k: usize, n: usize, int8, layer| {
            let w = rng.vec(n * k, 1.0 / (k as f32).sqrt() * 1.7, 0.0);
            if int8 {
                let (q, scale) = quantize_weight(&w, n, k);
                let q: Vec<u8> = q.iter().map(|&v| v as u8).collect();
                tensors.push((format!("{name}.w"), Dtype::I8, vec![n, k], q));
                tensors.push((format!("{name}.scale"), Dtype::F32, vec![n], f32s(&scale)));
            } else if bf16_values && layer {
                let bits: Vec<u16> = w.iter().map(|&v| bf16_bits(v)).collect();
                if precision == Precision::Bf16 {
                    let data = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
                    tensors.push((format!("{name}.w"), Dtype::BF16, vec![n, k], data));
                } else {
                    let values: Vec<f32> = bits
                        .iter()
                        .map(|&b| f32::from_bits(u32::from(b) << 16))
                        .collect();
                    tensors.push((format!("{name}.w"), Dtype::F32, vec![n, k], f32s(&values)));
                }
            } else {
                tensors.push((format!("{name}.w"), Dtype::F32, vec![n, k], f32s(&w)));
            }
            let b = rng.vec(n, 0.1, 0.0);
            tensors.push((format!("{name}.b"), Dtype::F32, vec![n], f32s(&b)));
        };
    let int8 = precision == Precision::Int8;
    for l in 0..LAYERS {
        let n = |part: &str| names::layer(l, part);
        linear(&mut tensors, &mut rng, &n("qkv"), h, 3 * h, int8, true);
        linear(&mut tensors, &mut rng, &n("attn_out"), h, h, int8, true);
        ln(&mut tensors, &mut rng, &n("attn_ln"));
        linear(&mut tensors, &mut rng, &n("ffn_in"), h, i, int8, true);
        linear(&mut tensors, &mut rng, &n("ffn_out"), i, h, int8, true);
        ln(&mut tensors, &mut rng, &n("ffn_ln"));
    }
    linear(&mut tensors, &mut rng, names::POOLER, h, h, false, false);
    linear(&mut tensors, &mut rng, names::HEAD, h, LABELS, false, false);
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect::<Vec<_>>();
    safetensors::serialize(views, None).unwrap()
}

fn sequence(rng: &mut Rng, len: usize) -> Encoded {
    let ids = (0..len).map(|_| rng.below(VOCAB) as u32).collect();
    let type_ids = (0..len).map(|p| u32::from(p >= len / 2)).collect();
    Encoded { ids, type_ids }
}

fn run(encoder: &Encoder, batch: &[Encoded], threads: usize) -> Vec<Vec<u32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let out = pool.install(|| encoder.forward(batch, threads)).unwrap();
    out.iter()
        .map(|o| o.data.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn each_output_is_the_same_alone_and_inside_busy_batches() {
    let plans = [
        (PlanTask::Embedding, Precision::Fp32, Int8Kernel::Int8),
        (PlanTask::Embedding, Precision::Int8, Int8Kernel::Int8),
        (
            PlanTask::Embedding,
            Precision::Int8,
            Int8Kernel::DequantizedF32,
        ),
        (
            PlanTask::SequenceClassification,
            Precision::Fp32,
            Int8Kernel::Int8,
        ),
        (
            PlanTask::SequenceClassification,
            Precision::Int8,
            Int8Kernel::Int8,
        ),
        (
            PlanTask::TokenClassification,
            Precision::Fp32,
            Int8Kernel::Int8,
        ),
        (
            PlanTask::TokenClassification,
            Precision::Int8,
            Int8Kernel::Int8,
        ),
    ];
    let mut rng = Rng(42);
    // The inputs whose outputs are watched, and the neighbours that crowd them.
    let watched: Vec<Encoded> = [1, 2, 7, 16, 33, 64, 90]
        .iter()
        .map(|&len| sequence(&mut rng, len))
        .collect();
    // (neighbours, threads): from a pair to a batch of thousands of tokens.
    let batches = [(1, 1), (2, 2), (5, 1), (12, 2), (30, 2), (30, 1), (60, 2)];
    let mut busy = Vec::new();
    for &(neighbours, threads) in &batches {
        let mut batch: Vec<Encoded> = (0..neighbours)
            .map(|_| {
                let len = 1 + rng.below(MAX_POS);
                sequence(&mut rng, len)
            })
            .collect();
        // Each watched input at a place of its own in this batch.
        let mut places = Vec::new();
        for (w, seq) in watched.iter().enumerate() {
            let at = (w * 7 + neighbours * 3 + rng.below(3)) % (batch.len() + 1);
            batch.insert(at, seq.clone());
            places.iter_mut().for_each(|p: &mut usize| {
                if *p >= at {
                    *p += 1
                }
            });
            places.push(at);
        }
        busy.push((batch, places, threads));
    }
    let mut failures = Vec::new();
    for (p, &(task, precision, kernel)) in plans.iter().enumerate() {
        let bytes = weights(precision, 1000 + p as u64);
        let kernels = Kernels {
            int8: kernel,
            ..Default::default()
        };
        let encoder = Encoder::load(&meta(task, precision), &bytes, "random", kernels).unwrap();
        let what = match precision {
            Precision::Int8 => format!("{task:?} int8 ({} kernel)", kernel.name()),
            _ => format!("{task:?} {precision}"),
        };
        let alone: Vec<Vec<u32>> = watched
            .iter()
            .map(|seq| run(&encoder, std::slice::from_ref(seq), 1).remove(0))
            .collect();
        let mut check = |w: usize, got: &[u32], place: String| {
            if got != alone[w] {
                let diff = alone[w]
                    .iter()
                    .zip(got)
                    .map(|(a, b)| (f32::from_bits(*a) - f32::from_bits(*b)).abs())
                    .fold(0f32, f32::max);
                failures.push(format!(
                    "{what}: input {w} alone vs {place}: max |diff| {diff:e}"
                ));
            }
        };
        for (w, seq) in watched.iter().enumerate() {
            let two = run(&encoder, std::slice::from_ref(seq), 2).remove(0);
            check(w, &two, "alone with 2 threads".into());
        }
        // All watched inputs together, in order and reversed.
        let together = run(&encoder, &watched, 2);
        let reversed: Vec<Encoded> = watched.iter().rev().cloned().collect();
        let backwards = run(&encoder, &reversed, 1);
        for w in 0..watched.len() {
            check(w, &together[w], "among the watched".into());
            let b = &backwards[watched.len() - 1 - w];
            check(w, b, "among the watched, reversed".into());
        }
        for (batch, places, threads) in &busy {
            let tokens: usize = batch.iter().map(|s| s.ids.len()).sum();
            let out = run(&encoder, batch, *threads);
            for (w, &at) in places.iter().enumerate() {
                let place = format!(
                    "at {at} of a batch of {} ({tokens} tokens, {threads} threads)",
                    batch.len()
                );
                check(w, &out[at], place);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} outputs depend on their batch:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A bf16 plan run with `widened-f32` computes exactly what the fp32 plan of its values does
/// (the f32 kernel on the same numbers); with `bf16` and AVX-512 BF16 it rounds the activations
/// too, so it differs from that, by bf16's rounding only.
#[test]
fn a_bf16_plan_widened_to_f32_is_the_fp32_plan_of_its_values() {
    let task = PlanTask::SequenceClassification;
    let bf16 = weights_rounded(Precision::Bf16, 77, true);
    let f32_values = weights_rounded(Precision::Fp32, 77, true);
    let load = |precision, bytes: &[u8], bf16| {
        let kernels = Kernels {
            bf16,
            ..Default::default()
        };
        Encoder::load(&meta(task, precision), bytes, "random", kernels).unwrap()
    };
    let mut rng = Rng(5);
    let batch: Vec<Encoded> = (0..6)
        .map(|_| {
            let len = 1 + rng.below(MAX_POS);
            sequence(&mut rng, len)
        })
        .collect();
    let fp32 = run(
        &load(Precision::Fp32, &f32_values, Bf16Kernel::Bf16),
        &batch,
        2,
    );
    let widened = run(
        &load(Precision::Bf16, &bf16, Bf16Kernel::WidenedF32),
        &batch,
        2,
    );
    let products = run(&load(Precision::Bf16, &bf16, Bf16Kernel::Bf16), &batch, 2);
    assert_eq!(
        widened, fp32,
        "widened-f32 is not the f32 kernel on the bf16 values"
    );
    let values =
        |v: &[Vec<u32>]| -> Vec<f32> { v.iter().flatten().map(|&b| f32::from_bits(b)).collect() };
    let (a, b) = (values(&widened), values(&products));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= 0.05 * scale,
        "bf16 products differ by {diff} (scale {scale})"
    );
    if bf16_isa() == "avx512-bf16" {
        assert!(diff > 0.0, "the bf16 kernel computed in f32");
    } else {
        assert_eq!(
            diff, 0.0,
            "without AVX-512 BF16 both kernels widen the weights"
        );
    }
}
