//! The three parameterized building blocks of BERT, with Hugging Face parameter names
//! (`weight`, `bias`) so that checkpoints map one to one.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::HiddenAct;
use crate::weights::{HostTensor, Init, ParamSink, ParamSource};

pub(crate) fn to_tensor<B: Backend, const D: usize>(
    t: HostTensor,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.data, t.shape), device)
}

/// Reads a tensor back to the host. Panics only if the backend returns a non-f32 tensor for an
/// f32 parameter, which would be a bug in the backend, not bad input.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let data = t.into_data().convert::<f32>();
    HostTensor {
        shape: data.shape.to_vec(),
        data: data.to_vec::<f32>().expect("f32 tensor data"),
    }
}

/// `y = x W^T + b` in PyTorch terms. The weight is kept as `[in, out]` (burn's layout) and
/// transposed on load and save, so the checkpoint holds PyTorch's `[out, in]`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    pub fn load(
        src: &mut ParamSource,
        name: &str,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Self {
        let w = src.take(&format!("{name}.weight"), &[d_out, d_in], Init::Normal);
        let b = src.take(&format!("{name}.bias"), &[d_out], Init::Zeros);
        Linear {
            weight: Param::from_tensor(to_tensor(transpose(&w), device)),
            bias: Param::from_tensor(to_tensor(b, device)),
        }
    }

    pub fn save(&self, sink: &mut ParamSink, name: &str) {
        sink.put(
            &format!("{name}.weight"),
            transpose(&to_host(self.weight.val())),
        );
        sink.put(&format!("{name}.bias"), to_host(self.bias.val()));
    }

    /// Over the last dimension of `x` (`crate::fused_linear::linear`).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        crate::fused_linear::linear(x, self.weight.val(), self.bias.val())
    }
}

fn transpose(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0; t.data.len()];
    for r in 0..rows {
        for c in 0..cols {
            data[c * rows + r] = t.data[r * cols + c];
        }
    }
    HostTensor {
        shape: vec![cols, rows],
        data,
    }
}

/// Layer normalization over the last dimension, HF names `weight`/`bias`.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(
        src: &mut ParamSource,
        name: &str,
        dim: usize,
        eps: f64,
        device: &B::Device,
    ) -> Self {
        let w = src.take(&format!("{name}.weight"), &[dim], Init::Ones);
        let b = src.take(&format!("{name}.bias"), &[dim], Init::Zeros);
        LayerNorm {
            weight: Param::from_tensor(to_tensor(w, device)),
            bias: Param::from_tensor(to_tensor(b, device)),
            eps,
        }
    }

    pub fn save(&self, sink: &mut ParamSink, name: &str) {
        sink.put(&format!("{name}.weight"), to_host(self.weight.val()));
        sink.put(&format!("{name}.bias"), to_host(self.bias.val()));
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        crate::fused::layer_norm(x, self.weight.val(), self.bias.val(), self.eps)
    }
}

/// A lookup table `[num, dim]`.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// `padding_idx`: the row HF zeroes at initialization (only used when initialized fresh).
    pub fn load(
        src: &mut ParamSource,
        name: &str,
        num: usize,
        dim: usize,
        padding_idx: Option<usize>,
        device: &B::Device,
    ) -> Self {
        let key = format!("{name}.weight");
        let present = src.contains(&key);
        let mut w = src.take(&key, &[num, dim], Init::Normal);
        if let (false, Some(p)) = (present, padding_idx) {
            w.data[p * dim..(p + 1) * dim].fill(0.0);
        }
        Embedding {
            weight: Param::from_tensor(to_tensor(w, device)),
        }
    }

    pub fn save(&self, sink: &mut ParamSink, name: &str) {
        sink.put(&format!("{name}.weight"), to_host(self.weight.val()));
    }

    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        crate::fused::embedding(self.weight.val(), ids)
    }
}

/// The activation named by `hidden_act`.
pub fn activation<B: Backend, const D: usize>(act: HiddenAct, x: Tensor<B, D>) -> Tensor<B, D> {
    use burn::tensor::activation;
    match act {
        HiddenAct::Gelu => crate::fused::gelu(x),
        HiddenAct::GeluTanh => activation::gelu_approximate(x),
        HiddenAct::Relu => activation::relu(x),
    }
}

/// Inverted dropout, active only when the backend records gradients (training).
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
    if prob == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    crate::fused::dropout(x, prob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    /// Each `hidden_act` against its definition in `transformers.activations`.
    #[test]
    fn activations_match_their_definitions() {
        let xs = [-3.0f32, -1.0, -0.1, 0.0, 0.5, 2.0];
        let x = Tensor::<Cpu, 1>::from_floats(xs, &Default::default());
        let erf_gelu = |v: f64| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
        let tanh_gelu = |v: f64| {
            0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
        };
        let relu = |v: f64| v.max(0.0);
        for (act, f) in [
            (HiddenAct::Gelu, &erf_gelu as &dyn Fn(f64) -> f64),
            (HiddenAct::GeluTanh, &tanh_gelu),
            (HiddenAct::Relu, &relu),
        ] {
            let got = to_host(activation(act, x.clone())).data;
            for (g, v) in got.iter().zip(xs) {
                let want = f(v as f64) as f32;
                assert!((g - want).abs() < 1e-6, "{act:?}({v}) = {g}, want {want}");
            }
        }
        // The two GELUs differ: a config's choice matters.
        let (a, b) = (erf_gelu(-3.0), tanh_gelu(-3.0));
        assert!((a - b).abs() > 1e-4);
    }

    /// erf by its Taylor series (enough terms for |x| <= 3 at f64 precision).
    fn erf(x: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..100 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
