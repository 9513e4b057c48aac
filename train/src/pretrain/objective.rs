//! The pretraining objective: masked LM (on the masked positions only, as NVIDIA computes it)
//! plus next sentence prediction when the data has it.
//!
//! Losses are sums over a micro-batch divided by the counts of the whole optimizer step (all
//! micro-batches, all ranks), so the accumulated gradient is the gradient of the step's mean
//! loss however the step is split into micro-batches and ranks.

use bertkit_model::heads::Bert;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::activations::Encode;
use crate::loader::Batch;
use crate::masking::IGNORE_LABEL;
use crate::step::{cross_entropy_sum, MicroLoss};

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
    pub mlm_loss: f64,
    pub mlm_accuracy: f64,
    pub nsp_loss: Option<f64>,
    pub nsp_accuracy: Option<f64>,
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
        }
    }

    /// The loss the optimizer minimizes.
    pub fn loss(&self) -> f64 {
        self.mlm_loss + self.nsp_loss.unwrap_or(0.0)
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
    let [b, t, h] = hidden.dims();

    let (positions, labels): (Vec<i64>, Vec<i64>) = batch
        .mlm_labels
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != IGNORE_LABEL)
        .map(|(i, &l)| (i as i64, l))
        .unzip();
    let zero = || Tensor::<B, 1>::zeros([1], device);
    let (mlm_sum, mlm_correct) = match (&model.mlm, positions.len()) {
        (Some(mlm), n) if n > 0 => {
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), device);
            let selected = hidden.clone().reshape([b * t, h]).select(0, index);
            let word_embeddings = model.bert.embeddings.word_embeddings.weight.val();
            let logits = mlm.forward(selected, word_embeddings);
            let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), device);
            cross_entropy_sum(logits, labels)
        }
        _ => (zero(), zero()),
    };
    let mut loss = mlm_sum.clone() / counts.masked.max(1) as f64;

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
    let stats = Tensor::cat(
        vec![mlm_sum.detach(), mlm_correct, nsp_sum.detach(), nsp_correct],
        0,
    );
    MicroLoss { loss, stats }
}
