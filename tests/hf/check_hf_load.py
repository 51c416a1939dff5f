#!/usr/bin/env python3
"""Check that a model steermoe saved loads in transformers and gives steermoe's logits.

Usage: check_hf_load.py MODEL_DIR STEERMOE_FORWARD.safetensors IDS [IDS ...]
  MODEL_DIR                  a Hub-layout directory written by steermoe (save / train export)
  STEERMOE_FORWARD           the output of `steermoe forward --model MODEL_DIR --input-ids ...`
  IDS                        the same ids, one comma-separated row per argument

Any architecture steermoe writes (OLMoE, Qwen3-MoE: transformers picks the class from
config.json); router logits are those of the MoE layers, in order, on both sides.
Prints one JSON line: max abs error of logits and router logits, and whether they pass.
Runs where transformers is installed (the device machine).
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    model_dir, forward_file, *rows = sys.argv[1:]
    ids = torch.tensor([[int(t) for t in r.split(",")] for r in rows])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=ids, output_router_logits=True)
    ours = load_file(forward_file)
    hf_router = torch.stack(out.router_logits).reshape(ours["router_logits"].shape)
    err_logits = (out.logits - ours["logits"]).abs().max().item()
    err_router = (hf_router - ours["router_logits"]).abs().max().item()
    ok = err_logits <= 1e-4 and err_router <= 1e-4
    print(json.dumps({"model": model_dir, "logits_max_abs_err": err_logits,
                      "router_logits_max_abs_err": err_router, "pass": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
