//! How a training step runs the encoder, and what it keeps for the backward pass.
//!
//! - [`Seeded`] keeps every activation (the default). Each layer seeds its own dropout from the
//!   micro-batch's seed and the layer's index, so the masks of a layer can be drawn again.
//! - [`ByLayer::recompute`] is activation (gradient) checkpointing, as PyTorch's `checkpoint`
//!   and HF's `gradient_checkpointing` do it: the forward pass keeps only each layer's input;
//!   the backward pass runs the heads' backward, then, from the last layer down, runs the layer
//!   forward again (same input, same dropout seed) with its graph and backpropagates through it
//!   alone, and ends with the embeddings. Peak memory holds the layer inputs plus one layer's
//!   graph instead of every layer's graph. The numbers are [`Seeded`]'s: same masks, same
//!   gradients.
//! - [`ByLayer::keep`] keeps every layer's graph but differentiates the layers one at a time in
//!   the same order, so a data-parallel step can all-reduce a layer's finished gradients while
//!   the layers below are still being differentiated.
//! - [`Plain`] is evaluation's `BertModel::encode`.
//!
//! A micro-batch's objective asks its [`Encode`] for the last hidden state and puts the heads on
//! it; `step::train_step` chooses the encoder.

use bertkit_model::bert::{AttentionMask, BertInput, BertModel, Layers};
use bertkit_model::heads::Bert;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
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
    /// encoder keeps no layer's graph ([`ByLayer::recompute`]).
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
    /// Run the layers on the real tokens only ([`BertModel::embed_with`]).
    pub padding_free: bool,
}

impl<B: Backend> Encode<B> for Seeded {
    fn encode(&mut self, bert: &BertModel<B>, input: &BertInput<B>) -> Tensor<B, 3> {
        let device = input.input_ids.device();
        let (mut x, mask) = bert.embed_with(input, self.padding_free);
        for (i, layer) in bert.encoder.layer.iter().enumerate() {
            B::seed(&device, layer_seed(self.micro_seed, i));
            x = layer.forward(x, &mask);
        }
        mask.unpack(x)
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

/// Which part of the model a [`ByLayer::backward`] pass has just finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// The heads (and anything else the loss reads besides the last hidden state).
    Heads,
    /// Encoder layer `i`: the gradients of its parameters are complete for this micro-batch.
    Layer(usize),
    /// The embeddings, last.
    Embeddings,
    /// The whole model in one pass (the objective asked for every layer's output).
    Whole,
}

/// The backward pass one layer at a time, from the last layer down (see the module doc), so
/// that each layer's gradients are complete before the layers below it are differentiated.
/// With `recompute` it is activation checkpointing ([`ByLayer::recompute`]); otherwise
/// ([`ByLayer::keep`]) every layer's graph is kept, as [`Seeded`] keeps it, and each layer is
/// differentiated on its own: data-parallel training all-reduces a layer's gradients while the
/// layers below are differentiated. The numbers are [`Seeded`]'s: same masks, same gradients.
///
/// The model it encodes with must have leaf parameters ([`leaf_params`]): parameters cast
/// inside the graph would be consumed by the first of the several backward passes.
pub struct ByLayer<B: AutodiffBackend> {
    micro_seed: u64,
    recompute: bool,
    /// Tests: treat every kept layer graph as lost ([`ByLayer::as_if_graphs_were_lost`]).
    lose_kept: bool,
    saved: Option<Saved<B>>,
    /// The objective took every layer's output ([`Encode::encode_layers`]): one backward pass.
    whole: bool,
    padding_free: bool,
}

struct Saved<B: AutodiffBackend> {
    /// The embeddings' output, still in its graph: their backward runs last.
    embedded: Tensor<B, 3>,
    mask: AttentionMask<B>,
    layers: Vec<SavedLayer<B>>,
    /// The last layer's output: a leaf of the heads' graph.
    top: Tensor<B, 3>,
}

enum SavedLayer<B: AutodiffBackend> {
    /// Recomputed in the backward pass from its input, kept without a graph.
    Input(Tensor<B::InnerBackend, 3>),
    /// The layer's graph, from its input (a leaf) to its output.
    Graph {
        input: Tensor<B, 3>,
        output: Tensor<B, 3>,
    },
}

impl<B: AutodiffBackend> ByLayer<B> {
    /// Activation checkpointing: only each layer's input is kept.
    pub fn recompute(micro_seed: u64) -> Self {
        ByLayer {
            micro_seed,
            recompute: true,
            lose_kept: false,
            saved: None,
            whole: false,
            padding_free: false,
        }
    }

    /// Run the layers on the real tokens only ([`BertModel::embed_with`]).
    pub fn padding_free(self, padding_free: bool) -> Self {
        ByLayer {
            padding_free,
            ..self
        }
    }

    /// Every layer's graph kept, differentiated one layer at a time.
    pub fn keep(micro_seed: u64) -> Self {
        ByLayer {
            recompute: false,
            ..Self::recompute(micro_seed)
        }
    }

    /// For tests: [`ByLayer::backward`] behaves as if burn-autodiff had lost every kept layer
    /// graph, so each layer takes the recovery path (recomputed from its input).
    #[doc(hidden)]
    pub fn as_if_graphs_were_lost(self) -> Self {
        ByLayer {
            lose_kept: true,
            ..self
        }
    }

    /// Backpropagates `loss` (computed from [`Encode::encode`]'s output by `model`, the model
    /// `encode` was given) and hands each segment's gradients, in f32, to `add`: the heads,
    /// then the layers from the last down, then the embeddings.
    ///
    /// A layer whose kept graph burn-autodiff 0.21 has lost, wholly or in part, is recomputed
    /// from its input. The cause is in burn-autodiff's `GraphLocator::merge_two`: it moves a
    /// merged graph's keys to the main graph but not the merged graph's own origin node, whose
    /// entry keeps pointing to the emptied graph. Measured with the 2-rank fine-tuning run of
    /// `tests/cli_data_parallel.rs`: 16 of 900 runs lost layer 1's graph on the first step; with
    /// that one line added in a locally patched burn-autodiff, 0 of 300. (The likely path: later
    /// registrations through the stale entry put a kept layer into the graph of an earlier
    /// backward pass, whose cleanup frees it. With one backward pass everything the loss reads
    /// ends up merged before it runs.) A layer's pass is accepted when its input and every
    /// parameter of the layer got a gradient; else the layer is recomputed under its seed, as
    /// `recompute` does: the same masks, so the same gradients.
    pub fn backward(
        self,
        loss: Tensor<B, 1>,
        model: &Bert<B>,
        mut add: impl FnMut(Segment, GradientsParams),
    ) {
        let params = |grads| f32_grads(GradientsParams::from_grads(grads, model), model);
        let mut grads = loss.backward();
        if self.whole {
            add(Segment::Whole, params(grads));
            return;
        }
        let top_grad = self
            .saved
            .as_ref()
            .and_then(|saved| saved.top.grad_remove(&mut grads));
        add(Segment::Heads, params(grads));
        // Nothing below to reach when the objective never encoded, or its loss does not read
        // the hidden state.
        let (Some(saved), Some(mut grad)) = (self.saved, top_grad) else {
            return;
        };
        let device = saved.embedded.device();
        // Layer i run again from its input's value, under its seed.
        let recompute = |i: usize, x: Tensor<B::InnerBackend, 3>| {
            let input = Tensor::<B, 3>::from_inner(x).require_grad();
            B::seed(&device, layer_seed(self.micro_seed, i));
            let output = model.bert.encoder.layer[i].forward(input.clone(), &saved.mask);
            (input, output)
        };
        let mut layers = saved.layers;
        for (i, layer) in model.bert.encoder.layer.iter().enumerate().rev() {
            let (input, output, kept) = match layers.pop().expect("one saved input per layer") {
                SavedLayer::Input(x) => {
                    let (input, output) = recompute(i, x);
                    (input, output, false)
                }
                SavedLayer::Graph { input, output } => (input, output, true),
            };
            // The gradients of the layer's input and parameters.
            let differentiate = |input: &Tensor<B, 3>, output: Tensor<B, 3>| {
                let mut grads = (output * Tensor::from_inner(grad.clone())).sum().backward();
                (input.grad_remove(&mut grads), params(grads))
            };
            let (mut input_grad, mut grads) = differentiate(&input, output);
            let complete = |g: &Option<_>, grads: &GradientsParams| {
                g.is_some() && missing_grads(layer, grads) == 0
            };
            if kept && (self.lose_kept || !complete(&input_grad, &grads)) {
                tracing::debug!(layer = i, "kept layer graph lost; recomputing the layer");
                let (input, output) = recompute(i, input.inner());
                (input_grad, grads) = differentiate(&input, output);
            }
            assert!(
                complete(&input_grad, &grads),
                "layer {i}: its input or a parameter got no gradient"
            );
            grad = input_grad.expect("checked above");
            add(Segment::Layer(i), grads);
        }
        let grads = params((saved.embedded * Tensor::from_inner(grad)).sum().backward());
        assert!(
            missing_grads(&model.bert.embeddings, &grads) == 0,
            "an embedding parameter got no gradient (burn-autodiff lost the embeddings' graph)"
        );
        add(Segment::Embeddings, grads);
    }
}

/// How many of `module`'s trainable parameters have no gradient in `grads`.
fn missing_grads<B: AutodiffBackend, M: Module<B>>(module: &M, grads: &GradientsParams) -> usize {
    struct Missing<'a>(&'a GradientsParams, usize);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Missing<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() && self.0.get::<B::InnerBackend, D>(param.id).is_none() {
                self.1 += 1;
            }
        }
    }
    let mut missing = Missing(grads, 0);
    module.visit(&mut missing);
    missing.1
}

impl<B: AutodiffBackend> Encode<B> for ByLayer<B> {
    fn encode(&mut self, bert: &BertModel<B>, input: &BertInput<B>) -> Tensor<B, 3> {
        assert!(
            self.saved.is_none() && !self.whole,
            "a micro-batch's objective encodes once"
        );
        let device = input.input_ids.device();
        let (embedded, mask) = bert.embed_with(input, self.padding_free);
        let mut layers = Vec::with_capacity(bert.encoder.layer.len());
        let mut x = embedded.clone().detach().inner();
        for (i, layer) in bert.encoder.layer.iter().enumerate() {
            B::seed(&device, layer_seed(self.micro_seed, i));
            if self.recompute {
                layers.push(SavedLayer::Input(x.clone()));
                // Detached parameters and input: the autodiff backend records nothing, but it
                // is still training (dropout on), as the recomputation will be.
                let frozen = detach_params(layer.clone());
                x = frozen.forward(Tensor::from_inner(x), &mask).inner();
            } else {
                let input = Tensor::<B, 3>::from_inner(x).require_grad();
                let output = layer.forward(input.clone(), &mask);
                x = output.clone().inner();
                layers.push(SavedLayer::Graph { input, output });
            }
        }
        let top = Tensor::<B, 3>::from_inner(x).require_grad();
        // Packed, the heads read `[batch, seq, hidden]`: the unpacking is in their graph.
        let hidden = mask.unpack(top.clone());
        self.saved = Some(Saved {
            embedded,
            mask,
            layers,
            top,
        });
        hidden
    }

    /// Keeping graphs: every layer's output in one graph (as [`Seeded`]), differentiated in one
    /// pass ([`Segment::Whole`]). Recomputing: `None`, no layer's graph is kept.
    fn encode_layers(
        &mut self,
        bert: &BertModel<B>,
        input: &BertInput<B>,
        attention: bool,
    ) -> Option<Layers<B>> {
        if self.recompute {
            return None;
        }
        assert!(
            self.saved.is_none() && !self.whole,
            "a micro-batch's objective encodes once"
        );
        self.whole = true;
        Seeded {
            micro_seed: self.micro_seed,
            padding_free: false,
        }
        .encode_layers(bert, input, attention)
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
/// [`ByLayer`]: their gradients arrive in `dtype` and [`ByLayer::backward`] hands them on in
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

#[cfg(test)]
mod tests {
    use super::*;
    use bertkit_model::backend::Cpu;
    use bertkit_model::config::BertConfig;
    use bertkit_model::heads::Task;
    use burn::backend::Autodiff;

    type AD = Autodiff<Cpu>;

    /// `missing_grads` sees every parameter of a layer that has no gradient: none after the
    /// layer's backward pass, one when a gradient is taken out.
    #[test]
    fn missing_grads_counts_the_parameters_without_a_gradient() {
        let config = BertConfig::from_json(
            r#"{"vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 16,
                "max_position_embeddings": 8}"#,
        )
        .expect("a valid config");
        let model = bertkit_model::checkpoint::init::<AD>(
            &config,
            Task::Pretraining,
            3,
            &Default::default(),
        )
        .expect("a model");
        let layer = &model.bert.encoder.layer[0];
        let device = Default::default();
        let x = Tensor::<AD, 3>::random([1, 4, 8], burn::tensor::Distribution::Default, &device);
        let input = BertInput {
            input_ids: Tensor::zeros([1, 4], &device),
            attention_mask: Tensor::ones([1, 4], &device),
            token_type_ids: Tensor::zeros([1, 4], &device),
            spans: None,
        };
        let (_, mask) = model.bert.embed_with(&input, false);
        let out = layer.forward(x, &mask);
        let mut grads = GradientsParams::from_grads(out.powf_scalar(2.0).sum().backward(), layer);
        assert_eq!(missing_grads(layer, &grads), 0);
        // The whole model's other parameters had no part in this pass.
        assert!(missing_grads(&model.bert.embeddings, &grads) > 0);
        let id = layer.output.dense.weight.id;
        grads
            .remove::<Cpu, 2>(id)
            .expect("the output weight's gradient");
        assert_eq!(missing_grads(layer, &grads), 1);
    }
}
