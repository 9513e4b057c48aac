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

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

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

/// An optimizer's state: the moments of each parameter by name and the number of steps taken.
pub struct Optimizer<B: Backend> {
    pub config: OptimizerConfig,
    /// Updates applied so far (the `t` of bias correction).
    pub steps: u64,
    state: HashMap<String, Moments<B>>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(config: OptimizerConfig) -> Self {
        Optimizer {
            config,
            steps: 0,
            state: HashMap::new(),
        }
    }

    /// One update of every parameter that has a gradient. `clip` divides the gradients (the
    /// global norm over `max_grad_norm` when above it, else 1), `lr` is this step's rate.
    pub fn step<AD, M>(&mut self, lr: f64, clip: f64, module: M, grads: &mut GradientsParams) -> M
    where
        AD: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AD>,
    {
        self.steps += 1;
        let mut mapper = UpdateMapper {
            opt: self,
            grads,
            lr,
            clip,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }

    /// The state as named host tensors: `NAME.exp_avg` and `NAME.exp_avg_sq`.
    pub fn to_host(&self) -> BTreeMap<String, Vec<f32>> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.state {
            out.insert(format!("{name}.exp_avg"), host(s.m.clone()));
            out.insert(format!("{name}.exp_avg_sq"), host(s.v.clone()));
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
        for name in self.state.keys() {
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
        let [b1, b2] = c.betas;
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
        let g = if clip != 1.0 { g / clip } else { g };
        let (m, v) = match self.state.remove(name) {
            Some(s) => (
                s.m * b1 + g.clone() * (1.0 - b1),
                s.v * b2 + g.clone() * g * (1.0 - b2),
            ),
            None => (g.clone() * (1.0 - b1), g.clone() * g * (1.0 - b2)),
        };
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let adam = (m.clone() / bc1) / ((v.clone() / bc2).sqrt() + c.eps);
        let new = match c.name {
            OptimizerKind::Adamw => {
                let decayed = if wd != 0.0 { p * (1.0 - lr * wd) } else { p };
                decayed - adam * lr
            }
            OptimizerKind::Lamb => {
                let u = if wd != 0.0 {
                    adam + p.clone() * wd
                } else {
                    adam
                };
                if wd != 0.0 || c.nvlamb {
                    let p_norm = p.clone().square().sum().sqrt();
                    let u_norm = u.clone().square().sum().sqrt();
                    let both = p_norm
                        .clone()
                        .greater_elem(0.0)
                        .bool_and(u_norm.clone().greater_elem(0.0));
                    let ratio =
                        (p_norm / u_norm.clone()).mask_where(both.bool_not(), u_norm.ones_like());
                    p - u * ratio.unsqueeze::<1>() * lr
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
