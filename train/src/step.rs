//! One optimizer step, shared by pretraining and fine-tuning: forward and backward of each
//! micro-batch in the run's precision (dropout seeded per micro-batch), gradients accumulated,
//! the global gradient norm, then, when the loss and the norm are finite, clipping and the
//! optimizer update. What the loss is comes from the caller (an objective per task).

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor};
use serde::{Deserialize, Serialize};

use anyhow::Result;
use bertkit_model::heads::Bert;

use crate::activations::{self, ByLayer, Encode, Seeded, Segment};
use crate::distributed::grads::{self, Buckets};
use crate::distributed::ProcessGroup;
use crate::optim::{self, Optimizer};
use crate::rng::Rng;

/// Stream tag of the dropout seed of a micro-batch.
const TAG_DROPOUT: u64 = u64::from_be_bytes(*b"dropout!");
/// fp16: double the loss scale after this many steps without overflow.
pub const LOSS_SCALE_WINDOW: u64 = 2000;

/// The float type a run computes in; parameters and optimizer state stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Written `fp32` (as plans and `--precision` spell it); `f32` is read too.
    #[serde(rename = "fp32", alias = "f32")]
    F32,
    /// bf16 compute, f32 master weights and optimizer state.
    Bf16,
    /// fp16 compute with dynamic loss scaling, f32 master weights.
    Fp16,
}

impl Precision {
    /// The float type the forward and backward passes compute in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::Fp16 => DType::F16,
        }
    }

    /// Whether backend `B` computes in this precision on `device` (burn's wgpu backend has no
    /// bf16: WGSL has no such type), as an error that names the ones to use instead.
    pub fn check_supported<B: Backend>(self, device: &B::Device) -> anyhow::Result<()> {
        if B::supports_dtype(device, self.dtype()) {
            return Ok(());
        }
        let other: Vec<String> = [Precision::F32, Precision::Bf16, Precision::Fp16]
            .into_iter()
            .filter(|p| B::supports_dtype(device, p.dtype()))
            .map(|p| p.to_string())
            .collect();
        anyhow::bail!(
            "precision {self} is not supported by the {} backend on {device:?}; use {}",
            B::name(device),
            other.join(" or ")
        )
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" | "fp16" => Ok(Precision::Fp16),
            _ => Err(format!(
                "unknown precision {s:?}; expected fp32 (or f32), bf16 or fp16"
            )),
        }
    }
}

/// fp16's dynamic loss scale: halved on overflow, doubled after [`LOSS_SCALE_WINDOW`] good
/// steps. Other precisions keep 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScale {
    pub scale: f64,
    pub good_steps: u64,
}

impl LossScale {
    pub fn new(precision: Precision, initial: f64) -> LossScale {
        LossScale {
            scale: if precision == Precision::Fp16 {
                initial
            } else {
                1.0
            },
            good_steps: 0,
        }
    }

    /// [`Self::update`] on a scale kept as two fields of a run's checkpointed state.
    pub fn update_fields(
        scale: &mut f64,
        good_steps: &mut u64,
        precision: Precision,
        updated: bool,
    ) {
        let mut s = LossScale {
            scale: *scale,
            good_steps: *good_steps,
        };
        s.update(precision, updated);
        (*scale, *good_steps) = (s.scale, s.good_steps);
    }

    /// After a step: `updated` is false when it overflowed.
    pub fn update(&mut self, precision: Precision, updated: bool) {
        if precision != Precision::Fp16 {
            return;
        }
        if updated {
            self.good_steps += 1;
            if self.good_steps >= LOSS_SCALE_WINDOW {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
    }
}

/// What one optimizer step needs besides the model, the optimizer and the objective.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub lr: f64,
    pub max_grad_norm: f64,
    pub precision: Precision,
    /// fp16: the loss is multiplied by it before backward and the gradients divided after.
    pub loss_scale: f64,
    /// (run seed, step): micro-batch `i` seeds dropout with `derive(seed, TAG, step, i)`.
    pub dropout_seed: [u64; 2],
    /// Keep only each layer's input and recompute the layer in the backward pass
    /// ([`activations::ByLayer::recompute`]): less memory, about one more forward pass of time, the same
    /// numbers.
    pub checkpoint_activations: bool,
    /// Run the encoder on each micro-batch's real tokens only, packed (`BertModel::embed_with`;
    /// the CPU backend in f32): a batch costs its tokens, not batch x longest.
    pub padding_free: bool,
}

/// One micro-batch's contribution: the loss to differentiate (already divided by the step's
/// denominators, so the micro-batch losses add up to the step's loss) and statistics the
/// objective sums over the step (detached; 1-D parts of any length, the same parts for every
/// micro-batch). The parts are summed over the micro-batches one by one and joined once per step,
/// so a micro-batch adds no concatenation to the device's work.
pub struct MicroLoss<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub stats: Vec<Tensor<B, 1>>,
}

pub struct StepOutput {
    /// The step's loss (the sum of the micro-batch losses).
    pub loss: f64,
    /// The micro-batches' `stats`, summed.
    pub sums: Vec<f32>,
    pub grad_norm: f64,
    /// False when the loss or the gradients were non-finite and the weights were left alone.
    pub updated: bool,
    pub phases: StepPhases,
}

/// Where a step's time went, in seconds, measured at the points where it waits for the device
/// anyway (reading the losses back, the all-reduce, reading the gradient norm), so timing adds
/// no wait. The optimizer update is queued last; its time is the step's (after a device sync)
/// minus these.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepPhases {
    /// Forward and backward passes of every micro-batch, their losses read back (with an
    /// overlapped all-reduce, the all-reduce during the backward pass too).
    pub gradients_s: f64,
    /// The gradients' and statistics' all-reduce after the backward pass.
    pub all_reduce_s: f64,
    /// The global gradient norm, read back.
    pub grad_norm_s: f64,
}

/// One optimizer step over this rank's `micro_batches` micro-batches; `micro_loss(model,
/// encoder, i)` computes the forward pass and loss of micro-batch `i` with `model` (its
/// parameters in the step's precision; the gradients land on the f32 parameters), getting the
/// last hidden state from `encoder` ([`activations::Seeded`], or [`activations::ByLayer`]
/// with `checkpoint_activations` or when the all-reduce overlaps the backward pass).
///
/// With several ranks, the micro-batch losses must already be divided by the denominators of
/// the whole step on all ranks: the gradients and the statistics are then summed over the
/// ranks (once per step, during or after the last backward: [`ProcessGroup::overlaps`]), so
/// every rank sees the step's gradient, norm and loss and makes the same update. Only the
/// collectives can fail.
pub fn train_step<AD, F>(
    model: Bert<AD>,
    optimizer: &mut Optimizer<AD::InnerBackend>,
    micro_batches: usize,
    s: &StepSettings,
    group: &mut ProcessGroup,
    device: &AD::Device,
    micro_loss: F,
) -> Result<(Bert<AD>, StepOutput)>
where
    AD: AutodiffBackend,
    F: FnMut(&Bert<AD>, &mut dyn Encode<AD>, usize) -> MicroLoss<AD>,
{
    let start = std::time::Instant::now();
    let mut phases = StepPhases::default();
    let (grads, mut sums) = if group.overlaps() && micro_batches > 0 {
        let out = accumulate_by_layer(&model, micro_batches, s, group, device, micro_loss)?;
        phases.gradients_s = start.elapsed().as_secs_f64();
        out
    } else {
        let (mut grads, sums) =
            accumulate_gradients(&model, micro_batches, s, group.rank, device, micro_loss);
        phases.gradients_s = start.elapsed().as_secs_f64();
        grads::all_reduce_grads(&model, &mut grads, group)?;
        (grads, sums)
    };
    group.all_reduce_f32(&mut sums)?;
    phases.all_reduce_s = start.elapsed().as_secs_f64() - phases.gradients_s;
    let loss = sums.remove(0) as f64;
    let grads = optimizer.gradients(&model, grads);
    let grad_norm = grads.norm();
    phases.grad_norm_s = start.elapsed().as_secs_f64() - phases.gradients_s - phases.all_reduce_s;
    let updated = grad_norm.is_finite() && loss.is_finite();
    let model = if updated {
        let clip = optim::clip_factor(grad_norm, s.max_grad_norm);
        optimizer.step(s.lr, clip, model, grads)
    } else {
        model
    };
    Ok((
        model,
        StepOutput {
            loss,
            sums,
            grad_norm,
            updated,
            phases,
        },
    ))
}

/// The first half of [`train_step`] on this rank alone: forward and backward of each
/// micro-batch, the gradients summed (f32, fp16's loss scale divided out) and the micro-batches'
/// `[loss, stats...]` summed and read back.
pub fn accumulate_gradients<AD, F>(
    model: &Bert<AD>,
    micro_batches: usize,
    s: &StepSettings,
    rank: usize,
    device: &AD::Device,
    mut micro_loss: F,
) -> (GradientsParams, Vec<f32>)
where
    AD: AutodiffBackend,
    F: FnMut(&Bert<AD>, &mut dyn Encode<AD>, usize) -> MicroLoss<AD>,
{
    let (mut accumulator, sums) = accumulate_first(
        model,
        micro_batches,
        micro_batches,
        s,
        rank,
        device,
        &mut micro_loss,
    );
    (unscaled(model, accumulator.grads(), s), sums.read())
}

/// Forward and backward of micro-batches `0..count` of the step's `micro_batches`, their
/// gradients summed in the accumulator and their `[loss, stats...]` in the sums.
fn accumulate_first<AD, F>(
    model: &Bert<AD>,
    count: usize,
    micro_batches: usize,
    s: &StepSettings,
    rank: usize,
    device: &AD::Device,
    micro_loss: &mut F,
) -> (GradientsAccumulator<Bert<AD>>, Sums<AD::InnerBackend>)
where
    AD: AutodiffBackend,
    F: FnMut(&Bert<AD>, &mut dyn Encode<AD>, usize) -> MicroLoss<AD>,
{
    // Subnormal gradients cost Intel cores ~18x (bertkit_model::denormals); cheap to repeat.
    bertkit_model::denormals::flush_denormals();
    let mut accumulator = GradientsAccumulator::<Bert<AD>>::new();
    let mut sums = Sums::default();
    for i in 0..count {
        let micro = micro_batch(
            model,
            micro_batches,
            s,
            rank,
            device,
            i,
            micro_loss,
            false,
            |f| backward_into(&mut accumulator, model, f),
        );
        sums.add(micro);
    }
    (accumulator, sums)
}

/// `grads` with fp16's loss scale divided out.
fn unscaled<AD: AutodiffBackend>(
    model: &Bert<AD>,
    mut grads: GradientsParams,
    s: &StepSettings,
) -> GradientsParams {
    if s.precision == Precision::Fp16 {
        optim::scale_grads(model, &mut grads, 1.0 / s.loss_scale);
    }
    grads
}

/// [`accumulate_gradients`] whose last micro-batch is differentiated one layer at a time
/// ([`ByLayer`]), each bucket of finished layers all-reduced over `group` while the layers
/// below are differentiated; returns the summed gradients (and this rank's `[loss, stats...]`,
/// not yet summed).
pub fn accumulate_by_layer<AD, F>(
    model: &Bert<AD>,
    micro_batches: usize,
    s: &StepSettings,
    group: &mut ProcessGroup,
    device: &AD::Device,
    mut micro_loss: F,
) -> Result<(GradientsParams, Vec<f32>)>
where
    AD: AutodiffBackend,
    F: FnMut(&Bert<AD>, &mut dyn Encode<AD>, usize) -> MicroLoss<AD>,
{
    let last = micro_batches - 1;
    let (mut accumulator, mut sums) = accumulate_first(
        model,
        last,
        micro_batches,
        s,
        group.rank,
        device,
        &mut micro_loss,
    );
    let mut earlier = accumulator.grads();
    let bucket_len = group.bucket_len();
    let rank = group.rank;
    let (buckets, reduced) = group.overlapped(|sender| {
        let mut buckets = Buckets::new(bucket_len);
        let mut rest = GradientsAccumulator::<Bert<AD>>::new();
        let micro = micro_batch(
            model,
            micro_batches,
            s,
            rank,
            device,
            last,
            &mut micro_loss,
            true,
            |m| {
                let (compute, loss, encoder) = m;
                let encoder = encoder.expect("the overlapped micro-batch encodes layer by layer");
                encoder.backward(loss, &compute, |segment, mut grads| match segment {
                    Segment::Layer(i) => buckets.take_final_sum(
                        &model.bert.encoder.layer[i],
                        &mut grads,
                        &mut earlier,
                        sender,
                    ),
                    Segment::Heads | Segment::Embeddings | Segment::Whole => {
                        rest.accumulate(model, grads)
                    }
                });
            },
        );
        sums.add(micro);
        buckets.take_final_sum(model, &mut rest.grads(), &mut earlier, sender);
        buckets.flush(sender);
        buckets
    })?;
    let grads = unscaled(model, buckets.unpack(model, reduced)?, s);
    Ok((grads, sums.read()))
}

/// What [`micro_batch`] hands its `backward`: the model it computed with, the loss to
/// differentiate (fp16: scaled) and, when it encoded layer by layer, the encoder.
type Forward<AD> = (Bert<AD>, Tensor<AD, 1>, Option<ByLayer<AD>>);

/// Forward pass of micro-batch `i` (its dropout seeded), then `backward`; returns its
/// `[loss, stats...]` parts (detached, f32). It encodes with [`ByLayer`] (leaf parameters in the step's
/// precision) with `checkpoint_activations` or when `backward` asks for it by `by_layer`,
/// else with [`Seeded`] (parameters cast inside the graph).
#[allow(clippy::too_many_arguments)]
fn micro_batch<AD, F>(
    model: &Bert<AD>,
    micro_batches: usize,
    s: &StepSettings,
    rank: usize,
    device: &AD::Device,
    i: usize,
    micro_loss: &mut F,
    by_layer: bool,
    backward: impl FnOnce(Forward<AD>),
) -> Vec<Tensor<AD::InnerBackend, 1>>
where
    AD: AutodiffBackend,
    F: FnMut(&Bert<AD>, &mut dyn Encode<AD>, usize) -> MicroLoss<AD>,
{
    let [seed, step] = s.dropout_seed;
    // Each rank's micro-batches draw their own dropout (rank 0's as a single process's).
    let index = (rank * micro_batches + i) as u64;
    let micro_seed = Rng::derive(&[seed, TAG_DROPOUT, step, index]).next_u64();
    AD::seed(device, micro_seed);
    let scaled = |loss: Tensor<AD, 1>| {
        if s.precision == Precision::Fp16 {
            loss * s.loss_scale
        } else {
            loss
        }
    };
    let micro = if s.checkpoint_activations || by_layer {
        let compute = match s.precision {
            Precision::F32 => model.clone(),
            p => activations::leaf_params(model.clone(), p.dtype()),
        };
        let mut encoder = if s.checkpoint_activations {
            ByLayer::recompute(micro_seed)
        } else {
            ByLayer::keep(micro_seed)
        }
        .padding_free(s.padding_free);
        let micro = micro_loss(&compute, &mut encoder, i);
        backward((compute, scaled(micro.loss.clone()), Some(encoder)));
        micro
    } else {
        let compute = match s.precision {
            Precision::F32 => model.clone(),
            p => cast_params(model.clone(), p.dtype()),
        };
        let micro = micro_loss(
            &compute,
            &mut Seeded {
                micro_seed,
                padding_free: s.padding_free,
            },
            i,
        );
        backward((compute, scaled(micro.loss.clone()), None));
        micro
    };
    let f32 = |t: Tensor<AD, 1>| t.detach().inner().cast(DType::F32);
    std::iter::once(micro.loss)
        .chain(micro.stats)
        .map(f32)
        .collect()
}

/// Differentiates a [`micro_batch`]'s loss and adds the gradients (f32) to `accumulator`.
fn backward_into<AD: AutodiffBackend>(
    accumulator: &mut GradientsAccumulator<Bert<AD>>,
    model: &Bert<AD>,
    (compute, loss, encoder): Forward<AD>,
) {
    match encoder {
        Some(encoder) => encoder.backward(loss, &compute, |_, grads| {
            accumulator.accumulate(model, grads)
        }),
        None => accumulator.accumulate(model, GradientsParams::from_grads(loss.backward(), model)),
    }
}

/// The micro-batches' `[loss, stats...]` parts, each summed on the device; joined and read back
/// once.
struct Sums<B: Backend>(Option<Vec<Tensor<B, 1>>>);

impl<B: Backend> Default for Sums<B> {
    fn default() -> Self {
        Sums(None)
    }
}

impl<B: Backend> Sums<B> {
    fn add(&mut self, parts: Vec<Tensor<B, 1>>) {
        self.0 = Some(match self.0.take() {
            Some(sums) => sums.into_iter().zip(parts).map(|(s, p)| s + p).collect(),
            None => parts,
        });
    }

    fn read(self) -> Vec<f32> {
        match self.0 {
            Some(parts) if !parts.is_empty() => {
                bertkit_model::nn::to_host(bertkit_model::fused::concat(parts)).data
            }
            _ => vec![0.0],
        }
    }
}

/// Cross entropy summed over rows of `logits [n, classes]` (computed in f32) and the number of
/// rows whose argmax is the label.
pub fn cross_entropy_sum<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    weighted_cross_entropy_sum(logits, labels, None)
}

/// [`cross_entropy_sum`] with each row's loss and correctness multiplied by `weights [n]`
/// (rows of weight 0 count for nothing: padding).
pub fn weighted_cross_entropy_sum<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    weights: Option<Tensor<B, 1>>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let logits = if logits.dtype() == DType::F32 {
        logits
    } else {
        logits.cast(DType::F32)
    };
    let n = labels.dims()[0];
    let labels = labels.reshape([n, 1]);
    let correct = logits
        .clone()
        .detach()
        .argmax(1)
        .equal(labels.clone())
        .float()
        .reshape([n]);
    let log_p = bertkit_model::fused::log_softmax(logits)
        .gather(1, labels)
        .reshape([n]);
    match weights {
        Some(w) => (
            (log_p * w.clone()).sum().neg(),
            (correct * w.detach()).sum(),
        ),
        None => (log_p.sum().neg(), correct.sum()),
    }
}

/// A copy of the model whose parameters are cast to `dtype` inside the autodiff graph: the
/// forward pass computes in `dtype` and the gradients reach the f32 parameters of `model`.
pub fn cast_params<B: Backend, M: Module<B>>(model: M, dtype: DType) -> M {
    struct Cast(DType);
    impl<B: Backend> ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, tensor.cast(self.0), mapper)
        }
    }
    model.map(&mut Cast(dtype))
}

/// The largest absolute parameter value (NaN if any is NaN; one read back).
pub fn max_abs_param<B: Backend, M: Module<B>>(model: &M) -> f64 {
    struct MaxAbs<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: Backend> burn::module::ModuleVisitor<B> for MaxAbs<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let p = param.val();
            // NaN does not win a max, so each tensor also reports whether it has one.
            self.0.push(p.clone().is_nan().any().float().reshape([1]));
            self.0.push(p.abs().max().reshape([1]));
        }
    }
    let mut v = MaxAbs::<B>(Vec::new());
    model.visit(&mut v);
    if v.0.is_empty() {
        return 0.0;
    }
    let all = bertkit_model::nn::to_host(bertkit_model::fused::concat(v.0)).data;
    let mut max = 0.0f64;
    for pair in all.chunks(2) {
        if pair[0] != 0.0 {
            return f64::NAN;
        }
        max = max.max(pair[1] as f64);
    }
    max
}
