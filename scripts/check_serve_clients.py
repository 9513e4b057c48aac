#!/usr/bin/env python3
"""Calls a running `bertkit serve` with the official clients and prints what they got, as JSON,
for tests/cli_serve.rs to check against the server's own JSON endpoints:

- tritonclient[http]: health, metadata, and inference with binary and JSON tensors (text and
  pre-tokenized INT64 inputs) against the classification model CLS;
- tritonclient[http] again: inference with gzip and deflate request and response bodies, the
  model repository index, and the inference statistics;
- openai: /v1/embeddings (the client's default base64 encoding, and floats, and `dimensions`)
  against the embedding model EMB.

usage: check_serve_clients.py HOST:PORT CLS EMB
"""
import json
import sys
import urllib.request

import numpy as np
import openai
import tritonclient.http as httpclient


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def main():
    addr, cls, emb = sys.argv[1:4]
    texts = ["a quietly moving film", "the plot makes no sense at all", "naïve but charming"]
    out = {}

    client = httpclient.InferenceServerClient(url=addr)
    out["live"] = client.is_server_live()
    out["ready"] = client.is_server_ready()
    out["model_ready"] = client.is_model_ready(cls)
    meta = client.get_model_metadata(cls)
    out["outputs"] = [o["name"] for o in meta["outputs"]]
    out["server"] = client.get_server_metadata()["name"]

    expected = np.array([r["logits"] for r in post(f"http://{addr}/predict", {"inputs": texts, "model": cls})],
                        dtype=np.float32)
    for binary in (True, False):
        inp = httpclient.InferInput("TEXT", [len(texts)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
        outs = [httpclient.InferRequestedOutput("logits", binary_data=binary),
                httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        res = client.infer(cls, [inp], outputs=outs, request_id="r1")
        logits = res.as_numpy("logits")
        probs = res.as_numpy("probabilities")
        key = "binary" if binary else "json"
        out[f"{key}_shape"] = list(logits.shape)
        out[f"{key}_max_diff"] = float(np.abs(logits - expected).max())
        out[f"{key}_prob_sums"] = [float(s) for s in probs.sum(axis=1)]
        out[f"{key}_id"] = res.get_response().get("id")

    # Pre-tokenized: the ids /tokenize gives, padded, with an attention mask.
    toks = post(f"http://{addr}/tokenize", {"inputs": texts, "model": cls})
    width = max(len(t) for t in toks)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for i, t in enumerate(toks):
        ids[i, :len(t)] = [x["id"] for x in t]
        mask[i, :len(t)] = 1
    a = httpclient.InferInput("input_ids", list(ids.shape), "INT64")
    a.set_data_from_numpy(ids)
    b = httpclient.InferInput("attention_mask", list(mask.shape), "INT64")
    b.set_data_from_numpy(mask)
    res = client.infer(cls, [a, b], outputs=[httpclient.InferRequestedOutput("logits")])
    out["ids_max_diff"] = float(np.abs(res.as_numpy("logits") - expected).max())

    # Compressed bodies, both ways, as the client sends and reads them.
    for algo in ("gzip", "deflate"):
        inp = httpclient.InferInput("TEXT", [len(texts)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        res = client.infer(cls, [inp], outputs=[httpclient.InferRequestedOutput("logits")],
                           request_compression_algorithm=algo, response_compression_algorithm=algo)
        out[f"{algo}_max_diff"] = float(np.abs(res.as_numpy("logits") - expected).max())

    out["repository_index"] = client.get_model_repository_index()
    stats = client.get_inference_statistics(cls)["model_stats"][0]
    out["stats_name"] = stats["name"]
    out["stats_success"] = int(stats["inference_stats"]["success"]["count"])
    out["stats_inference_count"] = int(stats["inference_count"])
    out["stats_all"] = [m["name"] for m in client.get_inference_statistics()["model_stats"]]

    try:
        client.infer("no-such-model", [inp])
        out["unknown_model_error"] = None
    except httpclient.InferenceServerException as e:
        out["unknown_model_error"] = str(e)

    oa = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused")
    expected = np.array(post(f"http://{addr}/embed", {"inputs": texts, "model": emb}), dtype=np.float32)
    for fmt in ("default", "float"):
        kwargs = {} if fmt == "default" else {"encoding_format": "float"}
        r = oa.embeddings.create(model=emb, input=texts, **kwargs)
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        out[f"openai_{fmt}_shape"] = list(got.shape)
        out[f"openai_{fmt}_max_diff"] = float(np.abs(got - expected).max())
        out[f"openai_{fmt}_tokens"] = r.usage.prompt_tokens
    r = oa.embeddings.create(model=emb, input=texts, encoding_format="float", dimensions=64)
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    cut = expected[:, :64] / np.linalg.norm(expected[:, :64], axis=1, keepdims=True)
    out["openai_dimensions_shape"] = list(got.shape)
    out["openai_dimensions_max_diff"] = float(np.abs(got - cut).max())
    out["openai_models"] = [m.id for m in oa.models.list()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
