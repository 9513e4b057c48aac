//! Distillation's loss terms, shared by task distillation (`bertkit distill`) and general
//! distillation in pretraining (a recipe's `[distill]` section), in the order a step uses them:
//! 1. [`layer_choice`]: which teacher layer each student layer learns from (TinyBERT's uniform
//!    map, or named layers);
//! 2. [`check_intermediate`]: whether the two models' shapes let the terms compare them;
//! 3. [`intermediate`]: the student's hidden states and attention (from the step's encoder)
//!    next to the teacher's, computed in the same micro-batch without a graph:
//!    - hidden states: the mean squared error of `student W_h` against the teacher over real
//!      tokens, the embeddings' output and every mapped layer (TinyBERT, `W_h` learned when the
//!      widths differ: [`Bert::hidden_projection`]);
//!    - attention: `KL(teacher || student)` of each head's distribution over the keys, for each
//!      real query token of each mapped layer (MiniLM's attention transfer);
//! 4. [`kl_rows`]: soft targets, `KL(softmax(t/T) || softmax(s/T))` per row (Hinton et al.).

use anyhow::{bail, Context, Result};
use bertkit_model::bert::{BertInput, BertModel, Layers};
use bertkit_model::config::BertConfig;
use bertkit_model::heads::Bert;
use bertkit_model::tokenizer::Batch;
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::activations::Encode;

/// The layers a student of `spec` layers takes from a teacher of `teacher` layers: `"N"`
/// takes N layers spread evenly, the top one included (TinyBERT's map: student layer m is
/// teacher layer m * teacher / N); `"i,j,k"` names them (0-based, increasing). `what` names the
/// setting in errors.
pub fn layer_choice(teacher: usize, spec: &str, what: &str) -> Result<Vec<usize>> {
    let spec = spec.trim();
    let layers: Vec<usize> = if spec.contains(',') {
        let list = spec
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .with_context(|| format!("{what} {spec:?}: not a list of layer numbers"))?;
        if list.windows(2).any(|w| w[0] >= w[1]) {
            bail!("{what} {spec:?}: name each teacher layer once, in increasing order");
        }
        list
    } else {
        let n: usize = spec
            .parse()
            .with_context(|| format!("{what} {spec:?}: a count or a list like 0,2,4"))?;
        if n == 0 || n > teacher {
            bail!("{what} {n}: the teacher has {teacher} layers; take 1 to {teacher}");
        }
        (1..=n).map(|m| m * teacher / n - 1).collect()
    };
    if let Some(&bad) = layers.iter().find(|&&l| l >= teacher) {
        bail!(
            "{what}: the teacher has layers 0 to {}; {bad} is not one",
            teacher - 1
        );
    }
    Ok(layers)
}

/// The weights of the intermediate-layer terms; 0 switches a term off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntermediateWeights {
    /// Hidden states (MSE, per element over real tokens, averaged over the mapped layers).
    pub hidden: f64,
    /// Attention distributions (KL per real query token and head, averaged over the layers).
    pub attention: f64,
}

impl IntermediateWeights {
    pub fn any(&self) -> bool {
        self.hidden > 0.0 || self.attention > 0.0
    }

    /// Each weight is a finite number of 0 or more; `what` names the two settings.
    pub fn check(&self, what: [&str; 2]) -> Result<()> {
        for (w, name) in [self.hidden, self.attention].into_iter().zip(what) {
            if !(w.is_finite() && w >= 0.0) {
                bail!("{name} must be a number of 0 or more, got {w}");
            }
        }
        Ok(())
    }
}

/// What a student learns from its teacher's layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Intermediate {
    pub weights: IntermediateWeights,
    /// Student layer `i` learns from teacher layer `map[i]`.
    pub map: Vec<usize>,
    /// The teacher's hidden size when it differs from the student's (a projection is trained).
    pub projection: Option<usize>,
}

/// Checks that `student` can learn `weights`' terms from `teacher` with the layer map `map`
/// (`what` names the two weights' settings in errors), and says whether the hidden-state term
/// needs a projection.
pub fn check_intermediate(
    teacher: &BertConfig,
    student: &BertConfig,
    weights: IntermediateWeights,
    map: Vec<usize>,
    what: [&str; 2],
) -> Result<Intermediate> {
    weights.check(what)?;
    if map.len() != student.num_hidden_layers {
        bail!(
            "the layer map names {} teacher layers for a student of {} layers",
            map.len(),
            student.num_hidden_layers
        );
    }
    if let Some(&bad) = map.iter().find(|&&l| l >= teacher.num_hidden_layers) {
        bail!(
            "the layer map names teacher layer {bad}; the teacher has layers 0 to {}",
            teacher.num_hidden_layers.saturating_sub(1)
        );
    }
    if weights.attention > 0.0 && teacher.num_attention_heads != student.num_attention_heads {
        bail!(
            "{} compares attention heads one to one: the teacher has {} heads, the student {}; \
             leave it at 0 or give the student {} heads",
            what[1],
            teacher.num_attention_heads,
            student.num_attention_heads,
            teacher.num_attention_heads
        );
    }
    let projection = (weights.hidden > 0.0 && teacher.hidden_size != student.hidden_size)
        .then_some(teacher.hidden_size);
    Ok(Intermediate {
        weights,
        map,
        projection,
    })
}

fn f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(DType::F32)
    }
}

/// `KL(softmax(teacher/T) || softmax(student/T))` of each row of `[n, classes]`, as `[n]`
/// (the teacher's side a constant).
pub fn kl_rows<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let n = student.dims()[0];
    let t = f32(teacher) / temperature;
    let log_q = bertkit_model::fused::log_softmax(f32(student) / temperature);
    let log_p = bertkit_model::fused::log_softmax(t.clone()).detach();
    let p = softmax(t, 1).detach();
    (p * (log_p - log_q)).sum_dim(1).reshape([n])
}

/// The prediction layer's loss (Hinton et al.; DistilBERT's and TinyBERT's) from a
/// micro-batch's sums: `alpha * T^2 * kl_sum / soft_units + (1 - alpha) * ce_sum / hard_units`,
/// the units being the whole step's (the KL's rows, the labelled ones).
pub fn soft_and_hard<B: Backend>(
    kl_sum: Tensor<B, 1>,
    ce_sum: Tensor<B, 1>,
    temperature: f64,
    alpha: f64,
    soft_units: usize,
    hard_units: usize,
) -> Tensor<B, 1> {
    let t2 = temperature * temperature;
    kl_sum * (t2 * alpha / soft_units.max(1) as f64)
        + ce_sum * ((1.0 - alpha) / hard_units.max(1) as f64)
}

/// `sum over real tokens and dimensions of (student - teacher)^2`; `student [b, t, h]`
/// (already projected to the teacher's width), `mask [b, t]` 1 for real tokens.
pub fn hidden_mse_sum<B: Backend>(
    student: Tensor<B, 3>,
    teacher: Tensor<B, 3>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, t, _] = student.dims();
    let d = f32(student) - f32(teacher).detach();
    (d.clone() * d).sum_dim(2).reshape([b, t]).mul(mask).sum()
}

/// Probabilities below this count as this in the attention KL's logarithms: a padding key has
/// probability 0 for both models, and `0 * log 0` must read as 0.
const PROB_FLOOR: f64 = 1e-30;

/// `sum over real query tokens and heads of KL(teacher || student)` of the distributions over
/// the keys; `[b, heads, t, t]` each, `mask [b, t]` 1 for real tokens.
pub fn attention_kl_sum<B: Backend>(
    student: Tensor<B, 4>,
    teacher: Tensor<B, 4>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, h, t, _] = student.dims();
    let p = f32(teacher).detach();
    let log_p = p.clone().clamp_min(PROB_FLOOR).log();
    let log_q = f32(student).clamp_min(PROB_FLOOR).log();
    let per_row = (p * (log_p - log_q)).sum_dim(3).reshape([b, h, t]);
    per_row.mul(mask.reshape([b, 1, t])).sum()
}

/// What [`intermediate`] computes for one micro-batch.
pub struct Compared<AD: AutodiffBackend> {
    /// The student's last hidden state (for its heads).
    pub student: Tensor<AD, 3>,
    /// The teacher's last hidden state (for its heads), without a graph.
    pub teacher: Tensor<AD::InnerBackend, 3>,
    /// The weighted intermediate-layer terms.
    pub loss: Tensor<AD, 1>,
}

/// The weighted intermediate-layer terms of one micro-batch and both models' last hidden
/// states. The student's layers come from `encoder` (dropout as in training); the teacher's
/// from its forward pass without a graph. `tokens` is the number of real tokens in the whole
/// optimizer step (all micro-batches, all ranks), so that the micro-batches' terms add up to
/// the step's means.
pub fn intermediate<AD: AutodiffBackend>(
    student: &Bert<AD>,
    encoder: &mut dyn Encode<AD>,
    teacher: &BertModel<AD::InnerBackend>,
    how: &Intermediate,
    batch: &Batch,
    tokens: usize,
    device: &AD::Device,
) -> Compared<AD> {
    let attention = how.weights.attention > 0.0;
    let input: BertInput<AD> = batch.to_input(device);
    let s: Layers<AD> = encoder
        .encode_layers(&student.bert, &input, attention)
        .expect("intermediate-layer distillation runs without activation checkpointing");
    let t = teacher.encode_layers(&batch.to_input(device), attention, |_| {});
    let mask: Vec<f32> = batch.attention_mask.iter().map(|&m| m as f32).collect();
    let mask = Tensor::<AD, 2>::from_data(
        TensorData::new(mask, [batch.batch_size, batch.seq_len]),
        device,
    );
    let tokens = tokens.max(1) as f64;
    let mut loss = Tensor::<AD, 1>::zeros([1], device);
    if how.weights.hidden > 0.0 {
        // The embeddings' output, then each student layer against its teacher layer.
        let pairs: Vec<(usize, usize)> = std::iter::once((0, 0))
            .chain(how.map.iter().enumerate().map(|(i, &l)| (i + 1, l + 1)))
            .collect();
        let width = teacher.embeddings.layer_norm.weight.val().dims()[0] as f64;
        let per = how.weights.hidden / (tokens * width * pairs.len() as f64);
        for (si, ti) in pairs {
            let hs = s.hidden[si].clone();
            let hs = match &student.hidden_projection {
                Some(p) => p.forward(f32(hs)),
                None => hs,
            };
            let ht = Tensor::from_inner(t.hidden[ti].clone());
            loss = loss + hidden_mse_sum(hs, ht, mask.clone()) * per;
        }
    }
    if attention {
        let heads = s.attentions.first().map_or(1, |a| a.dims()[1]) as f64;
        let per = how.weights.attention / (tokens * heads * how.map.len().max(1) as f64);
        for (si, &ti) in how.map.iter().enumerate() {
            let at = Tensor::from_inner(t.attentions[ti].clone());
            loss = loss + attention_kl_sum(s.attentions[si].clone(), at, mask.clone()) * per;
        }
    }
    Compared {
        student: s.last(),
        teacher: t.last(),
        loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bertkit_model::backend::Cpu;
    use bertkit_model::nn::to_host;
    use burn::tensor::Distribution;

    #[test]
    fn layers_are_spread_evenly_or_named() {
        let choose = |t, s| layer_choice(t, s, "--student-layers");
        assert_eq!(choose(6, "2").unwrap(), vec![2, 5]);
        assert_eq!(choose(6, "3").unwrap(), vec![1, 3, 5]);
        assert_eq!(choose(12, "6").unwrap(), vec![1, 3, 5, 7, 9, 11]);
        assert_eq!(choose(6, "6").unwrap(), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(choose(6, "0, 2,4").unwrap(), vec![0, 2, 4]);
        for (bad, says) in [
            ("0", "1 to 6"),
            ("7", "1 to 6"),
            ("0,6", "6 is not one"),
            ("2,1", "increasing"),
            ("1,1", "increasing"),
            ("x", "a count"),
        ] {
            let e = choose(6, bad).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("--student-layers"),
                "{bad}: {e}"
            );
        }
    }

    fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<Cpu, D> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn kl_with_temperature_matches_its_definition() {
        let s = [[1.0f32, -0.5, 2.0], [0.0, 3.0, -1.0]];
        let t = [[0.5f32, 0.5, 1.5], [-2.0, 1.0, 0.25]];
        let softmax64 = |row: &[f32], temp: f64| {
            let e: Vec<f64> = row.iter().map(|&x| (x as f64 / temp).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect::<Vec<_>>()
        };
        for temp in [1.0, 2.0, 4.0] {
            let got = kl_rows(tensor(s.concat(), [2, 3]), tensor(t.concat(), [2, 3]), temp);
            let got = to_host(got).data;
            for i in 0..2 {
                let (p, q) = (softmax64(&t[i], temp), softmax64(&s[i], temp));
                let want: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
                assert!(
                    (got[i] as f64 - want).abs() < 1e-5,
                    "T={temp}: {got:?} vs {want}"
                );
                assert!(want > 0.0);
            }
        }
        // Zero when the student says what the teacher says.
        let same = to_host(kl_rows(
            tensor(t.concat(), [2, 3]),
            tensor(t.concat(), [2, 3]),
            2.0,
        ));
        assert!(same.data.iter().all(|x| x.abs() < 1e-6));
    }

    #[test]
    fn hidden_mse_counts_real_tokens_only() {
        // [1, 3, 2]: the third token is padding, its large difference must not count.
        let s = tensor(vec![1.0, 2.0, 0.0, -1.0, 100.0, 100.0], [1, 3, 2]);
        let t = tensor(vec![0.5, 2.0, 1.0, 1.0, 0.0, 0.0], [1, 3, 2]);
        let got = to_host(hidden_mse_sum(s, t, tensor(vec![1.0, 1.0, 0.0], [1, 3]))).data[0];
        let want = 0.5f32 * 0.5 + 0.0 + 1.0 + 4.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// Rows of softmax'd random scores, with padding keys given probability 0.
    fn distributions(seed: u64, shape: [usize; 4], real: usize) -> Tensor<Cpu, 4> {
        let device = Default::default();
        Cpu::seed(&device, seed);
        let scores = Tensor::<Cpu, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let [b, h, t, _] = shape;
        let mut keep = vec![0f32; t];
        keep[..real].iter_mut().for_each(|x| *x = 1.0);
        let keep = tensor(keep, [1, 1, 1, t]).expand([b, h, t, t]);
        let e = scores.exp() * keep;
        e.clone() / e.sum_dim(3)
    }

    #[test]
    fn attention_kl_matches_its_definition_and_skips_padding() {
        let shape = [2, 3, 4, 4];
        let (s, t) = (distributions(1, shape, 3), distributions(2, shape, 3));
        let mask = vec![1.0f32, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let got = to_host(attention_kl_sum(
            s.clone(),
            t.clone(),
            tensor(mask.clone(), [2, 4]),
        ));
        let (sv, tv) = (to_host(s.clone()).data, to_host(t.clone()).data);
        let mut want = 0f64;
        for b in 0..2 {
            for h in 0..3 {
                for q in 0..4 {
                    if mask[b * 4 + q] == 0.0 {
                        continue;
                    }
                    for k in 0..4 {
                        let i = ((b * 3 + h) * 4 + q) * 4 + k;
                        let (p, r) = (tv[i] as f64, sv[i] as f64);
                        if p > 0.0 {
                            want += p * (p / r).ln();
                        }
                    }
                }
            }
        }
        assert!(got.data[0].is_finite() && want > 0.0);
        assert!(
            ((got.data[0] as f64) - want).abs() < 1e-4 * want,
            "{got:?} vs {want}"
        );
        let same = to_host(attention_kl_sum(t.clone(), t, tensor(mask, [2, 4])));
        assert!(same.data[0].abs() < 1e-5, "{:?}", same.data);
    }

    fn config(layers: usize, hidden: usize, heads: usize) -> BertConfig {
        BertConfig {
            num_hidden_layers: layers,
            hidden_size: hidden,
            num_attention_heads: heads,
            ..BertConfig::default()
        }
    }

    #[test]
    fn shapes_that_do_not_map_are_refused() {
        let what = ["--hidden-weight", "--attention-weight"];
        let w = |hidden, attention| IntermediateWeights { hidden, attention };
        let teacher = config(6, 384, 12);
        // Same heads, other width: a projection.
        let ok = check_intermediate(&teacher, &config(2, 256, 12), w(1.0, 1.0), vec![2, 5], what)
            .unwrap();
        assert_eq!(ok.projection, Some(384));
        // Same width: none; attention alone needs none either.
        let same = check_intermediate(&teacher, &config(2, 384, 12), w(1.0, 0.0), vec![2, 5], what);
        assert_eq!(same.unwrap().projection, None);
        let attn = check_intermediate(&teacher, &config(2, 256, 12), w(0.0, 1.0), vec![2, 5], what);
        assert_eq!(attn.unwrap().projection, None);
        for (student, weights, map, says) in [
            (
                config(2, 256, 4),
                w(0.0, 1.0),
                vec![2, 5],
                "12 heads, the student 4",
            ),
            (
                config(2, 384, 12),
                w(1.0, 0.0),
                vec![5],
                "names 1 teacher layers",
            ),
            (config(2, 384, 12), w(1.0, 0.0), vec![2, 6], "layers 0 to 5"),
            (
                config(2, 384, 12),
                w(-1.0, 0.0),
                vec![2, 5],
                "--hidden-weight",
            ),
            (
                config(2, 384, 12),
                w(0.0, f64::NAN),
                vec![2, 5],
                "--attention-weight",
            ),
        ] {
            let e = check_intermediate(&teacher, &student, weights, map, what)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
