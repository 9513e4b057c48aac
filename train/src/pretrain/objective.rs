//! The pretraining objective: masked LM (on the masked positions only, as NVIDIA computes it)
//! plus next sentence prediction when the data has it.
//!
//! Losses are sums over a micro-batch divided by the counts of the whole optimizer step (all
//! micro-batches, all ranks), so the accumulated gradient is the gradient of the step's mean
//! loss however the step is split into micro-batches and ranks.

use bertkit_model::heads::Bert;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use crate::activations::Encode;
use crate::distill::{intermediate, kl_rows, soft_and_hard, Intermediate};
use crate::loader::Batch;
use crate::masking::IGNORE_LABEL;
use crate::step::{cross_entropy_sum, weighted_cross_entropy_sum, MicroLoss};

/// The denominators of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCounts {
    /// Masked positions in the step.
    pub masked: usize,
    /// Sequences in the step.
    pub sequences: usize,
}

impl StepCounts {
    pub fn of(batches: &[Batch]) -> StepCounts {
        StepCounts {
            masked: batches
                .iter()
                .map(|b| b.mlm_labels.iter().filter(|&&l| l != IGNORE_LABEL).count())
                .sum(),
            sequences: batches.iter().map(|b| b.inputs.batch_size).sum(),
        }
    }
}

/// Summed statistics of a whole step, read back once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// The MLM cross entropy with the original tokens (also when distilling).
    pub mlm_loss: f64,
    pub mlm_accuracy: f64,
    pub nsp_loss: Option<f64>,
    pub nsp_accuracy: Option<f64>,
    /// General distillation's terms.
    pub distill: Option<DistillStats>,
}

/// A distilling step's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DistillStats {
    /// `KL(teacher || student)` at temperature T per masked position.
    pub soft_mlm_kl: f64,
    /// The weighted intermediate-layer terms.
    pub layers: f64,
    /// The loss the optimizer minimizes.
    pub loss: f64,
}

impl StepStats {
    /// From the summed `stats` of [`MicroLoss`] and the step's counts.
    pub fn from_sums(sums: &[f32], counts: StepCounts, nsp: bool) -> StepStats {
        let m = counts.masked.max(1) as f64;
        let s = counts.sequences.max(1) as f64;
        StepStats {
            mlm_loss: sums[0] as f64 / m,
            mlm_accuracy: sums[1] as f64 / m,
            nsp_loss: nsp.then(|| sums[2] as f64 / s),
            nsp_accuracy: nsp.then(|| sums[3] as f64 / s),
            distill: None,
        }
    }

    /// These statistics with a distilling step's terms, from the same sums and the step's
    /// loss.
    pub fn with_distillation(mut self, sums: &[f32], counts: StepCounts, loss: f64) -> Self {
        self.distill = Some(DistillStats {
            soft_mlm_kl: sums[4] as f64 / counts.masked.max(1) as f64,
            layers: sums[5] as f64,
            loss,
        });
        self
    }

    /// The loss the optimizer minimizes.
    pub fn loss(&self) -> f64 {
        match self.distill {
            Some(d) => d.loss,
            None => self.mlm_loss + self.nsp_loss.unwrap_or(0.0),
        }
    }

    /// `loss`, `mlm_loss`, `mlm_accuracy` and, with NSP, `nsp_loss` and `nsp_accuracy`, as
    /// named metrics for the logs.
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![
            ("loss", self.loss()),
            ("mlm_loss", self.mlm_loss),
            ("mlm_accuracy", self.mlm_accuracy),
        ];
        if let (Some(l), Some(a)) = (self.nsp_loss, self.nsp_accuracy) {
            v.extend([("nsp_loss", l), ("nsp_accuracy", a)]);
        }
        if let Some(d) = self.distill {
            v.extend([("soft_mlm_kl", d.soft_mlm_kl), ("layer_loss", d.layers)]);
        }
        v
    }
}

/// Forward pass (the encoder's hidden state from `encoder`) and loss of one micro-batch. `model` must have the MLM head (and the NSP head
/// when the batch has NSP labels).
pub fn micro_loss<B: Backend>(
    model: &Bert<B>,
    encoder: &mut dyn Encode<B>,
    batch: &Batch,
    counts: StepCounts,
    device: &B::Device,
) -> MicroLoss<B> {
    let input = batch.inputs.to_input::<B>(device);
    let hidden = encoder.encode(&model.bert, &input);
    heads_loss(model, hidden, batch, counts, None, None, device)
}

/// A teacher for general distillation (a recipe's `[distill]` section), on the inner backend.
pub struct Teacher<B: Backend> {
    /// The teacher with its MLM head (a bare body when `alpha` is 0).
    pub model: Bert<B>,
    pub temperature: f64,
    /// The weight of the soft MLM term at the masked positions; `1 - alpha` goes to the MLM
    /// cross entropy with the original tokens.
    pub alpha: f64,
    /// The intermediate-layer terms, when weighted.
    pub layers: Option<Intermediate>,
}

/// The teacher's soft MLM targets of one micro-batch, with its temperature and weight.
struct SoftMlm<B: Backend> {
    /// The teacher's logits at the masked positions `[masked, vocab]` (a constant).
    logits: Tensor<B, 2>,
    temperature: f64,
    alpha: f64,
}

/// [`micro_loss`] for a student of `teacher`: the MLM term becomes `alpha * T^2 * KL(teacher ||
/// student) + (1 - alpha) * CE` at the masked positions (DistilBERT's), the NSP term stays,
/// and the intermediate-layer terms are added ([`crate::distill::intermediate`]; `tokens` is
/// the step's real tokens on all ranks). The statistics gain the KL sum and the layer terms.
pub fn distill_micro_loss<AD: AutodiffBackend>(
    model: &Bert<AD>,
    encoder: &mut dyn Encode<AD>,
    batch: &Batch,
    counts: StepCounts,
    tokens: usize,
    teacher: &Teacher<AD::InnerBackend>,
    device: &AD::Device,
) -> MicroLoss<AD> {
    // The student's last hidden state, the teacher's (for its MLM predictions) and the layer
    // terms: one forward pass of each.
    let (student, teacher_hidden, layers) = match &teacher.layers {
        Some(how) => {
            let c = intermediate(
                model,
                encoder,
                &teacher.model.bert,
                how,
                &batch.inputs,
                tokens,
                device,
            );
            (c.student, Some(c.teacher), Some(c.loss))
        }
        None => (
            encoder.encode(&model.bert, &batch.inputs.to_input(device)),
            (teacher.alpha > 0.0)
                .then(|| teacher.model.bert.encode(&batch.inputs.to_input(device))),
            None,
        ),
    };
    let soft = match (&teacher.model.mlm, teacher_hidden, Predictions::of(batch)) {
        (Some(mlm), Some(hidden), Predictions { positions, .. })
            if teacher.alpha > 0.0 && !positions.is_empty() =>
        {
            let [b, t, h] = hidden.dims();
            let n = positions.len();
            let index = Tensor::from_data(TensorData::new(positions, [n]), device);
            let selected = hidden.reshape([b * t, h]).select(0, index);
            let word_embeddings = teacher.model.bert.embeddings.word_embeddings.weight.val();
            Some(SoftMlm {
                logits: Tensor::from_inner(mlm.forward(selected, word_embeddings)),
                temperature: teacher.temperature,
                alpha: teacher.alpha,
            })
        }
        _ => None,
    };
    heads_loss(model, student, batch, counts, soft, layers, device)
}

/// The rows the MLM head predicts in a micro-batch.
#[derive(Debug, PartialEq)]
pub struct Predictions {
    /// Flat indices into `[batch * seq]`: the masked positions, then padding (the first
    /// position that is not masked) up to [`Batch::prediction_slots`].
    pub positions: Vec<i64>,
    /// The original tokens (0 for padding).
    pub labels: Vec<i64>,
    /// 1 for a masked position, 0 for padding; `None` without padding.
    pub weights: Option<Vec<f32>>,
}

impl Predictions {
    pub fn of(batch: &Batch) -> Predictions {
        let (mut positions, mut labels): (Vec<i64>, Vec<i64>) = batch
            .mlm_labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l != IGNORE_LABEL)
            .map(|(i, &l)| (i as i64, l))
            .unzip();
        let real = positions.len();
        let weights = batch.prediction_slots.map(|slots| {
            let rows = slots.max(real);
            // The padding reads a position nobody predicts ([CLS] in real data): every
            // gradient the padding rows scatter back (all zero) lands where no real row's does.
            let free = batch
                .mlm_labels
                .iter()
                .position(|&l| l == IGNORE_LABEL)
                .unwrap_or(0) as i64;
            positions.resize(rows, free);
            labels.resize(rows, 0);
            let mut w = vec![1.0f32; real];
            w.resize(rows, 0.0);
            w
        });
        Predictions {
            positions,
            labels,
            weights,
        }
    }
}

/// The heads' losses on the last hidden state `hidden`; with `soft`, the MLM term is
/// distillation's, and the intermediate-layer terms `layers` are added. Statistics: MLM loss
/// sum, MLM correct, NSP loss sum, NSP correct, soft MLM KL sum, intermediate terms.
fn heads_loss<B: Backend>(
    model: &Bert<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch,
    counts: StepCounts,
    soft: Option<SoftMlm<B>>,
    layers: Option<Tensor<B, 1>>,
    device: &B::Device,
) -> MicroLoss<B> {
    let [b, t, h] = hidden.dims();
    let Predictions {
        positions,
        labels,
        weights,
    } = Predictions::of(batch);
    let zero = || Tensor::<B, 1>::zeros([1], device);
    let (mlm_sum, mlm_correct, kl_sum) = match (&model.mlm, positions.len()) {
        (Some(mlm), n) if n > 0 => {
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), device);
            let selected = hidden.clone().reshape([b * t, h]).select(0, index);
            let word_embeddings = model.bert.embeddings.word_embeddings.weight.val();
            let logits = mlm.forward(selected, word_embeddings);
            let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), device);
            let weights =
                weights.map(|w| Tensor::<B, 1>::from_data(TensorData::new(w, [n]), device));
            let kl = soft.as_ref().map(|s| {
                let rows = kl_rows(logits.clone(), s.logits.clone(), s.temperature);
                let kl = match &weights {
                    Some(w) => (rows * w.clone()).sum(),
                    None => rows.sum(),
                };
                (kl, s)
            });
            let (sum, correct) = weighted_cross_entropy_sum(logits, labels, weights);
            (sum, correct, kl)
        }
        _ => (zero(), zero(), None),
    };
    let mut loss = match &kl_sum {
        Some((kl, s)) => soft_and_hard(
            kl.clone(),
            mlm_sum.clone(),
            s.temperature,
            s.alpha,
            counts.masked,
            counts.masked,
        ),
        None => mlm_sum.clone() / counts.masked.max(1) as f64,
    };

    let (nsp_sum, nsp_correct) = match (&batch.next_sentence_label, &model.nsp, &model.bert.pooler)
    {
        (Some(nsp_labels), Some(nsp), Some(pooler)) => {
            let logits = nsp.forward(pooler.forward(hidden));
            let labels =
                Tensor::<B, 1, Int>::from_data(TensorData::new(nsp_labels.clone(), [b]), device);
            let (sum, correct) = cross_entropy_sum(logits, labels);
            loss = loss + sum.clone() / counts.sequences.max(1) as f64;
            (sum, correct)
        }
        _ => (zero(), zero()),
    };
    let kl_sum = kl_sum.map_or_else(zero, |(kl, _)| kl.detach());
    let layers_sum = match layers {
        Some(terms) => {
            loss = loss + terms.clone();
            terms.detach()
        }
        None => zero(),
    };
    let stats = vec![
        mlm_sum.detach(),
        mlm_correct,
        nsp_sum.detach(),
        nsp_correct,
        kl_sum,
        layers_sum,
    ];
    MicroLoss { loss, stats }
}
