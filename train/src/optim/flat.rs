//! The optimizer update of all parameters at once, for GPU backends: NVIDIA's multi-tensor LAMB
//! and PyTorch's `foreach` AdamW, written with burn's tensor operations.
//!
//! Updating one parameter tensor at a time makes a GPU launch a chain of small kernels per
//! tensor: measured on burn's wgpu backend, the global gradient norm took 4 launches per tensor
//! and LAMB about 16 per weight matrix (two norms, the trust ratio's comparisons, the update),
//! about 1,000 launches a step for BERT-base. Here the gradients are concatenated into one flat
//! buffer (one copy per tensor), and everything else is a few kernels over the whole buffer:
//!
//! 1. [`FlatGrads::gather`]: the gradients, flattened and concatenated in the [`Layout`]'s order
//!    (parameters with weight decay first, then without; within each, tensors of equal size
//!    next to each other), and the global norm from that buffer (one reduction, one read);
//! 2. [`FlatState::update`]: the moments and the Adam direction over the whole buffer, the
//!    weight decay per segment, LAMB's per-tensor norms as one row-wise reduction per group of
//!    equal-sized tensors (`[count, numel]`), and the new parameters, handed back as slices of
//!    the updated buffers.
//!
//! The arithmetic is the per-tensor update's (`Optimizer::update`), element by element, in f32.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use super::{decays, path_name, Moments, OptimizerConfig, OptimizerKind};

/// Elements per alignment unit (256 bytes of f32): groups whose tensors are a multiple of it
/// come first and the buffers are padded with zeros to a multiple of it, so that slices start
/// and end on aligned addresses (burn's GPU backends then slice without a copy).
const ALIGN: usize = 64;

/// One parameter's place in the flat buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub id: ParamId,
    pub numel: usize,
    pub offset: usize,
}

/// Tensors of one size and one decay setting, next to each other: rows of a `[count, numel]`
/// matrix starting at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    decays: bool,
    numel: usize,
    count: usize,
    offset: usize,
}

/// The order of the parameters in the flat buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub entries: Vec<Entry>,
    groups: Vec<Group>,
    /// Elements with weight decay: `0..decay_len`; without: `decay_len..len`, the last
    /// `len - used` of them padding (zeros).
    decay_len: usize,
    used: usize,
    len: usize,
}

impl Layout {
    /// The layout of these parameters (name, id, number of elements), given in visiting order.
    pub fn new(params: Vec<(String, ParamId, usize)>) -> Layout {
        // Group key: decaying first, aligned sizes first, then sizes in order of first appearance.
        let mut sizes: Vec<(bool, usize)> = Vec::new();
        for (name, _, numel) in &params {
            let key = (decays(name), *numel);
            if !sizes.contains(&key) {
                sizes.push(key);
            }
        }
        sizes.sort_by_key(|&(d, numel)| (!d, numel % ALIGN != 0));
        let mut entries = Vec::with_capacity(params.len());
        let mut groups = Vec::with_capacity(sizes.len());
        let mut offset = 0;
        let mut decay_len = 0;
        for (d, numel) in sizes {
            let start = offset;
            let mut count = 0;
            for (name, id, n) in &params {
                if *n == numel && decays(name) == d {
                    entries.push(Entry {
                        name: name.clone(),
                        id: *id,
                        numel,
                        offset,
                    });
                    offset += numel;
                    count += 1;
                }
            }
            groups.push(Group {
                decays: d,
                numel,
                count,
                offset: start,
            });
            if d {
                decay_len = offset;
            }
        }
        Layout {
            entries,
            groups,
            decay_len,
            used: offset,
            len: offset.next_multiple_of(ALIGN),
        }
    }

    /// Same parameters in the same places (ids aside: a reloaded model's ids may differ).
    fn same_places(&self, other: &Layout) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.name == b.name && a.numel == b.numel && a.offset == b.offset)
    }
}

/// A step's gradients in one flat f32 buffer, in `layout`'s order.
pub struct FlatGrads<B: Backend> {
    pub layout: Layout,
    pub values: Tensor<B, 1>,
}

impl<B: Backend> FlatGrads<B> {
    /// Takes every gradient of `module`'s parameters out of `grads`; `None` when there are none.
    pub fn gather<AD, M>(module: &M, grads: &mut GradientsParams) -> Option<FlatGrads<B>>
    where
        AD: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AD>,
    {
        struct Take<'a, B: Backend> {
            grads: &'a mut GradientsParams,
            path: Vec<String>,
            params: Vec<(String, ParamId, usize)>,
            values: HashMap<ParamId, Tensor<B, 1>>,
        }
        impl<AD: AutodiffBackend> ModuleVisitor<AD> for Take<'_, AD::InnerBackend> {
            fn enter_module(&mut self, name: &str, _container: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
                if let Some(g) = self.grads.remove::<AD::InnerBackend, D>(param.id) {
                    let n = g.shape().num_elements();
                    self.params.push((path_name(&self.path, ""), param.id, n));
                    self.values.insert(param.id, g.reshape([n]));
                }
            }
        }
        let mut take = Take::<B> {
            grads,
            path: Vec::new(),
            params: Vec::new(),
            values: HashMap::new(),
        };
        module.visit(&mut take);
        if take.params.is_empty() {
            return None;
        }
        let layout = Layout::new(take.params);
        let values = concat(&layout, take.values);
        Some(FlatGrads { layout, values })
    }

    /// The L2 norm of all gradients (one reduction, one read back to the host).
    pub fn norm(&self) -> f64 {
        let sum = self.values.clone().square().sum();
        (bertkit_model::nn::to_host(sum).data[0] as f64).sqrt()
    }
}

/// `values` (one flat tensor per parameter id) concatenated in `layout`'s order.
fn concat<B: Backend>(layout: &Layout, mut values: HashMap<ParamId, Tensor<B, 1>>) -> Tensor<B, 1> {
    let parts: Vec<Tensor<B, 1>> = layout
        .entries
        .iter()
        .map(|e| {
            values
                .remove(&e.id)
                .expect("the layout was made from these tensors")
        })
        .collect();
    padded_cat(layout, parts)
}

/// One flat tensor per entry of `layout`, in its order, concatenated and padded (on the GPU
/// backends one launch per 16 tensors).
fn padded_cat<B: Backend>(layout: &Layout, parts: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
    bertkit_model::fused::concat_padded(parts, layout.len)
}

/// The moments of the parameters of `layout`, flat.
pub struct FlatState<B: Backend> {
    pub layout: Layout,
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
}

impl<B: Backend> FlatState<B> {
    /// Each parameter's moments, as slices of the flat buffers.
    pub fn split(self) -> Vec<(String, Moments<B>)> {
        self.layout
            .entries
            .iter()
            .map(|e| {
                let moments = Moments {
                    m: self.m.clone().narrow(0, e.offset, e.numel),
                    v: self.v.clone().narrow(0, e.offset, e.numel),
                };
                (e.name.clone(), moments)
            })
            .collect()
    }

    /// Whether this state is laid out as `layout` (else it must be split and rebuilt).
    pub fn fits(&self, layout: &Layout) -> bool {
        self.layout.same_places(layout)
    }

    /// The moments for `layout` from per-parameter moments (taken out of `moments`); `None` when
    /// no parameter of it has any (the first step). Missing moments are zeros, which the update
    /// treats exactly as the first step does.
    pub fn assemble(
        layout: &Layout,
        moments: &mut HashMap<String, Moments<B>>,
        device: &B::Device,
    ) -> Option<(Tensor<B, 1>, Tensor<B, 1>)> {
        if !layout.entries.iter().any(|e| moments.contains_key(&e.name)) {
            return None;
        }
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for e in &layout.entries {
            let s = moments.remove(&e.name).unwrap_or_else(|| Moments {
                m: Tensor::zeros([e.numel], device),
                v: Tensor::zeros([e.numel], device),
            });
            m.push(s.m);
            v.push(s.v);
        }
        Some((padded_cat(layout, m), padded_cat(layout, v)))
    }
}

/// One update of every parameter in `grads.layout`. `params` holds each parameter's current
/// value (flat, by id); `moments` the flat moments (`None` on the first step); `t` the step
/// number after this update. Returns the new state and each parameter's new value.
#[allow(clippy::too_many_arguments)]
pub fn update<B: Backend>(
    config: &OptimizerConfig,
    t: i32,
    lr: f64,
    clip: f64,
    grads: FlatGrads<B>,
    params: HashMap<ParamId, Tensor<B, 1>>,
    moments: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
) -> (FlatState<B>, HashMap<ParamId, Tensor<B, 1>>) {
    let FlatGrads { layout, values: g } = grads;
    let p = concat(&layout, params);
    let [m, v, adam] = adam_direction(config, t, clip, g, moments);
    // The updated values in pieces (a segment, or with LAMB's trust ratio one group each):
    // `(first element, values)`; each parameter's new value is a slice of its piece.
    let mut pieces: Vec<(usize, Tensor<B, 1>)> = Vec::new();
    let segments = [
        (0..layout.decay_len, config.weight_decay),
        (layout.decay_len..layout.len, 0.0),
    ];
    for (range, wd) in segments {
        if range.is_empty() {
            continue;
        }
        let p_s = p.clone().narrow(0, range.start, range.len());
        let a_s = adam.clone().narrow(0, range.start, range.len());
        match config.name {
            OptimizerKind::Adamw => pieces.push((range.start, adamw(p_s, a_s, lr, wd))),
            OptimizerKind::Lamb => {
                let u = lamb_direction(p_s.clone(), a_s, wd);
                if wd != 0.0 || config.nvlamb {
                    for g in layout.groups.iter().filter(|g| range.contains(&g.offset)) {
                        let at = g.offset - range.start;
                        let len = g.count * g.numel;
                        let p_g = p_s.clone().narrow(0, at, len).reshape([g.count, g.numel]);
                        let u_g = u.clone().narrow(0, at, len).reshape([g.count, g.numel]);
                        let updated = lamb_rows(p_g, u_g, lr).reshape([g.count * g.numel]);
                        pieces.push((g.offset, updated));
                    }
                } else {
                    pieces.push((range.start, p_s - u * lr));
                }
            }
        }
    }
    let mut new = HashMap::with_capacity(layout.entries.len());
    for e in &layout.entries {
        let (start, piece) = pieces
            .iter()
            .rev()
            .find(|(start, _)| *start <= e.offset)
            .expect("the pieces cover the layout");
        let at = e.offset - start;
        new.insert(e.id, piece.clone().narrow(0, at, e.numel));
    }
    (FlatState { layout, m, v }, new)
}

/// The moments after gradient `g` (divided by `clip`) at step `t` and the bias-corrected Adam
/// direction `m̂ / (sqrt(v̂) + ε)`, element by element; `moments` is `None` on the first step.
pub(super) fn adam_direction<B: Backend>(
    config: &OptimizerConfig,
    t: i32,
    clip: f64,
    g: Tensor<B, 1>,
    moments: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
) -> [Tensor<B, 1>; 3] {
    let [b1, b2] = config.betas;
    let g = if clip != 1.0 { g / clip } else { g };
    let (m, v) = match moments {
        Some((m, v)) => (
            m * b1 + g.clone() * (1.0 - b1),
            v * b2 + g.clone() * g * (1.0 - b2),
        ),
        None => (g.clone() * (1.0 - b1), g.clone() * g * (1.0 - b2)),
    };
    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    let adam = (m.clone() / bc1) / ((v.clone() / bc2).sqrt() + config.eps);
    [m, v, adam]
}

/// AdamW's new value of `p`: decayed by `lr·wd`, then moved along `adam`.
pub(super) fn adamw<B: Backend>(
    p: Tensor<B, 1>,
    adam: Tensor<B, 1>,
    lr: f64,
    wd: f64,
) -> Tensor<B, 1> {
    let decayed = if wd != 0.0 { p * (1.0 - lr * wd) } else { p };
    decayed - adam * lr
}

/// LAMB's update direction: Adam's plus the weight decay.
pub(super) fn lamb_direction<B: Backend>(
    p: Tensor<B, 1>,
    adam: Tensor<B, 1>,
    wd: f64,
) -> Tensor<B, 1> {
    if wd != 0.0 {
        adam + p * wd
    } else {
        adam
    }
}

/// LAMB's step for the rows of `p` (one parameter tensor each) with update direction `u`:
/// `p - lr·r·u`, `r = ‖p‖/‖u‖` per row, 1 where either norm is zero.
pub(super) fn lamb_rows<B: Backend>(p: Tensor<B, 2>, u: Tensor<B, 2>, lr: f64) -> Tensor<B, 2> {
    let p_norm = p.clone().square().sum_dim(1).sqrt();
    let u_norm = u.clone().square().sum_dim(1).sqrt();
    let both = p_norm
        .clone()
        .greater_elem(0.0)
        .bool_and(u_norm.clone().greater_elem(0.0));
    let ratio = (p_norm / u_norm).mask_fill(both.bool_not(), 1.0);
    p - u * ratio * lr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_puts_decay_first_aligned_sizes_first_and_pads() {
        let params = [
            ("emb.weight", 100 * 64),
            ("emb.layer_norm.weight", 64),
            ("layer.0.dense.weight", 64 * 64),
            ("layer.0.dense.bias", 64),
            ("nsp.weight", 64 * 2),
            ("nsp.bias", 2),
            ("mlm.bias", 100),
            ("layer.1.dense.weight", 64 * 64),
            ("layer.1.dense.bias", 64),
        ];
        let params = params
            .iter()
            .map(|&(name, n)| (name.to_string(), ParamId::new(), n))
            .collect();
        let layout = Layout::new(params);
        let order: Vec<(&str, usize)> = layout
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.offset))
            .collect();
        assert_eq!(
            order,
            [
                ("emb.weight", 0),
                ("layer.0.dense.weight", 6400),
                ("layer.1.dense.weight", 6400 + 4096),
                ("nsp.weight", 6400 + 8192),
                // No decay: aligned sizes first, so every slice above starts and ends aligned.
                ("emb.layer_norm.weight", 14720),
                ("layer.0.dense.bias", 14720 + 64),
                ("layer.1.dense.bias", 14720 + 128),
                ("nsp.bias", 14720 + 192),
                ("mlm.bias", 14720 + 194),
            ]
        );
        assert_eq!(layout.decay_len, 14720);
        assert_eq!(layout.used, 14720 + 294);
        assert_eq!(layout.len, 15040);
        let groups: Vec<(bool, usize, usize)> = layout
            .groups
            .iter()
            .map(|g| (g.decays, g.numel, g.count))
            .collect();
        assert_eq!(
            groups,
            [
                (true, 6400, 1),
                (true, 4096, 2),
                (true, 128, 1),
                (false, 64, 3),
                (false, 2, 1),
                (false, 100, 1),
            ]
        );
    }
}
