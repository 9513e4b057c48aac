"""The peer of scripts/bench/data_parallel.sh: PyTorch DistributedDataParallel (gloo, CPU) step
time of HF BertForPreTraining, one rank alone or under torchrun, the same per-rank batch.

Usage (one rank):   python data_parallel_peer.py --layers 4 --hidden 256 --heads 4 --intermediate 1024 \
                        --batch 8 --seq 128 --threads 1 --steps 20 --warmup 3 [--bucket-mb 25] [--json]
Under torchrun:     python -m torch.distributed.run --nproc-per-node 2 data_parallel_peer.py ...

Model and batch as scripts/bench/pretrain_peer.py (random init, dropout 0.1, vocab 30522, batch
built once, 15% MLM labels, NSP labels), one step = forward, backward (DDP all-reduces its
buckets of `--bucket-mb` during it, overlapped, gloo), clip_grad_norm_(1.0), AdamW.step,
zero_grad. With WORLD_SIZE 1 there is no DDP wrapper and no all-reduce. Rank 0 prints the median
step time of the timed steps (each ends with a barrier so ranks are timed together).
"""
import argparse
import os

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
for name, default in [("layers", None), ("hidden", None), ("heads", None), ("intermediate", None), ("vocab", 30522),
                      ("batch", None), ("seq", None), ("threads", None), ("steps", 20), ("warmup", 3), ("seed", 0)]:
    ap.add_argument(f"--{name}", type=int, default=default, required=default is None)
ap.add_argument("--bucket-mb", type=float, default=25.0)
ap.add_argument("--json", action="store_true")
args = ap.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)
os.environ["HF_HUB_OFFLINE"] = "1"

import json, statistics, time, warnings
import torch
import torch.distributed as dist
import transformers
from transformers import BertConfig, BertForPreTraining

torch.set_num_threads(args.threads)
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    dist.init_process_group("gloo")
torch.manual_seed(args.seed)  # the same initial weights on every rank
cfg = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                 num_attention_heads=args.heads, intermediate_size=args.intermediate, max_position_embeddings=512,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
model = BertForPreTraining(cfg)
model.train()
net = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb) if world > 1 else model
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

torch.manual_seed(args.seed + 1 + rank)  # each rank's own batch
B, T = args.batch, args.seq
input_ids = torch.randint(5, args.vocab, (B, T))
attention_mask = torch.ones(B, T, dtype=torch.long)
token_type_ids = torch.zeros(B, T, dtype=torch.long)
token_type_ids[:, T // 2:] = 1
labels = torch.full((B, T), -100, dtype=torch.long)
pos = torch.randperm(B * T)[:max(1, round(0.15 * B * T))]
labels.view(-1)[pos] = input_ids.view(-1)[pos]
nsp = torch.randint(0, 2, (B,))


def step():
    out = net(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
              labels=labels, next_sentence_label=nsp)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if world > 1:
        dist.barrier()


for _ in range(args.warmup):
    step()
times = []
for _ in range(args.steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
if rank == 0:
    res = {"impl": "pytorch-ddp", "world": world, "bucket_mb": args.bucket_mb, "threads": args.threads,
           "step_ms": 1000 * statistics.median(times), "torch": torch.__version__}
    print(json.dumps(res) if args.json else
          f"pytorch ddp (gloo) {world} rank(s), bucket {args.bucket_mb} MB: {res['step_ms']:.0f} ms per step")
if world > 1:
    dist.destroy_process_group()
