//! The element-wise kernels the plan runtime runs between its matrix multiplies, alone: erf-GELU
//! over FFN-sized rows (1536 wide) and softmax over attention-score rows (128 wide), for a
//! block that stays in cache (16 rows) and one that does not (4096 rows), one thread.
//! Prints nanoseconds per element.
//!
//! `cargo bench -p bertkit-runtime --bench elementwise`

use std::time::Instant;

use bertkit_runtime::cpu::math;

fn main() {
    for (rows, reps) in [(16usize, 1280usize), (4096, 5)] {
        let fresh = || -> Vec<f32> {
            (0..rows * 1536)
                .map(|i| ((i % 977) as f32 - 488.0) * 0.01)
                .collect()
        };
        let mut x = fresh();
        let t = Instant::now();
        for _ in 0..reps {
            math::gelu_erf(&mut x);
            // Keep the values from shrinking towards 0 pass after pass.
            x.iter_mut().step_by(97).for_each(|v| *v += 0.5);
        }
        let gelu = t.elapsed().as_secs_f64() * 1e9 / (rows * 1536 * reps) as f64;
        let mut s = fresh();
        let t = Instant::now();
        for _ in 0..reps {
            math::softmax_rows(&mut s, 128);
        }
        let softmax = t.elapsed().as_secs_f64() * 1e9 / (rows * 1536 * reps) as f64;
        println!("{rows} x 1536: gelu_erf {gelu:.3} ns/element, softmax (rows of 128) {softmax:.3} ns/element");
    }
}
