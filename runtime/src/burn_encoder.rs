//! The encoder on a burn backend: how CUDA plans run (`--features cuda`; fp16/bf16 plans
//! compute in that type on the GPU). The same code runs on the CPU backend, where the tests
//! check it against the CPU executor ([`crate::cpu`]).
//!
//! It reads the plan's weights as the CPU executor does (fused QKV with the attention scale
//! folded in, weights `[out, in]`), pads each batch to the plan's length bucket of its longest
//! input and masks the padding.

use anyhow::{bail, Result};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::cpu::{check_input, Encoded, SeqOutput, Tensors};
use crate::plan::{names, PlanMeta, PlanTask, PoolingMode, Precision};
use bertkit_model::config::HiddenAct;

struct Linear<B: Backend> {
    /// `[in, out]`.
    w: Tensor<B, 2>,
    b: Tensor<B, 1>,
}

impl<B: Backend> Linear<B> {
    fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.w.clone().unsqueeze::<D>();
        x.matmul(w) + self.b.clone().unsqueeze::<D>()
    }
}

struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
}

struct Layer<B: Backend> {
    qkv: Linear<B>,
    attn_out: Linear<B>,
    attn_ln: LayerNorm<B>,
    ffn_in: Linear<B>,
    ffn_out: Linear<B>,
    ffn_ln: LayerNorm<B>,
}

pub struct BurnEncoder<B: Backend> {
    device: B::Device,
    /// What the matrix multiplies and attention compute in (LayerNorm and softmax run in f32).
    dtype: DType,
    word: Tensor<B, 2>,
    position: Tensor<B, 2>,
    token_type: Tensor<B, 2>,
    emb_ln: LayerNorm<B>,
    layers: Vec<Layer<B>>,
    pooler: Option<Linear<B>>,
    head: Option<Linear<B>>,
    task: PlanTask,
    pooling: Option<(PoolingMode, bool)>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    type_vocab: usize,
    eps: f64,
    act: HiddenAct,
    /// The plan's sequence buckets, ascending: batches are padded to one, so that the backend
    /// sees few distinct shapes (a GPU backend compiles and tunes kernels per shape).
    buckets: Vec<usize>,
}

fn tensor<B: Backend, const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// What a plan computes in on a GPU: its storage precision (fp16, bf16), else f32.
pub fn compute_dtype(precision: Precision) -> DType {
    match precision {
        Precision::Fp16 => DType::F16,
        Precision::Bf16 => DType::BF16,
        _ => DType::F32,
    }
}

impl<B: Backend> BurnEncoder<B> {
    /// Builds the encoder from the plan's weights file on `device`, computing in `dtype`.
    pub fn load(
        meta: &PlanMeta,
        weights: &[u8],
        file: &str,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        if meta.precision == Precision::Int8 {
            bail!("{file}: int8 plans run on the CPU executor only");
        }
        let t = Tensors::open(meta, weights, file)?;
        let s = &meta.shape;
        let (h, i) = (s.hidden_size, s.intermediate_size);
        let linear = |name: &str, k: usize, n: usize| -> Result<Linear<B>> {
            let w = t.f32(&format!("{name}.w"), &[n, k])?;
            Ok(Linear {
                w: tensor::<B, 2>(w, [n, k], device).transpose().cast(dtype),
                b: tensor::<B, 1>(t.f32(&format!("{name}.b"), &[n])?, [n], device).cast(dtype),
            })
        };
        let layer_norm = |name: &str| -> Result<LayerNorm<B>> {
            Ok(LayerNorm {
                gamma: tensor(t.f32(&format!("{name}.gamma"), &[h])?, [h], device),
                beta: tensor(t.f32(&format!("{name}.beta"), &[h])?, [h], device),
            })
        };
        let mut layers = Vec::with_capacity(s.num_hidden_layers);
        for l in 0..s.num_hidden_layers {
            let n = |part: &str| names::layer(l, part);
            layers.push(Layer {
                qkv: linear(&n("qkv"), h, 3 * h)?,
                attn_out: linear(&n("attn_out"), h, h)?,
                attn_ln: layer_norm(&n("attn_ln"))?,
                ffn_in: linear(&n("ffn_in"), h, i)?,
                ffn_out: linear(&n("ffn_out"), i, h)?,
                ffn_ln: layer_norm(&n("ffn_ln"))?,
            });
        }
        let pooler = match &meta.head {
            Some(head) if head.pooler => Some(linear(names::POOLER, h, h)?),
            _ => None,
        };
        let head = match &meta.head {
            Some(head) => Some(linear(names::HEAD, h, head.num_outputs)?),
            None => None,
        };
        let table = |name: &str, rows: usize| -> Result<Tensor<B, 2>> {
            Ok(tensor(t.f32(name, &[rows, h])?, [rows, h], device))
        };
        Ok(BurnEncoder {
            device: device.clone(),
            dtype,
            word: table(names::WORD, s.vocab_size)?,
            position: table(names::POSITION, s.max_position_embeddings)?,
            token_type: table(names::TOKEN_TYPE, s.type_vocab_size)?,
            emb_ln: layer_norm(names::EMB_LN)?,
            layers,
            pooler,
            head,
            task: meta.task,
            pooling: meta.pooling.as_ref().map(|p| (p.mode, p.normalize)),
            hidden: h,
            heads: s.num_attention_heads,
            vocab: s.vocab_size,
            max_positions: s.max_position_embeddings,
            type_vocab: s.type_vocab_size,
            eps: s.layer_norm_eps,
            act: s.hidden_act,
            buckets: {
                let mut b = meta.seq_buckets.clone();
                b.sort_unstable();
                b
            },
        })
    }

    /// LayerNorm in f32; the result in the compute type.
    fn layer_norm<const D: usize>(&self, x: Tensor<B, D>, ln: &LayerNorm<B>) -> Tensor<B, D> {
        let x = x.cast(DType::F32);
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
        let y = centered / (var + self.eps).sqrt() * ln.gamma.clone().unsqueeze::<D>()
            + ln.beta.clone().unsqueeze::<D>();
        y.cast(self.dtype)
    }

    fn activation(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.act {
            HiddenAct::Gelu => activation::gelu(x),
            HiddenAct::GeluTanh => activation::gelu_approximate(x),
            HiddenAct::Relu => activation::relu(x),
        }
    }

    /// Runs the batch, padded to the length bucket of its longest input.
    pub fn forward(&self, batch: &[Encoded]) -> Result<Vec<SeqOutput>> {
        for (n, seq) in batch.iter().enumerate() {
            check_input(n, seq, self.vocab, self.max_positions, self.type_vocab)?;
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (b, h) = (batch.len(), self.hidden);
        let longest = batch.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let l = self
            .buckets
            .iter()
            .copied()
            .find(|&b| b >= longest && b <= self.max_positions)
            .unwrap_or(longest);
        let mut ids = vec![0i64; b * l];
        let mut types = vec![0i64; b * l];
        let mut mask = vec![0f32; b * l];
        for (r, seq) in batch.iter().enumerate() {
            for (c, (&id, &tt)) in seq.ids.iter().zip(&seq.type_ids).enumerate() {
                ids[r * l + c] = i64::from(id);
                types[r * l + c] = i64::from(tt);
                mask[r * l + c] = 1.0;
            }
        }
        let d = &self.device;
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [b * l]), d);
        let types = Tensor::<B, 1, Int>::from_data(TensorData::new(types, [b * l]), d);
        let mask: Tensor<B, 2> = tensor(mask, [b, l], d);
        let x = self.word.clone().select(0, ids) + self.token_type.clone().select(0, types);
        let x = x.reshape([b, l, h]) + self.position.clone().slice([0..l, 0..h]).unsqueeze::<3>();
        let mut x = self.layer_norm(x, &self.emb_ln);
        // 0 where attended, a large negative where padded, broadcast over heads and queries.
        let bias = (mask.clone() - 1.0).reshape([b, 1, 1, l]) * 1.0e4;
        let (heads, dh) = (self.heads, h / self.heads);
        for layer in &self.layers {
            let qkv = layer.qkv.forward(x.clone());
            let split = |part: usize| {
                qkv.clone()
                    .slice([0..b, 0..l, part * h..(part + 1) * h])
                    .reshape([b, l, heads, dh])
                    .swap_dims(1, 2)
            };
            let (q, k, v) = (split(0), split(1), split(2));
            let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32) + bias.clone();
            let probs = activation::softmax(scores, 3).cast(self.dtype);
            let ctx = probs.matmul(v).swap_dims(1, 2).reshape([b, l, h]);
            let y = layer.attn_out.forward(ctx) + x;
            x = self.layer_norm(y, &layer.attn_ln);
            let f = self.activation(layer.ffn_in.forward(x.clone()));
            let y = layer.ffn_out.forward(f) + x;
            x = self.layer_norm(y, &layer.ffn_ln);
        }
        let lens: Vec<usize> = batch.iter().map(|s| s.ids.len()).collect();
        self.heads_output(x, mask, &lens)
    }

    fn heads_output(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 2>,
        lens: &[usize],
    ) -> Result<Vec<SeqOutput>> {
        let [b, l, h] = x.dims();
        let host = |t: Tensor<B, 2>| -> Result<Vec<f32>> {
            t.cast(DType::F32)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading the output back: {e:?}"))
        };
        let rows = |data: Vec<f32>, width: usize| -> Vec<SeqOutput> {
            data.chunks_exact(width)
                .map(|r| SeqOutput {
                    rows: 1,
                    width,
                    data: r.to_vec(),
                })
                .collect()
        };
        let cls = || x.clone().slice([0..b, 0..1, 0..h]).reshape([b, h]);
        match self.task {
            PlanTask::Embedding => {
                let (mode, normalize) = self.pooling.unwrap_or((PoolingMode::Mean, false));
                let mut v = match mode {
                    PoolingMode::Cls => cls(),
                    PoolingMode::Mean => {
                        let m = mask.clone().reshape([b, l, 1]);
                        let sum = (x.clone().cast(DType::F32) * m).sum_dim(1).reshape([b, h]);
                        sum / mask.sum_dim(1)
                    }
                }
                .cast(DType::F32);
                if normalize {
                    let norm = v.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
                    v = v / norm;
                }
                Ok(rows(host(v)?, h))
            }
            PlanTask::SequenceClassification => {
                let (Some(pooler), Some(head)) = (&self.pooler, &self.head) else {
                    bail!("the plan has no pooler or classifier");
                };
                let pooled = pooler.forward(cls()).tanh();
                let logits = head.forward(pooled);
                let n = logits.dims()[1];
                Ok(rows(host(logits)?, n))
            }
            PlanTask::TokenClassification | PlanTask::QuestionAnswering => {
                let Some(head) = &self.head else {
                    bail!("the plan has no token head");
                };
                let logits = head.forward(x);
                let n = logits.dims()[2];
                let all = host(logits.reshape([b * l, n]))?;
                Ok(lens
                    .iter()
                    .enumerate()
                    .map(|(r, &len)| SeqOutput {
                        rows: len,
                        width: n,
                        data: all[r * l * n..(r * l + len) * n].to_vec(),
                    })
                    .collect())
            }
        }
    }
}
