//! What the three tasks share: a [`Feature`] (one model input with its training target),
//! padding features into a batch, the logits read back for evaluation and prediction, and the
//! host-side softmax/argmax. Each task's own module turns its data into features and its logits
//! into predictions and metrics. The losses and the forward pass are fine-tuning's
//! (`bertkit_finetune::tasks`).

pub mod classify;
pub mod ner;
pub mod qa;

use bertkit_model::tokenizer::Batch;
/// Token labels that the loss ignores (HF's `-100`: special tokens, padding, and every word
/// piece after a word's first).
pub const IGNORE: i64 = -100;

/// One model input: token ids and type ids (special tokens added, unpadded) and its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// Index of the example it came from (QA: several windows per example).
    pub example: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Prediction only.
    None,
    /// Single-label classification: the class id.
    Class(usize),
    /// Multi-label classification: 0/1 per label.
    MultiHot(Vec<f32>),
    /// Regression.
    Value(f32),
    /// Token classification: a label id per token, [`IGNORE`] where there is none.
    Tokens(Vec<i64>),
    /// Question answering: start and end token (0 = `[CLS]` = no answer in this window).
    Span { start: usize, end: usize },
}

/// The share of the step's loss a micro-batch's targets make up: the loss of a micro-batch is
/// its sum divided by the step's units, so accumulation does not change the gradient.
pub fn loss_units(features: &[&Feature], num_labels: usize) -> usize {
    features
        .iter()
        .map(|f| match &f.target {
            Target::None => 0,
            Target::Class(_) | Target::Value(_) | Target::Span { .. } => 1,
            Target::MultiHot(_) => num_labels,
            Target::Tokens(t) => t.iter().filter(|&&l| l != IGNORE).count(),
        })
        .sum()
}

/// Pads `features` to the longest one.
pub fn pad(features: &[&Feature], pad_id: u32) -> Batch {
    let seqs: Vec<(Vec<u32>, Vec<u32>)> = features
        .iter()
        .map(|f| (f.input_ids.clone(), f.token_type_ids.clone()))
        .collect();
    Batch::pad(&seqs, pad_id)
}

/// The logits of a padded batch read back, per feature, trimmed to its unpadded length.
#[derive(Debug, Clone)]
pub enum Logits {
    /// `[labels]` per feature.
    Sequence(Vec<Vec<f32>>),
    /// `[tokens][labels]` per feature.
    Tokens(Vec<Vec<Vec<f32>>>),
    /// (start, end) `[tokens]` per feature.
    Spans(Vec<(Vec<f32>, Vec<f32>)>),
}

/// Softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_units_count_what_each_target_averages_over() {
        let f = |target| Feature {
            example: 0,
            input_ids: vec![101, 7, 102],
            token_type_ids: vec![0; 3],
            target,
        };
        let feats = [
            f(Target::Tokens(vec![IGNORE, 3, IGNORE])),
            f(Target::Tokens(vec![IGNORE, 1, 2])),
        ];
        let refs: Vec<&Feature> = feats.iter().collect();
        assert_eq!(loss_units(&refs, 5), 3);
        let hot = [f(Target::MultiHot(vec![1.0, 0.0, 1.0]))];
        assert_eq!(loss_units(&hot.iter().collect::<Vec<_>>(), 3), 3);
        let spans = [f(Target::Span { start: 1, end: 1 }), f(Target::Class(0))];
        assert_eq!(loss_units(&spans.iter().collect::<Vec<_>>(), 2), 2);
    }
}
