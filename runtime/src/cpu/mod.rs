//! The CPU executor: BERT's encoder over packed sequences (no padding: the linear layers run on
//! all tokens of the batch at once, attention runs per sequence and head), with the bias and
//! residual added by the matrix multiply itself (it accumulates into them) and the attention
//! scale folded into the query weights at export.
//!
//! A sequence's output depends on that sequence alone, bit for bit, whatever else shares its
//! batch and whatever the thread count: the linear layers compute each row the same way for any
//! number of rows (see [`matmul`]), attention runs on the sequence's own rows (see [`attention`]:
//! sizes and strides that depend on the sequence only, no threads inside), and LayerNorm, the
//! activations and pooling work row by row or element by element.

/// The element-wise kernels, shared with the training path (bertkit_model::cpu_math).
pub use bertkit_model::cpu_math as math;

/// Calls `$tile::<R, C>$args` with R = `$rows` (1 to 6) and C = `$cols` (1 to 3, else `$max`):
/// the micro-tiles of the AVX-512 kernels (attention, bf16, int8 VNNI) are const-generic in
/// their rows and column groups, so each size is its own function, picked here.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_of_size {
    ($rows:expr, $cols:expr, $max:ident, $tile:ident $args:tt) => {
        tile_of_size!(@ $rows, $cols, $max, $tile $args; 1 2 3 4 5 6)
    };
    (@ $rows:expr, $cols:expr, $max:ident, $tile:ident $args:tt; $($r:literal)*) => {
        match ($rows, $cols) {
            $(($r, 1) => $tile::<$r, 1> $args,
              ($r, 2) => $tile::<$r, 2> $args,
              ($r, 3) => $tile::<$r, 3> $args,
              ($r, _) => $tile::<$r, $max> $args,)*
            (rows, _) => unreachable!("{rows} rows: 1 to 6"),
        }
    };
}

mod attention;
pub mod matmul;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::plan::{names, PlanMeta, PlanTask, PoolingMode, Precision};
use bertkit_model::config::HiddenAct;
use matmul::{Linear, Weight};

/// One input: token ids and token type ids, special tokens included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// One input's result: `rows × width` values (1 row for an embedding or a sequence label,
/// one per token for token tasks; QA has width 2: start, end).
#[derive(Debug, Clone, PartialEq)]
pub struct SeqOutput {
    pub rows: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_ln: LayerNorm,
}

/// Refuses input `n` unless it fits the model: tokens present, as many type ids as ids, at
/// most `max_positions`, ids and types inside their tables.
pub fn check_input(
    n: usize,
    seq: &Encoded,
    vocab: usize,
    max_positions: usize,
    type_vocab: usize,
) -> Result<()> {
    if seq.ids.is_empty() {
        bail!("input {n} has no tokens");
    }
    if seq.ids.len() != seq.type_ids.len() {
        bail!(
            "input {n}: {} ids but {} type ids",
            seq.ids.len(),
            seq.type_ids.len()
        );
    }
    if seq.ids.len() > max_positions {
        bail!(
            "input {n} has {} tokens; the model takes at most {max_positions}",
            seq.ids.len()
        );
    }
    if let Some(id) = seq.ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("input {n}: token id {id} is outside the vocabulary ({vocab})");
    }
    if let Some(t) = seq.type_ids.iter().find(|&&t| t as usize >= type_vocab) {
        bail!("input {n}: token type {t} is outside 0..{type_vocab}");
    }
    Ok(())
}

pub struct Encoder {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    head: Option<Linear>,
    task: PlanTask,
    pooling: Option<(PoolingMode, bool)>,
    hidden: usize,
    heads: usize,
    inter: usize,
    vocab: usize,
    max_positions: usize,
    type_vocab: usize,
    eps: f32,
    act: HiddenAct,
    /// Activation buffers of earlier passes, for the next ones: fresh buffers of a large batch
    /// cost a page fault per 4 KiB every pass. One set per pass running at the same time.
    buffers: std::sync::Mutex<Vec<Buffers>>,
}

/// The activations of one forward pass. Every pass writes each element it reads, so the
/// buffers only grow and are never cleared.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    y: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    ffn: Vec<f32>,
}

/// The first `n` values of `buf`, grown if shorter.
fn sized(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// How int8 weights are computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Int8Kernel {
    /// Integer products (the AVX-512 VNNI kernel where the CPU has it, else AVX2 or portable).
    #[default]
    Int8,
    /// The int8 weights dequantized at load, f32 matrix multiplies.
    DequantizedF32,
}

impl Int8Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Int8 => "int8",
            Int8Kernel::DequantizedF32 => "dequantized-f32",
        }
    }

    pub fn parse(s: &str) -> Option<Int8Kernel> {
        match s {
            "int8" => Some(Int8Kernel::Int8),
            "dequantized-f32" => Some(Int8Kernel::DequantizedF32),
            _ => None,
        }
    }
}

/// How a bf16 plan's weights are computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bf16Kernel {
    /// bf16 products summed in f32 (`vdpbf16ps`) where the CPU has AVX-512 BF16, else the
    /// weights widened to f32.
    #[default]
    Bf16,
    /// The bf16 weights widened to f32 at load, f32 matrix multiplies. Where `vdpbf16ps` is
    /// slow (the Intel Xeon VM of docs/PERFORMANCE.md) this is the faster one; export's tuning
    /// times both.
    WidenedF32,
}

impl Bf16Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Bf16 => "bf16",
            Bf16Kernel::WidenedF32 => "widened-f32",
        }
    }

    pub fn parse(s: &str) -> Option<Bf16Kernel> {
        match s {
            "bf16" => Some(Bf16Kernel::Bf16),
            "widened-f32" => Some(Bf16Kernel::WidenedF32),
            _ => None,
        }
    }
}

/// The kernels a CPU plan's linear layers use, where there is a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kernels {
    /// For int8 weights.
    pub int8: Int8Kernel,
    /// For bf16 weights.
    pub bf16: Bf16Kernel,
}

/// The tensors of a plan's weights file, read by name with their expected shape.
pub(crate) struct Tensors<'a> {
    pub(crate) st: SafeTensors<'a>,
    pub(crate) file: &'a str,
}

impl<'a> Tensors<'a> {
    /// The plan's weights file, after checking that the plan's shape is one an encoder can run
    /// (heads dividing the hidden size).
    pub(crate) fn open(meta: &PlanMeta, weights: &'a [u8], file: &'a str) -> Result<Self> {
        let st = SafeTensors::deserialize(weights)
            .with_context(|| format!("{file}: not a safetensors file"))?;
        let (h, heads) = (meta.shape.hidden_size, meta.shape.num_attention_heads);
        if heads == 0 || h % heads != 0 {
            bail!("plan.json: hidden_size {h} is not a multiple of num_attention_heads");
        }
        Ok(Tensors { st, file })
    }

    /// A float tensor (f32, f16 or bf16 in the file) as f32.
    pub(crate) fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .st
            .tensor(name)
            .with_context(|| format!("{}: no tensor {name}", self.file))?;
        if t.shape() != shape {
            bail!(
                "{}: tensor {name} has shape {:?}, expected {shape:?}",
                self.file,
                t.shape()
            );
        }
        bertkit_model::weights::to_f32(t.dtype(), t.data()).with_context(|| {
            format!(
                "{}: tensor {name} is {:?}, expected a float",
                self.file,
                t.dtype()
            )
        })
    }

    fn layer_norm(&self, name: &str, h: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: self.f32(&format!("{name}.gamma"), &[h])?,
            beta: self.f32(&format!("{name}.beta"), &[h])?,
        })
    }

    /// A linear layer; `int8` is `None` where int8 weights are not expected (pooler, head).
    fn linear(
        &self,
        name: &str,
        k: usize,
        n: usize,
        int8: Option<Int8Kernel>,
        bf16: Bf16Kernel,
    ) -> Result<Linear> {
        let bias = self.f32(&format!("{name}.b"), &[n])?;
        let wname = format!("{name}.w");
        let t = self
            .st
            .tensor(&wname)
            .with_context(|| format!("{}: no tensor {wname}", self.file))?;
        let weight = if t.dtype() == Dtype::I8 {
            if t.shape() != [n, k] {
                bail!(
                    "{}: tensor {wname} has shape {:?}, expected [{n}, {k}]",
                    self.file,
                    t.shape()
                );
            }
            let q: Vec<i8> = t.data().iter().map(|&b| b as i8).collect();
            let scale = self.f32(&format!("{name}.scale"), &[n])?;
            let w = Weight::int8(&q, scale, n, k);
            match int8 {
                Some(Int8Kernel::DequantizedF32) => w.dequantized(),
                _ => w,
            }
        } else if t.dtype() == Dtype::BF16 {
            let w = self.f32(&wname, &[n, k])?;
            match bf16 {
                Bf16Kernel::Bf16 => Weight::bf16(&w, n, k),
                Bf16Kernel::WidenedF32 => Weight::f32(&w, n, k),
            }
        } else {
            Weight::f32(&self.f32(&wname, &[n, k])?, n, k)
        };
        Ok(Linear { weight, bias })
    }
}

impl Encoder {
    /// Builds the encoder from the plan's weights file.
    pub fn load(meta: &PlanMeta, weights: &[u8], file: &str, kernels: Kernels) -> Result<Self> {
        let t = Tensors::open(meta, weights, file)?;
        let s = &meta.shape;
        let (h, i) = (s.hidden_size, s.intermediate_size);
        let int8 = (meta.precision == Precision::Int8).then_some(kernels.int8);
        let bf16 = kernels.bf16;
        let mut layers = Vec::with_capacity(s.num_hidden_layers);
        for l in 0..s.num_hidden_layers {
            let n = |part: &str| names::layer(l, part);
            layers.push(Layer {
                qkv: t.linear(&n("qkv"), h, 3 * h, int8, bf16)?,
                attn_out: t.linear(&n("attn_out"), h, h, int8, bf16)?,
                attn_ln: t.layer_norm(&n("attn_ln"), h)?,
                ffn_in: t.linear(&n("ffn_in"), h, i, int8, bf16)?,
                ffn_out: t.linear(&n("ffn_out"), i, h, int8, bf16)?,
                ffn_ln: t.layer_norm(&n("ffn_ln"), h)?,
            });
        }
        let pooler = match &meta.head {
            Some(head) if head.pooler => Some(t.linear(names::POOLER, h, h, None, bf16)?),
            _ => None,
        };
        let head = match &meta.head {
            Some(head) => Some(t.linear(names::HEAD, h, head.num_outputs, None, bf16)?),
            None => None,
        };
        let act = s.hidden_act;
        Ok(Encoder {
            word: t.f32(names::WORD, &[s.vocab_size, h])?,
            position: t.f32(names::POSITION, &[s.max_position_embeddings, h])?,
            token_type: t.f32(names::TOKEN_TYPE, &[s.type_vocab_size, h])?,
            emb_ln: t.layer_norm(names::EMB_LN, h)?,
            layers,
            pooler,
            head,
            task: meta.task,
            pooling: meta.pooling.as_ref().map(|p| (p.mode, p.normalize)),
            hidden: h,
            heads: s.num_attention_heads,
            inter: i,
            vocab: s.vocab_size,
            max_positions: s.max_position_embeddings,
            type_vocab: s.type_vocab_size,
            eps: s.layer_norm_eps as f32,
            act,
            buffers: Default::default(),
        })
    }

    fn check(&self, n: usize, seq: &Encoded) -> Result<()> {
        check_input(n, seq, self.vocab, self.max_positions, self.type_vocab)
    }

    /// Runs the batch; call inside the runtime's thread pool (`threads` is its size).
    pub fn forward(&self, batch: &[Encoded], threads: usize) -> Result<Vec<SeqOutput>> {
        for (n, seq) in batch.iter().enumerate() {
            self.check(n, seq)?;
        }
        let h = self.hidden;
        let mut offsets = Vec::with_capacity(batch.len());
        let mut total = 0;
        for seq in batch {
            offsets.push((total, seq.ids.len()));
            total += seq.ids.len();
        }
        let pool = || self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let mut buffers = pool().pop().unwrap_or_default();
        let Buffers {
            x,
            y,
            qkv,
            ctx,
            ffn,
        } = &mut buffers;
        let (mut x, mut y) = (sized(x, total * h), sized(y, total * h));
        let qkv = sized(qkv, total * 3 * h);
        let ctx = sized(ctx, total * h);
        let ffn = sized(ffn, total * self.inter);
        // Embeddings.
        for (seq, &(start, _)) in batch.iter().zip(&offsets) {
            for (p, (&id, &tt)) in seq.ids.iter().zip(&seq.type_ids).enumerate() {
                let row = &mut x[(start + p) * h..(start + p + 1) * h];
                let w = &self.word[id as usize * h..][..h];
                let pe = &self.position[p * h..][..h];
                let te = &self.token_type[tt as usize * h..][..h];
                for (((d, a), b), c) in row.iter_mut().zip(w).zip(pe).zip(te) {
                    *d = a + b + c;
                }
            }
        }
        rows_par(x, h, threads, |r| {
            math::layer_norm_rows(r, &self.emb_ln.gamma, &self.emb_ln.beta, self.eps)
        });
        for layer in &self.layers {
            layer.qkv.forward(x, total, qkv, None, threads);
            self.attention(qkv, &offsets, ctx, threads);
            layer.attn_out.forward(ctx, total, y, Some(x), threads);
            rows_par(y, h, threads, |r| {
                math::layer_norm_rows(r, &layer.attn_ln.gamma, &layer.attn_ln.beta, self.eps)
            });
            std::mem::swap(&mut x, &mut y);
            layer.ffn_in.forward(x, total, ffn, None, threads);
            let act = self.act;
            rows_par(ffn, self.inter, threads, |r| match act {
                HiddenAct::Gelu => math::gelu_erf(r),
                HiddenAct::GeluTanh => math::gelu_tanh(r),
                HiddenAct::Relu => math::relu(r),
            });
            layer.ffn_out.forward(ffn, total, y, Some(x), threads);
            rows_par(y, h, threads, |r| {
                math::layer_norm_rows(r, &layer.ffn_ln.gamma, &layer.ffn_ln.beta, self.eps)
            });
            std::mem::swap(&mut x, &mut y);
        }
        let out = self.heads_output(x, &offsets, threads);
        pool().push(buffers);
        Ok(out)
    }

    fn heads_output(
        &self,
        x: &[f32],
        offsets: &[(usize, usize)],
        threads: usize,
    ) -> Vec<SeqOutput> {
        let h = self.hidden;
        match self.task {
            PlanTask::Embedding => {
                let (mode, normalize) = self.pooling.unwrap_or((PoolingMode::Mean, false));
                offsets
                    .iter()
                    .map(|&(start, len)| {
                        let mut v = vec![0f32; h];
                        match mode {
                            PoolingMode::Cls => v.copy_from_slice(&x[start * h..(start + 1) * h]),
                            PoolingMode::Mean => {
                                for row in x[start * h..(start + len) * h].chunks_exact(h) {
                                    for (d, s) in v.iter_mut().zip(row) {
                                        *d += s;
                                    }
                                }
                                v.iter_mut().for_each(|d| *d /= len as f32);
                            }
                        }
                        if normalize {
                            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                            v.iter_mut().for_each(|d| *d /= norm);
                        }
                        SeqOutput {
                            rows: 1,
                            width: h,
                            data: v,
                        }
                    })
                    .collect()
            }
            PlanTask::SequenceClassification => {
                let (Some(pooler), Some(head)) = (&self.pooler, &self.head) else {
                    return Vec::new();
                };
                let b = offsets.len();
                let mut cls = Vec::with_capacity(b * h);
                for &(start, _) in offsets {
                    cls.extend_from_slice(&x[start * h..(start + 1) * h]);
                }
                let mut pooled = vec![0f32; b * h];
                pooler.forward(&cls, b, &mut pooled, None, threads);
                math::tanh_in_place(&mut pooled);
                let n = head.bias.len();
                let mut logits = vec![0f32; b * n];
                head.forward(&pooled, b, &mut logits, None, threads);
                logits
                    .chunks_exact(n)
                    .map(|r| SeqOutput {
                        rows: 1,
                        width: n,
                        data: r.to_vec(),
                    })
                    .collect()
            }
            PlanTask::TokenClassification | PlanTask::QuestionAnswering => {
                let Some(head) = &self.head else {
                    return Vec::new();
                };
                let total = x.len() / h;
                let n = head.bias.len();
                let mut logits = vec![0f32; total * n];
                head.forward(x, total, &mut logits, None, threads);
                offsets
                    .iter()
                    .map(|&(start, len)| SeqOutput {
                        rows: len,
                        width: n,
                        data: logits[start * n..(start + len) * n].to_vec(),
                    })
                    .collect()
            }
        }
    }

    /// Scaled dot-product attention of each sequence and head; the query is pre-scaled.
    fn attention(&self, qkv: &[f32], offsets: &[(usize, usize)], ctx: &mut [f32], threads: usize) {
        let h = self.hidden;
        let d = h / self.heads;
        let stride = 3 * h;
        assert!(qkv.len() >= ctx.len() * 3, "attention: short QKV rows");
        let out = SyncPtr(ctx.as_mut_ptr());
        let one = |scratch: &mut attention::Scratch, (s, head): (usize, usize)| {
            let (start, len) = offsets[s];
            let at = start * stride + head * d;
            let rows = attention::Head {
                q: qkv[at..].as_ptr(),
                k: qkv[at + h..].as_ptr(),
                v: qkv[at + 2 * h..].as_ptr(),
                stride,
                len,
                d,
                out: out.get().wrapping_add(start * h + head * d),
                out_stride: h,
            };
            // SAFETY: q, k, v address `len` rows of `d` values `stride` apart inside qkv (the
            // sequence's rows); each (sequence, head) writes its own rows × columns block of
            // ctx, so the parallel writes are disjoint.
            unsafe { attention::head(&rows, scratch) }
        };
        let pairs: Vec<(usize, usize)> = (0..offsets.len())
            .flat_map(|s| (0..self.heads).map(move |hd| (s, hd)))
            .collect();
        if threads > 1 {
            pairs
                .par_iter()
                .for_each_init(attention::Scratch::default, |sc, &p| one(sc, p));
        } else {
            let mut sc = attention::Scratch::default();
            pairs.iter().for_each(|&p| one(&mut sc, p));
        }
    }
}

/// An output buffer shared by parallel tasks that each write their own region of it.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: used only for writes to disjoint regions (see `attention` and the f32 kernel's
// `accumulate`).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Applies `f` to blocks of whole rows, in parallel when worthwhile.
fn rows_par(buf: &mut [f32], width: usize, threads: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    let rows = buf.len() / width;
    if threads <= 1 || rows < 16 {
        f(buf);
        return;
    }
    let per = rows.div_ceil(threads * 4).max(4);
    buf.par_chunks_mut(per * width).for_each(f);
}
