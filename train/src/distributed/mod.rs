//! Data-parallel training across processes, on one machine or many.
//!
//! - `env`: where this process sits (torchrun's and SLURM's variables);
//! - `rendezvous`: the TCP meeting point on MASTER_ADDR:MASTER_PORT that checks every rank runs
//!   the same recipe and hands out the member table and the NCCL unique id;
//! - `ring`: the CPU collectives (TCP ring all-reduce, broadcast, barrier), also the control
//!   path of CUDA runs;
//! - `nccl` (feature `cuda`): NCCL all-reduce through cudarc;
//! - `grads`: all-reduce of a model's gradients and broadcast of its weights.
//!
//! [`ProcessGroup`] is what the training loop holds. Every wait is bounded by a timeout and
//! ends with an error that names the rank that failed.

pub mod env;
pub mod grads;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;
pub mod ring;
mod wire;

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use env::ProcessEnv;
use rendezvous::Member;
use ring::Ring;

/// The `[distributed]` section of a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedSettings {
    /// Seconds a rank waits in a collective or barrier before naming the rank it waits for.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Seconds the rendezvous waits for every rank to join.
    #[serde(default = "default_rendezvous_timeout")]
    pub rendezvous_timeout_s: f64,
    /// `auto` (NCCL on CUDA, the TCP ring on the CPU), `tcp` or `nccl`. With one process only
    /// `nccl` makes a communicator (and runs the whole all-reduce, to measure its cost).
    #[serde(default)]
    pub backend: CollectiveBackend,
    /// Gradients are all-reduced in buckets of whole layers, each at least this many MB
    /// (PyTorch DDP's `bucket_cap_mb` is 25).
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
    /// Start each bucket's all-reduce while the backward pass goes on through the layers below
    /// (on the TCP ring in a thread of its own; with NCCL on NCCL's CUDA stream).
    #[serde(default = "default_overlap")]
    pub overlap: bool,
    /// The gradients' type in the all-reduce: `fp32`, or `bf16` (half the bytes; each rank's
    /// gradient and every partial sum rounded to bf16, as PyTorch's `bf16_compress_hook`).
    #[serde(default)]
    pub reduce_dtype: ReduceDtype,
}

impl Default for DistributedSettings {
    fn default() -> Self {
        DistributedSettings {
            timeout_s: default_timeout(),
            rendezvous_timeout_s: default_rendezvous_timeout(),
            backend: CollectiveBackend::Auto,
            bucket_mb: default_bucket_mb(),
            overlap: default_overlap(),
            reduce_dtype: ReduceDtype::Fp32,
        }
    }
}

fn default_timeout() -> f64 {
    600.0
}

fn default_bucket_mb() -> f64 {
    25.0
}

fn default_overlap() -> bool {
    true
}

fn default_rendezvous_timeout() -> f64 {
    900.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectiveBackend {
    #[default]
    Auto,
    Tcp,
    Nccl,
}

/// What [`DistributedSettings::reduce_dtype`] may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReduceDtype {
    #[default]
    #[serde(alias = "f32")]
    Fp32,
    Bf16,
}

fn seconds(s: f64, key: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!("distributed.{key} = {s} is not a positive number of seconds")
        })
}

/// This process's place in the job and its connections to the others.
pub struct ProcessGroup {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    members: Vec<Member>,
    ring: Option<Ring>,
    #[cfg(feature = "cuda")]
    nccl: Option<nccl::Nccl>,
    /// Gradient buckets: at least this many f32 values each.
    bucket_len: usize,
    overlap: bool,
    reduce_dtype: ReduceDtype,
}

impl ProcessGroup {
    /// A job of one process.
    pub fn single() -> ProcessGroup {
        ProcessGroup {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            members: Vec::new(),
            ring: None,
            #[cfg(feature = "cuda")]
            nccl: None,
            bucket_len: 0,
            overlap: false,
            reduce_dtype: ReduceDtype::Fp32,
        }
    }

    /// Joins the job described by `env`: the rendezvous (which refuses ranks whose
    /// `config_hash` differs from rank 0's), the ring, and with `use_nccl` an NCCL
    /// communicator on GPU `local_rank`.
    pub fn join(
        env: &ProcessEnv,
        settings: &DistributedSettings,
        config_hash: &str,
        use_nccl: bool,
    ) -> Result<ProcessGroup> {
        let timeout = seconds(settings.timeout_s, "timeout_s")?;
        let rendezvous_timeout = seconds(settings.rendezvous_timeout_s, "rendezvous_timeout_s")?;
        if !(settings.bucket_mb.is_finite() && settings.bucket_mb > 0.0) {
            anyhow::bail!(
                "distributed.bucket_mb = {} is not a positive number of megabytes",
                settings.bucket_mb
            );
        }
        if use_nccl && !cfg!(feature = "cuda") {
            anyhow::bail!("the NCCL backend needs a build with --features cuda");
        }
        // With one rank, NCCL only when asked for (`use_nccl`): a single-GPU run with
        // `backend = "nccl"` goes through every step of the all-reduce, which measures its cost.
        #[cfg(feature = "cuda")]
        if use_nccl {
            nccl::check_libraries(env.local_rank)?;
        }
        let joined = rendezvous::join(env, config_hash, rendezvous_timeout, timeout, || {
            if use_nccl {
                nccl_unique_id()
            } else {
                Ok(Vec::new())
            }
        })?;
        #[cfg(feature = "cuda")]
        let mut joined = joined;
        #[cfg(feature = "cuda")]
        let nccl = if use_nccl {
            // ncclCommInitRank waits for every rank without a timeout: meet on the ring first,
            // so a rank that died since the rendezvous is named instead of hanging the others.
            if let Some(ring) = &mut joined.ring {
                ring.barrier()?;
            }
            Some(nccl::Nccl::new(
                env.local_rank,
                env.rank,
                env.world_size,
                &joined.payload,
                timeout,
            )?)
        } else {
            None
        };
        Ok(ProcessGroup {
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            members: joined.members,
            ring: joined.ring,
            #[cfg(feature = "cuda")]
            nccl,
            bucket_len: ((settings.bucket_mb * 1e6 / 4.0) as usize).max(1),
            overlap: settings.overlap,
            reduce_dtype: settings.reduce_dtype,
        })
    }

    /// Rank 0 writes checkpoints and logs.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// "rank 3 (host, pid 1234)".
    pub fn name(&self, rank: usize) -> String {
        self.members
            .get(rank)
            .map(Member::name)
            .unwrap_or_else(|| format!("rank {rank}"))
    }

    /// The collective backend in use, for the logs.
    pub fn backend_name(&self) -> &'static str {
        #[cfg(feature = "cuda")]
        if self.nccl.is_some() {
            return "nccl";
        }
        if self.ring.is_some() {
            "tcp ring"
        } else {
            "single process"
        }
    }

    /// The collective backend and how gradients travel, for the logs: "tcp ring; fp32
    /// gradients in buckets of >= 25 MB during the backward pass".
    pub fn describe(&self) -> String {
        let dtype = match self.reduce_dtype {
            ReduceDtype::Fp32 => "fp32",
            ReduceDtype::Bf16 => "bf16",
        };
        let how = if self.overlaps() {
            format!(
                "in buckets of >= {} MB during the backward pass",
                self.bucket_len as f64 * 4.0 / 1e6
            )
        } else {
            "in one buffer after the backward pass".into()
        };
        format!("{}; {dtype} gradients {how}", self.backend_name())
    }

    /// Sums `data` over the ranks (NCCL when there is a communicator, else the ring).
    pub fn all_reduce_f32(&mut self, data: &mut [f32]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(nccl) = &self.nccl {
            return nccl.all_reduce_f32(data);
        }
        match &mut self.ring {
            Some(ring) => ring.all_reduce(data),
            None => Ok(()),
        }
    }

    /// Sums gradients over the ranks, in the recipe's `reduce_dtype`.
    pub fn all_reduce_grads(&mut self, data: &mut [f32]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(nccl) = &self.nccl {
            return nccl.all_reduce_grads(data, self.reduce_dtype);
        }
        match &mut self.ring {
            Some(ring) => ring.all_reduce_grads(data, self.reduce_dtype),
            None => Ok(()),
        }
    }

    /// The smallest gradient bucket, in f32 values.
    pub fn bucket_len(&self) -> usize {
        self.bucket_len
    }

    /// Whether gradients are summed over ranks at all: a job of several ranks, or NCCL asked
    /// for with one.
    pub fn reduces(&self) -> bool {
        #[cfg(feature = "cuda")]
        if self.nccl.is_some() {
            return true;
        }
        self.ring.is_some()
    }

    /// Whether gradient buckets are all-reduced during the backward pass: with `overlap` on,
    /// on the TCP ring of a job of several ranks, or with NCCL.
    pub fn overlaps(&self) -> bool {
        self.overlap && self.reduces()
    }

    /// Runs `work` (a backward pass) while a thread of its own all-reduces, in order, the
    /// gradient buckets `work` hands to the [`BucketSender`] ([`Self::all_reduce_grads`]);
    /// returns what `work` returned and the summed buckets in the order they were sent. Without
    /// [`Self::overlaps`], the buckets are reduced one after another once `work` is done.
    ///
    /// A collective that fails ends the thread; `work` still runs to its end (its sends go
    /// nowhere) and the failure, naming the rank, is returned.
    pub fn overlapped<T>(
        &mut self,
        work: impl FnOnce(&mut BucketSender) -> T,
    ) -> Result<(T, Vec<Vec<f32>>)> {
        #[cfg(feature = "cuda")]
        if let Some(nccl) = &self.nccl {
            // Buckets are summed where they are, on NCCL's stream, as `work` hands them over;
            // the sums stay where they are (`send_tensor`), host buckets come back here.
            let mut sender = BucketSender::Device(DeviceQueue {
                nccl,
                dtype: self.reduce_dtype,
                held: Vec::new(),
                host: Vec::new(),
                error: None,
            });
            let out = work(&mut sender);
            let BucketSender::Device(queue) = sender else {
                unreachable!("built as Device")
            };
            return Ok((out, queue.finish()?));
        }
        if !self.overlaps() {
            let mut sender = BucketSender::Collect(Vec::new());
            let out = work(&mut sender);
            let BucketSender::Collect(mut buckets) = sender else {
                unreachable!("built as Collect")
            };
            for b in &mut buckets {
                self.all_reduce_grads(b)?;
            }
            return Ok((out, buckets));
        }
        let dtype = self.reduce_dtype;
        let Some(ring) = self.ring.as_mut() else {
            unreachable!("overlaps() needs the ring")
        };
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<f32>>();
            let comm = s.spawn(move || -> Result<Vec<Vec<f32>>> {
                bertkit_model::denormals::flush_denormals();
                let mut done = Vec::new();
                for mut bucket in rx {
                    ring.all_reduce_grads(&mut bucket, dtype)?;
                    done.push(bucket);
                }
                Ok(done)
            });
            let mut sender = BucketSender::Thread(tx);
            let out = work(&mut sender);
            drop(sender);
            let done = comm
                .join()
                .map_err(|_| anyhow::anyhow!("the gradient all-reduce thread panicked"))??;
            Ok((out, done))
        })
    }

    /// Sums `data` over the ranks on the ring (exact for integer counts below 2^53).
    pub fn all_reduce_f64(&mut self, data: &mut [f64]) -> Result<()> {
        match &mut self.ring {
            Some(ring) => ring.all_reduce(data),
            None => Ok(()),
        }
    }

    /// Rank 0's bytes replace every other rank's.
    pub fn broadcast(&mut self, data: &mut Vec<u8>) -> Result<()> {
        match &mut self.ring {
            Some(ring) => ring.broadcast(data),
            None => Ok(()),
        }
    }

    pub fn barrier(&mut self) -> Result<()> {
        match &mut self.ring {
            Some(ring) => ring.barrier(),
            None => Ok(()),
        }
    }

    /// This rank gives up: the others stop at their next collective with `message`, naming
    /// this rank, instead of waiting for the timeout.
    pub fn abort(&mut self, message: &str) {
        if let Some(ring) = &mut self.ring {
            ring.abort(message);
        }
    }
}

/// Where [`ProcessGroup::overlapped`]'s work puts each finished gradient bucket.
pub enum BucketSender<'a> {
    /// To the all-reduce thread.
    Thread(std::sync::mpsc::Sender<Vec<f32>>),
    /// Kept, to be reduced after the work.
    Collect(Vec<Vec<f32>>),
    /// Summed by NCCL where it lives ([`DeviceQueue`]).
    #[cfg(feature = "cuda")]
    Device(DeviceQueue<'a>),
    /// Tests: each tensor bucket comes back as a new tensor, as from the device path, here
    /// scaled by the factor (a "sum" over that many equal ranks), so the slicing back into the
    /// gradients is checked without a GPU.
    #[cfg(test)]
    Scaled(f32),
    #[doc(hidden)]
    #[cfg(not(feature = "cuda"))]
    _Unused(std::marker::PhantomData<&'a ()>),
}

impl BucketSender<'_> {
    /// Hands over a bucket of host values.
    pub fn send(&mut self, bucket: Vec<f32>) {
        match self {
            // A closed channel means the all-reduce failed; the error comes at the end.
            BucketSender::Thread(tx) => {
                let _ = tx.send(bucket);
            }
            BucketSender::Collect(v) => v.push(bucket),
            #[cfg(feature = "cuda")]
            BucketSender::Device(q) => q.send_host(bucket),
            #[cfg(not(feature = "cuda"))]
            BucketSender::_Unused(_) => {}
            #[cfg(test)]
            BucketSender::Scaled(_) => panic!("the test sender takes tensor buckets"),
        }
    }

    /// Hands over a bucket as a tensor; returns the tensor that holds its sum over the ranks
    /// once [`ProcessGroup::overlapped`] has returned, or `None` when the bucket went to the
    /// host (its sum comes back with the host buckets).
    pub fn send_tensor<B: burn::tensor::backend::Backend>(
        &mut self,
        bucket: burn::tensor::Tensor<B, 1>,
    ) -> Option<burn::tensor::Tensor<B, 1>> {
        #[cfg(feature = "cuda")]
        if let BucketSender::Device(q) = self {
            return Some(q.start(bucket));
        }
        #[cfg(test)]
        if let BucketSender::Scaled(k) = self {
            return Some(bucket.mul_scalar(*k));
        }
        self.send(bertkit_model::nn::to_host(bucket).data);
        None
    }
}

/// NCCL all-reduces of gradient buckets on the GPU, started one after another on NCCL's stream
/// while the work that makes the next buckets goes on; [`Self::finish`] waits for them.
#[cfg(feature = "cuda")]
pub struct DeviceQueue<'a> {
    nccl: &'a nccl::Nccl,
    dtype: ReduceDtype,
    /// The buckets' memory, held until the sums are done.
    held: Vec<bertkit_model::backend::CudaMemory>,
    /// Host buckets, summed.
    host: Vec<Vec<f32>>,
    /// The first failure; later buckets are not started.
    error: Option<anyhow::Error>,
}

#[cfg(feature = "cuda")]
impl DeviceQueue<'_> {
    /// Starts summing `bucket` (f32; cast to bf16 first with `reduce_dtype = "bf16"`) in place.
    /// A bucket that is not on the GPU (a CPU model with `backend = "nccl"`) is summed through
    /// the host before this returns.
    fn start<B: burn::tensor::backend::Backend>(
        &mut self,
        bucket: burn::tensor::Tensor<B, 1>,
    ) -> burn::tensor::Tensor<B, 1> {
        use burn::tensor::{DType, TensorData};
        if self.error.is_some() {
            return bucket;
        }
        if !bertkit_model::backend::on_cuda(&bucket) {
            let device = bucket.device();
            let mut values = bertkit_model::nn::to_host(bucket).data;
            let n = values.len();
            self.sum_host(&mut values);
            return burn::tensor::Tensor::from_data(TensorData::new(values, [n]), &device);
        }
        let bf16 = self.dtype == ReduceDtype::Bf16;
        let want = if bf16 { DType::BF16 } else { DType::F32 };
        let bucket = bucket.cast(want);
        let started = bertkit_model::backend::cuda_memory(&bucket)
            .map_err(|e| anyhow::anyhow!("a gradient bucket for NCCL: {e}"))
            .and_then(|m| m.ok_or_else(|| anyhow::anyhow!("a gradient bucket left the GPU")))
            .and_then(|m| {
                if m.dtype != want {
                    anyhow::bail!("a gradient bucket is {:?}, not {want:?}", m.dtype);
                }
                self.nccl.start_on_device(m.ptr, m.len, bf16)?;
                self.held.push(m);
                Ok(())
            });
        if let Err(e) = started {
            self.error = Some(e);
        }
        bucket
    }

    fn send_host(&mut self, mut bucket: Vec<f32>) {
        self.sum_host(&mut bucket);
        self.host.push(bucket);
    }

    /// Sums host values through NCCL's host-staged path, unless an earlier bucket failed.
    fn sum_host(&mut self, values: &mut [f32]) {
        if self.error.is_none() {
            if let Err(e) = self.nccl.all_reduce_grads(values, self.dtype) {
                self.error = Some(e);
            }
        }
    }

    /// Waits for every started sum; the host buckets, summed, or the first failure.
    fn finish(self) -> Result<Vec<Vec<f32>>> {
        let waited = self.nccl.wait();
        drop(self.held);
        match self.error {
            Some(e) => Err(e),
            None => waited.map(|()| self.host),
        }
    }
}

fn nccl_unique_id() -> Result<Vec<u8>> {
    #[cfg(feature = "cuda")]
    {
        nccl::unique_id()
    }
    #[cfg(not(feature = "cuda"))]
    {
        anyhow::bail!("the NCCL backend needs a build with --features cuda")
    }
}

#[cfg(test)]
mod tests;
