#!/usr/bin/env python3
"""Calls a running `bertkit serve` with the official clients and prints what they got, as JSON,
for tests/cli_serve.rs to check against the server's own JSON endpoints:

- tritonclient[http]: health, metadata, and inference with binary and JSON tensors (text and
  pre-tokenized INT64 inputs) against the classification model CLS;
- tritonclient[http] again: inference with gzip and deflate request and response bodies, the
  model repository index, and the inference statistics;
- openai: /v1/embeddings (the client's default base64 encoding, and floats, and `dimensions`)
  against the embedding model EMB;
- tritonclient[grpc], when the server's gRPC address is given: health, metadata, config,
  inference (text, pre-tokenized ids, every output or the ones asked for, gzip and deflate
  compressed requests) compared with the HTTP answers, the repository index, statistics, an
  unknown model's status; and grpcio's standard health check (grpc.health.v1).

usage: check_serve_clients.py HOST:PORT CLS EMB [GRPC_HOST:PORT]
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


def padded_ids(addr, model, texts):
    """The ids /tokenize gives, padded with zeros, and their attention mask."""
    toks = post(f"http://{addr}/tokenize", {"inputs": texts, "model": model})
    width = max(len(t) for t in toks)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for i, t in enumerate(toks):
        ids[i, :len(t)] = [x["id"] for x in t]
        mask[i, :len(t)] = 1
    return ids, mask


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
    ids, mask = padded_ids(addr, cls, texts)
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
    if len(sys.argv) > 4:
        check_grpc(sys.argv[4], addr, cls, emb, texts, out)
    print(json.dumps(out))


def check_grpc(gaddr, addr, cls, emb, texts, out):
    import grpc
    import tritonclient.grpc as grpcclient

    g = grpcclient.InferenceServerClient(url=gaddr)
    h = httpclient.InferenceServerClient(url=addr)
    out["grpc_live"] = g.is_server_live()
    out["grpc_ready"] = g.is_server_ready()
    out["grpc_model_ready"] = g.is_model_ready(cls)
    out["grpc_unknown_model_ready"] = g.is_model_ready("no-such-model")
    out["grpc_server"] = g.get_server_metadata().name
    out["grpc_outputs"] = [o.name for o in g.get_model_metadata(cls).outputs]
    config = g.get_model_config(cls).config
    out["grpc_config_inputs"] = [i.name for i in config.input]
    out["grpc_config_max_batch_size"] = config.max_batch_size

    def text_input(client, texts):
        inp = client.InferInput("TEXT", [len(texts)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        return inp

    # The same request over HTTP (binary tensors) and gRPC: the same numbers.
    want = h.infer(cls, [text_input(httpclient, texts)])
    got = g.infer(cls, [text_input(grpcclient, texts)], request_id="g1")
    for name in ("logits", "probabilities"):
        out[f"grpc_{name}_shape"] = list(got.as_numpy(name).shape)
        out[f"grpc_{name}_max_diff"] = float(np.abs(got.as_numpy(name) - want.as_numpy(name)).max())
    out["grpc_id"] = got.get_response().id
    asked = g.infer(cls, [text_input(grpcclient, texts)],
                    outputs=[grpcclient.InferRequestedOutput("probabilities")])
    out["grpc_asked_outputs"] = [o.name for o in asked.get_response().outputs]

    ids, mask = padded_ids(addr, cls, texts)
    a = grpcclient.InferInput("input_ids", list(ids.shape), "INT64")
    a.set_data_from_numpy(ids)
    b = grpcclient.InferInput("attention_mask", list(mask.shape), "INT64")
    b.set_data_from_numpy(mask)
    res = g.infer(cls, [a, b])
    out["grpc_ids_max_diff"] = float(np.abs(res.as_numpy("logits") - want.as_numpy("logits")).max())

    for algo in ("gzip", "deflate"):
        res = g.infer(cls, [text_input(grpcclient, texts)], compression_algorithm=algo)
        out[f"grpc_{algo}_max_diff"] = float(np.abs(res.as_numpy("logits") - want.as_numpy("logits")).max())

    emb_want = np.array(post(f"http://{addr}/embed", {"inputs": texts, "model": emb}), dtype=np.float32)
    res = g.infer(emb, [text_input(grpcclient, texts)])
    out["grpc_embeddings_shape"] = list(res.as_numpy("embeddings").shape)
    out["grpc_embeddings_max_diff"] = float(np.abs(res.as_numpy("embeddings") - emb_want).max())

    out["grpc_repository_index"] = [m.name for m in g.get_model_repository_index().models]
    stats = g.get_inference_statistics(cls).model_stats[0]
    out["grpc_stats_success"] = stats.inference_stats.success.count
    try:
        g.infer("no-such-model", [text_input(grpcclient, texts)])
        out["grpc_unknown_model_error"] = None
    except grpcclient.InferenceServerException as e:
        out["grpc_unknown_model_error"] = f"{e.status()} {e.message()}"

    # Kubernetes' gRPC probe: grpc.health.v1.Health/Check, status 1 = SERVING.
    channel = grpc.insecure_channel(gaddr)
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda x: x, response_deserializer=lambda x: x)
    out["grpc_health"] = list(check(b""))
    channel.close()


if __name__ == "__main__":
    main()
