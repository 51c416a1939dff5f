#!/usr/bin/env python3
"""Cross-check of the GPU benchmark's computation against transformers.

`cargo bench --bench gpu -- --check-dir DIR` saves a random model at the OLMoE-1B-7B width
(DIR/model, Hub layout) and what steermoe computed on it (DIR/steermoe.safetensors: input ids,
logits, router logits, causal-LM loss, and the gradients of the trainable experts' weights).
This loads the same checkpoint in transformers, in the same dtype, runs the same forward and
backward, and prints one JSON line with the errors.

bf16 keeps 8 significant bits, so bf16 runs are compared by relative max error and cosine
similarity (pass: logits/router logits within 5e-2 of the largest value and cosine >= 0.999,
loss within 1e-2 relative, gradient cosine >= 0.99).

Usage: hf_check.py DIR [--dtype bf16|f32]
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import OlmoeForCausalLM


def compare(ours, ref):
    ours, ref = ours.double().flatten(), ref.double().flatten()
    err = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    if scale == 0 and ours.abs().max().item() == 0:
        # An expert no token was routed to: both gradients are exactly zero, which is agreement
        # (the cosine of two zero vectors would read 0).
        return {"max_abs_err": 0.0, "rel_to_max": 0.0, "cosine": 1.0, "both_zero": True}
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=0).item()
    return {"max_abs_err": err, "rel_to_max": err / max(scale, 1e-30), "cosine": cos}


def main():
    d = sys.argv[1]
    dtype = torch.bfloat16 if "f32" not in sys.argv[2:] else torch.float32
    ours = load_file(f"{d}/steermoe.safetensors")
    model = OlmoeForCausalLM.from_pretrained(f"{d}/model", dtype=dtype, attn_implementation="eager").cuda()
    ids = ours["input_ids"].long().cuda()
    for p in model.parameters():
        p.requires_grad_(False)
    experts = sorted({tuple(int(x) for x in k.split(".")[1:3]) for k in ours if k.startswith("grad.")})
    fused = {}
    for l, e in experts:
        ex = model.model.layers[l].mlp.experts
        if hasattr(ex, "gate_up_proj"):  # transformers 5: experts fused into 3-d parameters
            ex.gate_up_proj.requires_grad_(True)
            ex.down_proj.requires_grad_(True)
            fused[l] = ex
        else:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                getattr(ex[e], proj).weight.requires_grad_(True)
    out = model(input_ids=ids, labels=ids, output_router_logits=True)
    # transformers adds the load-balancing loss when router logits are output; steermoe's check
    # loss is the causal-LM loss alone.
    lm = torch.nn.functional.cross_entropy(out.logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
    lm.backward()
    res = {"what": "hf_check", "dtype": str(dtype), "transformers_loss": lm.item(),
           "steermoe_loss": ours["loss"].item()}
    res["loss_rel_err"] = abs(lm.item() - ours["loss"].item()) / abs(lm.item())
    res["logits"] = compare(ours["logits"], out.logits.detach().float().cpu())
    router = torch.stack(out.router_logits).float().cpu().reshape(ours["router_logits"].shape)
    res["router_logits"] = compare(ours["router_logits"], router)
    inter = model.config.intermediate_size
    grads = {}
    for l, e in experts:
        ex = model.model.layers[l].mlp.experts
        if l in fused:
            gu = ex.gate_up_proj.grad[e]
            dn = ex.down_proj.grad[e]
            # gate_up_proj is [experts, 2 * inter, hidden] (gate rows first), down_proj
            # [experts, hidden, inter]; older layouts store them transposed.
            if gu.shape[0] != 2 * inter:
                gu, dn = gu.T, dn.T
            theirs = {"gate_proj": gu[:inter], "up_proj": gu[inter:], "down_proj": dn}
        else:
            theirs = {p: getattr(ex[e], p).weight.grad for p in ("gate_proj", "up_proj", "down_proj")}
        for p, g in theirs.items():
            grads[f"{l}.{e}.{p}"] = compare(ours[f"grad.{l}.{e}.{p}"], g.float().cpu())
    res["grads"] = grads
    ok = (res["loss_rel_err"] <= 1e-2
          and all(res[k]["rel_to_max"] <= 5e-2 and res[k]["cosine"] >= 0.999 for k in ("logits", "router_logits"))
          and all(g["cosine"] >= 0.99 for g in grads.values()))
    res["pass"] = ok
    print(json.dumps(res))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
