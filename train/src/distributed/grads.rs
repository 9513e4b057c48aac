//! A model's gradients and weights across ranks: one all-reduce of all gradients per optimizer
//! step (after the last micro-batch's backward, so once per accumulation window), and the
//! broadcast of rank 0's initial weights.
//!
//! Both go through one flat f32 host buffer in the module's parameter order. burn 0.21's
//! autodiff hands out the gradients only when the whole backward pass is done, so the
//! all-reduce cannot overlap it.

use anyhow::{bail, Result};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::ProcessGroup;

/// Sums `grads` over the ranks, in place.
pub fn all_reduce_grads<AD: AutodiffBackend, M: AutodiffModule<AD>>(
    module: &M,
    grads: &mut GradientsParams,
    group: &mut ProcessGroup,
) -> Result<()> {
    if group.world_size == 1 {
        return Ok(());
    }
    struct Take<'a, B: Backend> {
        grads: &'a mut GradientsParams,
        taken: Vec<(ParamId, Vec<usize>)>,
        flat: Vec<Tensor<B, 1>>,
    }
    impl<AD: AutodiffBackend> ModuleVisitor<AD> for Take<'_, AD::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            if let Some(g) = self.grads.remove::<AD::InnerBackend, D>(param.id) {
                let dims = g.dims().to_vec();
                self.flat.push(g.reshape([dims.iter().product::<usize>()]));
                self.taken.push((param.id, dims));
            }
        }
    }
    let mut take = Take::<AD::InnerBackend> {
        grads,
        taken: Vec::new(),
        flat: Vec::new(),
    };
    module.visit(&mut take);
    let Take { grads, taken, flat } = take;
    let Some(first) = flat.first() else {
        return Ok(());
    };
    let device = first.device();
    let mut host = bertkit_model::nn::to_host(Tensor::cat(flat, 0)).data;
    group.all_reduce_f32(&mut host)?;
    let reduced = Tensor::<AD::InnerBackend, 1>::from_data(
        TensorData::new(
            host,
            [taken
                .iter()
                .map(|(_, d)| d.iter().product::<usize>())
                .sum::<usize>()],
        ),
        &device,
    );
    struct Put<'a, B: Backend> {
        grads: &'a mut GradientsParams,
        taken: std::vec::IntoIter<(ParamId, Vec<usize>)>,
        reduced: Tensor<B, 1>,
        offset: usize,
    }
    impl<AD: AutodiffBackend> ModuleVisitor<AD> for Put<'_, AD::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            let next = self.taken.as_slice().first().map(|(id, _)| *id);
            if next != Some(param.id) {
                return;
            }
            let Some((id, dims)) = self.taken.next() else {
                return;
            };
            let n: usize = dims.iter().product();
            let g = self
                .reduced
                .clone()
                .slice(self.offset..self.offset + n)
                .reshape(<[usize; D]>::try_from(dims).unwrap_or([0; D]));
            self.offset += n;
            self.grads.register(id, g);
        }
    }
    let mut put = Put::<AD::InnerBackend> {
        grads,
        taken: taken.into_iter(),
        reduced,
        offset: 0,
    };
    module.visit(&mut put);
    if put.taken.next().is_some() {
        bail!("all-reduce of gradients: the module's parameters changed while reducing");
    }
    Ok(())
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
            let values = bertkit_model::nn::to_host(Tensor::cat(c.0, 0)).data;
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
