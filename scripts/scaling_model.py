#!/usr/bin/env python3
"""Data-parallel cost model for bertkit's BERT pretraining recipes (docs/SCALING.md).

Usage: python3 scripts/scaling_model.py

Stdlib only. Reads the model shapes from configs/models/bert-{base,large}.toml and the batch,
masking and step settings from configs/pretrain/nvidia-phase{1,2}.toml, then prints the markdown
tables that docs/SCALING.md pastes. Every hardware figure below is an ASSUMPTION (named, with
where it comes from); nothing here is a measurement. The only measured numbers used are NVIDIA's
published ones (NVIDIA_PUBLISHED) and one PyTorch step time this project measured
(PYTORCH_H100_BASE_SEQ_S), both cited.

The model, per optimizer step, per GPU (all GPUs do the same work):
  t_compute = accumulation * micro * train_flops_per_sequence / (MFU * peak)
  t_comm    = one all-reduce of every gradient, once per step, in buckets:
              sum over buckets of  2(p-1)/p * bucket_bytes / B  +  ring latency(p)
              B = NCCL bus bandwidth of the bottleneck link (NVLink in one node, the node's
              InfiniBand NICs across nodes)
  efficiency without overlap = t_compute / (t_compute + t_comm)
  efficiency with overlap    = t_compute / (t_compute + max(0, t_comm - t_backward_last_micro))
  the host-staged path (bertkit's NCCL path until 2026-12-04; now only for gradients that are not
  on the GPU) additionally copies the f32 gradients through host memory: + 4 * S / PCIe
"""
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ---------------------------------------------------------------------------------------------
# Assumptions
# ---------------------------------------------------------------------------------------------

# The recipes leave vocab_size to the data's tokenizer; NVIDIA's recipe uses BERT's uncased
# WordPiece vocabulary (bert-base-uncased / bert-large-uncased vocab.txt: 30522 entries).
VOCAB = 30522
# Sequence lengths of the two phases (set by `bertkit prep --seq-len`, not by the recipes).
SEQ_LEN = {"phase1": 128, "phase2": 512}
GPUS_PER_NODE = 8
GPU_COUNTS = [8, 64, 256]  # 1, 8 and 32 nodes of 8 GPUs

# Backward pass = 2 x forward (the usual matmul count: grad wrt input and wrt weight);
# training FLOPs = 3 x forward. No activation recomputation.
BACKWARD_OVER_FORWARD = 2.0

# Achieved fraction of the dense bf16 peak (model FLOPs utilization). ASSUMPTION: 45%, in line
# with what NVIDIA's published single-A100 phase-1 throughput implies under this FLOP count
# (printed below). bertkit's own CUDA throughput has not been measured yet (docs/PERFORMANCE.md).
MFU = 0.45
MFU_SENSITIVITY = [0.15, 0.45]

# Hardware. ASSUMPTIONS, from vendor data sheets and NCCL's own tuning model:
# - peak: dense (no sparsity) bf16 tensor-core rate, A100 SXM 312 TFLOP/s, H100 SXM 989 TFLOP/s
#   (NVIDIA A100 / H100 data sheets).
# - nvlink_busbw: NCCL all-reduce bus bandwidth inside one 8-GPU node. A100: NVLink 3 is 300 GB/s
#   per direction per GPU; NCCL's tuning model caps sm80 at 235 GB/s (src/graph/tuning.cc,
#   `if (compCap80) busBw = std::min(busBw, 235.0f)`); we take 230 GB/s, just under that cap
#   (not verified on a DGX A100 here). H100: NVLink 4 is 450 GB/s per direction per GPU; we
#   take 360 GB/s, inside the 350-400 GB/s commonly reported for nccl-tests all_reduce_perf on a
#   DGX H100 without NVLink SHARP (not verified here). Not measured by us.
# - nic_per_node: 8 x HDR 200 Gb/s (DGX A100) = 200 GB/s, 8 x NDR 400 Gb/s (DGX H100) = 400 GB/s
#   per node per direction, one NIC per GPU (rail-optimized fabric).
# - hbm: memory bandwidth (A100 80GB SXM 2039 GB/s, H100 SXM 3350 GB/s), for the LAMB step only.
HARDWARE = {
    "H100": {"peak": 989e12, "nvlink_busbw": 360e9, "nic_per_node": 400e9, "hbm": 3350e9,
             "desc": "DGX H100: 8x H100 SXM, NVLink 4, 8x NDR 400 Gb/s"},
    "A100": {"peak": 312e12, "nvlink_busbw": 230e9, "nic_per_node": 200e9, "hbm": 2039e9,
             "desc": "DGX A100: 8x A100 SXM 80GB, NVLink 3, 8x HDR 200 Gb/s"},
}
# Fraction of the InfiniBand line rate an all-reduce achieves across nodes. ASSUMPTION: 85%
# (protocol and congestion overheads; large messages).
NIC_EFFICIENCY = 0.85

# Ring all-reduce latency, from NCCL's own cost model (NVIDIA/nccl src/graph/tuning.cc, Ring /
# Simple protocol): baseLat 8.4 us, + 3.4 us per NVLink step and 9.6 us per network step, with
# 2(p-1) steps of which 2(nodes-1) cross the network; NCCL multiplies multi-node ring all-reduce
# latency by 1.9 for large messages ("plateau effect of ring"). ASSUMPTION that these model
# constants describe the real fabric.
RING_BASE_LAT = 8.4e-6
RING_NVLINK_STEP = 3.4e-6
RING_NET_STEP = 9.6e-6
RING_MULTINODE_FACTOR = 1.9

# Gradients are all-reduced in buckets, one collective call (one latency) per bucket.
# ASSUMPTION: 256 MiB buckets, the piece size of the NCCL path being written now
# (train/src/distributed/nccl.rs: 64 Mi f32 values per ncclAllReduce); see the sensitivity table.
BUCKET_BYTES = 256 * 2**20
BUCKET_SENSITIVITY = [25 * 2**20, 64 * 2**20, 256 * 2**20, None]  # None: one flat buffer

# The host-staged path (train/src/distributed/nccl.rs; bertkit's NCCL path until 2026-12-04, now
# only for gradients not on the GPU): the f32 gradients are concatenated on the GPU, copied to one host buffer, then each
# 256 MiB piece is copied back to the GPU, all-reduced by NCCL and copied to the host again, and
# the result is copied to the GPU once more: 4 x S bytes over PCIe, in sequence with the NCCL
# calls. ASSUMPTION: these copies (pageable host memory) reach 40% of the x16 link rate per
# direction: PCIe Gen5 64 GB/s (H100), Gen4 32 GB/s (A100).
PCIE = {"H100": 64e9, "A100": 32e9}
PCIE_EFFICIENCY = 0.40
HOST_COPIES = 4

# The LAMB step runs on every GPU after the all-reduce (not amortized over accumulation). It is
# memory-bound; ASSUMPTION: 36 bytes moved per parameter (read param, grad, m, v and write
# param, m, v in f32 = 28 B, plus the per-tensor norm passes), at the full HBM bandwidth.
LAMB_BYTES_PER_PARAM = 36

# NVIDIA's published BERT-large pretraining numbers (PyTorch, DGX A100 80GB, pytorch:21.11-py3,
# mixed precision), NVIDIA DeepLearningExamples PyTorch/LanguageModeling/BERT/README.md,
# "Training performance results": "Pre-training NVIDIA DGX A100 (8x A100 80GB)" (weak scaling,
# 1 -> 8 GPUs, per-GPU batch 8192) and "... Multi-node Scaling" (strong scaling, global batch
# fixed, 1 -> 32 nodes). Their run_pretraining.py all-reduces the gradients once per
# accumulation window as one flat fp16 buffer (--allreduce_post_accumulation
# --allreduce_post_accumulation_fp16, defaults of scripts/run_pretraining.sh), not overlapped.
NVIDIA_PUBLISHED = {
    # phase: (micro per GPU, 1-GPU seq/s, 8-GPU weak scaling, per-GPU batch at 1 node,
    #         32-node strong scaling)
    "phase1": {"micro": 256, "one_gpu_seq_s": 580, "weak8": 7.91, "per_gpu_1node": 8192,
               "strong32": 30.37},
    "phase2": {"micro": 32, "one_gpu_seq_s": 210, "weak8": 7.89, "per_gpu_1node": 4096,
               "strong32": 30.13},
}
NVIDIA_GRAD_BYTES = 2  # fp16 all-reduce

# The one H100 training number this project has: HF BertForPreTraining (PyTorch, bf16 autocast,
# AdamW, MLM decoder on every position) BERT-base, batch 64 x 128: 1784 sequences/s
# (docs/PERFORMANCE.md, "GPU (NVIDIA H100 80GB HBM3): first attempt"). Used only to show what MFU
# an unfused eager implementation reaches.
PYTORCH_H100_BASE_SEQ_S = 1784


# ---------------------------------------------------------------------------------------------
# Reading the repository's configs
# ---------------------------------------------------------------------------------------------

def read_toml(path):
    try:
        import tomllib  # Python 3.11+
        with open(path, "rb") as f:
            return tomllib.load(f)
    except ImportError:
        return read_flat_toml(path)


def read_flat_toml(path):
    """Enough TOML for these files: [section] headers and `key = number|string|[...]` lines."""
    out, cur = {}, None
    with open(path) as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("["):
                cur = out.setdefault(line.strip("[]").strip(), {})
                continue
            key, val = (s.strip() for s in line.split("=", 1))
            if val.startswith('"'):
                v = val.strip('"')
            elif val in ("true", "false"):
                v = val == "true"
            elif val.startswith("["):
                v = [float(x) for x in val.strip("[]").split(",") if x.strip()]
            else:
                v = float(val) if any(c in val for c in ".eE") else int(val)
            (cur if cur is not None else out)[key] = v
    return out


def load_models():
    models = {}
    for name in ("base", "large"):
        c = read_toml(os.path.join(ROOT, "configs", "models", f"bert-{name}.toml"))
        models[f"BERT-{name}"] = {
            "h": c["hidden_size"], "L": c["num_hidden_layers"], "i": c["intermediate_size"],
            "pos": c["max_position_embeddings"], "types": c["type_vocab_size"], "V": VOCAB,
        }
    return models


def load_recipes():
    recipes = {}
    for phase in ("phase1", "phase2"):
        r = read_toml(os.path.join(ROOT, "configs", "pretrain", f"nvidia-{phase}.toml"))
        recipes[phase] = {
            "global": r["batch"]["global"], "micro": r["batch"]["micro"],
            "steps": r["schedule"]["steps"], "max_pred": r["masking"]["max_predictions"],
            "seq": SEQ_LEN[phase],
        }
    return recipes


# ---------------------------------------------------------------------------------------------
# Parameters and FLOPs
# ---------------------------------------------------------------------------------------------

def param_counts(m):
    """HF BertForPreTraining, the MLM decoder tied to the word embeddings (counted once)."""
    h, L, i, V = m["h"], m["L"], m["i"], m["V"]
    emb = V * h + m["pos"] * h + m["types"] * h + 2 * h          # 3 tables + LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    pooler = h * h + h
    mlm = (h * h + h) + 2 * h + V                                  # transform, LayerNorm, bias
    nsp = 2 * h + 2
    return {"embeddings": emb, "encoder": L * layer, "pooler": pooler, "mlm": mlm, "nsp": nsp,
            "total": emb + L * layer + pooler + mlm + nsp}


def forward_flops(m, seq, masked):
    """Matmul FLOPs of one sequence's forward pass (2 per multiply-add). The MLM decoder runs on
    the masked positions only (as bertkit and NVIDIA do); embeddings are lookups (no FLOPs)."""
    h, L, i, V = m["h"], m["L"], m["i"], m["V"]
    dense = 2 * (4 * h * h + 2 * h * i)           # Q, K, V, output projection, FFN in and out
    attn = 2 * 2 * seq * h                        # QK^T and AV
    encoder = seq * L * (dense + attn)
    heads = masked * 2 * (h * h + h * V) + 2 * h * h + 2 * 2 * h   # MLM, pooler, NSP
    return encoder + heads


def train_flops(m, seq, masked):
    return (1 + BACKWARD_OVER_FORWARD) * forward_flops(m, seq, masked)


# ---------------------------------------------------------------------------------------------
# Communication
# ---------------------------------------------------------------------------------------------

def bottleneck_busbw(hw, p):
    """One node: NVLink. Several: a ring through all GPUs crosses each node boundary once per
    channel; with one NIC per GPU, each node sends 2(p-1)/p x S through its NICs per all-reduce,
    the same volume each GPU sends over NVLink, so the slower of the two sets the time."""
    if p <= GPUS_PER_NODE:
        return hw["nvlink_busbw"]
    return min(hw["nvlink_busbw"], hw["nic_per_node"] * NIC_EFFICIENCY)


def ring_latency(p):
    nodes = max(1, math.ceil(p / GPUS_PER_NODE))
    steps, inter = 2 * (p - 1), 2 * (nodes - 1)
    lat = RING_BASE_LAT + (steps - inter) * RING_NVLINK_STEP + inter * RING_NET_STEP
    return lat * (RING_MULTINODE_FACTOR if nodes > 1 else 1.0)


def allreduce_time(nbytes, p, hw, bucket=BUCKET_BYTES):
    """(bandwidth term, latency term) in seconds for all-reducing nbytes in buckets."""
    if p == 1:
        return 0.0, 0.0
    calls = 1 if bucket is None else math.ceil(nbytes / bucket)
    bw = 2 * (p - 1) / p * nbytes / bottleneck_busbw(hw, p)
    return bw, calls * ring_latency(p)


# ---------------------------------------------------------------------------------------------
# One optimizer step
# ---------------------------------------------------------------------------------------------

def step(m, recipe, p, hw, grad_bytes, mfu=MFU, bucket=BUCKET_BYTES, micro=None,
         seq_time=None):
    micro = micro or recipe["micro"]
    per_step = micro * p
    if recipe["global"] % per_step:
        raise SystemExit(f"global {recipe['global']} is not a multiple of {micro} x {p}")
    acc = recipe["global"] // per_step
    if seq_time is None:
        seq_time = train_flops(m, recipe["seq"], recipe["max_pred"]) / (mfu * hw["peak"])
    t_micro = micro * seq_time
    t_compute = acc * t_micro
    n = param_counts(m)["total"]
    bw, lat = allreduce_time(n * grad_bytes, p, hw, bucket)
    t_comm = bw + lat
    t_bwd_last = t_micro * BACKWARD_OVER_FORWARD / (1 + BACKWARD_OVER_FORWARD)
    exposed = max(0.0, t_comm - t_bwd_last)
    return {
        "acc": acc, "t_micro": t_micro, "t_compute": t_compute, "bw": bw, "lat": lat,
        "t_comm": t_comm, "exposed": exposed,
        "eff_no_overlap": t_compute / (t_compute + t_comm),
        "eff_overlap": t_compute / (t_compute + exposed),
    }


def layered_overlap(m, recipe, p, hw, grad_bytes, bucket_bytes, mfu=MFU, seq_time=None,
                    micro=None):
    """bertkit's bucketed all-reduce (train/src/distributed/grads.rs, as built on the CPU ring)
    on device buffers: the last micro-batch's backward runs layer by layer from the top, each
    layer taking an equal share of it; after each layer its gradients join the open bucket,
    which starts its all-reduce once it holds bucket_bytes (whole layers) and the previous
    bucket's all-reduce is done; the embeddings, pooler and heads make the last bucket, ready
    when the backward pass ends. Returns the step dict with the all-reduce time left exposed
    after the backward pass."""
    s = step(m, recipe, p, hw, grad_bytes, mfu=mfu, bucket=None, micro=micro, seq_time=seq_time)
    counts = param_counts(m)
    t_bwd = s["t_micro"] * BACKWARD_OVER_FORWARD / (1 + BACKWARD_OVER_FORWARD)
    per_layer = counts["encoder"] // m["L"] * grad_bytes
    rest = (counts["total"] - counts["encoder"]) * grad_bytes
    buckets, open_bytes = [], 0
    for k in range(1, m["L"] + 1):          # k layers done
        open_bytes += per_layer
        if open_bytes >= bucket_bytes:
            buckets.append((t_bwd * k / m["L"], open_bytes))
            open_bytes = 0
    buckets.append((t_bwd, open_bytes + rest))
    busbw, lat = bottleneck_busbw(hw, p), ring_latency(p)
    end = 0.0
    for ready, nbytes in buckets:
        end = max(end, ready) + 2 * (p - 1) / p * nbytes / busbw + lat
    exposed = max(0.0, end - t_bwd)
    s.update({"buckets": len(buckets), "exposed": exposed,
              "eff_layered": s["t_compute"] / (s["t_compute"] + exposed)})
    return s


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print()


def ms(t):
    return f"{t * 1e3:.1f}" if t < 10 else f"{t * 1e3:.0f}"


def pct(x):
    return f"{100 * x:.1f}%"


def main():
    models = load_models()
    recipes = load_recipes()
    dtypes = [("bf16", 2), ("fp32", 4)]

    print(f"### Parameters (from configs/models/*.toml, vocab {VOCAB})\n")
    rows = []
    for name, m in models.items():
        c = param_counts(m)
        rows.append([name, f"{m['L']} x {m['h']}, FFN {m['i']}", f"{c['embeddings']:,}",
                     f"{c['encoder']:,}", f"{c['pooler']:,}", f"{c['mlm'] + c['nsp']:,}",
                     f"{c['total']:,} ({c['total'] / 1e6:.1f}M)",
                     f"{(c['total'] - c['mlm'] - c['nsp']) / 1e6:.1f}M",
                     f"{c['total'] * 2 / 1e6:.0f}", f"{c['total'] * 4 / 1e6:.0f}"])
    table(["model", "layers x hidden", "embeddings", "encoder", "pooler", "MLM + NSP heads",
           "total (all-reduced)", "without MLM/NSP", "bf16 grads MB", "fp32 grads MB"], rows)

    print("### FLOPs per sequence (matmuls; MLM decoder on max_predictions positions)\n")
    rows = []
    for name, m in models.items():
        n = param_counts(m)["total"]
        for phase, r in recipes.items():
            tf = train_flops(m, r["seq"], r["max_pred"])
            rows.append([name, f"{phase} (seq {r['seq']}, {r['max_pred']} masked)",
                         f"{forward_flops(m, r['seq'], r['max_pred']) / 1e9:.1f}",
                         f"{tf / 1e9:.1f}", f"{6 * n * r['seq'] / 1e9:.1f}"])
    table(["model", "phase", "forward GFLOP", "training GFLOP (3x)", "6 x params x tokens"],
          rows)

    print("### Sanity checks of the MFU assumption (derived from cited measurements)\n")
    large, base = models["BERT-large"], models["BERT-base"]
    rows = []
    for phase in ("phase1", "phase2"):
        r, pub = recipes[phase], NVIDIA_PUBLISHED[phase]
        mfu = pub["one_gpu_seq_s"] * train_flops(large, r["seq"], r["max_pred"]) \
            / HARDWARE["A100"]["peak"]
        rows.append([f"NVIDIA, BERT-large {phase}, 1x A100, mixed precision",
                     f"{pub['one_gpu_seq_s']} seq/s", pct(mfu)])
    hf = forward_flops(base, 128, 128) * (1 + BACKWARD_OVER_FORWARD)  # decoder on all 128
    rows.append(["PyTorch HF BERT-base 64x128, 1x H100, bf16 (docs/PERFORMANCE.md)",
                 f"{PYTORCH_H100_BASE_SEQ_S} seq/s",
                 pct(PYTORCH_H100_BASE_SEQ_S * hf / HARDWARE["H100"]["peak"])])
    table(["published / measured throughput", "seq/s", "implied MFU (this FLOP count)"], rows)

    print("### Hardware assumptions\n")
    rows = []
    for name, hw in HARDWARE.items():
        rows.append([name, hw["desc"], f"{hw['peak'] / 1e12:.0f}", f"{MFU:.0%}",
                     f"{hw['nvlink_busbw'] / 1e9:.0f}", f"{hw['nic_per_node'] / 1e9:.0f}",
                     f"{hw['nic_per_node'] * NIC_EFFICIENCY / 1e9:.0f}",
                     f"{PCIE[name] / 1e9:.0f}, {PCIE[name] * PCIE_EFFICIENCY / 1e9:.1f}"])
    table(["GPU", "node", "bf16 dense peak TFLOP/s", "assumed MFU", "NVLink busbw GB/s",
           "IB per node GB/s", f"IB effective ({NIC_EFFICIENCY:.0%}) GB/s",
           f"PCIe x16 GB/s, effective ({PCIE_EFFICIENCY:.0%})"], rows)
    print(f"Ring latency (NCCL model): {RING_BASE_LAT * 1e6:.1f} us base + "
          f"{RING_NVLINK_STEP * 1e6:.1f} us per NVLink step + {RING_NET_STEP * 1e6:.1f} us per "
          f"network step, x{RING_MULTINODE_FACTOR} across nodes; buckets of "
          f"{BUCKET_BYTES // 2**20} MiB; backward = {BACKWARD_OVER_FORWARD:.0f} x forward; "
          f"LAMB step {LAMB_BYTES_PER_PARAM} B/param at HBM "
          + ", ".join(f"{k} {v['hbm'] / 1e9:.0f} GB/s" for k, v in HARDWARE.items()) + ".\n")

    print("### One all-reduce of all gradients, "
          f"{BUCKET_BYTES // 2**20} MiB buckets (ms)\n")
    rows = []
    for hwname, hw in HARDWARE.items():
        for name, m in models.items():
            n = param_counts(m)["total"]
            for dname, nb in dtypes:
                cells = []
                for p in GPU_COUNTS:
                    bw, lat = allreduce_time(n * nb, p, hw)
                    cells.append(f"{ms(bw)} + {ms(lat)} = **{ms(bw + lat)}**")
                rows.append([hwname, name, dname, f"{math.ceil(n * nb / BUCKET_BYTES)}"]
                            + cells)
    ring = ", ".join(f"p={p}: {ring_latency(p) * 1e6:.0f} us" for p in GPU_COUNTS)
    print(f"Bandwidth term + latency term; ring latency per bucket: {ring}.\n")
    table(["GPU", "model", "grads", "buckets"]
          + [f"p={p} ({max(1, p // GPUS_PER_NODE)} node{'s' if p > 8 else ''})"
             for p in GPU_COUNTS], rows)

    for phase in ("phase1", "phase2"):
        r = recipes[phase]
        print(f"### Scaling, {phase}: seq {r['seq']}, global {r['global']}, micro {r['micro']} "
              f"per GPU, MFU {MFU:.0%}; cells are bf16 / fp32 gradients\n")
        rows = []
        for hwname, hw in HARDWARE.items():
            for name, m in models.items():
                if phase == "phase2" and name != "BERT-large":
                    continue
                for p in GPU_COUNTS:
                    b, f = step(m, r, p, hw, 2), step(m, r, p, hw, 4)
                    rows.append([hwname, name, p, b["acc"], ms(b["t_compute"]),
                                 ms(b["t_micro"] * 2 / 3),
                                 f"{ms(b['t_comm'])} / {ms(f['t_comm'])}",
                                 f"{pct(b['eff_no_overlap'])} / {pct(f['eff_no_overlap'])}",
                                 f"{pct(b['eff_overlap'])} / {pct(f['eff_overlap'])}"])
        table(["GPU", "model", "GPUs", "accum.", "compute/step ms", "last backward ms",
               "all-reduce ms", "efficiency, no overlap", "efficiency, overlap"], rows)

    print("### The host-staged path, phase 1: f32 gradients staged through host memory, NCCL in "
          f"{BUCKET_BYTES // 2**20} MiB pieces, no overlap (bertkit until 2026-12-04)\n")
    rows = []
    r = recipes["phase1"]
    for hwname, hw in HARDWARE.items():
        for name, m in models.items():
            n = param_counts(m)["total"]
            t_host = HOST_COPIES * n * 4 / (PCIE[hwname] * PCIE_EFFICIENCY)
            for p in GPU_COUNTS:
                s = step(m, r, p, hw, 4)
                rows.append([hwname, name, p, ms(s["t_compute"]), ms(t_host), ms(s["t_comm"]),
                             pct(s["t_compute"] / (s["t_compute"] + t_host + s["t_comm"])),
                             pct(s["eff_no_overlap"])])
    table(["GPU", "model", "GPUs", "compute/step ms", "host copies ms", "NCCL ms",
           "efficiency", "same without the host copies"], rows)

    print("### The bucketed, overlapped all-reduce on device buffers, phase 1\n")
    print("What train/src/distributed/grads.rs does (on the CPU ring, and with NCCL on the GPU's "
          "own buffers since 2026-12-04), priced on GPUs: whole-layer "
          "buckets of at least 25 MB (`bucket_mb`), each all-reduced once its layers' backward is "
          "done, the embeddings and heads last; compared with one flat all-reduce after the "
          "backward pass (both on device buffers, no host copies). Cells: bf16 / fp32 on the "
          "wire.\n")
    rows = []
    r = recipes["phase1"]
    for hwname, hw in HARDWARE.items():
        for name, m in models.items():
            for p in GPU_COUNTS:
                b = layered_overlap(m, r, p, hw, 2, 25e6)
                f = layered_overlap(m, r, p, hw, 4, 25e6)
                fb = step(m, r, p, hw, 2, bucket=None)
                ff = step(m, r, p, hw, 4, bucket=None)
                rows.append([hwname, name, p, f"{b['buckets']} / {f['buckets']}",
                             f"{ms(b['exposed'])} / {ms(f['exposed'])}",
                             f"{pct(b['eff_layered'])} / {pct(f['eff_layered'])}",
                             f"{pct(fb['eff_no_overlap'])} / {pct(ff['eff_no_overlap'])}"])
    table(["GPU", "model", "GPUs", "buckets", "exposed all-reduce ms",
           "efficiency, buckets overlapped", "efficiency, one buffer after backward"], rows)

    print("Bucket size for the overlapped all-reduce, BERT-large phase 1, H100, MFU 45% "
          "(cells: efficiency, exposed ms; bf16 / fp32 on the wire). Each bucket pays the ring "
          "latency, which grows with the node count, so large jobs want larger buckets "
          "(`--set distributed.bucket_mb=...`):\n")
    rows = []
    hw = HARDWARE["H100"]
    for mb in (25, 100, 400):
        cells = []
        for p in GPU_COUNTS:
            b = layered_overlap(large, r, p, hw, 2, mb * 1e6)
            f = layered_overlap(large, r, p, hw, 4, mb * 1e6)
            cells.append(f"{pct(b['eff_layered'])}, {ms(b['exposed'])} / "
                         f"{pct(f['eff_layered'])}, {ms(f['exposed'])}")
        rows.append([f"{mb} MB ({b['buckets']} / {f['buckets']} buckets)"] + cells)
    table(["bucket_mb"] + [f"{p} GPUs" for p in GPU_COUNTS], rows)

    print("### Sensitivity: BERT-large phase 1 on 256 H100s, no overlap, device buffers\n")
    rows = []
    hw, r = HARDWARE["H100"], recipes["phase1"]
    for bucket in BUCKET_SENSITIVITY:
        cells = []
        for dname, nb in dtypes:
            for mfu in MFU_SENSITIVITY:
                s = step(large, r, 256, hw, nb, mfu=mfu, bucket=bucket)
                cells.append(f"{pct(s['eff_no_overlap'])} ({ms(s['t_comm'])} ms)")
        label = "one flat buffer" if bucket is None else f"{bucket // 2**20} MiB"
        if bucket == BUCKET_BYTES:
            label += " (the tables above)"
        rows.append([label] + cells)
    table(["buckets"] + [f"{d}, MFU {m:.0%}" for d, _ in dtypes for m in MFU_SENSITIVITY], rows)

    print("### NVIDIA's configuration on DGX A100 vs their published scaling\n")
    print("Compute time per sequence from NVIDIA's published 1-GPU throughput (no MFU assumed);"
          f" fp16 gradients, one flat all-reduce, no overlap; the LAMB step "
          f"({LAMB_BYTES_PER_PARAM} B/param at HBM bandwidth) added in the last model column.\n")
    rows = []
    hw = HARDWARE["A100"]
    n = param_counts(large)["total"]
    t_lamb = n * LAMB_BYTES_PER_PARAM / hw["hbm"]
    for phase in ("phase1", "phase2"):
        r, pub = recipes[phase], NVIDIA_PUBLISHED[phase]
        seq_time = 1.0 / pub["one_gpu_seq_s"]
        # Weak scaling: the per-GPU batch (and accumulation) stays; 1 GPU has no all-reduce.
        weak = dict(r, **{"global": pub["per_gpu_1node"] * 8})
        s8 = step(large, weak, 8, hw, NVIDIA_GRAD_BYTES, bucket=None, micro=pub["micro"],
                  seq_time=seq_time)
        one = pub["per_gpu_1node"] * seq_time
        rows.append([phase, "1 -> 8 GPUs (weak)", s8["acc"], ms(s8["t_compute"]),
                     ms(s8["t_comm"]), f"{pub['weak8']:.2f} ({pct(pub['weak8'] / 8)})",
                     pct(s8["eff_no_overlap"]),
                     pct((one + t_lamb) / (s8["t_compute"] + s8["t_comm"] + t_lamb))])
        # Strong scaling: global batch fixed; efficiency relative to one node.
        s256 = step(large, r, 256, hw, NVIDIA_GRAD_BYTES, bucket=None,
                    micro=pub["micro"], seq_time=seq_time)
        s8s = step(large, r, 8, hw, NVIDIA_GRAD_BYTES, bucket=None, micro=pub["micro"],
                   seq_time=seq_time)
        rel = s256["eff_no_overlap"] / s8s["eff_no_overlap"]
        t8 = s8s["t_compute"] + s8s["t_comm"] + t_lamb
        t256 = s256["t_compute"] + s256["t_comm"] + t_lamb
        rows.append([phase, "1 -> 32 nodes (strong)", s256["acc"], ms(s256["t_compute"]),
                     ms(s256["t_comm"]), f"{pub['strong32']:.2f}/32 ({pct(pub['strong32'] / 32)})",
                     pct(rel), pct(t8 / 32 / t256)])
    table(["phase", "scaling", "accumulation", "compute/step ms", "all-reduce ms",
           "NVIDIA published", "model", f"model + LAMB step ({ms(t_lamb)} ms)"], rows)

    print("The same strong scaling (NVIDIA's compute times, the LAMB step added) with bertkit's "
          "design on device buffers: bf16 on the wire, whole-layer buckets of at least 25 MB "
          "overlapped with the last micro-batch's backward pass.\n")
    rows = []
    for phase in ("phase1", "phase2"):
        r, pub = recipes[phase], NVIDIA_PUBLISHED[phase]
        seq_time = 1.0 / pub["one_gpu_seq_s"]
        res = {}
        for p in (8, 256):
            s = layered_overlap(large, r, p, hw, 2, 25e6, seq_time=seq_time, micro=pub["micro"])
            res[p] = s["t_compute"] + s["exposed"] + t_lamb
        rows.append([phase, f"{pub['strong32']:.2f}/32 ({pct(pub['strong32'] / 32)})",
                     pct(res[8] / 32 / res[256])])
    table(["phase", "NVIDIA published, 1 -> 32 nodes", "bertkit's design, model"], rows)


if __name__ == "__main__":
    sys.exit(main())
