//! How a training step runs the encoder, and what it keeps for the backward pass.
//!
//! - [`Seeded`] keeps every activation (the default). Each layer seeds its own dropout from the
//!   micro-batch's seed and the layer's index, so the masks of a layer can be drawn again.
//! - [`Recompute`] is activation (gradient) checkpointing, as PyTorch's `checkpoint` and HF's
//!   `gradient_checkpointing` do it: the forward pass keeps only each layer's input; the
//!   backward pass runs the heads' backward, then, from the last layer down, runs the layer
//!   forward again (same input, same dropout seed) with its graph and backpropagates through it
//!   alone, and ends with the embeddings. Peak memory holds the layer inputs plus one layer's
//!   graph instead of every layer's graph. The numbers are [`Seeded`]'s: same masks, same
//!   gradients.
//! - [`Plain`] is evaluation's `BertModel::encode`.
//!
//! A micro-batch's objective asks its [`Encode`] for the last hidden state and puts the heads on
//! it; `step::train_step` chooses the encoder.

use bertkit_model::bert::{AttentionMask, BertInput, BertModel, Layers};
use bertkit_model::heads::Bert;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

use crate::rng::Rng;

/// Stream tag of a layer's dropout seed.
const TAG_LAYER: u64 = u64::from_be_bytes(*b"layer-do");

/// Where a micro-batch's loss gets the encoder's last hidden state `[batch, seq, hidden]`.
pub trait Encode<B: Backend> {
    fn encode(&mut self, bert: &BertModel<B>, input: &BertInput<B>) -> Tensor<B, 3>;

    /// Every hidden state and, with `attention`, each layer's attention probabilities
    /// ([`BertModel::encode_layers`]), for intermediate-layer distillation; `None` where the
    /// encoder keeps no layer's graph ([`Recompute`]).
    fn encode_layers(
        &mut self,
        _bert: &BertModel<B>,
        _input: &BertInput<B>,
        _attention: bool,
    ) -> Option<Layers<B>> {
        None
    }
}

/// `BertModel::encode`, for evaluation.
pub struct Plain;

impl<B: Backend> Encode<B> for Plain {
    fn encode(&mut self, bert: &BertModel<B>, input: &BertInput<B>) -> Tensor<B, 3> {
        bert.encode(input)
    }

    fn encode_layers(
        &mut self,
        bert: &BertModel<B>,
        input: &BertInput<B>,
        attention: bool,
    ) -> Option<Layers<B>> {
        Some(bert.encode_layers(input, attention, |_| {}))
    }
}

/// The dropout seed of layer `layer` in the micro-batch seeded with `micro_seed`.
pub fn layer_seed(micro_seed: u64, layer: usize) -> u64 {
    Rng::derive(&[micro_seed, TAG_LAYER, layer as u64]).next_u64()
}

/// Training with every activation kept; layer `i` draws its dropout from
/// [`layer_seed`]`(micro_seed, i)`.
pub struct Seeded {
    pub micro_seed: u64,
}

impl<B: Backend> Encode<B> for Seeded {
    fn encode(&mut self, bert: &BertModel<B>, input: &BertInput<B>) -> Tensor<B, 3> {
        let device = input.input_ids.device();
        let (mut x, mask) = bert.embed(input);
        for (i, layer) in bert.encoder.layer.iter().enumerate() {
            B::seed(&device, layer_seed(self.micro_seed, i));
            x = layer.forward(x, &mask);
        }
        x
    }

    fn encode_layers(
        &mut self,
        bert: &BertModel<B>,
        input: &BertInput<B>,
        attention: bool,
    ) -> Option<Layers<B>> {
        let device = input.input_ids.device();
        let seed = self.micro_seed;
        Some(bert.encode_layers(input, attention, |i| B::seed(&device, layer_seed(seed, i))))
    }
}

/// Activation checkpointing (see the module doc). The model it encodes with must have leaf
/// parameters ([`leaf_params`]): parameters cast inside the graph would be consumed by the
/// first of the several backward passes.
pub struct Recompute<B: AutodiffBackend> {
    micro_seed: u64,
    saved: Option<Saved<B>>,
}

struct Saved<B: AutodiffBackend> {
    /// The embeddings' output, still in its graph: their backward runs last.
    embedded: Tensor<B, 3>,
    mask: AttentionMask<B>,
    /// Layer `i`'s input, without a graph.
    inputs: Vec<Tensor<B::InnerBackend, 3>>,
    /// The last layer's output: a leaf of the heads' graph.
    top: Tensor<B, 3>,
}

impl<B: AutodiffBackend> Recompute<B> {
    pub fn new(micro_seed: u64) -> Self {
        Recompute {
            micro_seed,
            saved: None,
        }
    }

    /// Backpropagates `loss` (computed from [`Encode::encode`]'s output by `model`, the model
    /// `encode` was given) and adds every parameter's gradient, in f32, to `accumulator`.
    pub fn backward(
        self,
        loss: Tensor<B, 1>,
        model: &Bert<B>,
        accumulator: &mut GradientsAccumulator<Bert<B>>,
    ) {
        let mut add = |grads| {
            let grads = f32_grads(GradientsParams::from_grads(grads, model), model);
            accumulator.accumulate(model, grads);
        };
        let mut grads = loss.backward();
        let top_grad = self
            .saved
            .as_ref()
            .and_then(|saved| saved.top.grad_remove(&mut grads));
        add(grads);
        // Nothing below to reach when the objective never encoded, or its loss does not read
        // the hidden state.
        let (Some(saved), Some(mut grad)) = (self.saved, top_grad) else {
            return;
        };
        let device = saved.embedded.device();
        let mut inputs = saved.inputs;
        for (i, layer) in model.bert.encoder.layer.iter().enumerate().rev() {
            let input = inputs
                .pop()
                .map(|x| Tensor::<B, 3>::from_inner(x).require_grad())
                .expect("one saved input per layer");
            B::seed(&device, layer_seed(self.micro_seed, i));
            let output = layer.forward(input.clone(), &saved.mask);
            let mut grads = (output * Tensor::from_inner(grad)).sum().backward();
            grad = input
                .grad_remove(&mut grads)
                .expect("a layer's output depends on its input");
            add(grads);
        }
        add((saved.embedded * Tensor::from_inner(grad)).sum().backward());
    }
}

impl<B: AutodiffBackend> Encode<B> for Recompute<B> {
    fn encode(&mut self, bert: &BertModel<B>, input: &BertInput<B>) -> Tensor<B, 3> {
        assert!(
            self.saved.is_none(),
            "a micro-batch's objective encodes once"
        );
        let device = input.input_ids.device();
        let (embedded, mask) = bert.embed(input);
        let mut inputs = Vec::with_capacity(bert.encoder.layer.len());
        let mut x = embedded.clone().detach().inner();
        for (i, layer) in bert.encoder.layer.iter().enumerate() {
            inputs.push(x.clone());
            B::seed(&device, layer_seed(self.micro_seed, i));
            // Detached parameters and input: the autodiff backend records nothing, but it is
            // still training (dropout on), as the recomputation will be.
            let frozen = detach_params(layer.clone());
            x = frozen.forward(Tensor::from_inner(x), &mask).inner();
        }
        let top = Tensor::<B, 3>::from_inner(x).require_grad();
        self.saved = Some(Saved {
            embedded,
            mask,
            inputs,
            top: top.clone(),
        });
        top
    }
}

/// A copy of `module` whose parameters are outside every graph.
fn detach_params<B: AutodiffBackend, M: Module<B>>(module: M) -> M {
    struct Detach;
    impl<B: AutodiffBackend> ModuleMapper<B> for Detach {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            // `detach` would keep a leaf's `require_grad`; a tensor made from the inner value
            // has none.
            Param::from_mapped_value(id, Tensor::from_inner(tensor.inner()), mapper)
        }
    }
    module.map(&mut Detach)
}

/// A copy of `model` whose parameters are `dtype` leaves of their own (same ids), for
/// [`Recompute`]: their gradients arrive in `dtype` and [`Recompute::backward`] hands them on in
/// f32. (`step::cast_params` casts inside the graph instead, for one backward pass.)
pub fn leaf_params<B: AutodiffBackend, M: Module<B>>(model: M, dtype: DType) -> M {
    struct Leaf(DType);
    impl<B: AutodiffBackend> ModuleMapper<B> for Leaf {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let leaf = Tensor::from_inner(tensor.inner().cast(self.0)).require_grad();
            Param::from_mapped_value(id, leaf, mapper)
        }
    }
    model.map(&mut Leaf(dtype))
}

/// `grads` with every tensor in f32 (the parameters' and the optimizer's type).
fn f32_grads<B: AutodiffBackend>(mut grads: GradientsParams, model: &Bert<B>) -> GradientsParams {
    struct ToF32<'a>(&'a mut GradientsParams);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for ToF32<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.0.remove::<B::InnerBackend, D>(param.id) {
                let g = if g.dtype() == DType::F32 {
                    g
                } else {
                    g.cast(DType::F32)
                };
                self.0.register(param.id, g);
            }
        }
    }
    model.visit(&mut ToF32(&mut grads));
    grads
}
