//! `bertkit bench-allreduce`: the all-reduce bandwidth of the job this process is a rank of
//! (start it with `bertkit launch` or srun), timed like nccl-tests' all_reduce_perf: the
//! algorithm bandwidth `size / time` and the bus bandwidth `algbw x 2 (n-1) / n`, the rate each
//! link carries in a ring. Rank 0 prints the result. Checks the sum, too. `--reduce-dtype bf16`
//! times the gradients' bf16 all-reduce (`distributed.reduce_dtype`) on the same f32 buffer.
//! `--on-device` (NCCL) sums a tensor of burn's CUDA backend where it lives, through the path the
//! training step's gradient buckets take, and first checks that path's device address against
//! the tensor's values both ways (read by the CUDA driver, written and read back by burn).

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
    /// Sum a CUDA tensor in place on the GPU (the gradient buckets' path) instead of a host
    /// buffer staged through the GPU. Needs `--backend nccl`.
    #[arg(long)]
    pub on_device: bool,
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
    if args.on_device {
        if !nccl {
            bail!("--on-device sums a CUDA tensor with NCCL: add --backend nccl");
        }
        return on_device(args, &mut group, n);
    }
    let mut buf = vec![0f32; n];
    let mut times = Vec::new();
    let rank = group.rank;
    for i in 0..=args.iters {
        buf.iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = value(rank, j));
        group.barrier()?;
        let start = Instant::now();
        group.all_reduce_grads(&mut buf)?;
        let secs = start.elapsed().as_secs_f64();
        if i > 0 {
            times.push(secs);
        }
        check_sum(&buf, group.world_size)?;
    }
    report(args, &group, n, times);
    group.barrier()
}

/// The value rank `rank` puts at index `j`: small integers, so the sum is exact in f32 (and bf16
/// below 256), whatever the order.
fn value(rank: usize, j: usize) -> f32 {
    (rank + j % 7) as f32
}

/// Whether `got` is the sum over `world` ranks of [`value`]; the first wrong index otherwise.
fn check_sum(got: &[f32], world: usize) -> Result<()> {
    let base = (world * (world - 1) / 2) as f32;
    match got
        .iter()
        .enumerate()
        .find(|(j, v)| **v != base + (world * (j % 7)) as f32)
    {
        Some((j, v)) => bail!("all-reduce result wrong at index {j}: {v}"),
        None => Ok(()),
    }
}

#[cfg(not(feature = "cuda"))]
fn on_device(_: &BenchAllreduceArgs, _: &mut ProcessGroup, _: usize) -> Result<()> {
    bail!("--on-device needs a build with --features cuda")
}

#[cfg(feature = "cuda")]
fn on_device(args: &BenchAllreduceArgs, group: &mut ProcessGroup, n: usize) -> Result<()> {
    use bertkit_model::backend::{cuda_device, cuda_memory, Cuda};
    use bertkit_model::nn::to_host;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorData};
    let gpu = group.local_rank;
    let device = cuda_device(gpu);
    let (rank, world) = (group.rank, group.world_size);
    let mine: Vec<f32> = (0..n).map(|j| value(rank, j)).collect();
    let upload = |values: &[f32]| -> Tensor<Cuda, 1> {
        // Two pieces joined, as a gradient bucket is made (Tensor::cat of the gradients).
        let h = values.len() / 2;
        let piece = |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
        Tensor::cat(vec![piece(&values[..h]), piece(&values[h..])], 0)
    };
    let gpu_err = |e: String| anyhow::anyhow!("cuda:{gpu}: {e}");
    // 1. The address is the tensor's: the driver reads its values there, and burn reads what the
    //    driver writes there.
    let t = upload(&mine);
    let mem = cuda_memory(&t)
        .map_err(gpu_err)?
        .context("not a CUDA tensor")?;
    let read = mem.read_f32(gpu).map_err(gpu_err)?;
    if read != mine {
        bail!("the device address of a CUDA tensor does not hold its values");
    }
    let doubled: Vec<f32> = mine.iter().map(|v| 2.0 * v).collect();
    mem.write_f32(gpu, &doubled).map_err(gpu_err)?;
    drop(mem);
    if to_host(t).data != doubled {
        bail!("burn does not see what was written at its CUDA tensor's device address");
    }
    // 2. The sum through the gradient buckets' path, timed (the upload is not).
    let mut times = Vec::new();
    for i in 0..=args.iters {
        let t = upload(&mine);
        Cuda::sync(&device).map_err(|e| anyhow::anyhow!("cuda:{gpu}: {e:?}"))?;
        group.barrier()?;
        let start = Instant::now();
        let (sum, host) = group.overlapped(|sender| sender.send_tensor(t))?;
        let sum = sum.context("the bucket went through the host")?;
        let summed = to_host(sum.cast(burn::tensor::DType::F32)).data;
        let secs = start.elapsed().as_secs_f64();
        if !host.is_empty() {
            bail!("{} buckets came back through the host", host.len());
        }
        if i > 0 {
            times.push(secs);
        }
        check_sum(&summed, world)?;
    }
    report(args, group, n, times);
    group.barrier()
}

fn report(args: &BenchAllreduceArgs, group: &ProcessGroup, n: usize, mut times: Vec<f64>) {
    let world = group.world_size as f32;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bytes = (n * 4) as f64;
    let algbw = bytes / median / 1e9;
    let busbw = algbw * 2.0 * (world as f64 - 1.0) / world as f64;
    if group.is_main() {
        println!(
            "all-reduce {} MiB f32 as {} over {} ranks ({}{}): median {:.1} ms of {} (min {:.1}), \
             algbw {algbw:.2} GB/s, busbw {busbw:.2} GB/s, results correct",
            args.size_mb,
            args.reduce_dtype,
            group.world_size,
            group.backend_name(),
            if args.on_device {
                ", a CUDA tensor in place"
            } else {
                ", a host buffer"
            },
            median * 1e3,
            times.len(),
            times[0] * 1e3,
        );
    }
}
