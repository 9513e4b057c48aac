//! The BERT encoder, one struct per Hugging Face module (`BertEmbeddings`, `BertSelfAttention`,
//! ...), with HF's parameter names, so a checkpoint maps onto it one to one.
//! BERT is post-LayerNorm: each sub-block is `LayerNorm(x + dropout(f(x)))`.

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, TensorPrimitive};

use crate::attention::Spans;
use crate::config::{BertConfig, HiddenAct};
use crate::nn::{activation, dropout, Embedding, LayerNorm, Linear};
use crate::weights::{ParamSink, ParamSource};

/// A tokenized batch on the device: `[batch, seq]` each.
#[derive(Debug, Clone)]
pub struct BertInput<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub token_type_ids: Tensor<B, 2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// The mask's sequences when the host knows them (a right-padded mask): the attention
    /// kernels over spans then need not read the mask back from the device. `None`: read it
    /// when needed.
    pub spans: Option<Arc<Spans>>,
}

/// The attention mask in the two forms the attention paths use, built once per forward.
pub struct AttentionMask<B: Backend> {
    /// `[batch, 1, seq, seq]`, true where a key is padding (fused attention).
    masked: Tensor<B, 4, Bool>,
    /// `[batch, 1, 1, seq]`, 0 for real keys and f32::MIN for padding, as HF adds it to the scores.
    additive: Tensor<B, 4>,
    /// The sequences as spans of rows, for the attention kernels over spans (`crate::attention`,
    /// `crate::device_attention`), when every row of the mask is right-padded.
    spans: Option<Arc<Spans>>,
    /// Set when the layers run on the real tokens only ([`BertModel::embed_with`]).
    packing: Option<Packing<B>>,
}

/// Padding-free execution: the real tokens of a right-padded `[batch, seq]` batch packed into
/// `[1, tokens, hidden]`, as MosaicBERT trains and as the plan runtime serves. The linear
/// layers, GELU and LayerNorm then cost the real tokens instead of `batch x seq`, and attention
/// runs per sequence (`crate::attention`).
#[derive(Debug, Clone)]
pub struct Packing<B: Backend> {
    /// Each real token's row in the flattened `[batch * seq]` batch.
    rows: Tensor<B, 1, Int>,
    batch: usize,
    seq: usize,
}

impl<B: Backend> AttentionMask<B> {
    pub fn new(attention_mask: &Tensor<B, 2, Int>) -> Self {
        let spans = crate::attention::on_spans::<B>(burn::tensor::DType::F32)
            .then(|| Self::spans(attention_mask))
            .flatten();
        Self::with_spans(attention_mask, spans)
    }

    /// The mask's two tensor forms, with these sequences for the attention kernels over spans.
    fn with_spans(attention_mask: &Tensor<B, 2, Int>, spans: Option<Arc<Spans>>) -> Self {
        let [b, t] = attention_mask.dims();
        let masked = attention_mask
            .clone()
            .equal_elem(0)
            .reshape([b, 1, 1, t])
            .expand([b, 1, t, t]);
        let additive =
            (attention_mask.clone().float().neg() + 1.0).reshape([b, 1, 1, t]) * f32::MIN;
        AttentionMask {
            masked,
            additive,
            spans,
            packing: None,
        }
    }

    /// The right-padded mask's sequences (`None` when a row is not right-padded); read on the
    /// host.
    fn spans(attention_mask: &Tensor<B, 2, Int>) -> Option<Arc<Spans>> {
        let [b, t] = attention_mask.dims();
        let host = attention_mask.clone().into_data().convert::<i64>();
        Spans::padded(&host.to_vec::<i64>().ok()?, b, t).map(Arc::new)
    }

    /// A layer stack's output back in the batch's `[batch, seq, hidden]` layout (zeros at the
    /// padding when packed; otherwise `x` itself).
    pub fn unpack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let Some(p) = &self.packing else {
            return x;
        };
        let [_, n, h] = x.dims();
        Tensor::<B, 2>::zeros([p.batch * p.seq, h], &x.device())
            .select_assign(
                0,
                p.rows.clone(),
                x.reshape([n, h]),
                burn::tensor::IndexingUpdateOp::Add,
            )
            .reshape([p.batch, p.seq, h])
    }
}

#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: f64,
}

impl<B: Backend> BertEmbeddings<B> {
    pub fn load(src: &mut ParamSource, c: &BertConfig, device: &B::Device) -> Self {
        let h = c.hidden_size;
        BertEmbeddings {
            word_embeddings: Embedding::load(
                src,
                "embeddings.word_embeddings",
                c.vocab_size,
                h,
                Some(c.pad_token_id),
                device,
            ),
            position_embeddings: Embedding::load(
                src,
                "embeddings.position_embeddings",
                c.max_position_embeddings,
                h,
                None,
                device,
            ),
            token_type_embeddings: Embedding::load(
                src,
                "embeddings.token_type_embeddings",
                c.type_vocab_size,
                h,
                None,
                device,
            ),
            layer_norm: LayerNorm::load(src, "embeddings.LayerNorm", h, c.layer_norm_eps, device),
            dropout: c.hidden_dropout_prob,
        }
    }

    pub fn save(&self, sink: &mut ParamSink) {
        self.word_embeddings
            .save(sink, "embeddings.word_embeddings");
        self.position_embeddings
            .save(sink, "embeddings.position_embeddings");
        self.token_type_embeddings
            .save(sink, "embeddings.token_type_embeddings");
        self.layer_norm.save(sink, "embeddings.LayerNorm");
    }

    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let t = input_ids.dims()[1];
        let positions =
            Tensor::<B, 1, Int>::arange(0..t as i64, &input_ids.device()).reshape([1, t]);
        // `[1, seq, hidden]` position embeddings broadcast over the batch.
        self.forward_at(input_ids, token_type_ids, positions)
    }

    /// [`Self::forward`] with each token's position given (`[batch or 1, seq]`).
    pub fn forward_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let x = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(positions);
        dropout(self.layer_norm.forward(x), self.dropout)
    }
}

#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub num_heads: usize,
    pub dropout: f64,
}

impl<B: Backend> BertSelfAttention<B> {
    fn load(src: &mut ParamSource, p: &str, c: &BertConfig, device: &B::Device) -> Self {
        let h = c.hidden_size;
        BertSelfAttention {
            query: Linear::load(src, &format!("{p}.query"), h, h, device),
            key: Linear::load(src, &format!("{p}.key"), h, h, device),
            value: Linear::load(src, &format!("{p}.value"), h, h, device),
            num_heads: c.num_attention_heads,
            dropout: c.attention_probs_dropout_prob,
        }
    }

    fn save(&self, sink: &mut ParamSink, p: &str) {
        self.query.save(sink, &format!("{p}.query"));
        self.key.save(sink, &format!("{p}.key"));
        self.value.save(sink, &format!("{p}.value"));
    }

    /// `[batch, seq, hidden]` -> `[batch, heads, seq, head_dim]` (a view, no copy).
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, t, h] = x.dims();
        x.reshape([b, t, self.num_heads, h / self.num_heads])
            .swap_dims(1, 2)
    }

    pub fn forward(&self, x: Tensor<B, 3>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        self.forward_traced(x, mask, false).0
    }

    /// [`Self::forward`], and with `probs` the attention probabilities `[batch, heads, seq,
    /// seq]` (before dropout; 0 at padding keys), from the explicit path.
    pub fn forward_traced(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        probs: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let [b, t, h] = x.dims();
        let q = self.query.forward(x.clone());
        let k = self.key.forward(x.clone());
        let v = self.value.forward(x);
        if let (false, Some(spans)) = (probs, &mask.spans) {
            let context =
                crate::attention::multi_head(&q, &k, &v, spans, self.num_heads, self.dropout);
            if let Some(context) = context {
                return (context, None);
            }
        }
        let (q, k, v) = (
            self.split_heads(q),
            self.split_heads(k),
            self.split_heads(v),
        );
        // GPU backends in training: attention with a backward pass of our own.
        let (q, k, v) = if probs {
            (q, k, v)
        } else {
            let inputs = [q, k, v, mask.additive.clone()].map(|t| t.into_primitive().tensor());
            let float = |t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
            let [q, k, v, additive] = inputs;
            match crate::device_autodiff::attention::<B>(q, k, v, additive, self.dropout) {
                Ok(context) => return (float(context).swap_dims(1, 2).reshape([b, t, h]), None),
                Err([q, k, v, _]) => (float(q), float(k), float(v)),
            }
        };
        // The fused kernel has no dropout on the probabilities and does not expose them;
        // training with attention dropout and tracing take the explicit path.
        let training_dropout = self.dropout > 0.0 && B::ad_enabled(&q.device());
        let (context, p) = if training_dropout || probs {
            let p = attention_probs(q, k, mask);
            let context = dropout(p.clone(), self.dropout).matmul(v);
            (context, probs.then_some(p))
        } else {
            (attention_fused(q, k, v, mask), None)
        };
        (context.swap_dims(1, 2).reshape([b, t, h]), p)
    }
}

/// softmax(QKᵀ/√d + mask)·V with the backend's fused attention kernel.
pub fn attention_fused<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask<B>,
) -> Tensor<B, 4> {
    burn::tensor::module::attention(
        q,
        k,
        v,
        Some(mask.masked.clone()),
        None,
        AttentionModuleOptions::default(),
    )
}

/// softmax(QKᵀ/√d + mask)·V written out as HF computes it, with dropout on the probabilities.
pub fn attention_explicit<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask<B>,
    dropout_prob: f64,
) -> Tensor<B, 4> {
    dropout(attention_probs(q, k, mask), dropout_prob).matmul(v)
}

/// softmax(QKᵀ/√d + mask) `[batch, heads, seq, seq]`, as HF computes it.
pub fn attention_probs<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    mask: &AttentionMask<B>,
) -> Tensor<B, 4> {
    let head_dim = q.dims()[3];
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (head_dim as f64).sqrt());
    // The mask is built in f32; a bf16/fp16 forward pass (mixed-precision training) adds it in
    // the scores' precision.
    let additive = if scores.dtype() == mask.additive.dtype() {
        mask.additive.clone()
    } else {
        mask.additive.clone().cast(scores.dtype())
    };
    crate::fused::softmax(scores + additive)
}

/// `attention.output`: dense, dropout, residual, LayerNorm.
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: f64,
}

impl<B: Backend> BertSelfOutput<B> {
    fn load(
        src: &mut ParamSource,
        p: &str,
        d_in: usize,
        c: &BertConfig,
        device: &B::Device,
    ) -> Self {
        BertSelfOutput {
            dense: Linear::load(src, &format!("{p}.dense"), d_in, c.hidden_size, device),
            layer_norm: LayerNorm::load(
                src,
                &format!("{p}.LayerNorm"),
                c.hidden_size,
                c.layer_norm_eps,
                device,
            ),
            dropout: c.hidden_dropout_prob,
        }
    }

    fn save(&self, sink: &mut ParamSink, p: &str) {
        self.dense.save(sink, &format!("{p}.dense"));
        self.layer_norm.save(sink, &format!("{p}.LayerNorm"));
    }

    fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        self.layer_norm
            .forward(dropout(self.dense.forward(x), self.dropout) + residual)
    }
}

/// `BertOutput` in HF (the feed-forward output) has the same shape as `BertSelfOutput`.
pub type BertFeedForwardOutput<B> = BertSelfOutput<B>;

#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// HF `attention.self` (`self` is a keyword).
    pub self_: BertSelfAttention<B>,
    pub output: BertSelfOutput<B>,
}

#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    pub dense: Linear<B>,
    #[module(skip)]
    pub act: HiddenAct,
}

#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    pub attention: BertAttention<B>,
    pub intermediate: BertIntermediate<B>,
    pub output: BertFeedForwardOutput<B>,
}

impl<B: Backend> BertLayer<B> {
    fn load(src: &mut ParamSource, p: &str, c: &BertConfig, device: &B::Device) -> Self {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        BertLayer {
            attention: BertAttention {
                self_: BertSelfAttention::load(src, &format!("{p}.attention.self"), c, device),
                output: BertSelfOutput::load(src, &format!("{p}.attention.output"), h, c, device),
            },
            intermediate: BertIntermediate {
                dense: Linear::load(src, &format!("{p}.intermediate.dense"), h, i, device),
                act: c.hidden_act,
            },
            output: BertSelfOutput::load(src, &format!("{p}.output"), i, c, device),
        }
    }

    fn save(&self, sink: &mut ParamSink, p: &str) {
        self.attention
            .self_
            .save(sink, &format!("{p}.attention.self"));
        self.attention
            .output
            .save(sink, &format!("{p}.attention.output"));
        self.intermediate
            .dense
            .save(sink, &format!("{p}.intermediate.dense"));
        self.output.save(sink, &format!("{p}.output"));
    }

    pub fn forward(&self, x: Tensor<B, 3>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        self.forward_traced(x, mask, false).0
    }

    /// [`Self::forward`], and with `probs` the layer's attention probabilities
    /// ([`BertSelfAttention::forward_traced`]).
    pub fn forward_traced(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        probs: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let (attended, p) = self.attention.self_.forward_traced(x.clone(), mask, probs);
        let attention_output = self.attention.output.forward(attended, x);
        let intermediate = activation(
            self.intermediate.act,
            self.intermediate.dense.forward(attention_output.clone()),
        );
        (self.output.forward(intermediate, attention_output), p)
    }
}

#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    pub layer: Vec<BertLayer<B>>,
}

/// `pooler`: dense + tanh on the first ([CLS]) token.
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    pub dense: Linear<B>,
}

impl<B: Backend> BertPooler<B> {
    pub fn forward(&self, sequence_output: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, h] = sequence_output.dims();
        let cls = sequence_output.narrow(1, 0, 1).reshape([b, h]);
        self.dense.forward(cls).tanh()
    }
}

/// `BertModel`: embeddings, encoder and (for the tasks that have one) the pooler.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    pub embeddings: BertEmbeddings<B>,
    pub encoder: BertEncoder<B>,
    pub pooler: Option<BertPooler<B>>,
}

impl<B: Backend> BertModel<B> {
    pub fn load(
        src: &mut ParamSource,
        c: &BertConfig,
        with_pooler: bool,
        device: &B::Device,
    ) -> Self {
        let embeddings = BertEmbeddings::load(src, c, device);
        let layer = (0..c.num_hidden_layers)
            .map(|i| BertLayer::load(src, &format!("encoder.layer.{i}"), c, device))
            .collect();
        let pooler = with_pooler.then(|| BertPooler {
            dense: Linear::load(src, "pooler.dense", c.hidden_size, c.hidden_size, device),
        });
        BertModel {
            embeddings,
            encoder: BertEncoder { layer },
            pooler,
        }
    }

    pub fn save(&self, sink: &mut ParamSink) {
        self.embeddings.save(sink);
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            layer.save(sink, &format!("encoder.layer.{i}"));
        }
        if let Some(pooler) = &self.pooler {
            pooler.dense.save(sink, "pooler.dense");
        }
    }

    /// What the first layer takes: the embeddings' output `[batch, seq, hidden]` and the
    /// attention mask every layer uses.
    pub fn embed(&self, input: &BertInput<B>) -> (Tensor<B, 3>, AttentionMask<B>) {
        self.embed_with(input, false)
    }

    /// [`Self::embed`]; with `padding_free`, the real tokens only, packed into `[1, tokens,
    /// hidden]` ([`Packing`]) where an attention kernel over spans runs (the CPU backend in f32,
    /// the GPU backends in any dtype: `crate::attention::runs_on`; a right-padded mask);
    /// elsewhere the batch as it is. The layers take either; the last one's
    /// output goes through [`AttentionMask::unpack`].
    pub fn embed_with(
        &self,
        input: &BertInput<B>,
        padding_free: bool,
    ) -> (Tensor<B, 3>, AttentionMask<B>) {
        let words = self.embeddings.word_embeddings.weight.val();
        let heads = self
            .encoder
            .layer
            .first()
            .map_or(1, |l| l.attention.self_.num_heads);
        let head_dim = words.dims()[1] / heads.max(1);
        let kernel = crate::attention::runs_on::<B>(words.dtype(), head_dim);
        // The sequences, from the host when the batch brought them, else read from the mask.
        let spans = ((padding_free && kernel)
            || crate::attention::on_spans::<B>(burn::tensor::DType::F32))
        .then(|| (input.spans.clone()).or_else(|| AttentionMask::spans(&input.attention_mask)))
        .flatten();
        let mut mask = AttentionMask::with_spans(&input.attention_mask, spans);
        if let (true, true, Some(spans)) = (padding_free, kernel, mask.spans.clone()) {
            let [b, t] = input.input_ids.dims();
            let device = input.input_ids.device();
            let lengths: Vec<usize> = spans.spans().iter().map(|s| s.keys).collect();
            let n = lengths.iter().sum::<usize>();
            let int = |v: Vec<i64>, shape: [usize; 2]| {
                Tensor::<B, 2, Int>::from_data(burn::tensor::TensorData::new(v, shape), &device)
            };
            let rows = spans
                .spans()
                .iter()
                .flat_map(|s| (s.start..s.start + s.keys).map(|r| r as i64))
                .collect();
            let rows = int(rows, [1, n]).reshape([n]);
            let positions = lengths.iter().flat_map(|&l| 0..l as i64).collect();
            let pick = |x: &Tensor<B, 2, Int>| {
                x.clone()
                    .reshape([b * t])
                    .select(0, rows.clone())
                    .reshape([1, n])
            };
            let x = self.embeddings.forward_at(
                pick(&input.input_ids),
                pick(&input.token_type_ids),
                int(positions, [1, n]),
            );
            mask.spans = Some(Arc::new(Spans::packed(&lengths)));
            mask.packing = Some(Packing {
                rows,
                batch: b,
                seq: t,
            });
            return (x, mask);
        }
        let x = self
            .embeddings
            .forward(input.input_ids.clone(), input.token_type_ids.clone());
        (x, mask)
    }

    /// The last hidden state `[batch, seq, hidden]`: [`Self::embed`], then every layer.
    pub fn encode(&self, input: &BertInput<B>) -> Tensor<B, 3> {
        let (mut x, mask) = self.embed(input);
        for layer in &self.encoder.layer {
            x = layer.forward(x, &mask);
        }
        x
    }

    /// Every hidden state (the embeddings' output, then each layer's, as HF's
    /// `output_hidden_states`) and, with `attention`, each layer's attention probabilities
    /// (HF's `output_attentions`). `before_layer(i)` runs before layer `i` (a training
    /// encoder seeds the layer's dropout there).
    pub fn encode_layers(
        &self,
        input: &BertInput<B>,
        attention: bool,
        mut before_layer: impl FnMut(usize),
    ) -> Layers<B> {
        let (x, mask) = self.embed(input);
        let mut hidden = vec![x];
        let mut attentions = Vec::new();
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            before_layer(i);
            let x = hidden[hidden.len() - 1].clone();
            let (x, p) = layer.forward_traced(x, &mask, attention);
            hidden.push(x);
            attentions.extend(p);
        }
        Layers { hidden, attentions }
    }
}

/// What [`BertModel::encode_layers`] returns.
pub struct Layers<B: Backend> {
    /// `num_hidden_layers + 1` tensors `[batch, seq, hidden]`; the last is the last hidden state.
    pub hidden: Vec<Tensor<B, 3>>,
    /// One `[batch, heads, seq, seq]` per layer when asked for, else empty.
    pub attentions: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Layers<B> {
    /// The last hidden state.
    pub fn last(&self) -> Tensor<B, 3> {
        self.hidden[self.hidden.len() - 1].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::tensor::{Distribution, TensorData};

    /// The fused kernel (inference) and the explicit path (training with attention dropout) agree,
    /// and padding keys get no weight in either.
    #[test]
    fn fused_and_explicit_attention_agree_under_padding() {
        let device = Default::default();
        let shape = [2, 4, 6, 8];
        let q = Tensor::<Cpu, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<Cpu, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<Cpu, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let mask_data = vec![1i64, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
        let mask = AttentionMask::new(&Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(mask_data, [2, 6]),
            &device,
        ));
        let fused = attention_fused(q.clone(), k.clone(), v.clone(), &mask);
        let explicit = attention_explicit(q.clone(), k.clone(), v.clone(), &mask, 0.0);
        let diff = (fused.clone() - explicit).abs().max().into_scalar();
        assert!(diff < 1e-5, "fused vs explicit: {diff}");

        // Changing the values at padded keys of the second example must not change its output.
        let v2 = v.clone().slice_assign(
            [1..2, 0..4, 3..6, 0..8],
            Tensor::random([1, 4, 3, 8], Distribution::Normal(0.0, 100.0), &device),
        );
        let again = attention_fused(q, k, v2, &mask);
        let diff = (fused - again).abs().max().into_scalar();
        assert!(diff < 1e-6, "padding leaked into attention: {diff}");
    }

    /// `encode_layers` (explicit attention) gives `encode`'s (fused) last hidden state, the
    /// embeddings' output first, and attention rows that sum to 1 with nothing on padding.
    #[test]
    fn every_layer_and_attention_are_traced() {
        let device = Default::default();
        let c = BertConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            intermediate_size: 32,
            ..BertConfig::default()
        };
        let model = crate::checkpoint::init::<Cpu>(&c, crate::heads::Task::Base, 7, &device)
            .unwrap()
            .bert;
        let batch = crate::tokenizer::Batch::pad(
            &[
                (vec![2, 5, 9, 11, 3], vec![0; 5]),
                (vec![2, 7, 3], vec![0; 3]),
            ],
            0,
        );
        let input = batch.to_input::<Cpu>(&device);
        let mut seen = Vec::new();
        let layers = model.encode_layers(&input, true, |i| seen.push(i));
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(layers.hidden.len(), 4);
        assert_eq!(layers.attentions.len(), 3);
        let diff = |a: Tensor<Cpu, 3>, b: Tensor<Cpu, 3>| (a - b).abs().max().into_scalar();
        assert!(diff(layers.last(), model.encode(&input)) < 1e-5);
        assert!(diff(layers.hidden[0].clone(), model.embed(&input).0) < 1e-6);
        for p in &layers.attentions {
            assert_eq!(p.dims(), [2, 4, 5, 5]);
            let sums = p.clone().sum_dim(3);
            assert!((sums - 1.0).abs().max().into_scalar() < 1e-5);
            let padding = p.clone().slice([1..2, 0..4, 0..5, 3..5]);
            assert!(padding.abs().max().into_scalar() < 1e-12);
        }
        let plain = model.encode_layers(&input, false, |_| {});
        assert!(plain.attentions.is_empty());
        assert!(diff(plain.last(), layers.last()) < 1e-5);
    }
}
