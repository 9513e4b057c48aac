//! NCCL all-reduce through cudarc (libnccl is loaded at run time, like the rest of CUDA).
//!
//! Rank 0 creates the unique id; the rendezvous carries it to the others; each rank makes a
//! communicator on GPU `LOCAL_RANK`, with a stream of its own. Gradients on the GPU are summed
//! where they are: `grads` hands each bucket's device address to [`Nccl::start_on_device`],
//! which queues `ncclAllReduce` on that stream and returns, and [`Nccl::wait`] waits for them
//! all. Host buffers (a CPU model with `backend = "nccl"`, `bench-allreduce`) are copied to the
//! GPU in pieces of [`PIECE`] values (f32, or bf16 with `reduce_dtype = "bf16"`), summed and
//! copied back. A watchdog aborts the communicator when a wait takes longer than the timeout (a
//! rank died or hangs), so it ends with an error instead of a hang.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaStream, DevicePtrMut};
use cudarc::nccl::{result, sys};

use super::wire::Bf16;

/// Values per NCCL call (256 MB of f32).
const PIECE: usize = 64 << 20;

pub struct Nccl {
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    rank: usize,
    timeout: Duration,
    /// Set when the watchdog aborted the communicator (it must not be aborted twice).
    aborted: std::cell::Cell<bool>,
}

// The communicator is used by one thread at a time (the training loop's).
unsafe impl Send for Nccl {}

/// Whether this rank can use NCCL on GPU `local_rank`: the CUDA driver, the device and NVRTC
/// ([`bertkit_model::backend::check_cuda`]), and libnccl; cudarc panics without them.
pub fn check_libraries(local_rank: usize) -> Result<()> {
    bertkit_model::backend::check_cuda(local_rank)
        .map_err(|e| anyhow!("GPU {local_rank} (LOCAL_RANK) for NCCL: {e}"))?;
    // SAFETY: only tries to load the shared library.
    if !unsafe { sys::is_culib_present() } {
        bail!(
            "the NCCL library (libnccl.so.2) could not be loaded: install NCCL or put it on \
             LD_LIBRARY_PATH, or use distributed.backend = \"tcp\""
        );
    }
    Ok(())
}

/// A new NCCL unique id, as bytes for the rendezvous.
pub fn unique_id() -> Result<Vec<u8>> {
    let id = result::get_uniqueid().map_err(|e| anyhow!("ncclGetUniqueId: {e:?}"))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

impl Nccl {
    pub fn new(
        local_rank: usize,
        rank: usize,
        world_size: usize,
        id: &[u8],
        timeout: Duration,
    ) -> Result<Nccl> {
        let mut unique = sys::ncclUniqueId { internal: [0; 128] };
        if id.len() != unique.internal.len() {
            bail!(
                "the NCCL unique id from rank 0 has {} bytes, not 128",
                id.len()
            );
        }
        for (d, &s) in unique.internal.iter_mut().zip(id) {
            *d = s as _;
        }
        let ctx = CudaContext::new(local_rank)
            .with_context(|| format!("opening GPU {local_rank} (LOCAL_RANK) for NCCL"))?;
        // Not the legacy default stream, which would wait for burn's streams and they for it.
        let stream = ctx
            .new_stream()
            .with_context(|| format!("making a CUDA stream on GPU {local_rank} for NCCL"))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by ncclCommInitRank before it is read; the id came from
        // ncclGetUniqueId on rank 0 and every rank passes the same world size.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), world_size as i32, unique, rank as i32)
                .map_err(|e| anyhow!("ncclCommInitRank (rank {rank} of {world_size}): {e:?}"))?;
            comm.assume_init()
        };
        Ok(Nccl {
            comm,
            stream,
            rank,
            timeout,
            aborted: std::cell::Cell::new(false),
        })
    }

    /// Sums gradients (host values) in the recipe's `reduce_dtype`, as the ring's
    /// `all_reduce_grads` does.
    pub fn all_reduce_grads(&self, data: &mut [f32], dtype: super::ReduceDtype) -> Result<()> {
        match dtype {
            super::ReduceDtype::Fp32 => self.all_reduce_f32(data),
            super::ReduceDtype::Bf16 => self.all_reduce_bf16(data),
        }
    }

    pub fn all_reduce_f32(&self, data: &mut [f32]) -> Result<()> {
        self.all_reduce(data, sys::ncclDataType_t::ncclFloat32)
    }

    /// Sums `data` with bf16 on the GPU (each value rounded to bf16 first).
    pub fn all_reduce_bf16(&self, data: &mut [f32]) -> Result<()> {
        let mut bits: Vec<u16> = data.iter().map(|&x| Bf16::from_f32(x).0).collect();
        self.all_reduce(&mut bits, sys::ncclDataType_t::ncclBfloat16)?;
        for (d, b) in data.iter_mut().zip(bits) {
            *d = Bf16(b).to_f32();
        }
        Ok(())
    }

    /// Queues the sum over the ranks of `len` values (f32, or bf16 with `bf16`) at device
    /// address `ptr`, in place, on NCCL's stream, and returns without waiting. The memory must
    /// hold its values already (nothing else may be writing it) and stay allocated, unread by
    /// anyone else, until [`Self::wait`] returns.
    pub fn start_on_device(&self, ptr: u64, len: usize, bf16: bool) -> Result<()> {
        if self.aborted.get() {
            bail!("rank {}: an earlier NCCL all-reduce timed out", self.rank);
        }
        let dtype = if bf16 {
            sys::ncclDataType_t::ncclBfloat16
        } else {
            sys::ncclDataType_t::ncclFloat32
        };
        // SAFETY: the caller guarantees `ptr` addresses `len` values of `dtype` on this GPU,
        // alive and unused by others until `wait`.
        unsafe {
            result::all_reduce(
                ptr as *const _,
                ptr as *mut _,
                len,
                dtype,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream.cu_stream() as _,
            )
            .map_err(|e| anyhow!("ncclAllReduce of {len} values on the GPU: {e:?}"))?;
        }
        Ok(())
    }

    /// Waits until every all-reduce queued by [`Self::start_on_device`] is done.
    pub fn wait(&self) -> Result<()> {
        self.watched(|| {
            self.stream
                .synchronize()
                .context("waiting for NCCL's all-reduce on the GPU")
        })
    }

    /// Sums `data` (host values of NCCL type `dtype`) over the ranks, staged through the GPU.
    fn all_reduce<T: cudarc::driver::DeviceRepr>(
        &self,
        data: &mut [T],
        dtype: sys::ncclDataType_t,
    ) -> Result<()> {
        if self.aborted.get() {
            bail!("rank {}: an earlier NCCL all-reduce timed out", self.rank);
        }
        for piece in data.chunks_mut(PIECE) {
            let mut buf = self
                .stream
                .clone_htod(piece)
                .context("copying gradients to the GPU for NCCL")?;
            {
                let (ptr, _sync) = buf.device_ptr_mut(&self.stream);
                // SAFETY: `ptr` is a device buffer of `piece.len()` values of `dtype` on this
                // stream.
                unsafe {
                    result::all_reduce(
                        ptr as *const _,
                        ptr as *mut _,
                        piece.len(),
                        dtype,
                        sys::ncclRedOp_t::ncclSum,
                        self.comm,
                        self.stream.cu_stream() as _,
                    )
                    .map_err(|e| anyhow!("ncclAllReduce: {e:?}"))?;
                }
            }
            self.watched(|| {
                self.stream
                    .memcpy_dtoh(&buf, piece)
                    .context("copying all-reduced gradients back from the GPU")
            })?;
        }
        Ok(())
    }

    /// Runs `wait` (which blocks on the stream) under a watchdog that aborts the communicator
    /// after the timeout, which makes the pending NCCL kernel and so `wait` return.
    fn watched<T>(&self, wait: impl FnOnce() -> Result<T>) -> Result<T> {
        let (done, finished) = mpsc::channel::<()>();
        let comm = self.comm as usize;
        let timeout = self.timeout;
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(timeout).is_err() {
                // SAFETY: the communicator is alive until `Nccl` is dropped, which cannot
                // happen while `watched` runs.
                unsafe {
                    let _ = result::comm_abort(comm as sys::ncclComm_t);
                }
                return true;
            }
            false
        });
        let out = wait();
        let _ = done.send(());
        let aborted = watchdog.join().unwrap_or(false);
        if aborted {
            self.aborted.set(true);
            bail!(
                "rank {}: NCCL all-reduce did not finish within {} s (distributed.timeout_s); \
                 another rank died or hangs (see its log or bertkit launch's report)",
                self.rank,
                timeout.as_secs_f64()
            );
        }
        out
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if self.aborted.get() {
            return;
        }
        // SAFETY: created by ncclCommInitRank and not used after this.
        unsafe {
            let _ = result::comm_abort(self.comm);
        }
    }
}
