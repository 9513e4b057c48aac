"""Peers of `bertkit bench-plan`: CPU inference of all-MiniLM-L6-v2 (BertModel) in PyTorch and ONNX Runtime.

Usage:
    python scripts/bench/plan_peer.py --model assets/all-MiniLM-L6-v2 --peer pytorch|ort-fp32|ort-int8 \
        --batch B --seq S --threads T --iters N --warmup W [--workdir /tmp/bertkit-peer-onnx]
    python scripts/bench/plan_peer.py --model assets/all-MiniLM-L6-v2 --seq S --check OUT.json [--peer a,b,..]
    python scripts/bench/plan_peer.py --peer pytorch --device cuda --dtype fp16 --batch B --seq S ...

Benchmark mode prints ONE JSON line on stdout:
    {"peer", "batch", "seq", "threads", "iters", "ms_median", "ms_mean", "ms_min", "seq_per_s", "version", ...}
(the same keys as `bertkit bench-plan`, plus a few peer details). Everything else goes to stderr.

Peers
  pytorch   transformers AutoModel (BertModel) fp32, eval(), torch.inference_mode(), torch.set_num_threads(T),
            the default attention implementation (recorded as "attn_implementation"; sdpa with transformers 5).
            --device cuda runs it on the GPU (the peer of cuda plans), in --dtype fp32, fp16 or bf16 (the
            model's weights and compute in that type, as `model.half()`); outputs come back to the host in each
            timed call, so the time includes the device synchronisation.
  ort-fp32  torch.onnx.export (TorchScript exporter, dynamo=False: the dynamo exporter needs onnxscript, which is
            not installed; opset 17, dynamic batch/sequence axes, outputs last_hidden_state + pooler_output), then
            onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads=12, hidden_size=384),
            i.e. ORT "with its transformer optimizations" (EmbedLayerNormalization, fused Attention,
            SkipLayerNormalization, BiasGelu). The export uses attn_implementation="eager": the traced sdpa graph
            of transformers 5 is not recognised by the optimizer (0 Attention fusions), eager gives all 6.
            The fusion statistics are printed on stderr. Session: intra_op_num_threads=T, inter_op_num_threads=1,
            ORT_ENABLE_ALL, CPUExecutionProvider.
  ort-int8  onnxruntime.quantization.quantize_dynamic of the optimized model: QInt8 weights, per_channel=True,
            uint8 dynamic activations (ORT's own int8: QAttention, QEmbedLayerNormalization, MatMulInteger that
            the session fuses into DynamicQuantizeMatMul). Same session options.
  (no ort-fp16: ORT's CPU execution provider has no fp16 kernels for MatMul/Attention on x86 without
   AVX512-FP16 - MLAS's fp16 GEMM is ARM64-only - so a float16-converted model runs through casts to fp32
   kernels; measured here at 32x128, 2 threads: 2956 ms fp16 vs 2960 ms fp32. Not a meaningful peer.)

The ONNX files are cached in --workdir (raw export, optimized, int8) and rebuilt when the model files, the
library versions or the recipe change (see meta.json there).

Inputs: numpy.random.default_rng(0).integers(1000, 30000, (B, S)) int64, then column 0 = 101 ([CLS]) and
column S-1 = 102 ([SEP]); attention_mask all ones; token_type_ids zeros. Every timed call runs the full forward
and brings both outputs to numpy (ORT's run returns numpy arrays; for PyTorch .numpy() of the outputs). W warm-up
calls first, then N timed calls; ms_median/mean/min over those, seq_per_s = B / median.

--check OUT.json runs each peer (default: all three) once on a batch of 2 x S of those inputs and writes
{"batch", "seq", "input_ids", "attention_mask", "token_type_ids", "outputs": {peer: {"shape", "last_hidden_state"
(flat, row-major)}}, "max_abs_diff_vs_pytorch": {peer: d}, "stats_vs_pytorch" (max / mean abs diff, min cosine of
the mean-pooled embeddings), "versions"}; the diffs also go to stderr.
"""
import argparse
import hashlib
import json
import os
import statistics
import sys
import time

PEERS = ("pytorch", "ort-fp32", "ort-int8")
OPSET = 17
# optimize_model opt_level: 2 = ORT_ENABLE_EXTENDED graph optimizations (ORT's own C++ transformer fusions) before
# the Python fusions. 99 (ORT_ENABLE_ALL) gives the same operators here but saves a machine-specific file;
# the session applies ORT_ENABLE_ALL at load time anyway.
OPT_LEVEL = 2
RECIPE = f"v1 opset{OPSET} eager-export opt{OPT_LEVEL} int8=QInt8,per_channel"


def die(msg):
    print(f"plan_peer.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def log(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


def need(module, what):
    """Import a package or exit with a clear message."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        die(f"the {what} peer needs the Python package '{module.split('.')[0]}' ({e}); "
            f"install it into {sys.executable}'s environment")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                    "assets", "all-MiniLM-L6-v2"))
    ap.add_argument("--peer", help=f"one of {', '.join(PEERS)} (with --check: a comma list, default all)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/bertkit-peer-onnx")
    ap.add_argument("--check", metavar="OUT.json", help="write each peer's outputs for a 2 x SEQ batch")
    ap.add_argument("--device", default="cpu", help="pytorch peer only: cpu or cuda[:N]")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="pytorch peer only")
    a = ap.parse_args()
    if a.check:
        a.peers = (a.peer or ",".join(PEERS)).split(",")
        a.batch = 2
    else:
        if not a.peer:
            ap.error("--peer is required (or --check OUT.json)")
        a.peers = [a.peer]
    for p in a.peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r}; expected one of {', '.join(PEERS)}")
    if (a.device != "cpu" or a.dtype != "fp32") and a.peers != ["pytorch"]:
        ap.error("--device and --dtype apply to the pytorch peer only")
    for k in ("batch", "seq", "threads", "iters"):
        if getattr(a, k) < 1:
            ap.error(f"--{k} must be >= 1")
    if a.warmup < 0:
        ap.error("--warmup must be >= 0")
    if a.seq < 2:
        ap.error("--seq must be >= 2 (first token 101, last 102)")
    a.model = os.path.abspath(a.model)
    if not os.path.isdir(a.model):
        die(f"model directory {a.model} not found (run scripts/fetch-assets.sh)")
    for f in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(a.model, f)):
            die(f"{a.model} has no {f}: expected a Hugging Face BertModel folder (run scripts/fetch-assets.sh)")
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    a.num_heads, a.hidden = cfg.get("num_attention_heads", 12), cfg.get("hidden_size", 384)
    if a.seq > cfg.get("max_position_embeddings", 512):
        die(f"--seq {a.seq} exceeds the model's max_position_embeddings {cfg.get('max_position_embeddings')}")
    return a


def make_inputs(batch, seq):
    import numpy as np
    ids = np.random.default_rng(0).integers(1000, 30000, (batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64)}


# ---------------------------------------------------------------------------------------------- PyTorch


class PyTorchPeer:
    def __init__(self, a):
        torch = need("torch", "pytorch")
        transformers = need("transformers", "pytorch")
        torch.set_num_threads(a.threads)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self.torch = torch
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            die(f"--device {a.device}: torch {torch.__version__} sees no CUDA device")
        self.device = torch.device(a.device)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
        self.model = transformers.AutoModel.from_pretrained(a.model).eval().to(self.device, dtype)
        self.attn = self.model.config._attn_implementation
        self.version = f"torch {torch.__version__}, transformers {transformers.__version__}"
        self.extra = {"attn_implementation": self.attn, "torch_threads": torch.get_num_threads(),
                      "device": a.device, "dtype": a.dtype}
        if self.device.type == "cuda":
            self.extra["card"] = torch.cuda.get_device_name(self.device)
        log(f"pytorch: {type(self.model).__name__} {a.dtype} on {a.device}, attn_implementation={self.attn}, "
            f"torch threads {torch.get_num_threads()}, {self.version}")

    def prepare(self, feed):
        self.tfeed = {k: self.torch.from_numpy(v).to(self.device) for k, v in feed.items()}

    def run(self):
        with self.torch.inference_mode():
            out = self.model(**self.tfeed)
            return (out.last_hidden_state.float().cpu().numpy(), out.pooler_output.float().cpu().numpy())


# ------------------------------------------------------------------------------------------ ONNX Runtime


def _fingerprint(a, ort):
    h = hashlib.sha256(RECIPE.encode())
    for f in sorted(os.listdir(a.model)):
        p = os.path.join(a.model, f)
        if os.path.isfile(p):
            st = os.stat(p)
            h.update(f"{f}:{st.st_size}:{int(st.st_mtime)}".encode())
    h.update(f"ort {ort.__version__}".encode())
    return h.hexdigest()[:16]


def _atomic(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def export_raw(a, path):
    torch = need("torch", "ort (ONNX export)")
    transformers = need("transformers", "ort (ONNX export)")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    import warnings
    torch.set_num_threads(a.threads)
    bert = transformers.AutoModel.from_pretrained(a.model, attn_implementation="eager").eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            o = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return o.last_hidden_state, o.pooler_output

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ex = tuple(torch.from_numpy(v) for v in make_inputs(2, 16).values())
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}
    axes["pooler_output"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(bert).eval(), ex, path, opset_version=OPSET, input_names=names,
                          output_names=["last_hidden_state", "pooler_output"], dynamic_axes=axes, dynamo=False)
    return f"torch {torch.__version__} TorchScript exporter (dynamo=False), opset {OPSET}, eager attention"


def build_onnx(a, want_int8):
    """Return (paths, meta), building the cached files as needed."""
    ort = need("onnxruntime", "ort")
    os.makedirs(a.workdir, exist_ok=True)
    raw, opt, q8 = (os.path.join(a.workdir, f) for f in
                    ("minilm-fp32-raw.onnx", "minilm-fp32-opt.onnx", "minilm-int8.onnx"))
    meta_path = os.path.join(a.workdir, "meta.json")
    fp = _fingerprint(a, ort)
    meta = {}
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {}
    if meta.get("fingerprint") != fp or meta.get("model") != a.model:
        meta = {"fingerprint": fp, "model": a.model, "recipe": RECIPE}
        for p in (raw, opt, q8):
            if os.path.exists(p):
                os.remove(p)

    def save_meta():
        _atomic(meta_path, lambda t: json.dump(meta, open(t, "w"), indent=1))

    if not (os.path.isfile(raw) and "export" in meta):
        log(f"exporting {a.model} to {raw}")
        try:
            meta["export"] = export_raw(a, raw + ".tmp.onnx")
        except Exception as e:
            die(f"ONNX export failed: {type(e).__name__}: {e}")
        os.replace(raw + ".tmp.onnx", raw)
        save_meta()
    if not (os.path.isfile(opt) and "fusions" in meta):
        need("onnx", "ort")
        from onnxruntime.transformers.optimizer import optimize_model
        log(f"optimizing {raw} (onnxruntime.transformers optimizer, model_type=bert, "
            f"num_heads={a.num_heads}, hidden_size={a.hidden}, opt_level={OPT_LEVEL})")
        m = optimize_model(raw, model_type="bert", num_heads=a.num_heads, hidden_size=a.hidden,
                           opt_level=OPT_LEVEL, use_gpu=False)
        meta["fusions"] = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
        meta["optimizer"] = f"onnxruntime {ort.__version__} optimize_model(model_type=bert, opt_level={OPT_LEVEL})"
        _atomic(opt, lambda t: m.save_model_to_file(t, use_external_data_format=False))
        save_meta()
    if want_int8 and not (os.path.isfile(q8) and "int8" in meta):
        onnx = need("onnx", "ort-int8")
        from onnxruntime.quantization import QuantType, quantize_dynamic
        log(f"quantizing {opt} -> {q8} (quantize_dynamic, QInt8 weights, per_channel)")
        # DefaultTensorType: shape inference cannot type the outputs of the com.microsoft fused ops.
        kw = dict(weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        tmp = q8 + f".tmp{os.getpid()}.onnx"
        try:
            quantize_dynamic(opt, tmp, per_channel=True, **kw)
            how = "QInt8 weights, per_channel=True"
        except Exception as e:
            log(f"per-channel quantization failed ({type(e).__name__}: {e}); per-tensor instead")
            quantize_dynamic(opt, tmp, per_channel=False, **kw)
            how = "QInt8 weights, per_channel=False"
        os.replace(tmp, q8)
        ops = {}
        for n in onnx.load(q8).graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        meta["int8"] = f"onnxruntime {ort.__version__} quantize_dynamic, {how}, uint8 dynamic activations"
        meta["int8_ops"] = ops
        save_meta()
    return {"raw": raw, "opt": opt, "int8": q8}, meta


class OrtPeer:
    def __init__(self, a, int8):
        ort = need("onnxruntime", "ort")
        need("numpy", "ort")
        paths, meta = build_onnx(a, int8)
        log(f"onnx export: {meta['export']}")
        log(f"fused operator statistics (optimize_model): {json.dumps(meta['fusions'])}")
        if int8:
            log(f"int8: {meta['int8']}; operators: {json.dumps(meta['int8_ops'])}")
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        path = paths["int8" if int8 else "opt"]
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]
        self.version = f"onnxruntime {ort.__version__}"
        self.extra = {"fusions": meta["fusions"], "model_file": path}
        log(f"{'ort-int8' if int8 else 'ort-fp32'}: {path}, {self.version}, providers {self.sess.get_providers()}, "
            f"intra_op {a.threads}, inter_op 1, ORT_ENABLE_ALL")

    def prepare(self, feed):
        self.feed = {k: feed[k] for k in self.names}

    def run(self):
        return tuple(self.sess.run(None, self.feed))


def make_peer(name, a):
    if name == "pytorch":
        return PyTorchPeer(a)
    return OrtPeer(a, int8=(name == "ort-int8"))


# ------------------------------------------------------------------------------------------------- main


def bench(a):
    peer = make_peer(a.peer, a)
    peer.prepare(make_inputs(a.batch, a.seq))
    for _ in range(a.warmup):
        peer.run()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        peer.run()
        times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(json.dumps({"peer": a.peer, "batch": a.batch, "seq": a.seq, "threads": a.threads, "iters": a.iters,
                      "ms_median": round(med, 4), "ms_mean": round(statistics.fmean(times), 4),
                      "ms_min": round(min(times), 4), "seq_per_s": round(a.batch * 1e3 / med, 3),
                      "version": peer.version, **peer.extra,
                      "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)


def check(a):
    np = need("numpy", "check")
    feed = make_inputs(a.batch, a.seq)
    outs, versions = {}, {}
    for name in a.peers:
        peer = make_peer(name, a)
        peer.prepare(feed)
        outs[name] = np.asarray(peer.run()[0], dtype=np.float32)
        versions[name] = peer.version
        del peer
    diffs, stats = {}, {}
    if "pytorch" in outs:
        ref = outs["pytorch"]
        for name, o in outs.items():
            if name != "pytorch":
                d = float(np.abs(o - ref).max())
                # Mean-pooled sentence embeddings (what all-MiniLM-L6-v2 is used for): cosine to PyTorch's.
                e, r = o.mean(1), ref.mean(1)
                cos = (e * r).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1))
                diffs[name] = d
                stats[name] = {"max_abs_diff": d, "mean_abs_diff": float(np.abs(o - ref).mean()),
                               "min_mean_pooled_cosine": float(cos.min())}
                print(f"{name} vs pytorch ({a.batch}x{a.seq}): last_hidden_state max abs diff {d:.3e}, "
                      f"mean abs diff {stats[name]['mean_abs_diff']:.3e}, mean-pooled cosine >= {cos.min():.6f}",
                      file=sys.stderr)
    doc = {"batch": a.batch, "seq": a.seq, **{k: v.tolist() for k, v in feed.items()},
           "outputs": {n: {"shape": list(o.shape), "last_hidden_state": o.ravel().tolist()} for n, o in outs.items()},
           "max_abs_diff_vs_pytorch": diffs, "stats_vs_pytorch": stats, "versions": versions}
    os.makedirs(os.path.dirname(os.path.abspath(a.check)), exist_ok=True)
    with open(a.check, "w") as f:
        json.dump(doc, f)
    log(f"wrote {a.check}")


def main():
    a = parse_args()
    # Before torch / onnxruntime are imported.
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.check:
        check(a)
    else:
        bench(a)


if __name__ == "__main__":
    main()
