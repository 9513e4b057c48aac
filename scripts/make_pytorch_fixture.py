"""Writes tests/fixtures/pytorch-bin: a tiny random BertForMaskedLM saved both as
pytorch_model.bin (torch.save, zip format) and as model.safetensors, to test that bertkit reads
PyTorch checkpoints as it reads safetensors ones.

    python scripts/make_pytorch_fixture.py tests/fixtures/pytorch-bin
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

out = sys.argv[1]
os.makedirs(os.path.join(out, "bin"), exist_ok=True)
os.makedirs(os.path.join(out, "safetensors"), exist_ok=True)
torch.manual_seed(0)
cfg = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=32)
model = BertForMaskedLM(cfg).eval()
state = {k: v.contiguous() for k, v in model.state_dict().items()}
for d in ("bin", "safetensors"):
    cfg.architectures = ["BertForMaskedLM"]
    cfg.save_pretrained(os.path.join(out, d))
torch.save(state, os.path.join(out, "bin", "pytorch_model.bin"))
# safetensors refuses shared tensors: drop the tied decoder aliases as save_pretrained does.
state = {k: v.clone() for k, v in state.items()
         if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")}
save_file(state, os.path.join(out, "safetensors", "model.safetensors"), metadata={"format": "pt"})
print("wrote", out, sorted(state)[:3], "...")
