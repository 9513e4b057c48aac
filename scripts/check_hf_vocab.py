#!/usr/bin/env python3
"""Load a `bertkit vocab` folder with Hugging Face and print how it tokenizes some text.

Usage: python3 scripts/check_hf_vocab.py DIR TEXT...

Loads DIR three ways — transformers' AutoTokenizer (tokenizer.json + tokenizer_config.json),
transformers' BertTokenizer built from vocab.txt alone, and the `tokenizers` library — checks
that all three give the same ids for every TEXT (with [CLS]/[SEP]), and prints one JSON object:
{"class": ..., "ids": [[...], ...]}. Exits 1 naming the first disagreement.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer, BertTokenizer  # noqa: E402


def main():
    d, texts = sys.argv[1], sys.argv[2:]
    auto = AutoTokenizer.from_pretrained(d)
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
    vocab = os.path.join(d, "vocab.txt")
    try:  # transformers >= 5 takes `vocab`, 4.x `vocab_file`
        slow = BertTokenizer(vocab=vocab, do_lower_case=cfg["do_lower_case"])
    except TypeError:
        slow = BertTokenizer(vocab_file=vocab, do_lower_case=cfg["do_lower_case"])
    raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    ids = []
    for t in texts:
        a = auto(t)["input_ids"]
        s = slow(t)["input_ids"]
        r = raw.encode(t).ids
        if not (a == s == r):
            print(f"check_hf_vocab: {t!r}: AutoTokenizer {a}, BertTokenizer {s}, tokenizers {r}", file=sys.stderr)
            sys.exit(1)
        if auto.mask_token != "[MASK]" or auto.pad_token_id != 0:
            print(f"check_hf_vocab: special tokens wrong: {auto.mask_token} {auto.pad_token_id}", file=sys.stderr)
            sys.exit(1)
        ids.append(a)
    print(json.dumps({"class": type(auto).__name__, "ids": ids}))


if __name__ == "__main__":
    main()
