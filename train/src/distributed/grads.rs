//! A model's gradients and weights across ranks: the all-reduce of the gradients, once per
//! optimizer step (after the last micro-batch's backward, so once per accumulation window), and
//! the broadcast of rank 0's initial weights.
//!
//! Gradients travel in [`Buckets`]: flat f32 host buffers of whole layers, each at least
//! `distributed.bucket_mb`, filled in the order the backward pass finishes them (the last layer
//! first, as PyTorch DDP orders its buckets). burn 0.21's autodiff hands out gradients only when
//! a backward pass is done, so a step that overlaps runs one backward pass per layer
//! (`activations::ByLayer::keep`) and sends each bucket to [`ProcessGroup::overlapped`]'s
//! all-reduce thread as soon as its layers are done; [`all_reduce_grads`] sends a finished
//! backward pass's gradients the same way.

use std::collections::HashMap;

use anyhow::{bail, Result};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::{BucketSender, ProcessGroup};

/// Sums `grads` (every parameter's, after the whole backward pass) over the ranks, in place, as
/// one bucket.
pub fn all_reduce_grads<AD: AutodiffBackend, M: AutodiffModule<AD>>(
    module: &M,
    grads: &mut GradientsParams,
    group: &mut ProcessGroup,
) -> Result<()> {
    if !group.reduces() {
        return Ok(());
    }
    // Nothing left to overlap with: one bucket (one NCCL call, one ring pass) costs the least.
    let (buckets, reduced) = group.overlapped(|sender| {
        let mut buckets = Buckets::new(usize::MAX);
        buckets.take_final(module, grads, sender);
        buckets.flush(sender);
        buckets
    })?;
    *grads = buckets.unpack(module, reduced)?;
    Ok(())
}

/// Final gradients on their way to the all-reduce: whole units (a layer, or the rest of the
/// model) are appended to the open bucket, which is sent once it holds at least `bucket_len`
/// values. Every rank builds the same buckets, in the same order.
pub struct Buckets<B: Backend> {
    bucket_len: usize,
    open: Vec<Tensor<B, 1>>,
    open_len: usize,
    /// Where each parameter's gradient sits: (bucket, offset, dims).
    slots: HashMap<ParamId, (usize, usize, Vec<usize>)>,
    /// Per bucket sent, in order: the tensor that holds its sum (summed on the GPU), or `None`
    /// (its sum comes back from the host).
    sums: Vec<Option<Tensor<B, 1>>>,
    device: Option<B::Device>,
}

impl<B: Backend> Buckets<B> {
    pub fn new(bucket_len: usize) -> Self {
        Buckets {
            bucket_len,
            open: Vec::new(),
            open_len: 0,
            slots: HashMap::new(),
            sums: Vec::new(),
            device: None,
        }
    }

    fn add<const D: usize>(&mut self, id: ParamId, g: Tensor<B, D>) {
        let dims = g.dims().to_vec();
        let n: usize = dims.iter().product();
        self.slots
            .insert(id, (self.sums.len(), self.open_len, dims));
        self.device.get_or_insert_with(|| g.device());
        self.open.push(g.reshape([n]));
        self.open_len += n;
    }

    /// Moves the gradients of `module`'s parameters out of `grads` (the sum of `earlier`'s
    /// and `grads`' values where `earlier`, the micro-batches before, has one too) into the open
    /// bucket; sends the bucket when it is full. The unit's gradients must be final.
    pub fn take_final<AD: AutodiffBackend<InnerBackend = B>, M: Module<AD>>(
        &mut self,
        module: &M,
        grads: &mut GradientsParams,
        sender: &mut BucketSender,
    ) {
        self.take_final_sum(module, grads, &mut GradientsParams::new(), sender)
    }

    /// [`Self::take_final`] of `grads` + `earlier` (each parameter's value taken out of both).
    pub fn take_final_sum<AD: AutodiffBackend<InnerBackend = B>, M: Module<AD>>(
        &mut self,
        module: &M,
        grads: &mut GradientsParams,
        earlier: &mut GradientsParams,
        sender: &mut BucketSender,
    ) {
        struct Take<'a, B: Backend> {
            buckets: &'a mut Buckets<B>,
            grads: &'a mut GradientsParams,
            earlier: &'a mut GradientsParams,
        }
        impl<AD: AutodiffBackend> ModuleVisitor<AD> for Take<'_, AD::InnerBackend> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
                let g = self.grads.remove::<AD::InnerBackend, D>(param.id);
                let e = self.earlier.remove::<AD::InnerBackend, D>(param.id);
                let sum = match (e, g) {
                    (Some(e), Some(g)) => e + g,
                    (Some(x), None) | (None, Some(x)) => x,
                    (None, None) => return,
                };
                self.buckets.add(param.id, sum);
            }
        }
        module.visit(&mut Take {
            buckets: self,
            grads,
            earlier,
        });
        if self.open_len >= self.bucket_len {
            self.flush(sender);
        }
    }

    /// Sends the open bucket, if it holds anything.
    pub fn flush(&mut self, sender: &mut BucketSender) {
        if self.open.is_empty() {
            return;
        }
        let flat = bertkit_model::fused::concat(std::mem::take(&mut self.open));
        self.sums.push(sender.send_tensor(flat));
        self.open_len = 0;
    }

    /// The summed gradients of `module`'s parameters from the reduced buckets (in the order
    /// they were sent).
    pub fn unpack<AD: AutodiffBackend<InnerBackend = B>, M: AutodiffModule<AD>>(
        self,
        module: &M,
        reduced: Vec<Vec<f32>>,
    ) -> Result<GradientsParams> {
        let from_host = self.sums.iter().filter(|s| s.is_none()).count();
        if !self.open.is_empty() || reduced.len() != from_host {
            bail!(
                "all-reduce of gradients: {from_host} of {} buckets sent through the host, {} \
                 came back (and {} values unsent)",
                self.sums.len(),
                reduced.len(),
                self.open_len
            );
        }
        struct Put<'a, B: Backend> {
            slots: &'a HashMap<ParamId, (usize, usize, Vec<usize>)>,
            buckets: Vec<Tensor<B, 1>>,
            grads: GradientsParams,
            placed: usize,
        }
        impl<AD: AutodiffBackend> ModuleVisitor<AD> for Put<'_, AD::InnerBackend> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
                let Some((bucket, offset, dims)) = self.slots.get(&param.id) else {
                    return;
                };
                let Ok(shape) = <[usize; D]>::try_from(dims.as_slice()) else {
                    return;
                };
                let n: usize = dims.iter().product();
                let g = self.buckets[*bucket]
                    .clone()
                    .slice(*offset..*offset + n)
                    .reshape(shape);
                self.grads.register(param.id, g);
                self.placed += 1;
            }
        }
        let Some(device) = self.device else {
            return Ok(GradientsParams::new());
        };
        let mut reduced = reduced.into_iter();
        let buckets = self
            .sums
            .into_iter()
            .map(|sum| match sum {
                Some(t) => t.cast(burn::tensor::DType::F32),
                None => {
                    let values = reduced.next().unwrap_or_default();
                    let n = values.len();
                    Tensor::<B, 1>::from_data(TensorData::new(values, [n]), &device)
                }
            })
            .collect();
        let mut put = Put {
            slots: &self.slots,
            buckets,
            grads: GradientsParams::new(),
            placed: 0,
        };
        module.visit(&mut put);
        if put.placed != self.slots.len() {
            bail!("all-reduce of gradients: the module's parameters changed while reducing");
        }
        Ok(put.grads)
    }
}

/// Every rank gets rank 0's parameter values (shapes must match; they are checked by size).
pub fn broadcast_params<B: Backend, M: Module<B>>(
    module: M,
    group: &mut ProcessGroup,
) -> Result<M> {
    if group.world_size == 1 {
        return Ok(module);
    }
    struct Collect<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let p = param.val();
            let n = p.shape().num_elements();
            self.0.push(p.reshape([n]));
        }
    }
    let mut bytes = Vec::new();
    if group.is_main() {
        let mut c = Collect::<B>(Vec::new());
        module.visit(&mut c);
        if !c.0.is_empty() {
            let values = bertkit_model::nn::to_host(bertkit_model::fused::concat(c.0)).data;
            bytes.reserve(values.len() * 4);
            for v in values {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    group.broadcast(&mut bytes)?;
    if group.is_main() {
        return Ok(module);
    }
    let expected = module.num_params();
    if bytes.len() != expected * 4 {
        bail!(
            "rank 0 broadcast {} parameter values, this rank's model has {expected}: the ranks \
             do not build the same model",
            bytes.len() / 4
        );
    }
    struct Replace {
        values: Vec<f32>,
        offset: usize,
    }
    impl<B: Backend> ModuleMapper<B> for Replace {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.shape();
            let n = shape.num_elements();
            let data = TensorData::new(self.values[self.offset..self.offset + n].to_vec(), shape)
                .convert_dtype(tensor.dtype());
            self.offset += n;
            let fresh = Tensor::<B, D>::from_data(data, &tensor.device());
            let fresh = if tensor.is_require_grad() {
                fresh.require_grad()
            } else {
                fresh
            };
            Param::from_mapped_value(id, fresh, mapper)
        }
    }
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(module.map(&mut Replace { values, offset: 0 }))
}
