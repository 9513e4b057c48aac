"""Training-step benchmark of BERT pretraining (MLM + NSP) in PyTorch, the peer of our Rust trainer.

Usage:
    python scripts/bench/pretrain_peer.py --layers 4 --hidden 256 --heads 4 --intermediate 1024 \
        --batch 8 --seq 128 --threads 2 [--vocab 30522] [--steps 10] [--warmup 2] [--mlm-fraction 0.15] [--seed 0] [--json]

Model: transformers BertForPreTraining from a random-init BertConfig (max_position_embeddings 512,
dropout 0.1), in train mode, with the attention implementation transformers picks by default.
Batch (built once, reused every step): input_ids uniform in [5, vocab), attention_mask all ones,
token_type_ids 0 for the first half of the sequence and 1 for the second; MLM labels = the original id
at round(mlm_fraction * B * T) random positions, -100 elsewhere; next_sentence_label random 0/1.
One step = forward (loss from labels= and next_sentence_label=), backward, clip_grad_norm_(1.0),
AdamW(lr 1e-4, weight_decay 0.01).step(), zero_grad(set_to_none=True), timed with time.perf_counter
(after torch.cuda.synchronize on --device cuda; --bf16 runs the forward under torch.autocast(bfloat16)
with fp32 master weights, as bertkit's bf16 precision does).
Reports the median over --steps timed steps after --warmup untimed ones, and sequences per second.
"""
import argparse
import os

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
for name, default in [("layers", None), ("hidden", None), ("heads", None), ("intermediate", None), ("vocab", 30522),
                      ("batch", None), ("seq", None), ("threads", None), ("steps", 10), ("warmup", 2), ("seed", 0)]:
    ap.add_argument(f"--{name}", type=int, default=default, required=default is None)
ap.add_argument("--mlm-fraction", type=float, default=0.15)
ap.add_argument("--json", action="store_true", help="print only one JSON line")
ap.add_argument("--device", default="cpu")
ap.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
args = ap.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
os.environ["HF_HUB_OFFLINE"] = "1"

import json, statistics, time, warnings
import torch
import transformers
from transformers import BertConfig, BertForPreTraining

torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

cfg = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                 num_attention_heads=args.heads, intermediate_size=args.intermediate, max_position_embeddings=512,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
dev = torch.device(args.device)
model = BertForPreTraining(cfg).to(dev)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
attn_impl = getattr(model.config, "_attn_implementation", None) or "eager"

B, T = args.batch, args.seq
input_ids = torch.randint(5, args.vocab, (B, T))
attention_mask = torch.ones(B, T, dtype=torch.long)
token_type_ids = torch.zeros(B, T, dtype=torch.long)
token_type_ids[:, T // 2:] = 1
labels = torch.full((B, T), -100, dtype=torch.long)
n_mask = max(1, round(args.mlm_fraction * B * T))
pos = torch.randperm(B * T)[:n_mask]
labels.view(-1)[pos] = input_ids.view(-1)[pos]
nsp = torch.randint(0, 2, (B,))
input_ids, attention_mask, token_type_ids, labels, nsp = (
    t.to(dev) for t in (input_ids, attention_mask, token_type_ids, labels, nsp))


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step():
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
        out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                    labels=labels, next_sentence_label=nsp)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.item()


for _ in range(args.warmup):
    step()
times, losses = [], []
for _ in range(args.steps):
    sync()
    t0 = time.perf_counter()
    losses.append(step())
    sync()
    times.append((time.perf_counter() - t0) * 1e3)

med = statistics.median(times)
res = {"impl": "pytorch", "model": f"bert-L{args.layers}-H{args.hidden}-A{args.heads}-I{args.intermediate}-V{args.vocab}",
       "batch": B, "seq": T, "threads": args.threads, "device": args.device, "bf16": args.bf16, "attn_implementation": attn_impl,
       "step_ms_median": round(med, 3), "step_ms_all": [round(t, 3) for t in times], "seq_per_s": round(B * 1e3 / med, 3)}
if dev.type == "cuda":
    res["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    res["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20)
if not args.json:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"params {sum(p.numel() for p in model.parameters())}, losses {[round(l, 4) for l in losses]}")
print(json.dumps(res))
