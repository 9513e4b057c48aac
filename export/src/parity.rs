//! The parity check: the plan's outputs against the fp32 checkpoint's (bertkit's burn model),
//! on sample inputs.

use std::path::Path;

use anyhow::{bail, Context, Result};
use bertkit_model::backend::Cpu;
use bertkit_model::pooling::{l2_normalize, pool};
use bertkit_model::{Batch, Bert, TextInput};
use bertkit_runtime::plan::{Parity, PlanMeta, PlanTask, PoolingMode, Precision, Tolerance};
use bertkit_runtime::{Encoded, Runtime, RuntimeOptions, SeqOutput};
use burn::tensor::Tensor;

/// The tolerance a plan of `precision` must meet: embeddings by cosine, the other tasks by
/// the decisions read off their logits (a cosine of two logits near a tie says little).
pub fn tolerance(precision: Precision, task: PlanTask) -> Tolerance {
    let embedding = task == PlanTask::Embedding;
    let (max_abs, cosine, argmax) = match precision {
        Precision::Fp32 => (Some(1e-4), 0.999_999, 1.0),
        Precision::Fp16 => (None, 0.9999, 0.95),
        Precision::Bf16 | Precision::Int8 => (None, 0.99, 0.95),
    };
    Tolerance {
        max_abs_error: max_abs,
        min_mean_cosine: embedding.then_some(cosine),
        min_argmax_agreement: (!embedding).then_some(argmax),
    }
}

/// Built-in sample inputs: sentences of varied length and topic, as pairs for QA.
const BUILT_IN: [&str; 24] = [
    "The film was a delight from start to finish.",
    "I would not recommend this restaurant to anyone.",
    "Paris is the capital and most populous city of France.",
    "The committee postponed its decision until next spring.",
    "A quick brown fox jumps over the lazy dog.",
    "Revenue grew by twelve percent in the third quarter, beating expectations.",
    "She plays the violin in the city orchestra on weekends.",
    "The bridge was closed after the storm damaged its supports.",
    "What a waste of two hours; the plot made no sense at all.",
    "Mount Everest is Earth's highest mountain above sea level.",
    "The new library opens on Monday with extended hours for students.",
    "He forgot his umbrella and got soaked on the way home.",
    "Scientists discovered a new species of frog in the rainforest of Ecuador.",
    "The update fixes several bugs and improves battery life.",
    "It rained all day, so we stayed inside and played board games.",
    "The senator announced she would not seek re-election.",
    "This is, without doubt, the best album the band has ever released.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The train to Berlin was delayed by forty minutes.",
    "Our team won the championship after a dramatic penalty shootout.",
    "Mix the flour and sugar, then add the eggs one at a time.",
    "The museum's collection includes more than two million artifacts from around the world, \
     spanning five thousand years of human history and every inhabited continent.",
    "Yes.",
    "Despite the excellent cast, the script is dull and the pacing drags badly in the second \
     half, which makes the ending feel unearned.",
];

/// Sample inputs, with a label when the calibration file gives one.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Where they came from, for the report.
    pub source: String,
    pub inputs: Vec<TextInput>,
    pub labels: Vec<Option<String>>,
}

/// The sample inputs: the calibration file's, else the built-in ones.
pub fn samples(file: Option<&Path>, task: PlanTask) -> Result<Samples> {
    let Some(file) = file else {
        let inputs: Vec<TextInput> = BUILT_IN
            .iter()
            .enumerate()
            .map(|(i, s)| match task {
                PlanTask::QuestionAnswering => {
                    let context = BUILT_IN[(i + 1) % BUILT_IN.len()];
                    TextInput::pair(format!("What about {}?", first_words(s)), context)
                }
                _ => TextInput::single(*s),
            })
            .collect();
        return Ok(Samples {
            source: "built-in sentences".into(),
            labels: vec![None; inputs.len()],
            inputs,
        });
    };
    let mut labels = Vec::new();
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let input = if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not valid JSON", file.display(), n + 1))?;
            let Some(t) = v.get("text").and_then(|t| t.as_str()) else {
                bail!("{}:{}: no \"text\" field", file.display(), n + 1);
            };
            labels.push(match v.get("label") {
                Some(serde_json::Value::String(l)) => Some(l.clone()),
                Some(serde_json::Value::Number(l)) => Some(l.to_string()),
                _ => None,
            });
            match v.get("text_pair").and_then(|t| t.as_str()) {
                Some(p) => TextInput::pair(t, p),
                None => TextInput::single(t),
            }
        } else {
            labels.push(None);
            match line.split_once('\t') {
                Some((a, b)) => TextInput::pair(a, b),
                None => TextInput::single(line),
            }
        };
        out.push(input);
    }
    if out.is_empty() {
        bail!("{}: no sample inputs", file.display());
    }
    Ok(Samples {
        source: file.display().to_string(),
        inputs: out,
        labels,
    })
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The fp32 checkpoint's outputs, shaped as the runtime's.
pub fn reference(model: &Bert<Cpu>, meta: &PlanMeta, inputs: &[Encoded]) -> Vec<SeqOutput> {
    let device = Default::default();
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(16) {
        let seqs: Vec<(Vec<u32>, Vec<u32>)> = chunk
            .iter()
            .map(|e| (e.ids.clone(), e.type_ids.clone()))
            .collect();
        let batch = Batch::pad(&seqs, 0);
        let input = batch.to_input::<Cpu>(&device);
        let result = model.forward(&input);
        let rows = |t: Tensor<Cpu, 2>| -> Vec<Vec<f32>> {
            let [b, w] = t.dims();
            let v = bertkit_model::nn::to_host(t).data;
            (0..b).map(|i| v[i * w..(i + 1) * w].to_vec()).collect()
        };
        match meta.task {
            PlanTask::Embedding => {
                let p = meta.pooling.as_ref();
                let mode = match p.map(|p| p.mode) {
                    Some(PoolingMode::Cls) => bertkit_model::Pooling::Cls,
                    _ => bertkit_model::Pooling::Mean,
                };
                let mut pooled = pool(result.last_hidden_state, &input.attention_mask, mode);
                if p.is_some_and(|p| p.normalize) {
                    pooled = l2_normalize(pooled);
                }
                for r in rows(pooled) {
                    out.push(SeqOutput {
                        rows: 1,
                        width: r.len(),
                        data: r,
                    });
                }
            }
            PlanTask::SequenceClassification => {
                if let Some(logits) = result.sequence_logits {
                    for r in rows(logits) {
                        out.push(SeqOutput {
                            rows: 1,
                            width: r.len(),
                            data: r,
                        });
                    }
                }
            }
            PlanTask::TokenClassification => {
                if let Some(logits) = result.token_logits {
                    let [b, t, w] = logits.dims();
                    let v = bertkit_model::nn::to_host(logits).data;
                    for (i, e) in chunk.iter().enumerate().take(b) {
                        let len = e.ids.len();
                        out.push(SeqOutput {
                            rows: len,
                            width: w,
                            data: v[i * t * w..(i * t + len) * w].to_vec(),
                        });
                    }
                }
            }
            PlanTask::QuestionAnswering => {
                if let (Some(s), Some(e)) = (result.start_logits, result.end_logits) {
                    let (s, e) = (rows(s), rows(e));
                    for (i, enc) in chunk.iter().enumerate() {
                        let len = enc.ids.len();
                        let data = (0..len).flat_map(|p| [s[i][p], e[i][p]]).collect();
                        out.push(SeqOutput {
                            rows: len,
                            width: 2,
                            data,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Agreement statistics of `got` against `want`.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub max_abs_error: f64,
    pub mean_cosine: f64,
    pub min_cosine: f64,
    pub argmax_agreement: Option<f64>,
    pub decisions: usize,
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// The decisions a user reads off the output: the label of each row (token tasks: each
/// token), or for QA the start and the end token.
fn decisions(task: PlanTask, o: &SeqOutput) -> Vec<usize> {
    match task {
        PlanTask::Embedding => Vec::new(),
        PlanTask::SequenceClassification | PlanTask::TokenClassification => {
            if o.width < 2 {
                return Vec::new();
            }
            o.data.chunks_exact(o.width).map(argmax).collect()
        }
        PlanTask::QuestionAnswering => {
            let start: Vec<f32> = o.data.iter().step_by(2).copied().collect();
            let end: Vec<f32> = o.data.iter().skip(1).step_by(2).copied().collect();
            vec![argmax(&start), argmax(&end)]
        }
    }
}

pub fn compare(task: PlanTask, want: &[SeqOutput], got: &[SeqOutput]) -> Result<Agreement> {
    if want.len() != got.len() {
        bail!("{} outputs, expected {}", got.len(), want.len());
    }
    let (mut max_abs, mut cos_sum, mut cos_min) = (0f64, 0f64, f64::INFINITY);
    let (mut agree, mut total) = (0usize, 0usize);
    for (w, g) in want.iter().zip(got) {
        if (w.rows, w.width) != (g.rows, g.width) {
            bail!(
                "output shape {}x{}, expected {}x{}",
                g.rows,
                g.width,
                w.rows,
                w.width
            );
        }
        let (mut dot, mut nw, mut ng) = (0f64, 0f64, 0f64);
        for (a, b) in w.data.iter().zip(&g.data) {
            let (a, b) = (*a as f64, *b as f64);
            max_abs = max_abs.max((a - b).abs());
            dot += a * b;
            nw += a * a;
            ng += b * b;
        }
        let cos = if nw == 0.0 && ng == 0.0 {
            1.0
        } else {
            dot / (nw.sqrt() * ng.sqrt()).max(1e-30)
        };
        cos_sum += cos;
        cos_min = cos_min.min(cos);
        let (dw, dg) = (decisions(task, w), decisions(task, g));
        total += dw.len();
        agree += dw.iter().zip(&dg).filter(|(a, b)| a == b).count();
    }
    Ok(Agreement {
        max_abs_error: max_abs,
        mean_cosine: cos_sum / want.len().max(1) as f64,
        min_cosine: if cos_min.is_finite() { cos_min } else { 1.0 },
        argmax_agreement: (total > 0).then(|| agree as f64 / total as f64),
        decisions: total,
    })
}

/// Runs the plan in `dir` on `samples` and compares with the checkpoint `model`.
pub fn check(model: &Bert<Cpu>, dir: &Path, meta: &PlanMeta, samples: &Samples) -> Result<Parity> {
    let runtime = Runtime::load(dir, &RuntimeOptions::default())?;
    let encoded = runtime.encode(&samples.inputs)?;
    let got = runtime.run(&encoded)?;
    let want = reference(model, meta, &encoded);
    let a = compare(meta.task, &want, &got)?;
    let tol = tolerance(meta.precision, meta.task);
    let passed = tol.max_abs_error.is_none_or(|m| a.max_abs_error <= m)
        && tol.min_mean_cosine.is_none_or(|m| a.mean_cosine >= m)
        && match (tol.min_argmax_agreement, a.argmax_agreement) {
            (Some(min), Some(got)) => got >= min,
            _ => true,
        };
    let (checkpoint_accuracy, plan_accuracy) = match meta.task {
        PlanTask::SequenceClassification => (
            accuracy(&want, &samples.labels, &meta.labels),
            accuracy(&got, &samples.labels, &meta.labels),
        ),
        _ => (None, None),
    };
    Ok(Parity {
        inputs: samples.source.clone(),
        samples: samples.inputs.len(),
        checkpoint_accuracy,
        plan_accuracy,
        max_abs_error: a.max_abs_error,
        mean_cosine: a.mean_cosine,
        min_cosine: a.min_cosine,
        argmax_agreement: a.argmax_agreement,
        tolerance: tol,
        passed,
        overridden: false,
    })
}

/// The share of labelled samples whose argmax is their label (by name, or by index).
pub fn accuracy(out: &[SeqOutput], labels: &[Option<String>], names: &[String]) -> Option<f64> {
    let (mut right, mut total) = (0usize, 0usize);
    for (o, label) in out.iter().zip(labels) {
        let Some(label) = label else { continue };
        let want = names
            .iter()
            .position(|n| n == label)
            .or_else(|| label.parse::<usize>().ok());
        total += 1;
        if want == Some(argmax(&o.data)) {
            right += 1;
        }
    }
    (total > 0).then(|| right as f64 / total as f64)
}

pub fn describe(p: &Parity) -> String {
    let mut s = format!(
        "{} samples: max abs error {:.3e}, mean cosine {:.6}, min cosine {:.6}",
        p.samples, p.max_abs_error, p.mean_cosine, p.min_cosine
    );
    if let Some(a) = p.argmax_agreement {
        s += &format!(", argmax agreement {:.2}%", a * 100.0);
    }
    let t = &p.tolerance;
    let mut parts = Vec::new();
    if let Some(m) = t.max_abs_error {
        parts.push(format!("max abs ≤ {m:e}"));
    }
    if let Some(m) = t.min_mean_cosine {
        parts.push(format!("mean cosine ≥ {m}"));
    }
    if let Some(m) = t.min_argmax_agreement {
        parts.push(format!("argmax agreement ≥ {}%", m * 100.0));
    }
    format!("{s} (tolerance: {})", parts.join(", "))
}
