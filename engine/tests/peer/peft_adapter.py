"""The PEFT side of engine/tests/transformers_parity.rs. Usage:
python peft_adapter.py REQUEST.json OUT.json, where REQUEST names the GGUF model, the adapter
lift wrote, the prompt's token ids, the new tokens to generate greedily, and a directory for
an adapter of PEFT's own. Writes, for lift's adapter loaded by PEFT, the last position's logits
and the greedy tokens; and for PEFT's own adapter (random A and B) its last-position logits."""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

request = json.load(open(sys.argv[1]))
gguf = request["gguf"]
# transformers dequantizes the GGUF (the same Q4_1 blocks lift reads) into f32.
base = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32
).eval()
ids = torch.tensor([request["input_ids"]])
with torch.no_grad():
    lifted = PeftModel.from_pretrained(base, request["lift_adapter"]).eval()
    lift_logits = lifted(ids).logits[0, -1]
    generated = lifted.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=request["max_new_tokens"],
        do_sample=False,
        eos_token_id=request["stop_ids"],
        pad_token_id=request["stop_ids"][0],
    )[0, ids.shape[1]:]

    torch.manual_seed(0)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "down_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,  # random B too, so the adapter changes the logits
        task_type="CAUSAL_LM",
    )
    # The same base weights again, without lift's adapter (removed, not merged).
    own = get_peft_model(lifted.unload(), config).eval()
    own.save_pretrained(request["peft_adapter_dir"])
    own_logits = own(ids).logits[0, -1]

json.dump(
    {
        "lift_adapter": {
            "logits": lift_logits.tolist(),
            "generated_ids": [int(t) for t in generated if int(t) not in request["stop_ids"]],
        },
        "peft_adapter": {"logits": own_logits.tolist()},
    },
    open(sys.argv[2], "w"),
)
