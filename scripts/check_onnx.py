"""Run an ONNX model (e.g. written by bertkit's ONNX export) with onnxruntime and compare its outputs.

Usage:
    python scripts/check_onnx.py MODEL.onnx INPUTS.json

INPUTS.json:
    {"input_ids": [[...]], "attention_mask": [[...]], "token_type_ids": [[...]],
     "expected": {"OUTPUT_NAME": nested lists, ...}}
attention_mask defaults to ones and token_type_ids to zeros when absent (and the model takes them).

Runs the model on the CPU with default session options and prints one JSON object on stdout:
    {"outputs": [output names in graph order],
     "max_abs_diff": {name: max |onnx - expected|, for each expected output},
     "shapes": {name: [dims], for every output}}
Exits non-zero with a message on stderr when the model cannot be loaded or run, when an expected
output is not an output of the model, or when its shape differs from the expected one.
"""
import json
import sys


def fail(message):
    print(f"check_onnx.py: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail("usage: check_onnx.py MODEL.onnx INPUTS.json")
    model_path, inputs_path = sys.argv[1], sys.argv[2]
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        fail(f"needs numpy and onnxruntime: {e}")
    try:
        with open(inputs_path) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{inputs_path}: {e}")
    if "input_ids" not in spec:
        fail(f"{inputs_path}: no input_ids")

    try:
        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        fail(f"{model_path}: cannot load: {e}")

    input_ids = np.asarray(spec["input_ids"], dtype=np.int64)
    defaults = {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "token_type_ids": np.zeros_like(input_ids),
    }
    feed = {}
    for inp in session.get_inputs():
        if inp.name in spec:
            feed[inp.name] = np.asarray(spec[inp.name], dtype=np.int64)
        elif inp.name in defaults:
            feed[inp.name] = defaults[inp.name]
        else:
            fail(f"{model_path}: input {inp.name!r} is not in {inputs_path}")
        if feed[inp.name].shape != input_ids.shape:
            fail(f"{inputs_path}: {inp.name} has shape {list(feed[inp.name].shape)}, "
                 f"input_ids {list(input_ids.shape)}")

    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feed)
    except Exception as e:
        fail(f"{model_path}: run failed: {e}")
    results = dict(zip(names, values))

    max_abs_diff = {}
    for name, expected in spec.get("expected", {}).items():
        if name not in results:
            fail(f"{model_path}: expected output {name!r} is not an output (outputs: {names})")
        got = results[name]
        want = np.asarray(expected, dtype=np.float32)
        if got.shape != want.shape:
            fail(f"{model_path}: output {name!r} has shape {list(got.shape)}, "
                 f"expected {list(want.shape)}")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        max_abs_diff[name] = float(diff.max()) if diff.size else 0.0
        if not np.all(np.isfinite(got)):
            fail(f"{model_path}: output {name!r} has non-finite values")

    print(json.dumps({
        "outputs": names,
        "max_abs_diff": max_abs_diff,
        "shapes": {n: list(v.shape) for n, v in results.items()},
    }))


if __name__ == "__main__":
    main()
