//! Fine-tuning's side of the tasks: the forward pass of a padded batch, the loss of a
//! micro-batch, and the logits of a whole set read back. The task definitions, features,
//! post-processing and metrics are `bertkit_tasks::task`, re-exported here.

pub use bertkit_tasks::task::*;

use bertkit_model::heads::{Bert, BertOutput};
use bertkit_model::tokenizer::Batch;
use bertkit_train::activations::Encode;
use bertkit_train::step::MicroLoss;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

/// The forward pass of a padded batch.
pub fn forward<B: Backend>(model: &Bert<B>, batch: &Batch, device: &B::Device) -> BertOutput<B> {
    model.forward(&batch.to_input::<B>(device))
}

fn f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(DType::F32)
    }
}

/// [`bertkit_train::step::cross_entropy_sum`] with the labels given as a list.
fn cross_entropy_sum<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Vec<i64>,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let n = labels.len();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), device);
    bertkit_train::step::cross_entropy_sum(logits, labels)
}

/// Binary cross entropy of logits `x` against 0/1 targets `y`, summed: the stable form
/// `max(x, 0) - x*y + log(1 + exp(-|x|))` of torch's `BCEWithLogitsLoss`.
fn bce_with_logits_sum<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 1> {
    (x.clone().clamp_min(0.0) - x.clone() * y + x.abs().neg().exp().log1p()).sum()
}

/// Forward pass (the hidden state from `encoder`) and loss of one micro-batch: the sum over its targets divided by `units` (the
/// step's [`loss_units`]). Losses as Hugging Face's heads compute them: cross entropy
/// (single-label, tokens), binary cross entropy with logits (multi-label), mean squared error
/// (regression), and the mean of the start and end cross entropies (QA). `stats` is
/// `[correct predictions]` (argmax = label; multi-label: every label right; QA: start and end
/// both right).
pub fn micro_loss<B: Backend>(
    model: &Bert<B>,
    encoder: &mut dyn Encode<B>,
    features: &[&Feature],
    units: usize,
    pad_id: u32,
    device: &B::Device,
) -> MicroLoss<B> {
    let batch = pad(features, pad_id);
    let out = model.heads(encoder.encode(&model.bert, &batch.to_input::<B>(device)));
    let zero = || Tensor::<B, 1>::zeros([1], device);
    let (b, t) = (batch.batch_size, batch.seq_len);
    let (sum, correct) = match features.first().map(|f| &f.target) {
        Some(Target::Class(_)) => {
            let labels = features
                .iter()
                .map(|f| match f.target {
                    Target::Class(c) => c as i64,
                    _ => 0,
                })
                .collect();
            let logits = out.sequence_logits.expect("a sequence classification head");
            cross_entropy_sum(logits, labels, device)
        }
        Some(Target::MultiHot(first)) => {
            let l = first.len();
            let mut targets = Vec::with_capacity(b * l);
            for f in features {
                match &f.target {
                    Target::MultiHot(v) => targets.extend_from_slice(v),
                    _ => targets.extend(std::iter::repeat_n(0.0, l)),
                }
            }
            let y = Tensor::<B, 2>::from_data(TensorData::new(targets, [b, l]), device);
            let x = f32(out.sequence_logits.expect("a sequence classification head"));
            let loss = bce_with_logits_sum(x.clone(), y.clone());
            let predicted = x.detach().greater_elem(0.0).float();
            let wrong = (predicted - y).abs().sum_dim(1);
            let correct = wrong.equal_elem(0.0).float().sum();
            (loss, correct)
        }
        Some(Target::Value(_)) => {
            let targets: Vec<f32> = features
                .iter()
                .map(|f| match f.target {
                    Target::Value(v) => v,
                    _ => 0.0,
                })
                .collect();
            let y = Tensor::<B, 2>::from_data(TensorData::new(targets, [b, 1]), device);
            let x = f32(out.sequence_logits.expect("a sequence classification head"));
            ((x - y).powi_scalar(2).sum(), zero())
        }
        Some(Target::Tokens(_)) => {
            let mut positions = Vec::new();
            let mut labels = Vec::new();
            for (i, f) in features.iter().enumerate() {
                if let Target::Tokens(tags) = &f.target {
                    for (j, &l) in tags.iter().enumerate().take(t) {
                        if l != IGNORE {
                            positions.push((i * t + j) as i64);
                            labels.push(l);
                        }
                    }
                }
            }
            let logits = out.token_logits.expect("a token classification head");
            let n_labels = logits.dims()[2];
            if positions.is_empty() {
                (zero(), zero())
            } else {
                let n = positions.len();
                let index = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), device);
                let selected = logits.reshape([b * t, n_labels]).select(0, index);
                cross_entropy_sum(selected, labels, device)
            }
        }
        Some(Target::Span { .. }) => {
            let (starts, ends): (Vec<i64>, Vec<i64>) = features
                .iter()
                .map(|f| match f.target {
                    Target::Span { start, end } => (start as i64, end as i64),
                    _ => (0, 0),
                })
                .unzip();
            let start_logits = out.start_logits.expect("a question answering head");
            let end_logits = out.end_logits.expect("a question answering head");
            let (s_sum, s_ok) = cross_entropy_sum(start_logits.clone(), starts.clone(), device);
            let (e_sum, e_ok) = cross_entropy_sum(end_logits.clone(), ends.clone(), device);
            // Both right: count rows where start and end argmax match.
            let both = {
                let st = Tensor::<B, 1, Int>::from_data(TensorData::new(starts, [b]), device);
                let en = Tensor::<B, 1, Int>::from_data(TensorData::new(ends, [b]), device);
                let s_hit = start_logits.detach().argmax(1).reshape([b]).equal(st);
                let e_hit = end_logits.detach().argmax(1).reshape([b]).equal(en);
                s_hit.int().add(e_hit.int()).equal_elem(2).float().sum()
            };
            let _ = (s_ok, e_ok);
            ((s_sum + e_sum) / 2.0, both)
        }
        Some(Target::None) | None => (zero(), zero()),
    };
    let loss = sum / units.max(1) as f64;
    MicroLoss {
        loss,
        stats: vec![correct.reshape([1])],
    }
}

/// Runs `features` through `model` (inference) in batches of `batch_size` and reads back the
/// task's logits.
pub fn predict_logits<B: Backend>(
    model: &Bert<B>,
    features: &[Feature],
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> Logits {
    let mut seq = Vec::new();
    let mut tok = Vec::new();
    let mut spans = Vec::new();
    for chunk in features.chunks(batch_size.max(1)) {
        let refs: Vec<&Feature> = chunk.iter().collect();
        let batch = pad(&refs, pad_id);
        let out = forward(model, &batch, device);
        let t = batch.seq_len;
        if let Some(logits) = out.sequence_logits {
            let l = logits.dims()[1];
            let host = bertkit_model::nn::to_host(f32(logits)).data;
            seq.extend(host.chunks(l).map(|c| c.to_vec()));
        } else if let Some(logits) = out.token_logits {
            let l = logits.dims()[2];
            let host = bertkit_model::nn::to_host(f32(logits)).data;
            for (i, f) in chunk.iter().enumerate() {
                let rows = (0..f.input_ids.len())
                    .map(|j| host[(i * t + j) * l..(i * t + j + 1) * l].to_vec())
                    .collect();
                tok.push(rows);
            }
        } else if let (Some(s), Some(e)) = (out.start_logits, out.end_logits) {
            let s = bertkit_model::nn::to_host(f32(s)).data;
            let e = bertkit_model::nn::to_host(f32(e)).data;
            for (i, f) in chunk.iter().enumerate() {
                let n = f.input_ids.len();
                spans.push((s[i * t..i * t + n].to_vec(), e[i * t..i * t + n].to_vec()));
            }
        }
    }
    if !tok.is_empty() {
        Logits::Tokens(tok)
    } else if !spans.is_empty() {
        Logits::Spans(spans)
    } else {
        Logits::Sequence(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bertkit_model::backend::Cpu;

    #[test]
    fn bce_with_logits_matches_the_definition() {
        let device = Default::default();
        let xs = [2.0f32, -1.0, 0.0, 30.0, -30.0, 0.5];
        let ys = [1.0f32, 1.0, 0.0, 0.0, 0.0, 1.0];
        let x = Tensor::<Cpu, 2>::from_data(TensorData::new(xs.to_vec(), [2, 3]), &device);
        let y = Tensor::<Cpu, 2>::from_data(TensorData::new(ys.to_vec(), [2, 3]), &device);
        let got = bertkit_model::nn::to_host(bce_with_logits_sum(x, y)).data[0] as f64;
        // -[y log s(x) + (1-y) log(1-s(x))], with log(1-s(30)) = -30 - log(1+e^-30).
        let expected: f64 = xs
            .iter()
            .zip(ys)
            .map(|(&x, y)| {
                let x = x as f64;
                let log_s = -(1.0 + (-x).exp()).ln();
                let log_1ms = -x - (1.0 + (-x).exp()).ln();
                -(y as f64 * log_s + (1.0 - y as f64) * log_1ms)
            })
            .sum();
        assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
        assert!((expected - 30.0).abs() < 5.0, "30 dominates: {expected}");
    }
}
