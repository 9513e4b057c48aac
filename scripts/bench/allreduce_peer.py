"""The peer of `bertkit bench-allreduce`: torch.distributed all_reduce of the same f32 buffer
(gloo on the CPU, nccl on CUDA), timed the same way (median of ITERS after one warmup, a barrier
before each). Run under torchrun: torchrun --nproc-per-node N allreduce_peer.py SIZE_MB ITERS [gloo|nccl]"""
import statistics
import sys
import time

import torch
import torch.distributed as dist

size_mb, iters = int(sys.argv[1]), int(sys.argv[2])
backend = sys.argv[3] if len(sys.argv) > 3 else "gloo"
dist.init_process_group(backend)
rank, world = dist.get_rank(), dist.get_world_size()
device = f"cuda:{rank}" if backend == "nccl" else "cpu"
n = size_mb * (1 << 20) // 4
pattern = (torch.arange(n, device=device) % 7).float()
times = []
for i in range(iters + 1):
    buf = pattern + rank
    dist.barrier()
    if backend == "nccl":
        torch.cuda.synchronize()
    t = time.perf_counter()
    dist.all_reduce(buf)
    if backend == "nccl":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    if i > 0:
        times.append(secs)
    assert torch.equal(buf, pattern * world + world * (world - 1) / 2), "wrong sum"
med = statistics.median(times)
algbw = n * 4 / med / 1e9
if rank == 0:
    print(f"torch {backend} all-reduce {size_mb} MiB f32 over {world} ranks: median {med*1e3:.1f} ms "
          f"of {len(times)} (min {min(times)*1e3:.1f}), algbw {algbw:.2f} GB/s, "
          f"busbw {algbw*2*(world-1)/world:.2f} GB/s")
dist.destroy_process_group()
