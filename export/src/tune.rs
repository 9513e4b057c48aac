//! Tuning at export: runs the plan with each setting the runtime can choose (thread count; for
//! int8 plans the integer kernel or dequantized f32 weights; for bf16 plans, where the CPU has
//! AVX-512 BF16, bf16 products or the weights widened to f32) on this machine and keeps the
//! fastest. Every trial is recorded in plan.json.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use bertkit_runtime::plan::{PlanMeta, Precision, Trial, Tuning};
use bertkit_runtime::{Bf16Kernel, Encoded, Int8Kernel, Runtime, RuntimeOptions};

/// A synthetic batch: `batch` sequences of `seq` tokens (ids spread over the vocabulary).
pub fn synthetic_batch(meta: &PlanMeta, batch: usize, seq: usize) -> Vec<Encoded> {
    let vocab = meta.shape.vocab_size.max(2) as u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..batch)
        .map(|_| {
            let ids = (0..seq)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % vocab) as u32
                })
                .collect();
            Encoded {
                ids,
                type_ids: vec![0; seq],
            }
        })
        .collect()
}

/// Median milliseconds of `iters` runs after one warm-up.
pub fn time_ms(runtime: &Runtime, batch: &[Encoded], iters: usize) -> Result<f64> {
    runtime.run(batch)?;
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        runtime.run(batch)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

pub fn tune(dir: &Path, meta: &PlanMeta) -> Result<Tuning> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads: Vec<usize> = (0..)
        .map(|i| 1usize << i)
        .take_while(|&t| t < cores)
        .collect();
    threads.push(cores);
    let kernels: Vec<Kernel> = match meta.precision {
        Precision::Int8 => vec![
            Kernel::Int8(Int8Kernel::Int8),
            Kernel::Int8(Int8Kernel::DequantizedF32),
        ],
        Precision::Bf16 if bertkit_runtime::cpu::matmul::bf16_isa() != "f32" => vec![
            Kernel::Bf16(Bf16Kernel::Bf16),
            Kernel::Bf16(Bf16Kernel::WidenedF32),
        ],
        _ => vec![Kernel::Only],
    };
    let (batch, seq) = (meta.max_batch.min(8), meta.tokenizer.max_length.min(128));
    let input = synthetic_batch(meta, batch, seq);
    let mut trials = Vec::new();
    let mut best: Option<(f64, usize, Kernel)> = None;
    for &kernel in &kernels {
        for &t in &threads {
            let runtime = Runtime::load(
                dir,
                &RuntimeOptions {
                    threads: Some(t),
                    int8_kernel: kernel.int8(),
                    bf16_kernel: kernel.bf16(),
                    ..Default::default()
                },
            )?;
            let ms = time_ms(&runtime, &input, 3)?;
            let setting = match kernel {
                Kernel::Int8(k) => format!("threads={t} int8_kernel={}", k.name()),
                Kernel::Bf16(k) => format!("threads={t} bf16_kernel={}", k.name()),
                Kernel::Only => format!("threads={t}"),
            };
            trials.push(Trial {
                setting,
                batch,
                seq,
                ms,
            });
            if best.is_none_or(|(b, _, _)| ms < b) {
                best = Some((ms, t, kernel));
            }
        }
    }
    let (_, threads, kernel) = best.unwrap_or((0.0, cores, Kernel::Only));
    Ok(Tuning {
        machine: machine(),
        threads,
        int8_kernel: kernel.int8().map(|k| k.name().to_string()),
        bf16_kernel: kernel.bf16().map(|k| k.name().to_string()),
        kernels: Some(format!(
            "f32={} int8={} bf16={}",
            bertkit_runtime::cpu::matmul::f32_isa(),
            bertkit_runtime::cpu::matmul::int8_isa(),
            bertkit_runtime::cpu::matmul::bf16_isa()
        )),
        trials,
    })
}

/// The kernel choice one trial runs with.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Int8(Int8Kernel),
    Bf16(Bf16Kernel),
    /// The precision has no choice here.
    Only,
}

impl Kernel {
    fn int8(self) -> Option<Int8Kernel> {
        match self {
            Kernel::Int8(k) => Some(k),
            _ => None,
        }
    }

    fn bf16(self) -> Option<Bf16Kernel> {
        match self {
            Kernel::Bf16(k) => Some(k),
            _ => None,
        }
    }
}

/// CPU model and core count, for the record.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cores} cores")
}
