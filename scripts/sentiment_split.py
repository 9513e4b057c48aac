"""Split the Rotten Tomatoes sentiment snippets into a fixed train/validation pair of JSONL files.

Usage:
    python scripts/sentiment_split.py SRC OUTDIR [--seed 13] [--train-fraction 0.8]

SRC is movieReviewSnippets_GroundTruth.txt (PyPI vaderSentiment==3.3.2 sdist,
additional_resources/hutto_ICWSM_2014.tar.gz): one row per line, `id<TAB>score<TAB>sentence`,
score in [-4, 4], CRLF line ends (the last line has none). 10,605 rows, ids 1..10605.

Rows:
  - label = the sign of the score: "positive" (> 0) or "negative" (< 0); rows with score 0 are
    dropped (37 in this file);
  - the sentence is stripped of surrounding whitespace (and the CR of the CRLF);
  - the kept rows, in file order, are shuffled with Python's random.Random(seed).shuffle; the
    first floor(train_fraction * n) are train, the rest validation (seed 13, 0.8: 8454 / 2114).
Output: OUTDIR/train.jsonl and OUTDIR/validation.jsonl, UTF-8, one JSON object a line, in the
shuffled order: {"id": int, "sentence": str, "label": "positive"|"negative", "score": float}.
Each file is written to a temp name and renamed into place.

Encoding: each line is decoded as strict UTF-8 (the whole file is valid UTF-8: 133 lines hold
non-ASCII characters such as "clichés", all well-formed). A line that is not valid UTF-8 is
decoded as Latin-1 instead (every byte maps to one character, so nothing is lost) and reported on
stderr with its line number; --strict makes such a line an error instead.
A malformed line (not 3 tab-separated fields, id not an integer, score not a number, empty
sentence) is an error naming the line. Standard library only.
"""
import argparse
import json
import os
import random
import sys


def fail(msg):
    print(f"sentiment_split: ERROR {msg}", file=sys.stderr)
    sys.exit(1)


def read_rows(path, strict):
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows, fallback = [], []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if strict:
                fail(f"{path}:{lineno}: not valid UTF-8 ({e})")
            line = raw.decode("latin-1")
            fallback.append(lineno)
        parts = line.split("\t", 2)
        if len(parts) != 3:
            fail(f"{path}:{lineno}: expected id<TAB>score<TAB>sentence, got {len(parts)} field(s)")
        id_s, score_s, sentence = parts
        try:
            rid = int(id_s)
        except ValueError:
            fail(f"{path}:{lineno}: id {id_s!r} is not an integer")
        try:
            score = float(score_s)
        except ValueError:
            fail(f"{path}:{lineno}: score {score_s!r} is not a number")
        if score != score:  # NaN
            fail(f"{path}:{lineno}: score is NaN")
        sentence = sentence.strip()
        if not sentence:
            fail(f"{path}:{lineno}: empty sentence")
        rows.append({"id": rid, "sentence": sentence, "score": score})
    if fallback:
        shown = ", ".join(map(str, fallback[:20])) + (" ..." if len(fallback) > 20 else "")
        print(f"sentiment_split: WARNING {len(fallback)} line(s) not valid UTF-8, decoded as Latin-1: "
              f"line {shown}", file=sys.stderr)
    return rows, len(fallback)


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "sentence": r["sentence"], "label": r["label"],
                                "score": r["score"]}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--train-fraction", type=float, default=0.8)
    ap.add_argument("--strict", action="store_true", help="a line that is not valid UTF-8 is an error")
    args = ap.parse_args()
    if not 0.0 < args.train_fraction < 1.0:
        fail("--train-fraction must be in (0, 1)")

    rows, n_fallback = read_rows(args.src, args.strict)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        fail(f"{args.src}: duplicate ids")
    kept = []
    for r in rows:
        if r["score"] > 0:
            r["label"] = "positive"
        elif r["score"] < 0:
            r["label"] = "negative"
        else:
            continue
        kept.append(r)
    random.Random(args.seed).shuffle(kept)
    n_train = int(len(kept) * args.train_fraction)
    train, val = kept[:n_train], kept[n_train:]

    os.makedirs(args.outdir, exist_ok=True)
    write_jsonl(os.path.join(args.outdir, "train.jsonl"), train)
    write_jsonl(os.path.join(args.outdir, "validation.jsonl"), val)

    def pn(rs):
        p = sum(r["label"] == "positive" for r in rs)
        return f"{len(rs)} ({p} positive, {len(rs) - p} negative)"

    print(f"sentiment_split: {len(rows)} rows, {len(rows) - len(kept)} with score 0 dropped, "
          f"{len(kept)} kept (seed {args.seed}) -> train {pn(train)}, validation {pn(val)}"
          + (f"; {n_fallback} line(s) decoded as Latin-1" if n_fallback else ""))


if __name__ == "__main__":
    main()
