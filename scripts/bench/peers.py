"""CPU forward-pass benchmark of all-MiniLM-L6-v2 (BertModel -> last_hidden_state) in PyTorch and ONNX Runtime.

Usage:
    python scripts/bench/peers.py [--model assets/all-MiniLM-L6-v2] [--threads 2]
                                  [--shapes 8x128,1x32] [--repeats 11]

Each shape is BATCHxSEQ_LEN with every token real (attention_mask all ones, input_ids drawn from
[1000, 30000) with a fixed seed, token_type_ids zeros). Both runtimes use N intra-op threads
(ORT inter-op 1). The model is exported to ONNX (opset 17, dynamic batch and sequence axes) in a
temp dir, and its output is checked against PyTorch (max abs diff <= 1e-4) before timing.
Prints versions, then one JSON line per (runtime, shape): median wall time of --repeats runs after 2 warm-ups.
Get the model with scripts/fetch-assets.sh.
"""
import argparse
import os
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "..", "assets", "all-MiniLM-L6-v2"))
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--shapes", default="8x128,1x32")
ap.add_argument("--repeats", type=int, default=11)
args = ap.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch / onnxruntime are imported
os.environ["HF_HUB_OFFLINE"] = "1"

import json, platform, statistics, tempfile, time, warnings
import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import BertModel

WARMUP = 2
torch.set_num_threads(args.threads)
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
warnings.filterwarnings("ignore")


class LastHidden(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def make_inputs(batch, seq, rng):
    return {"input_ids": rng.integers(1000, 30000, (batch, seq), dtype=np.int64),
            "attention_mask": np.ones((batch, seq), np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64)}


def export_onnx(model, path):
    """Legacy TorchScript exporter (reliable for BERT); fall back to the dynamo exporter if it is gone."""
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ex = tuple(torch.from_numpy(v) for v in make_inputs(2, 16, np.random.default_rng(0)).values())
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    try:
        torch.onnx.export(model, ex, path, opset_version=17, input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "seq"}}, dynamo=False)
        return "torchscript"
    except Exception as e:
        print(f"# legacy ONNX export failed ({type(e).__name__}: {e}); trying dynamo", file=sys.stderr)
    b, s = torch.export.Dim("batch"), torch.export.Dim("seq")
    torch.onnx.export(model, ex, path, opset_version=17, input_names=names, output_names=["last_hidden_state"],
                      dynamic_shapes={n: {0: b, 1: s} for n in names}, dynamo=True)
    return "dynamo"


def median_ms(fn):
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    model = LastHidden(BertModel.from_pretrained(args.model)).eval()  # eval on the wrapper: export restores its mode
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"# python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"onnxruntime {ort.__version__}, numpy {np.__version__}; cpu {cpu}, {os.cpu_count()} cores, "
          f"load avg {os.getloadavg()[0]:.2f}; threads {args.threads}")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            how = export_onnx(model, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    print(f"# onnx export: {how}, opset 17")

    rng = np.random.default_rng(1234)
    for batch, seq in shapes:
        feed = make_inputs(batch, seq, rng)
        tfeed = {k: torch.from_numpy(v) for k, v in feed.items()}
        with torch.no_grad():
            ref = model(**tfeed).numpy()
        diff = float(np.abs(sess.run(None, feed)[0] - ref).max())
        if diff > 1e-4:
            sys.exit(f"ONNX output differs from PyTorch for {batch}x{seq}: max abs diff {diff:.2e}")
        print(f"# {batch}x{seq}: onnxruntime vs pytorch max abs diff {diff:.2e} (ok, <= 1e-4)")

        def run_torch():
            with torch.no_grad():
                model(**tfeed)

        for runtime, fn in (("pytorch", run_torch), ("onnxruntime", lambda: sess.run(None, feed))):
            print(json.dumps({"runtime": runtime, "shape": f"{batch}x{seq}", "median_ms": round(median_ms(fn), 3),
                              "threads": args.threads}))


if __name__ == "__main__":
    main()
