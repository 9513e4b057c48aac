"""Fine-tuning throughput benchmark in PyTorch (sequence classification), the peer of bertkit's trainer.

Usage:
    python scripts/bench/finetune_peer.py --model assets/all-MiniLM-L6-v2 \
        --data assets/data/sentiment/train.jsonl --threads 2 \
        [--batch 32] [--seq 128] [--steps 20] [--warmup 3] [--lr 5e-5] [--lr-warmup-steps 0] \
        [--max-grad-norm 1.0] [--pad-to-max] [--seed 0] [--device cpu|cuda] [--verbose]

Model: transformers BertForSequenceClassification.from_pretrained(--model, num_labels=2) with
id2label {0: "negative", 1: "positive"} (the encoder from the folder, a fresh classifier drawn
under --seed), in train mode (dropout on, as in the folder's config), with the attention
implementation transformers picks by default (reported).
Data: JSONL rows {"sentence": str, "label": "negative"|"positive"} (or an int 0/1), e.g. the
sentiment train.jsonl from scripts/fetch-assets.sh. Batch i is rows [i*batch, (i+1)*batch) in
file order (wrapping round the file if steps*batch exceeds it), so a run reads the first
steps*batch rows; no shuffling. Each batch is tokenized with the folder's tokenizer
(truncation to --seq tokens, [CLS]/[SEP] included) and padded to its longest row, as
DataCollatorWithPadding does, or to --seq with --pad-to-max (the folder's tokenizer.json may turn
on fixed padding; the explicit arguments override it). token_type_ids are all 0. All batches are
tokenized before the run; tokenization is not timed.
One step = forward (cross-entropy loss from labels=), backward, clip_grad_norm_(--max-grad-norm;
1.0 as the HF Trainer's default, 0 = off), torch.optim.AdamW(lr, betas (0.9, 0.999), eps 1e-8,
weight_decay 0.01 on every parameter).step(), LR scheduler step, zero_grad(set_to_none=True).
Schedule: linear warmup from 0 over --lr-warmup-steps (default 0), then linear decay to 0 at
--steps (transformers.get_linear_schedule_with_warmup).
--steps is the total number of steps (and the schedule's length); the first --warmup of them are
not timed. Each timed step is measured with time.perf_counter (after torch.cuda.synchronize on a
GPU). Prints one JSON line:
  ms_per_step      mean over the timed steps (total timed time / timed steps; batches differ in
                   length, so the mean, not the median, gives the throughput); ms_per_step_median too
  sequences_per_s  batch * timed steps / total timed time
  tokens_per_s     non-pad tokens ([CLS] and [SEP] included) of the timed batches / total timed time
  cpu_ms_per_step  process CPU time (all threads) per timed step: about threads * ms_per_step on an
                   idle machine; much less means the run was starved of CPU by other processes
  final_loss       the loss of the last step (before its update)
"""
import argparse
import os

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", required=True, help="Hugging Face BERT folder")
ap.add_argument("--data", required=True, help="JSONL with sentence, label")
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--seq", type=int, default=128, help="max length in tokens (truncation)")
ap.add_argument("--pad-to-max", action="store_true", help="pad every batch to --seq, not to its longest row")
ap.add_argument("--steps", type=int, default=20, help="total steps, warmup included")
ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start")
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--lr", type=float, default=5e-5)
ap.add_argument("--lr-warmup-steps", type=int, default=0)
ap.add_argument("--max-grad-norm", type=float, default=1.0)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--device", default="cpu")
ap.add_argument("--verbose", action="store_true", help="also print versions and the per-step losses to stderr")
args = ap.parse_args()
if args.steps <= args.warmup:
    ap.error("--steps (total) must exceed --warmup")
if args.batch < 1 or args.seq < 2 or args.threads < 1:
    ap.error("--batch >= 1, --seq >= 2, --threads >= 1")
os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import statistics
import sys
import time
import warnings

import torch
import transformers
from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

torch.set_num_threads(args.threads)
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
warnings.filterwarnings("ignore")
transformers.set_seed(args.seed)

ID2LABEL = {0: "negative", 1: "positive"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}


def load_rows(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                sentence, label = obj["sentence"], obj["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                sys.exit(f"finetune_peer: {path}:{lineno}: expected {{\"sentence\": ..., \"label\": ...}} ({e})")
            if isinstance(label, str):
                if label not in LABEL2ID:
                    sys.exit(f"finetune_peer: {path}:{lineno}: label {label!r} is not one of {list(LABEL2ID)}")
                label = LABEL2ID[label]
            elif label not in (0, 1):
                sys.exit(f"finetune_peer: {path}:{lineno}: label {label!r} is not 0/1")
            rows.append((sentence, label))
    if not rows:
        sys.exit(f"finetune_peer: {path}: no rows")
    return rows


rows = load_rows(args.data)
tok = AutoTokenizer.from_pretrained(args.model)
dev = torch.device(args.device)
B = args.batch
batches, n_real = [], []
for i in range(args.steps):
    chunk = [rows[(i * B + j) % len(rows)] for j in range(B)]
    enc = tok([s for s, _ in chunk], truncation=True, max_length=args.seq,
              padding="max_length" if args.pad_to_max else "longest", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    batches.append({"input_ids": ids.to(dev), "attention_mask": mask.to(dev),
                    "token_type_ids": torch.zeros_like(ids).to(dev),
                    "labels": torch.tensor([l for _, l in chunk], dtype=torch.long).to(dev)})
    n_real.append(int(mask.sum()))

model = BertForSequenceClassification.from_pretrained(args.model, num_labels=2, id2label=ID2LABEL,
                                                      label2id=LABEL2ID).to(dev)
model.train()
attn_impl = getattr(model.config, "_attn_implementation", None) or "eager"
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
sched = get_linear_schedule_with_warmup(opt, args.lr_warmup_steps, args.steps)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step(batch):
    out = model(**batch)
    out.loss.backward()
    if args.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.detach()


times, cpu_times, losses = [], [], []
for i, batch in enumerate(batches):
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step(batch)
    sync()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    if i >= args.warmup:
        times.append(dt)
        cpu_times.append(dc)
    losses.append(loss)
losses = [float(l) for l in losses]

timed = len(times)
total_s = sum(times)
timed_tokens = sum(n_real[args.warmup:])
res = {
    "peer": "pytorch",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "device": args.device,
    "threads": args.threads,
    "attn_implementation": attn_impl,
    "batch": B,
    "seq": args.seq,
    "pad_to_max": args.pad_to_max,
    "steps": args.steps,
    "warmup": args.warmup,
    "timed_steps": timed,
    "ms_per_step": round(total_s * 1e3 / timed, 3),
    "ms_per_step_median": round(statistics.median(times) * 1e3, 3),
    "cpu_ms_per_step": round(sum(cpu_times) * 1e3 / timed, 3),
    "sequences_per_s": round(B * timed / total_s, 3),
    "tokens_per_s": round(timed_tokens / total_s, 1),
    "mean_tokens_per_batch": round(timed_tokens / timed, 1),
    "padded_tokens_per_batch": round(sum(b["input_ids"].numel() for b in batches[args.warmup:]) / timed, 1),
    "first_loss": round(losses[0], 6),
    "final_loss": round(losses[-1], 6),
}
if args.verbose:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"params {sum(p.numel() for p in model.parameters())}, rows {len(rows)}, "
          f"losses {[round(l, 4) for l in losses]}, step ms {[round(t * 1e3, 1) for t in times]}", file=sys.stderr)
print(json.dumps(res))
