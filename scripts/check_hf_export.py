"""Check a Hugging Face layout folder (e.g. written by bertkit's HF export) against reference outputs.

Usage:
    python scripts/check_hf_export.py EXPORTED_DIR REFERENCE_JSON
    python scripts/check_hf_export.py EXPORTED_DIR REFERENCE_DIR   # = REFERENCE_DIR/reference_outputs.json

EXPORTED_DIR holds config.json, model.safetensors and tokenizer files. REFERENCE_JSON is either
  - minilm_reference.json (base model: inputs, input_ids, last_hidden_state, pooler_output, mean_pooled, ...), or
  - a reference_outputs.json from make_reference.py (input_ids, token_type_ids, attention_mask + head outputs).
EXPORTED_DIR is loaded offline with transformers (the class named in config.json `architectures[0]`,
AutoModel, AutoTokenizer), and checked:
  - no model weight missing from the checkpoint (the pooler may be, for heads without one);
  - the tokenizer reproduces the reference input_ids (when the reference has raw `inputs`);
  - every reference output present matches, max abs diff <= 1e-4 (last_hidden_state at padding: 1e-3,
    those positions are meaningless and numerically touchy);
  - if the reference JSON's folder holds model.safetensors (and is not EXPORTED_DIR), the weights equal
    those (max abs diff <= 1e-6): small random heads barely move the outputs, so this is the sharp check.
Prints one line per check; exits 1 on any mismatch.
"""
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

TOL = 1e-4
failures = []


def check(name, got, want, tol=TOL):
    got, want = got.detach().float(), torch.tensor(want, dtype=torch.float32)
    if got.shape != want.shape:
        ok, msg = False, f"shape {tuple(got.shape)} != reference {tuple(want.shape)}"
    else:
        diff = (got - want).abs().max().item()
        ok, msg = diff <= tol, f"max abs diff {diff:.2e}"
    print(f"  {'ok  ' if ok else 'FAIL'} {name:<26} {msg}")
    if not ok:
        failures.append(name)


def check_argmax(name, logits, want):
    """argmax must match, except at near-ties (logit at the reference index within TOL of the max)."""
    want = torch.tensor(want)
    got = logits.argmax(-1)
    at_ref = logits.gather(-1, want.unsqueeze(-1)).squeeze(-1)
    bad = ((got != want) & (logits.max(-1).values - at_ref > TOL)).sum().item()
    print(f"  {'ok  ' if bad == 0 else 'FAIL'} {name:<26} {(got != want).sum().item()} differ, {bad} beyond tolerance")
    if bad:
        failures.append(name)


def tokenize(tok, items):
    """Same batching as make_reference.py: a 2-list is a sentence pair; pad to the longest."""
    if all(isinstance(i, str) for i in items):
        return tok(items, padding=True, return_tensors="pt")
    encs = [tok(i) if isinstance(i, str) else tok(i[0], i[1]) for i in items]
    return tok.pad(encs, return_tensors="pt")


def load(cls, path, allowed_missing=(), quiet=False):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    if quiet:
        return model.eval()
    missing = [k for k in info["missing_keys"] if not k.startswith(allowed_missing)]
    bad = missing + list(info.get("mismatched_keys", []))
    print(f"  {'ok  ' if not bad else 'FAIL'} {'load ' + cls.__name__:<26} missing={missing or 'none'}"
          f"{' (pooler not needed)' if allowed_missing else ''} mismatched={info.get('mismatched_keys') or 'none'}")
    if bad:
        failures.append(f"load {cls.__name__}")
    return model.eval()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, ref_path = sys.argv[1], sys.argv[2]
    ref_dir = ref_path if os.path.isdir(ref_path) else os.path.dirname(ref_path)
    if os.path.isdir(ref_path):
        ref_path = os.path.join(ref_path, "reference_outputs.json")
    ref_weights = os.path.exists(os.path.join(ref_dir, "model.safetensors")) and \
        os.path.realpath(ref_dir) != os.path.realpath(path)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    ref = json.load(open(ref_path))
    arch = json.load(open(os.path.join(path, "config.json"))).get("architectures", ["BertModel"])[0]
    print(f"check_hf_export: {path} vs {ref_path}")
    print(f"  transformers {transformers.__version__}, torch {torch.__version__}, architecture {arch}")

    tok = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor(ref["input_ids"])
    enc = {"input_ids": ids, "token_type_ids": torch.tensor(ref["token_type_ids"]),
           "attention_mask": torch.tensor(ref["attention_mask"])}
    if "inputs" in ref:
        got = tokenize(tok, ref["inputs"])
        for k in enc:
            same = got[k].tolist() == ref[k]
            print(f"  {'ok  ' if same else 'FAIL'} {'tokenizer ' + k:<26} shape {tuple(got[k].shape)}")
            if not same:
                failures.append(f"tokenizer {k}")
    else:  # no raw text in the reference: check the special tokens at least
        same = (ids[:, 0] == tok.cls_token_id).all().item() and tok.pad_token_id == 0
        print(f"  {'ok  ' if same else 'FAIL'} {'tokenizer specials':<26} cls={tok.cls_token_id} pad={tok.pad_token_id}")
        if not same:
            failures.append("tokenizer specials")

    head_cls = getattr(transformers, arch)
    head = load(head_cls, path)
    if head_cls is transformers.BertModel:
        base = head
    else:  # token classification / QA heads have no pooler, so the bare model may lack its weights
        no_pooler = getattr(head.base_model, "pooler", None) is None
        base = load(AutoModel, path, ("pooler.",) if no_pooler else ())
    if ref_weights:  # the reference folder has the original weights: they must round-trip
        want = load(head_cls, ref_dir, quiet=True).state_dict()
        got = head.state_dict()
        same_keys = set(got) == set(want)
        diff = max(((got[k] - want[k]).abs().max().item() for k in want if k in got and got[k].shape == want[k].shape),
                   default=0.0)
        bad = [k for k in want if k in got and got[k].shape != want[k].shape]
        ok = same_keys and not bad and diff <= 1e-6
        print(f"  {'ok  ' if ok else 'FAIL'} {'weights vs reference':<26} {len(want)} tensors, max abs diff {diff:.2e}"
              f"{'' if same_keys else ', key sets differ'}{', shapes differ: ' + str(bad) if bad else ''}")
        if not ok:
            failures.append("weights vs reference")

    with torch.no_grad():
        out = base(**enc)
        h = out.last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        mean = (h * mask).sum(1) / mask.sum(1)
        base_outputs = {"last_hidden_state": h, "pooler_output": out.pooler_output, "mean_pooled": mean,
                        "mean_pooled_normalized": torch.nn.functional.normalize(mean, dim=-1)}
        for k, v in base_outputs.items():
            if k in ref and k != "last_hidden_state":
                check(k, v, ref[k])
        if "last_hidden_state" in ref:  # padding positions are meaningless and numerically touchy (~7e-5 seen)
            real, want = enc["attention_mask"].bool(), torch.tensor(ref["last_hidden_state"])
            check("last_hidden_state (real)", h[real], want[real].tolist())
            if (~real).any():
                check("last_hidden_state (pad)", h[~real], want[~real].tolist(), 1e-3)
        if head is not base:
            o = head(**enc)
            check("AutoModel == head encoder", h, head.base_model(**enc).last_hidden_state.tolist(), 0.0)
            if "prediction_logits_first64" in ref:
                pl = o.prediction_logits
                check("prediction_logits_first64", pl[:, :, :64], ref["prediction_logits_first64"])
                check("prediction_logsumexp", torch.logsumexp(pl, dim=-1), ref["prediction_logsumexp"])
                check_argmax("prediction_argmax", pl, ref["prediction_argmax"])
            for k in ("seq_relationship_logits", "logits", "start_logits", "end_logits"):
                if k in ref:
                    check(k, getattr(o, k), ref[k])

    print(f"check_hf_export: {'FAILED: ' + ', '.join(failures) if failures else 'PASS'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
