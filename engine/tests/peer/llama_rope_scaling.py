"""Writes a small random Llama with `rope_scaling: llama3` as transformers saves it, plus the
logits transformers computes for a fixed input: the reference for
engine/tests/transformers_parity.rs. Usage: python llama_rope_scaling.py OUT_DIR"""
import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1]
torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    # Not the default 10000, so a theta that is not read shows in the logits.
    rope_theta=50000.0,
    # Wavelengths over 64 positions are divided by 8, those under 16 kept, the rest blended:
    # with head_dim 16 and theta 5e4 every one of the three bands has frequencies.
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
)
model = LlamaForCausalLM(config).eval()
# Weights of a trained model's size, so attention is not uniform and positions matter.
with torch.no_grad():
    for parameter in model.parameters():
        if parameter.dim() == 2:
            parameter.normal_(0.0, 0.2)
model.save_pretrained(out, safe_serialization=True)
ids = [(7 * i + 3) % 300 for i in range(96)]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
json.dump({"input_ids": ids, "logits": logits.tolist()}, open(f"{out}/reference.json", "w"))
