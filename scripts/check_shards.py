#!/usr/bin/env python3
"""Check a folder written by `bertkit prep` with pyarrow, independently of bertkit's reader.

Usage: python3 scripts/check_shards.py DIR

Reads manifest.json, then every shard with pyarrow: schema (input_ids list<int32>,
token_type_ids list<int8>, next_sentence_label int8 when NSP, length int32), row counts and
token counts against the manifest, sha256 of each file, [CLS] ... [SEP] structure and
lengths <= seq_len. Prints "ok: ..." and exits 0, or names the first problem and exits 1.
"""
import hashlib
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def fail(msg):
    print(f"check_shards: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: check_shards.py DIR")
    d = Path(sys.argv[1])
    m = json.loads((d / "manifest.json").read_text())
    nsp = m["settings"]["nsp"]
    seq_len = m["settings"]["seq_len"]
    tok = json.loads((d / m["tokenizer"]["file"]).read_text())
    vocab = tok["model"]["vocab"]
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    want = {
        "input_ids": pa.list_(pa.field("item", pa.int32(), nullable=False)),
        "token_type_ids": pa.list_(pa.field("item", pa.int8(), nullable=False)),
        "length": pa.int32(),
    }
    if nsp:
        want["next_sentence_label"] = pa.int8()
    rows = tokens = 0
    for s in m["shards"]:
        path = d / s["file"]
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != s["sha256"]:
            fail(f"{path}: sha256 differs from the manifest")
        t = pq.read_table(path)
        for name, typ in want.items():
            if name not in t.schema.names:
                fail(f"{path}: no column {name}")
            if not t.schema.field(name).type.equals(typ):
                fail(f"{path}: {name} is {t.schema.field(name).type}, want {typ}")
        if t.num_rows != s["sequences"]:
            fail(f"{path}: {t.num_rows} rows, manifest says {s['sequences']}")
        ids = t.column("input_ids").to_pylist()
        lengths = t.column("length").to_pylist()
        for i, (row, n) in enumerate(zip(ids, lengths)):
            if len(row) != n or n > seq_len or row[0] != cls or row[-1] != sep:
                fail(f"{path}: row {i} malformed (length {len(row)}/{n})")
        if nsp and set(t.column("next_sentence_label").to_pylist()) - {0, 1}:
            fail(f"{path}: NSP labels other than 0/1")
        rows += t.num_rows
        tokens += sum(lengths)
    c = m["counts"]
    if (rows, tokens) != (c["sequences"], c["tokens"]):
        fail(f"totals {rows} rows / {tokens} tokens, manifest {c['sequences']} / {c['tokens']}")
    print(f"ok: {len(m['shards'])} shards, {rows} sequences, {tokens} tokens (pyarrow {pa.__version__})")


if __name__ == "__main__":
    main()
