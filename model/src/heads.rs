//! Task heads on top of `BertModel`, named as in Hugging Face (`cls.predictions`,
//! `cls.seq_relationship`, `classifier`, `qa_outputs`), and `Bert`, a body with the head of a task.

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::bert::{BertInput, BertModel};
use crate::config::{BertConfig, HiddenAct};
use crate::nn::{activation, dropout, LayerNorm, Linear};
use crate::weights::{Init, ParamSink, ParamSource};

/// What a model is for; each is one Hugging Face architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// `BertModel`: hidden states and the pooler output.
    Base,
    /// `BertForPreTraining`: masked LM + next sentence prediction.
    Pretraining,
    /// `BertForMaskedLM`.
    MaskedLm,
    /// `BertForNextSentencePrediction`.
    NextSentence,
    /// `BertForSequenceClassification` (single label, multi-label or regression).
    SequenceClassification,
    /// `BertForTokenClassification`.
    TokenClassification,
    /// `BertForQuestionAnswering` (span start/end).
    QuestionAnswering,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::Base,
        Task::Pretraining,
        Task::MaskedLm,
        Task::NextSentence,
        Task::SequenceClassification,
        Task::TokenClassification,
        Task::QuestionAnswering,
    ];

    /// The Hugging Face class name, as written in `config.json` `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            Task::Base => "BertModel",
            Task::Pretraining => "BertForPreTraining",
            Task::MaskedLm => "BertForMaskedLM",
            Task::NextSentence => "BertForNextSentencePrediction",
            Task::SequenceClassification => "BertForSequenceClassification",
            Task::TokenClassification => "BertForTokenClassification",
            Task::QuestionAnswering => "BertForQuestionAnswering",
        }
    }

    pub fn from_architecture(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.architecture() == name)
    }

    /// HF builds the pooler for these (`add_pooling_layer`).
    pub fn has_pooler(self) -> bool {
        matches!(
            self,
            Task::Base | Task::Pretraining | Task::NextSentence | Task::SequenceClassification
        )
    }

    pub fn has_mlm(self) -> bool {
        matches!(self, Task::Pretraining | Task::MaskedLm)
    }

    pub fn has_nsp(self) -> bool {
        matches!(self, Task::Pretraining | Task::NextSentence)
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Base => "base",
            Task::Pretraining => "pretraining",
            Task::MaskedLm => "masked-lm",
            Task::NextSentence => "next-sentence",
            Task::SequenceClassification => "sequence-classification",
            Task::TokenClassification => "token-classification",
            Task::QuestionAnswering => "question-answering",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s || t.architecture() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Task::ALL.iter().map(|t| t.name()).collect();
                format!("unknown task {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// `cls.predictions.transform`: dense, activation, LayerNorm.
#[derive(Module, Debug)]
pub struct BertPredictionHeadTransform<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    #[module(skip)]
    pub act: HiddenAct,
}

/// `cls.predictions`: the transform, then a decoder tied to the word embeddings, plus a bias.
#[derive(Module, Debug)]
pub struct BertLMPredictionHead<B: Backend> {
    pub transform: BertPredictionHeadTransform<B>,
    pub bias: burn::module::Param<Tensor<B, 1>>,
}

impl<B: Backend> BertLMPredictionHead<B> {
    fn load(src: &mut ParamSource, c: &BertConfig, device: &B::Device) -> Self {
        let h = c.hidden_size;
        let bias = src.take("cls.predictions.bias", &[c.vocab_size], Init::Zeros);
        BertLMPredictionHead {
            transform: BertPredictionHeadTransform {
                dense: Linear::load(src, "cls.predictions.transform.dense", h, h, device),
                layer_norm: LayerNorm::load(
                    src,
                    "cls.predictions.transform.LayerNorm",
                    h,
                    c.layer_norm_eps,
                    device,
                ),
                act: c.hidden_act,
            },
            bias: burn::module::Param::from_tensor(crate::nn::to_tensor(bias, device)),
        }
    }

    fn save(&self, sink: &mut ParamSink) {
        self.transform
            .dense
            .save(sink, "cls.predictions.transform.dense");
        self.transform
            .layer_norm
            .save(sink, "cls.predictions.transform.LayerNorm");
        sink.put("cls.predictions.bias", crate::nn::to_host(self.bias.val()));
    }

    /// Vocabulary logits for hidden states `[..., hidden]`; `word_embeddings` is `[vocab, hidden]`.
    /// Pretraining calls this on the masked positions only.
    pub fn forward<const D: usize>(
        &self,
        hidden: Tensor<B, D>,
        word_embeddings: Tensor<B, 2>,
    ) -> Tensor<B, D> {
        let t = &self.transform;
        let x = t
            .layer_norm
            .forward(activation(t.act, t.dense.forward(hidden)));
        crate::fused_linear::linear(x, word_embeddings.transpose(), self.bias.val())
    }
}

/// A BERT body with the head of one task.
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    pub bert: BertModel<B>,
    /// `cls.predictions` (masked LM).
    pub mlm: Option<BertLMPredictionHead<B>>,
    /// `cls.seq_relationship` (next sentence prediction).
    pub nsp: Option<Linear<B>>,
    /// `classifier` (sequence or token classification).
    pub classifier: Option<Linear<B>>,
    /// `qa_outputs` (span start/end).
    pub qa_outputs: Option<Linear<B>>,
    /// `distill.hidden_projection`: a student's hidden states to its teacher's width, trained
    /// during intermediate-layer distillation only (TinyBERT's `W_h`); in a distillation's
    /// checkpoints, never in a model folder ([`Bert::without_distillation`]).
    pub hidden_projection: Option<Linear<B>>,
    #[module(skip)]
    pub task: Task,
    #[module(skip)]
    pub config: BertConfig,
}

/// Everything a forward pass computes; the fields a task has no head for are `None`.
#[derive(Debug, Clone)]
pub struct BertOutput<B: Backend> {
    /// `[batch, seq, hidden]`
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`
    pub pooler_output: Option<Tensor<B, 2>>,
    /// `[batch, seq, vocab]`
    pub prediction_logits: Option<Tensor<B, 3>>,
    /// `[batch, 2]`
    pub seq_relationship_logits: Option<Tensor<B, 2>>,
    /// `[batch, num_labels]`
    pub sequence_logits: Option<Tensor<B, 2>>,
    /// `[batch, seq, num_labels]`
    pub token_logits: Option<Tensor<B, 3>>,
    /// `[batch, seq]` each
    pub start_logits: Option<Tensor<B, 2>>,
    pub end_logits: Option<Tensor<B, 2>>,
}

/// The parameter name of [`Bert::hidden_projection`].
pub const HIDDEN_PROJECTION: &str = "distill.hidden_projection";
const HIDDEN_PROJECTION_BIAS: &str = "distill.hidden_projection.bias";

impl<B: Backend> Bert<B> {
    /// Builds the model for `task`, taking every parameter from `src` (a checkpoint or fresh
    /// initialization). Problems are collected in `src`; call `src.finish()` afterwards.
    pub fn load(
        src: &mut ParamSource,
        config: &BertConfig,
        task: Task,
        device: &B::Device,
    ) -> Self {
        let h = config.hidden_size;
        let bert = BertModel::load(src, config, task.has_pooler(), device);
        let mlm = task
            .has_mlm()
            .then(|| BertLMPredictionHead::load(src, config, device));
        let nsp = task
            .has_nsp()
            .then(|| Linear::load(src, "cls.seq_relationship", h, 2, device));
        let classifier = matches!(
            task,
            Task::SequenceClassification | Task::TokenClassification
        )
        .then(|| Linear::load(src, "classifier", h, config.num_labels(), device));
        let qa_outputs = (task == Task::QuestionAnswering)
            .then(|| Linear::load(src, "qa_outputs", h, 2, device));
        let hidden_projection = src
            .tensors()
            .get(HIDDEN_PROJECTION_BIAS)
            .map(|bias| bias.shape[0])
            .map(|teacher| Linear::load(src, HIDDEN_PROJECTION, h, teacher, device));
        Bert {
            bert,
            mlm,
            nsp,
            classifier,
            qa_outputs,
            hidden_projection,
            task,
            config: config.clone(),
        }
    }

    /// All parameters under their HF names (base-model names without `bert.`).
    pub fn save(&self, sink: &mut ParamSink) {
        self.bert.save(sink);
        if let Some(mlm) = &self.mlm {
            mlm.save(sink);
        }
        if let Some(nsp) = &self.nsp {
            nsp.save(sink, "cls.seq_relationship");
        }
        if let Some(c) = &self.classifier {
            c.save(sink, "classifier");
        }
        if let Some(qa) = &self.qa_outputs {
            qa.save(sink, "qa_outputs");
        }
        if let Some(p) = &self.hidden_projection {
            p.save(sink, HIDDEN_PROJECTION);
        }
    }

    /// This model with a fresh [`Bert::hidden_projection`] to `teacher_width` (normal(0,
    /// `initializer_range`) weights from `seed`, zero bias).
    pub fn with_hidden_projection(mut self, teacher_width: usize, seed: u64) -> Self {
        let device = self.bert.embeddings.word_embeddings.weight.val().device();
        let mut src = ParamSource::fresh(seed, self.config.initializer_range);
        let h = self.config.hidden_size;
        self.hidden_projection = Some(Linear::load(
            &mut src,
            HIDDEN_PROJECTION,
            h,
            teacher_width,
            &device,
        ));
        self
    }

    /// This model without what only distillation trains: a normal model folder's model.
    pub fn without_distillation(mut self) -> Self {
        self.hidden_projection = None;
        self
    }

    /// The number of parameters (the tied decoder counted once, as HF does).
    pub fn num_params(&self) -> usize {
        Module::num_params(self)
    }

    pub fn forward(&self, input: &BertInput<B>) -> BertOutput<B> {
        self.heads(self.bert.encode(input))
    }

    /// Everything after the encoder: the pooler and the task's heads on the last hidden state.
    pub fn heads(&self, hidden: Tensor<B, 3>) -> BertOutput<B> {
        let pooled = self.bert.pooler.as_ref().map(|p| p.forward(hidden.clone()));
        let cls_dropout = self.config.classifier_dropout_prob();
        let word_embeddings = || self.bert.embeddings.word_embeddings.weight.val();
        let prediction_logits = self
            .mlm
            .as_ref()
            .map(|m| m.forward(hidden.clone(), word_embeddings()));
        let seq_relationship_logits = match (&self.nsp, &pooled) {
            (Some(nsp), Some(p)) => Some(nsp.forward(p.clone())),
            _ => None,
        };
        let (mut sequence_logits, mut token_logits) = (None, None);
        if let Some(classifier) = &self.classifier {
            match (&pooled, self.task) {
                (Some(p), Task::SequenceClassification) => {
                    sequence_logits = Some(classifier.forward(dropout(p.clone(), cls_dropout)))
                }
                _ => token_logits = Some(classifier.forward(dropout(hidden.clone(), cls_dropout))),
            }
        }
        let (start_logits, end_logits) = match &self.qa_outputs {
            Some(qa) => {
                let [b, t, _] = hidden.dims();
                let logits = qa.forward(hidden.clone());
                let start = logits.clone().narrow(2, 0, 1).reshape([b, t]);
                let end = logits.narrow(2, 1, 1).reshape([b, t]);
                (Some(start), Some(end))
            }
            None => (None, None),
        };
        BertOutput {
            last_hidden_state: hidden,
            pooler_output: pooled,
            prediction_logits,
            seq_relationship_logits,
            sequence_logits,
            token_logits,
            start_logits,
            end_logits,
        }
    }
}
