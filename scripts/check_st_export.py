"""Check that a converted embedding model is the same sentence-transformers model as the original.

Usage:
    python scripts/check_st_export.py ORIGINAL_DIR CONVERTED_DIR BERTKIT_EMBEDDINGS_JSONL TEXTS_JSONL

Loads both folders with the real `sentence_transformers.SentenceTransformer` (offline), encodes
TEXTS_JSONL (one {"text": ...} per line) and checks:
  - the converted folder has the same modules (Transformer, Pooling, Normalize, ...) as the original;
  - its embeddings equal the original's (max abs diff <= 1e-5);
  - they equal bertkit's own (`bertkit embed --pooling mean --normalize`, the JSONL given), <= 1e-4.
Prints one line per check; exits 1 on any failure.
"""
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

original_dir, converted_dir, bertkit_jsonl, texts_jsonl = sys.argv[1:5]
texts = [json.loads(line)["text"] for line in open(texts_jsonl) if line.strip()]
failures = []


def report(name, ok, msg):
    print(f"  {'ok  ' if ok else 'FAIL'} {name:<28} {msg}")
    if not ok:
        failures.append(name)


print(f"check_st_export: {converted_dir} vs {original_dir}")
print(f"  sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}")
original = SentenceTransformer(original_dir, device="cpu")
converted = SentenceTransformer(converted_dir, device="cpu")
names = lambda m: [type(module).__name__ for module in m]
report("modules", names(original) == names(converted), " -> ".join(names(converted)))
want = original.encode(texts, convert_to_numpy=True)
got = converted.encode(texts, convert_to_numpy=True)
diff = float(np.abs(got - want).max())
report("embeddings vs original", diff <= 1e-5, f"{len(texts)} texts, max abs diff {diff:.2e}")
norms = np.linalg.norm(got, axis=1)
report("normalized", bool(np.all(np.abs(norms - 1) < 1e-5)), f"norms in [{norms.min():.6f}, {norms.max():.6f}]")
ours = np.array([json.loads(line)["embedding"] for line in open(bertkit_jsonl) if line.strip()])
diff = float(np.abs(ours - got).max()) if ours.shape == got.shape else float("inf")
report("bertkit embed vs converted", diff <= 1e-4, f"shape {ours.shape}, max abs diff {diff:.2e}")
print(f"check_st_export: {'FAIL' if failures else 'PASS'}")
sys.exit(1 if failures else 0)
