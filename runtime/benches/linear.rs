//! The plan runtime's linear layers alone: MiniLM's four shapes (QKV, attention output, FFN in,
//! FFN out) at 4096 rows (32x128) and 32 rows (1x32), f32, bf16 and int8 kernels, in a pool of
//! THREADS (default 2) threads. Prints the median milliseconds and GOP/s (2 ops per
//! multiply-add) of ITERS (default 20) runs after 3 warm-ups.
//!
//! `cargo bench -p bertkit-runtime --bench linear` (env: THREADS, ITERS, ROWS="4096 32").

use std::time::Instant;

use bertkit_runtime::cpu::matmul::{bf16_isa, f32_isa, int8_isa, quantize_weight, Linear, Weight};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let threads = env("THREADS", 2);
    let iters = env("ITERS", 20).max(1);
    let rows: Vec<usize> = std::env::var("ROWS")
        .unwrap_or_else(|_| "4096 32".into())
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    println!(
        "threads {threads}, iters {iters}; kernels: f32={} bf16={} int8={}",
        f32_isa(),
        bf16_isa(),
        int8_isa()
    );
    println!(
        "| layer | rows | k | n | f32 ms | f32 GOP/s | bf16 ms | bf16 GOP/s | int8 ms | int8 GOP/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut seed = 1u32;
    let mut rand = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    for &m in &rows {
        for (name, k, n) in [
            ("qkv", 384, 1152),
            ("attn_out", 384, 384),
            ("ffn_in", 384, 1536),
            ("ffn_out", 1536, 384),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rand()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rand() * 0.1).collect();
            let (q, s) = quantize_weight(&w, n, k);
            let mut cells = Vec::new();
            for weight in [
                Weight::f32(&w, n, k),
                Weight::bf16(&w, n, k),
                Weight::int8(&q, s, n, k),
            ] {
                let lin = Linear {
                    weight,
                    bias: vec![0.0; n],
                };
                let mut out = vec![0f32; m * n];
                let mut times = Vec::with_capacity(iters);
                pool.install(|| {
                    for i in 0..iters + 3 {
                        let t = Instant::now();
                        lin.accumulate(&x, m, &mut out, threads);
                        if i >= 3 {
                            times.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                });
                times.sort_by(f64::total_cmp);
                let ms = times[times.len() / 2];
                let gops = 2.0 * (m * k * n) as f64 / ms / 1e6;
                cells.push(format!("{ms:.3} | {gops:.0}"));
            }
            println!("| {name} | {m} | {k} | {n} | {} |", cells.join(" | "));
        }
    }
}
