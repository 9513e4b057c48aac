//! Subnormal operands at normal speed: a weight-gradient-shaped product (`xᵀ · dy`, 384 x 1024
//! by 1024 x 384, as in fine-tuning MiniLM) on the CPU backend, with ordinary operands and with
//! a subnormal `dy` (scaled by 1e-39, as late gradients are), first in the default floating-point
//! environment, then with FTZ/DAZ set in every thread (`bertkit_model::denormals`, what every
//! bertkit command runs with). Median of 7 after 2 warm-ups.
//!
//!   RAYON_NUM_THREADS=2 cargo bench -p bertkit-model --bench denormals

mod common;

use bertkit_model::backend::Cpu as B;
use bertkit_model::denormals;
use burn::tensor::{Distribution, Tensor};

fn median_ms(f: impl FnMut()) -> f64 {
    common::median_ms(2, 7, f)
}

/// Sets or clears the flags in this thread and every thread of the global pool (burn's CPU
/// backend computes there).
fn flush_everywhere(on: bool) {
    let set = move || {
        if on {
            denormals::set_in_this_thread()
        } else {
            denormals::clear_in_this_thread()
        }
    };
    set();
    rayon::broadcast(|_| set());
}

fn main() {
    let d = Default::default();
    let x = Tensor::<B, 2>::random([1024, 384], Distribution::Normal(0.0, 1.0), &d);
    let dy = Tensor::<B, 2>::random([1024, 384], Distribution::Normal(0.0, 1.0), &d);
    let dy_sub = dy.clone() * 1e-39;
    let product = |a: &Tensor<B, 2>, b: &Tensor<B, 2>| {
        let _ = a.clone().transpose().matmul(b.clone()).into_data();
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("CPU: {cpu}, {} threads", rayon::current_num_threads());
    println!("operands     flags         ms  vs ordinary operands");
    for on in [false, true] {
        flush_everywhere(on);
        let flags = if on { "FTZ+DAZ" } else { "default" };
        let normal = median_ms(|| product(&x, &dy));
        // Activations times a subnormal gradient, as in a late weight-gradient product.
        let sub = median_ms(|| product(&x, &dy_sub));
        println!("ordinary     {flags:<8} {normal:8.2}  1.00x");
        println!("subnormal dy {flags:<8} {sub:8.2}  {:6.2}x", sub / normal);
    }
}
