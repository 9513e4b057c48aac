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
    /// `auto` (NCCL on CUDA, the TCP ring on the CPU), `tcp` or `nccl`.
    #[serde(default)]
    pub backend: CollectiveBackend,
}

impl Default for DistributedSettings {
    fn default() -> Self {
        DistributedSettings {
            timeout_s: default_timeout(),
            rendezvous_timeout_s: default_rendezvous_timeout(),
            backend: CollectiveBackend::Auto,
        }
    }
}

fn default_timeout() -> f64 {
    600.0
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
        if use_nccl && !cfg!(feature = "cuda") {
            anyhow::bail!("the NCCL backend needs a build with --features cuda");
        }
        #[cfg(feature = "cuda")]
        if use_nccl && env.world_size > 1 {
            nccl::check_libraries(env.local_rank)?;
        }
        let joined = rendezvous::join(env, config_hash, rendezvous_timeout, timeout, || {
            if use_nccl && env.world_size > 1 {
                nccl_unique_id()
            } else {
                Ok(Vec::new())
            }
        })?;
        #[cfg(feature = "cuda")]
        let mut joined = joined;
        #[cfg(feature = "cuda")]
        let nccl = if use_nccl && env.world_size > 1 {
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
