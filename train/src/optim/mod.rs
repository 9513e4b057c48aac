//! Optimizers over a whole model: LAMB (as NVIDIA's fused LAMB computes it) and AdamW (as
//! PyTorch's), with the global gradient norm and clipping by it.
//!
//! burn's optimizers see one tensor at a time and know parameters by id only; BERT recipes need
//! the parameter's name (no weight decay on biases and LayerNorm) and one norm over all
//! gradients. So this module walks the model itself (a `ModuleMapper` that tracks the module
//! path) and keeps its state by parameter name, which is also how a checkpoint stores it.
//!
//! LAMB, per parameter tensor `p` with gradient `g` (already divided by the clip factor), step `t`:
//! ```text
//! m = β1·m + (1-β1)·g            v = β2·v + (1-β2)·g²
//! u = (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε) + λ·p
//! r = ‖p‖/‖u‖ if both are non-zero, else 1      (only where λ ≠ 0, unless `nvlamb`)
//! p = p - lr·r·u
//! ```
//! AdamW: `p = p·(1 - lr·λ)`, then `p = p - lr·m̂/(sqrt(v̂)+ε)`.
//!
//! A step, in order: [`Optimizer::gradients`] takes the step's gradients and measures their
//! global norm; [`clip_factor`] turns it into the clip divisor; [`Optimizer::step`] updates
//! the parameters. How depends on [`Updates`]: on the CPU one fused pass per tensor
//! (`bertkit_model::fused`), on GPU backends all tensors at once ([`flat`]).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

mod flat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Lamb,
    Adamw,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub name: OptimizerKind,
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Applied to every parameter except biases and LayerNorm weights.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Clip gradients to this global norm (over all parameters); 0 = no clipping.
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// LAMB: apply the trust ratio to the no-decay parameters too (NVLAMB).
    #[serde(default)]
    pub nvlamb: bool,
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-6
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_max_grad_norm() -> f64 {
    1.0
}

/// Weight decay applies to this parameter (module path as `Optimizer` sees it): not to biases,
/// not to LayerNorm, as in BERT's recipes.
pub fn decays(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    last != "bias" && !name.split('.').any(|part| part == "layer_norm")
}

/// First and second moments of one parameter, flattened.
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// How [`Optimizer::step`] walks the parameters. Both compute the same update; they differ in
/// the kernels a step launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updates {
    /// One tensor at a time (on the CPU backend one fused pass over each).
    PerTensor,
    /// All tensors at once in flat buffers ([`flat`]): a few kernels a step instead of a chain
    /// per tensor, for GPU backends.
    Flat,
}

impl Updates {
    /// Per tensor on the CPU backend (its fused passes need no concatenation), flat elsewhere.
    pub fn for_backend<B: Backend>() -> Updates {
        if bertkit_model::fused::is_flex::<B>() {
            Updates::PerTensor
        } else {
            Updates::Flat
        }
    }
}

/// A step's gradients, taken from burn's [`GradientsParams`], with their global L2 norm.
pub struct Gradients<B: Backend> {
    norm: f64,
    values: GradientValues<B>,
}

enum GradientValues<B: Backend> {
    PerTensor(GradientsParams),
    Flat(Option<flat::FlatGrads<B>>),
}

impl<B: Backend> Gradients<B> {
    /// The L2 norm over all gradients.
    pub fn norm(&self) -> f64 {
        self.norm
    }
}

/// An optimizer's state: the moments of each parameter by name and the number of steps taken.
pub struct Optimizer<B: Backend> {
    pub config: OptimizerConfig,
    /// Updates applied so far (the `t` of bias correction).
    pub steps: u64,
    pub updates: Updates,
    /// Moments by parameter name: all of them with per-tensor updates; with flat ones, those
    /// of parameters outside the flat state's layout (loaded, or without gradients lately).
    state: HashMap<String, Moments<B>>,
    /// Flat updates: the moments of the parameters of the last step's layout.
    flat: Option<flat::FlatState<B>>,
}

impl<B: Backend> Optimizer<B> {
    /// An optimizer updating the way that suits backend `B` ([`Updates::for_backend`]).
    pub fn new(config: OptimizerConfig) -> Self {
        Self::with_updates(config, Updates::for_backend::<B>())
    }

    pub fn with_updates(config: OptimizerConfig, updates: Updates) -> Self {
        Optimizer {
            config,
            steps: 0,
            updates,
            state: HashMap::new(),
            flat: None,
        }
    }

    /// Takes the gradients of `module`'s parameters out of `grads` and measures their global
    /// norm (one read back to the host).
    pub fn gradients<AD, M>(&self, module: &M, mut grads: GradientsParams) -> Gradients<B>
    where
        AD: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AD>,
    {
        match self.updates {
            Updates::PerTensor => Gradients {
                norm: global_grad_norm(module, &grads),
                values: GradientValues::PerTensor(grads),
            },
            Updates::Flat => {
                let flat = flat::FlatGrads::gather(module, &mut grads);
                Gradients {
                    norm: flat.as_ref().map_or(0.0, |f| f.norm()),
                    values: GradientValues::Flat(flat),
                }
            }
        }
    }

    /// One update of every parameter that has a gradient. `clip` divides the gradients (the
    /// global norm over `max_grad_norm` when above it, else 1), `lr` is this step's rate.
    pub fn step<AD, M>(&mut self, lr: f64, clip: f64, module: M, grads: Gradients<B>) -> M
    where
        AD: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AD>,
    {
        self.steps += 1;
        match grads.values {
            GradientValues::PerTensor(mut grads) => {
                let mut mapper = UpdateMapper {
                    opt: self,
                    grads: &mut grads,
                    lr,
                    clip,
                    path: Vec::new(),
                };
                module.map(&mut mapper)
            }
            GradientValues::Flat(None) => module,
            GradientValues::Flat(Some(grads)) => {
                let device = grads.values.device();
                let moments = match self.flat.take() {
                    Some(state) if state.fits(&grads.layout) => Some((state.m, state.v)),
                    last => {
                        // Other parameters than last step's: back to moments by name, and
                        // this step's taken from them.
                        self.state.extend(last.into_iter().flat_map(|s| s.split()));
                        flat::FlatState::assemble(&grads.layout, &mut self.state, &device)
                    }
                };
                let params = flat_params(&module, &grads.layout);
                let (state, mut new) = flat::update(
                    &self.config,
                    self.steps as i32,
                    lr,
                    clip,
                    grads,
                    params,
                    moments,
                );
                self.flat = Some(state);
                module.map(&mut Replace { new: &mut new })
            }
        }
    }

    /// The state as named host tensors: `NAME.exp_avg` and `NAME.exp_avg_sq`.
    pub fn to_host(&self) -> BTreeMap<String, Vec<f32>> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.state {
            out.insert(format!("{name}.exp_avg"), host(s.m.clone()));
            out.insert(format!("{name}.exp_avg_sq"), host(s.v.clone()));
        }
        if let Some(state) = &self.flat {
            let (m, v) = (host(state.m.clone()), host(state.v.clone()));
            for e in &state.layout.entries {
                let range = e.offset..e.offset + e.numel;
                out.insert(format!("{}.exp_avg", e.name), m[range.clone()].to_vec());
                out.insert(format!("{}.exp_avg_sq", e.name), v[range].to_vec());
            }
        }
        out
    }

    /// Restores the state written by [`Optimizer::to_host`].
    pub fn load_host(
        &mut self,
        steps: u64,
        tensors: BTreeMap<String, Vec<f32>>,
        device: &B::Device,
    ) -> Result<()> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (key, data) in tensors {
            let len = data.len();
            let tensor = Tensor::<B, 1>::from_data(TensorData::new(data, [len]), device);
            if let Some(name) = key.strip_suffix(".exp_avg_sq") {
                v.insert(name.to_string(), tensor);
            } else if let Some(name) = key.strip_suffix(".exp_avg") {
                m.insert(name.to_string(), tensor);
            } else {
                bail!("unexpected optimizer tensor {key:?}");
            }
        }
        self.state.clear();
        self.flat = None;
        for (name, m) in m {
            let v = v
                .remove(&name)
                .with_context(|| format!("optimizer state of {name} has no exp_avg_sq"))?;
            self.state.insert(name, Moments { m, v });
        }
        if let Some(name) = v.keys().next() {
            bail!("optimizer state of {name} has no exp_avg");
        }
        self.steps = steps;
        Ok(())
    }

    /// Shapes are checked when the state is used; this checks the names against a model's.
    pub fn check_names(&self, names: &[String]) -> Result<()> {
        let flat = self.flat.iter().flat_map(|s| &s.layout.entries);
        for name in self.state.keys().chain(flat.map(|e| &e.name)) {
            if !names.contains(name) {
                bail!("optimizer state names parameter {name:?}, which the model does not have");
            }
        }
        Ok(())
    }

    fn update(
        &mut self,
        name: &str,
        p: Tensor<B, 1>,
        g: Tensor<B, 1>,
        lr: f64,
        clip: f64,
    ) -> Tensor<B, 1> {
        let c = &self.config;
        let t = self.steps as i32;
        let wd = if decays(name) { c.weight_decay } else { 0.0 };
        if bertkit_model::fused::is_flex::<B>() && p.dtype() == burn::tensor::DType::F32 {
            // One pass over the values (LAMB: two) instead of the expression below, same f32
            // arithmetic (LAMB's norms are summed in f64).
            let decay = (wd != 0.0).then_some(1.0 - lr * wd);
            let s = bertkit_model::fused::AdamScalars::new(c.betas, c.eps, t, clip, lr, decay);
            let moments = self.state.remove(name).map(|s| (s.m, s.v));
            let [new, m, v] = match c.name {
                OptimizerKind::Adamw => bertkit_model::fused::adam_update(p, g, moments, s),
                OptimizerKind::Lamb => bertkit_model::fused::lamb_update(
                    p,
                    g,
                    moments,
                    s,
                    (wd != 0.0).then_some(wd as f32),
                    wd != 0.0 || c.nvlamb,
                ),
            };
            self.state.insert(name.to_string(), Moments { m, v });
            return new;
        }
        // The flat update's arithmetic, on one tensor.
        let moments = self.state.remove(name).map(|s| (s.m, s.v));
        let [m, v, adam] = flat::adam_direction(c, t, clip, g, moments);
        let new = match c.name {
            OptimizerKind::Adamw => flat::adamw(p, adam, lr, wd),
            OptimizerKind::Lamb => {
                let u = flat::lamb_direction(p.clone(), adam, wd);
                if wd != 0.0 || c.nvlamb {
                    let n = p.dims()[0];
                    flat::lamb_rows(p.reshape([1, n]), u.reshape([1, n]), lr).reshape([n])
                } else {
                    p - u * lr
                }
            }
        };
        self.state.insert(name.to_string(), Moments { m, v });
        new
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    bertkit_model::nn::to_host(t).data
}

/// The module path of the parameter being visited, joined with dots.
fn path_name(path: &[String], leaf: &str) -> String {
    let mut name = path.join(".");
    if !leaf.is_empty() {
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(leaf);
    }
    name
}

struct UpdateMapper<'a, B: Backend> {
    opt: &'a mut Optimizer<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
    clip: f64,
    path: Vec<String>,
}

impl<AD: AutodiffBackend> ModuleMapper<AD> for UpdateMapper<'_, AD::InnerBackend> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AD, D>>) -> Param<Tensor<AD, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<AD::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.shape();
        let n = shape.num_elements();
        let name = path_name(&self.path, "");
        let p = tensor.inner().reshape([n]);
        let new = self
            .opt
            .update(&name, p, grad.reshape([n]), self.lr, self.clip);
        let tensor = Tensor::<AD, D>::from_inner(new.reshape(shape)).require_grad();
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// The current values of the parameters in `layout`, flat, by id.
fn flat_params<AD: AutodiffBackend, M: AutodiffModule<AD>>(
    module: &M,
    layout: &flat::Layout,
) -> HashMap<ParamId, Tensor<AD::InnerBackend, 1>> {
    struct Values<'a, B: Backend> {
        wanted: HashMap<ParamId, usize>,
        values: &'a mut HashMap<ParamId, Tensor<B, 1>>,
    }
    impl<AD: AutodiffBackend> ModuleVisitor<AD> for Values<'_, AD::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            if let Some(&n) = self.wanted.get(&param.id) {
                self.values
                    .insert(param.id, param.val().inner().reshape([n]));
            }
        }
    }
    let mut values = HashMap::new();
    let wanted = layout.entries.iter().map(|e| (e.id, e.numel)).collect();
    module.visit(&mut Values {
        wanted,
        values: &mut values,
    });
    values
}

/// Puts the new values (flat, by id) in place of the parameters.
struct Replace<'a, B: Backend> {
    new: &'a mut HashMap<ParamId, Tensor<B, 1>>,
}

impl<AD: AutodiffBackend> ModuleMapper<AD> for Replace<'_, AD::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AD, D>>) -> Param<Tensor<AD, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(new) = self.new.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let tensor = Tensor::<AD, D>::from_inner(new.reshape(tensor.shape())).require_grad();
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Every float parameter's name (module path) and id, in visiting order.
pub fn param_names<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<(String, ParamId)> {
    struct Names {
        path: Vec<String>,
        out: Vec<(String, ParamId)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Names {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.push((path_name(&self.path, ""), param.id));
        }
    }
    let mut v = Names {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The L2 norm over all gradients of `module`'s parameters (one read back to the host).
pub fn global_grad_norm<AD: AutodiffBackend, M: AutodiffModule<AD>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SumSquares<'a, B: Backend> {
        grads: &'a GradientsParams,
        /// On the CPU: the sums so far, in f64 (`bertkit_model::fused::sum_squares`).
        host: f64,
        /// Elsewhere: the sum as a device tensor, read back once at the end.
        device: Option<Tensor<B, 1>>,
    }
    impl<AD: AutodiffBackend> ModuleVisitor<AD> for SumSquares<'_, AD::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            if let Some(g) = self.grads.get::<AD::InnerBackend, D>(param.id) {
                if bertkit_model::fused::is_flex::<AD::InnerBackend>()
                    && g.dtype() == burn::tensor::DType::F32
                {
                    self.host += bertkit_model::fused::sum_squares(g);
                    return;
                }
                let s = g.square().sum();
                self.device = Some(match self.device.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut v = SumSquares::<AD::InnerBackend> {
        grads,
        host: 0.0,
        device: None,
    };
    module.visit(&mut v);
    let device = match v.device {
        Some(t) => bertkit_model::nn::to_host(t).data[0] as f64,
        None => 0.0,
    };
    (v.host + device).sqrt()
}

/// The divisor that brings a gradient of global norm `norm` to at most `max_norm` (1 when
/// already below, or when clipping is off), as NVIDIA's LAMB and `clip_grad_norm_` compute it.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        norm / max_norm
    } else {
        1.0
    }
}

/// Multiplies every gradient by `factor` (unscaling fp16 losses, averaging accumulated sums).
pub fn scale_grads<AD: AutodiffBackend, M: AutodiffModule<AD>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<AD: AutodiffBackend> ModuleVisitor<AD> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            if let Some(g) = self.grads.remove::<AD::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g * self.factor);
            }
        }
    }
    module.visit(&mut Scale { grads, factor });
}
