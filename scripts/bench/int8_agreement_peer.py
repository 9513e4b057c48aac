#!/usr/bin/env python3
"""ONNX Runtime's int8 on a fine-tuned classifier, measured as `bertkit export` measures its int8 plans: argmax
agreement with the fp32 checkpoint and accuracy, on the same labelled inputs.

The checkpoint (a Hugging Face BertForSequenceClassification folder, e.g. `bertkit finetune` output) runs in
PyTorch fp32 (eager attention), before anything is exported: torch.onnx.export (TorchScript) leaves the model it
traced computing other logits afterwards (up to 0.27 apart on a MiniLM classifier, torch 2.15), so the export
traces a second copy. The unquantized ONNX model's largest error against that reference is printed as a check
of the export. The peer is the recipe of scripts/bench/plan_peer.py's ort-int8: torch.onnx.export
(opset 17), onnxruntime.transformers.optimizer.optimize_model(model_type="bert"), then quantize_dynamic (QInt8
weights, per_channel=True, uint8 dynamic activations). Inputs: export's calibration JSONL (`text`, `label`),
truncated to --max-length tokens, one at a time (no padding).

Usage: scripts/bench/int8_agreement_peer.py --model DIR --data FILE.jsonl [--max-length 64] [--threads 2]
Prints one JSON line: samples, agreement, checkpoint_accuracy, ort_int8_accuracy, max_abs_error,
ort_fp32_max_abs_error.
"""
import argparse
import json
import os
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    try:
        import numpy as np
        import onnxruntime as ort
        import torch
        import transformers
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as e:
        sys.exit(f"int8_agreement_peer.py: needs torch, transformers, onnx and onnxruntime: {e}")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    rows = []
    with open(a.data) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    v = json.loads(line)
                    rows.append((v["text"], v["label"]))
                except (ValueError, KeyError) as e:
                    sys.exit(f"int8_agreement_peer.py: {a.data}:{n}: {e}")
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        a.model, attn_implementation="eager").eval()
    cfg = model.config
    # Labels by name (as in config.json's label2id) or by index.
    label2id = {str(k): v for k, v in (cfg.label2id or {}).items()}
    try:
        rows = [(t, label2id[l] if isinstance(l, str) and l in label2id else int(l)) for t, l in rows]
    except ValueError as e:
        sys.exit(f"int8_agreement_peer.py: {a.data}: a label is neither a name in config.json nor an index: {e}")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    inputs = [tok(text, truncation=True, max_length=a.max_length, return_tensors="np") for text, _ in rows]
    with torch.inference_mode():
        refs = [model(**{k: torch.from_numpy(e[k]) for k in names}).logits.numpy()[0] for e in inputs]
    traced = transformers.AutoModelForSequenceClassification.from_pretrained(
        a.model, attn_implementation="eager").eval()
    with tempfile.TemporaryDirectory() as d:
        raw, opt, q8 = (os.path.join(d, f) for f in ("raw.onnx", "opt.onnx", "int8.onnx"))
        ex = tok("an example", return_tensors="pt")
        axes = {k: {0: "batch", 1: "seq"} for k in names}
        axes["logits"] = {0: "batch"}

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

        torch.onnx.export(Wrap(traced), tuple(ex[k] for k in names), raw, opset_version=17, input_names=names,
                          output_names=["logits"], dynamic_axes=axes, dynamo=False)
        optimize_model(raw, model_type="bert", num_heads=cfg.num_attention_heads,
                       hidden_size=cfg.hidden_size, opt_level=2).save_model_to_file(opt)
        import onnx
        # As plan_peer.py: the fused operators need the default tensor type spelled out.
        quantize_dynamic(opt, q8, weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(q8, so, providers=["CPUExecutionProvider"])
        fp32 = ort.InferenceSession(opt, so, providers=["CPUExecutionProvider"])
        agree = right_ckpt = right_q = 0
        worst = worst_fp32 = 0.0
        for (_, label), e, ref in zip(rows, inputs, refs):
            feed = {k: e[k].astype(np.int64) for k in names}
            got = sess.run(None, feed)[0][0]
            worst_fp32 = max(worst_fp32, float(np.abs(fp32.run(None, feed)[0][0] - ref).max()))
            worst = max(worst, float(np.abs(got - ref).max()))
            agree += int(got.argmax() == ref.argmax())
            right_ckpt += int(ref.argmax() == label)
            right_q += int(got.argmax() == label)
    n = len(rows)
    print(json.dumps({"peer": "ort-int8", "samples": n, "agreement": agree / n,
                      "checkpoint_accuracy": right_ckpt / n, "ort_int8_accuracy": right_q / n,
                      "max_abs_error": worst, "ort_fp32_max_abs_error": worst_fp32, "onnxruntime": ort.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
