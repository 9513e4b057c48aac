//! Data-parallel training across processes. So far: where this process sits in the job
//! (`env`: torchrun and SLURM variables). The rendezvous, the collectives and the launcher come
//! with the data-parallel issue.

pub mod env;
