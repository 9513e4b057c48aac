//! Where a MiniLM-shaped forward pass (batch 8 x seq 128, hidden 384, 12 heads, FFN 1536) spends
//! its time on the CPU backend: each building block alone, median of 15 after 3 warm-ups. For
//! finding what the export runtime must fuse or replace; not a comparison with peers.
//!
//!   RAYON_NUM_THREADS=2 cargo bench -p bertkit-model --bench ops

mod common;

use bertkit_model::backend::Cpu as B;
use bertkit_model::bert::{attention_explicit, attention_fused, AttentionMask};
use bertkit_model::nn::LayerNorm;
use bertkit_model::weights::ParamSource;
use burn::tensor::{activation, Distribution, Int, Tensor};

fn time(name: &str, f: impl FnMut()) {
    println!("{name:<48} {:8.2} ms", common::median_ms(3, 15, f));
}

fn main() {
    let d = Default::default();
    let normal = |shape: Vec<usize>| {
        Tensor::<B, 2>::random([shape[0], shape[1]], Distribution::Normal(0.0, 1.0), &d)
    };
    let x = Tensor::<B, 3>::random([8, 128, 384], Distribution::Normal(0.0, 1.0), &d);
    let ffn = Tensor::<B, 3>::random([8, 128, 1536], Distribution::Normal(0.0, 1.0), &d);
    let (w_in, w_up, w_down) = (
        normal(vec![384, 384]),
        normal(vec![384, 1536]),
        normal(vec![1536, 384]),
    );
    let b = |n: usize| Tensor::<B, 1>::zeros([n], &d);
    let split = |t: Tensor<B, 3>| t.reshape([8, 128, 12, 32]).swap_dims(1, 2);
    let heads = Tensor::<B, 4>::random([8, 12, 128, 32], Distribution::Normal(0.0, 1.0), &d);
    let strided = split(x.clone());
    let mask = AttentionMask::new(&Tensor::<B, 2, Int>::ones([8, 128], &d));
    let ln = LayerNorm::<B>::load(&mut ParamSource::fresh(0, 0.02), "ln", 384, 1e-12, &d);

    time("linear 384->384 (x4 per layer)", || {
        drop(burn::tensor::module::linear(
            x.clone(),
            w_in.clone(),
            Some(b(384)),
        ))
    });
    time("linear 384->1536", || {
        drop(burn::tensor::module::linear(
            x.clone(),
            w_up.clone(),
            Some(b(1536)),
        ))
    });
    time("linear 1536->384", || {
        drop(burn::tensor::module::linear(
            ffn.clone(),
            w_down.clone(),
            Some(b(384)),
        ))
    });
    time("split heads, made contiguous (x3 per layer)", || {
        drop(split(x.clone()) * 1.0)
    });
    time("attention fused, contiguous q/k/v", || {
        drop(attention_fused(
            heads.clone(),
            heads.clone(),
            heads.clone(),
            &mask,
        ))
    });
    time("attention fused, q/k/v as split views", || {
        drop(attention_fused(
            strided.clone(),
            strided.clone(),
            strided.clone(),
            &mask,
        ))
    });
    time("attention explicit (training path)", || {
        drop(attention_explicit(
            heads.clone(),
            heads.clone(),
            heads.clone(),
            &mask,
            0.0,
        ))
    });
    time("merge heads (swap + reshape)", || {
        drop(heads.clone().swap_dims(1, 2).reshape([8, 128, 384]))
    });
    time("gelu (erf) 8x128x1536", || {
        drop(activation::gelu(ffn.clone()))
    });
    time("gelu (tanh) 8x128x1536", || {
        drop(activation::gelu_approximate(ffn.clone()))
    });
    time("layer norm 8x128x384 (x2 per layer)", || {
        drop(ln.forward(x.clone()))
    });
    time("residual add 8x128x384 (x2 per layer)", || {
        drop(x.clone() + x.clone())
    });
}
