"""Check a fine-tuned Hugging Face layout folder (e.g. one bertkit wrote) with transformers itself.

Usage:
    python scripts/check_hf_finetuned.py MODEL_DIR INPUTS.jsonl EXPECTED.jsonl [--tol 1e-4]
        [--max-length N] [--batch-size 16]

MODEL_DIR holds config.json, model.safetensors (or pytorch_model.bin) and the tokenizer files.
config.json `architectures[0]` picks the loader:
    *ForSequenceClassification -> AutoModelForSequenceClassification
    *ForTokenClassification    -> AutoModelForTokenClassification
    *ForQuestionAnswering      -> AutoModelForQuestionAnswering
The folder is loaded offline, in float32, with output_loading_info=True, and checked:
  - the class transformers instantiates is the one named in `architectures`;
  - no missing, unexpected or mis-shaped weight, no loading error;
  - id2label round-trips: config.json's id2label (string keys) equals the loaded config's
    id2label (int keys), label2id is its inverse (and equals config.json's label2id, when given),
    num_labels = the number of labels = the head's output width, and the config serialized again
    has the same id2label and label2id as the file (QA heads have no labels; for them only the
    two-logit head is checked);
  - the logits of the model in eval mode on INPUTS.jsonl match EXPECTED.jsonl, line by line,
    max abs diff <= --tol (default 1e-4).
Rows (INPUTS -> EXPECTED):
  sequence classification {"text": ..., "text_pair"?: ...} -> {"logits": [num_labels floats]}
  token classification    {"text": ..., "text_pair"?: ...} -> {"logits": [[num_labels floats], ...]}
                          one row per non-pad token, [CLS] and [SEP] included
  question answering      {"question": ..., "context": ...} -> {"start_logits": [...], "end_logits": [...]}
                          over the non-pad tokens of the (question, context) pair
Tokenization: the folder's tokenizer (AutoTokenizer), truncation to --max-length (default: the
config's max_position_embeddings; longest text first for pairs), inputs batched by --batch-size
and padded to the longest in the batch. Padding and truncation are given explicitly, so a
tokenizer.json that turns on fixed padding or truncation (all-MiniLM-L6-v2's does, to 128) has no
effect. Pad positions are dropped before comparing.
On success prints one JSON line {"architecture", "rows", "max_abs_diff", "tolerance", "labels"}
and exits 0; otherwise prints what is wrong to stderr and exits 1.
"""
import argparse
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)

LOADERS = [
    ("ForSequenceClassification", "seq", AutoModelForSequenceClassification),
    ("ForTokenClassification", "tok", AutoModelForTokenClassification),
    ("ForQuestionAnswering", "qa", AutoModelForQuestionAnswering),
]


class CheckError(Exception):
    pass


def read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CheckError(f"{path}:{lineno}: not JSON ({e})")
            if not isinstance(obj, dict):
                raise CheckError(f"{path}:{lineno}: expected a JSON object")
            rows.append((lineno, obj))
    return rows


def field(path, lineno, obj, key, kind=str, optional=False):
    if key not in obj:
        if optional:
            return None
        raise CheckError(f"{path}:{lineno}: missing \"{key}\"")
    if not isinstance(obj[key], kind):
        raise CheckError(f"{path}:{lineno}: \"{key}\" must be a {kind.__name__}")
    return obj[key]


def load_model(model_dir):
    cfg_path = os.path.join(model_dir, "config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckError(f"{cfg_path}: {e}")
    archs = cfg.get("architectures") or []
    if not archs:
        raise CheckError(f"{cfg_path}: no `architectures`")
    arch = archs[0]
    for suffix, task, loader in LOADERS:
        if arch.endswith(suffix):
            break
    else:
        raise CheckError(f"{cfg_path}: architecture {arch} is not a sequence/token classification or QA head")
    try:
        model, info = loader.from_pretrained(model_dir, output_loading_info=True, dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds; name the folder
        raise CheckError(f"{model_dir}: transformers could not load it with {loader.__name__}: {e}")
    problems = []
    if type(model).__name__ != arch:
        problems.append(f"{loader.__name__} made a {type(model).__name__}, config.json names {arch}")
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        vals = info.get(key) or []
        if vals:
            problems.append(f"{key.replace('_', ' ')}: {sorted(map(str, vals))}")
    if problems:
        raise CheckError(f"{model_dir}: " + "; ".join(problems))
    return cfg, arch, task, model


def check_labels(cfg, task, model):
    """id2label/label2id: file -> loaded config -> serialized again, all the same."""
    mc = model.config
    problems = []
    n_out = {"seq": lambda: model.classifier.out_features, "tok": lambda: model.classifier.out_features,
             "qa": lambda: model.qa_outputs.out_features}[task]()
    if task == "qa":
        if n_out != 2:
            problems.append(f"QA head has {n_out} outputs, want 2")
        return problems, {str(k): v for k, v in sorted(mc.id2label.items())}
    file_id2label = cfg.get("id2label")
    if not isinstance(file_id2label, dict) or not file_id2label:
        problems.append("config.json has no id2label")
        return problems, {}
    try:
        want = {int(k): v for k, v in file_id2label.items()}
    except ValueError:
        problems.append(f"config.json id2label keys are not integers: {list(file_id2label)}")
        return problems, {}
    if sorted(want) != list(range(len(want))):
        problems.append(f"config.json id2label ids are not 0..{len(want) - 1}: {sorted(want)}")
    if dict(mc.id2label) != want:
        problems.append(f"loaded id2label {dict(mc.id2label)} != config.json's {want}")
    inverse = {v: k for k, v in want.items()}
    if len(inverse) != len(want):
        problems.append(f"id2label has duplicate labels: {want}")
    if dict(mc.label2id) != inverse:
        problems.append(f"loaded label2id {dict(mc.label2id)} is not the inverse of id2label {want}")
    if "label2id" in cfg and cfg["label2id"] != {v: k for k, v in want.items()}:
        problems.append(f"config.json label2id {cfg['label2id']} is not the inverse of its id2label")
    if mc.num_labels != len(want) or n_out != len(want):
        problems.append(f"num_labels {mc.num_labels}, head outputs {n_out}, labels {len(want)}: must agree")
    again = json.loads(mc.to_json_string())
    if again.get("id2label") != file_id2label:
        problems.append(f"id2label serialized again {again.get('id2label')} != config.json's {file_id2label}")
    if "label2id" in cfg and again.get("label2id") != cfg["label2id"]:
        problems.append(f"label2id serialized again {again.get('label2id')} != config.json's {cfg['label2id']}")
    return problems, {str(k): v for k, v in sorted(want.items())}


def run_model(model, tok, task, inputs_path, rows, max_length, batch_size):
    """Returns, per row, a dict of float tensors over the non-pad tokens."""
    outs = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        if task == "qa":
            a = [field(inputs_path, ln, o, "question") for ln, o in chunk]
            b = [field(inputs_path, ln, o, "context") for ln, o in chunk]
        else:
            a = [field(inputs_path, ln, o, "text") for ln, o in chunk]
            b = [field(inputs_path, ln, o, "text_pair", optional=True) for ln, o in chunk]
            if any(x is None for x in b) and any(x is not None for x in b):
                # mixed singles and pairs in one batch: tokenize one at a time
                for row in chunk:
                    outs.extend(run_model(model, tok, task, inputs_path, [row], max_length, 1))
                continue
            if all(x is None for x in b):
                b = None
        enc = tok(a, b, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc)
        mask = enc["attention_mask"].bool()
        for i in range(len(chunk)):
            if task == "seq":
                outs.append({"logits": out.logits[i]})
            elif task == "tok":
                outs.append({"logits": out.logits[i][mask[i]]})
            else:
                outs.append({"start_logits": out.start_logits[i][mask[i]], "end_logits": out.end_logits[i][mask[i]]})
    return outs


def compare(task, outs, expected_path, expected, tol):
    keys = ["start_logits", "end_logits"] if task == "qa" else ["logits"]
    worst, worst_at, problems = 0.0, None, []
    for (lineno, row), got in zip(expected, outs):
        for k in keys:
            if k not in row:
                problems.append(f"{expected_path}:{lineno}: missing \"{k}\"")
                continue
            try:
                want = torch.tensor(row[k], dtype=torch.float32)
            except (TypeError, ValueError) as e:
                problems.append(f"{expected_path}:{lineno}: \"{k}\" is not a numeric array ({e})")
                continue
            g = got[k]
            if tuple(want.shape) != tuple(g.shape):
                problems.append(f"{expected_path}:{lineno}: \"{k}\" shape {tuple(want.shape)}, "
                                f"transformers gives {tuple(g.shape)}")
                continue
            if not torch.isfinite(want).all():
                problems.append(f"{expected_path}:{lineno}: \"{k}\" holds NaN or inf")
                continue
            d = (g - want).abs().max().item() if want.numel() else 0.0
            if d > worst:
                worst, worst_at = d, f"{expected_path}:{lineno} \"{k}\""
            if d > tol:
                problems.append(f"{expected_path}:{lineno}: \"{k}\" max abs diff {d:.3e} > {tol:g}")
    return worst, worst_at, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("inputs")
    ap.add_argument("expected")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    try:
        cfg, arch, task, model = load_model(args.model_dir)
        model.eval()
        problems, labels = check_labels(cfg, task, model)
        if problems:
            raise CheckError(f"{args.model_dir}: " + "; ".join(problems))
        try:
            tok = AutoTokenizer.from_pretrained(args.model_dir)
        except Exception as e:
            raise CheckError(f"{args.model_dir}: AutoTokenizer could not load the tokenizer: {e}")
        inputs, expected = read_jsonl(args.inputs), read_jsonl(args.expected)
        if not inputs:
            raise CheckError(f"{args.inputs}: no rows")
        if len(inputs) != len(expected):
            raise CheckError(f"{args.inputs} has {len(inputs)} rows, {args.expected} has {len(expected)}")
        max_length = args.max_length or cfg.get("max_position_embeddings", 512)
        outs = run_model(model, tok, task, args.inputs, inputs, max_length, max(1, args.batch_size))
        worst, worst_at, problems = compare(task, outs, args.expected, expected, args.tol)
        if problems:
            shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
            raise CheckError(f"{len(problems)} mismatch(es) against transformers ({arch}):\n  " + "\n  ".join(shown))
    except CheckError as e:
        print(f"check_hf_finetuned: FAIL {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"architecture": arch, "rows": len(inputs), "max_abs_diff": worst, "worst": worst_at,
                      "tolerance": args.tol, "labels": labels}))


if __name__ == "__main__":
    main()
