//! `bertkit bench-allreduce`: the all-reduce bandwidth of the job this process is a rank of
//! (start it with `bertkit launch` or srun), timed like nccl-tests' all_reduce_perf: the
//! algorithm bandwidth `size / time` and the bus bandwidth `algbw x 2 (n-1) / n`, the rate each
//! link carries in a ring. Rank 0 prints the result. Checks the sum, too. `--reduce-dtype bf16`
//! times the gradients' bf16 all-reduce (`distributed.reduce_dtype`) on the same f32 buffer.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use bertkit_train::distributed::{DistributedSettings, ProcessEnv, ProcessGroup, ReduceDtype};
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchAllreduceArgs {
    /// Buffer size in MiB of f32 values.
    #[arg(long, default_value_t = 1024)]
    pub size_mb: usize,
    /// Timed all-reduces (after one warmup).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// `tcp` (the CPU ring) or `nccl` (needs --features cuda and a GPU per rank).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "nccl"])]
    pub backend: String,
    /// The type on the wire: `fp32`, or `bf16` (as `distributed.reduce_dtype`).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "bf16"])]
    pub reduce_dtype: String,
    /// Seconds a rank waits in a collective.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
}

pub fn run(args: &BenchAllreduceArgs) -> Result<()> {
    let env = ProcessEnv::from_env()?;
    let nccl = match args.backend.as_str() {
        "tcp" => false,
        "nccl" => true,
        other => bail!("--backend {other:?}: expected tcp or nccl"),
    };
    let reduce_dtype = if args.reduce_dtype == "bf16" {
        ReduceDtype::Bf16
    } else {
        ReduceDtype::Fp32
    };
    let settings = DistributedSettings {
        timeout_s: args.timeout_s,
        reduce_dtype,
        ..Default::default()
    };
    let hash = format!(
        "bench-allreduce {} {} {}",
        args.size_mb, args.iters, args.reduce_dtype
    );
    let mut group = ProcessGroup::join(&env, &settings, &hash, nccl)
        .with_context(|| format!("rank {} of {}", env.rank, env.world_size))?;
    let n = args.size_mb * (1 << 20) / 4;
    let (rank, world) = (group.rank as f32, group.world_size as f32);
    let mut buf = vec![0f32; n];
    let mut times = Vec::new();
    for i in 0..=args.iters {
        // Small integers: the sum is exact in f32 (and bf16 below 256), whatever the order.
        buf.iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = rank + (j % 7) as f32);
        group.barrier()?;
        let start = Instant::now();
        group.all_reduce_grads(&mut buf)?;
        let secs = start.elapsed().as_secs_f64();
        if i > 0 {
            times.push(secs);
        }
        let base = world * (world - 1.0) / 2.0;
        if let Some((j, v)) = buf
            .iter()
            .enumerate()
            .find(|(j, v)| **v != base + world * (j % 7) as f32)
        {
            bail!("all-reduce result wrong at index {j}: {v}");
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bytes = (n * 4) as f64;
    let algbw = bytes / median / 1e9;
    let busbw = algbw * 2.0 * (world as f64 - 1.0) / world as f64;
    if group.is_main() {
        println!(
            "all-reduce {} MiB f32 as {} over {} ranks ({}): median {:.1} ms of {} (min {:.1}), \
             algbw {algbw:.2} GB/s, busbw {busbw:.2} GB/s, results correct",
            args.size_mb,
            args.reduce_dtype,
            group.world_size,
            group.backend_name(),
            median * 1e3,
            times.len(),
            times[0] * 1e3,
        );
    }
    group.barrier()
}
