#!/usr/bin/env python3
"""Build the OLMoE reference fixtures (tests/fixtures/olmoe-tiny, tests/fixtures/olmoe-alt) from
Hugging Face transformers.

The approach of the project's first fixture generator (shared/tools/make_fixtures.py), at sizes
that keep the repository small: tied embeddings (the 50304 x hidden embedding is stored once) and
narrow hidden sizes. The reference is transformers' own OlmoeForCausalLM (CPU, float32 compute
from the stored bf16 weights). A fixture directory looks like a Hugging Face model repo
(config.json, model.safetensors or sharded safetensors + index, tokenizer.json,
tokenizer_config.json with the chat template, generation_config.json) plus:

  reference.safetensors   tensors computed by transformers (see reference.json)
  reference.json          scalars, token ids, texts and a description of every tensor

Usage: make_olmoe_fixture.py OUT_DIR --tokenizer TOKENIZER_JSON [--seed N] [--variant main|alt]

The committed fixtures: `--variant main --seed 0` (tests/fixtures/olmoe-tiny; its tokenizer.json
is a link to the embedded organism's, the same OLMoE tokenizer) and `--variant alt --seed 0`
(tests/fixtures/olmoe-alt, tokenizer.json and generation_config.json left out), made with
transformers 5.17.0 and torch 2.11.0 on the CPU. Runs wherever transformers is installed.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import OlmoeConfig, OlmoeForCausalLM, PreTrainedTokenizerFast
from transformers.models.olmoe import modeling_olmoe

# The chat template of allenai/OLMoE-1B-7B-0125-Instruct (Tulu 3 style).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)

VARIANTS = {
    # Same layout as allenai/OLMoE-1B-7B-0125-Instruct, scaled down.
    "main": dict(
        hidden_size=32, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=False, rope_theta=10000.0,
        rms_norm_eps=1e-5, clip_qkv=None, shards=1, config_style="hub", tie=True,
    ),
    # Off the beaten path: grouped-query attention, renormalised top-k,
    # clipped qkv, odd expert count, several shards, transformers-5 config keys. (The untied LM
    # head of the real checkpoints is the Qwen3-MoE fixture's: tests/hf/make_qwen3_fixture.py.)
    "alt": dict(
        hidden_size=24, intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, num_experts=12,
        num_experts_per_tok=3, norm_topk_prob=True, rope_theta=500000.0,
        rms_norm_eps=1e-6, clip_qkv=8.0, shards=3, config_style="v5", tie=True,
    ),
}

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a short poem about the sea."},
]
TRAIN_MESSAGES = MESSAGES + [{"role": "assistant", "content": "I'm sorry, but I can't help with that."}]


def build_config(v, vocab_size, eos, pad):
    cfg = OlmoeConfig(
        vocab_size=vocab_size, hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
        num_hidden_layers=v["num_hidden_layers"], num_attention_heads=v["num_attention_heads"],
        num_key_value_heads=v["num_key_value_heads"], num_experts=v["num_experts"],
        num_experts_per_tok=v["num_experts_per_tok"], norm_topk_prob=v["norm_topk_prob"],
        rms_norm_eps=v["rms_norm_eps"], clip_qkv=v["clip_qkv"], max_position_embeddings=4096,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None, tie_word_embeddings=v["tie"],
        rope_parameters={"rope_type": "default", "rope_theta": v["rope_theta"]},
    )
    return cfg


def hub_style_config(cfg_dict, v):
    """Rewrite a transformers-5 config.json the way the Hub checkpoints spell it."""
    d = dict(cfg_dict)
    d.pop("rope_parameters", None)
    d["rope_theta"] = v["rope_theta"]
    d["rope_scaling"] = None
    d["torch_dtype"] = "bfloat16"
    d.pop("dtype", None)
    d["transformers_version"] = "4.43.0.dev0"
    return d


def mask_router(mask):
    """Patch every OLMoE router so that experts with mask==0 can never be chosen.

    Masked logits get -1e9 added before the softmax, as in the seed's
    mask_safe_expert_logits. The router logits that are returned are the
    *unmasked* ones (what a capture of the gate output sees)."""
    orig = modeling_olmoe.OlmoeTopKRouter.forward

    def fwd(self, hidden_states, _mask=mask):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = torch.nn.functional.linear(hidden_states, self.weight)
        layer = self._layer_idx
        masked = router_logits + (1.0 - _mask[layer].to(router_logits.dtype)) * -1e9
        probs = torch.nn.functional.softmax(masked, dtype=torch.float, dim=-1)
        top_v, top_i = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_v = top_v / top_v.sum(dim=-1, keepdim=True)
        return router_logits, top_v.to(router_logits.dtype), top_i

    modeling_olmoe.OlmoeTopKRouter.forward = fwd
    return orig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="main", choices=sorted(VARIANTS))
    args = ap.parse_args()
    v = VARIANTS[args.variant]
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)

    tok = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|padding|>")
    tok.chat_template = CHAT_TEMPLATE
    eos, pad = tok.eos_token_id, tok.pad_token_id
    vocab_size = 50304  # as in OLMoE-1B-7B: padded beyond the tokenizer's ids

    cfg = build_config(v, vocab_size, eos, pad)
    model = OlmoeForCausalLM(cfg)
    # Random but not degenerate: transformers initialises norms to 1 and the
    # router to 0; give every parameter a distinct value so that a wrong key,
    # transposition or missing norm shows up in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "gate.weight" in name and "experts" not in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    # Store bf16 weights like the real checkpoints; compute the reference in
    # float32 from exactly those bf16 values.
    model = model.to(torch.bfloat16).to(torch.float32).eval()

    shard_size = None
    if v["shards"] > 1:
        total = sum(p.numel() * 2 for p in model.parameters())
        shard_size = f"{total // v['shards'] // 1000 + 1}KB"
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True,
                                             **({"max_shard_size": shard_size} if shard_size else {}))
    cfg_path = os.path.join(args.out, "config.json")
    cfg_dict = json.load(open(cfg_path))
    if v["config_style"] == "hub":
        cfg_dict = hub_style_config(cfg_dict, v)
    json.dump(cfg_dict, open(cfg_path, "w"), indent=2)
    # The reference is computed by the model as loaded back from disk, in
    # float32: exactly what a loader of this directory sees.
    model = OlmoeForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager").eval()
    for i, layer in enumerate(model.model.layers):
        layer.mlp.gate._layer_idx = i

    shutil.copy(args.tokenizer, os.path.join(args.out, "tokenizer.json"))
    json.dump({
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|padding|>",
        "unk_token": None, "model_max_length": 4096, "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "GPTNeoXTokenizer",
    }, open(os.path.join(args.out, "tokenizer_config.json"), "w"), indent=2)

    ref = {}
    meta = {"generated_by": "transformers %s, torch %s, CPU float32 from bf16 weights" % (
        __import__("transformers").__version__, torch.__version__), "variant": args.variant,
        "seed": args.seed, "tensors": {}}

    def put(name, t, what):
        ref[name] = t.detach().contiguous().clone()
        meta["tensors"][name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "what": what}

    # 1. Chat template and tokenisation.
    prompt_text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    train_text = tok.apply_chat_template(TRAIN_MESSAGES, tokenize=False, add_generation_prompt=False)
    train_ids = tok(train_text, add_special_tokens=False)["input_ids"]
    meta["chat"] = {"messages": MESSAGES, "add_generation_prompt": True, "text": prompt_text, "ids": prompt_ids}
    meta["chat_train"] = {"messages": TRAIN_MESSAGES, "add_generation_prompt": False, "text": train_text,
                          "ids": train_ids}

    # 2. Forward pass: batch of two unpadded rows of equal length.
    g = torch.Generator().manual_seed(args.seed + 1)
    T = 12
    ids = torch.randint(2, 50000, (2, T), generator=g)
    put("forward.input_ids", ids, "token ids, batch 2 x 12, no padding")
    with torch.no_grad():
        out = model(input_ids=ids, output_router_logits=True, output_hidden_states=True)
    logits = out.logits
    put("forward.logits_head", logits[..., :256], "logits[:, :, :256]")
    put("forward.logits_tail", logits[..., -256:], "logits[:, :, -256:] (vocab padding region included)")
    put("forward.logsumexp", torch.logsumexp(logits, dim=-1), "logsumexp over the whole vocabulary")
    put("forward.argmax", logits.argmax(-1), "argmax over the vocabulary")
    put("forward.router_logits", torch.stack(out.router_logits), "router (gate) logits, [layers, batch*seq, experts]")
    put("forward.final_hidden", out.hidden_states[-1], "hidden state after the final norm")

    # 3. Loss against labels = input ids (the model shifts internally), mean over tokens.
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    meta["forward_loss"] = loss.item()

    # 4. Left-padded batch with attention mask: row 1 has 4 pad tokens.
    pad_ids = ids.clone()
    attn = torch.ones_like(pad_ids)
    pad_ids[1, :4] = pad
    attn[1, :4] = 0
    with torch.no_grad():
        out_p = model(input_ids=pad_ids, attention_mask=attn)
    put("padded.input_ids", pad_ids, "left-padded batch")
    put("padded.attention_mask", attn, "1 = real token, 0 = padding")
    put("padded.logits_head", out_p.logits[..., :256], "logits[:, :, :256]; only positions with mask 1 are meaningful")

    # 5. Greedy generation from the chat prompt, 16 new tokens, no sampling.
    pids = torch.tensor([prompt_ids])
    with torch.no_grad():
        gen = model.generate(pids, max_new_tokens=16, do_sample=False, eos_token_id=None,
                             pad_token_id=pad, output_scores=True, return_dict_in_generate=True)
    new = gen.sequences[0, len(prompt_ids):]
    margins = []
    for s in gen.scores:
        top2 = torch.topk(s[0], 2).values
        margins.append((top2[0] - top2[1]).item())
    meta["greedy"] = {"prompt_ids": prompt_ids, "new_ids": new.tolist(), "min_top2_margin": min(margins)}

    # 6. Routing under an expert mask: per layer only some experts may be chosen.
    L, E, K = v["num_hidden_layers"], v["num_experts"], v["num_experts_per_tok"]
    mask = torch.zeros(L, E)
    for l in range(L):
        allowed = torch.randperm(E, generator=g)[: max(1, K - 1 + 2 * l)]
        mask[l, allowed] = 1.0
    put("masked.expert_mask", mask, "1 = expert may be routed to, 0 = masked (never chosen)")
    orig = mask_router(mask)
    try:
        train_ids_t = torch.tensor([train_ids])
        # Only expert MLPs of layer 0 are trainable; loss on the assistant turn only.
        for p in model.parameters():
            p.requires_grad_(False)
        ex = model.model.layers[0].mlp.experts
        ex.gate_up_proj.requires_grad_(True)
        ex.down_proj.requires_grad_(True)
        labels = train_ids_t.clone()
        n_prompt = len(tok(tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"])
        labels[0, :n_prompt] = -100
        out_m = model(input_ids=train_ids_t, labels=labels, output_router_logits=True)
        out_m.loss.backward()
        put("masked.input_ids", train_ids_t, "chat-templated training example (system, user, assistant)")
        put("masked.labels", labels, "-100 on the prompt part: loss on the assistant turn only")
        put("masked.logits_head", out_m.logits[..., :256].detach(), "logits[:, :, :256] under the mask")
        put("masked.router_logits", torch.stack(out_m.router_logits).detach(),
            "router logits before masking, [layers, seq, experts]")
        I = v["intermediate_size"]
        gu = ex.gate_up_proj.grad  # [E, 2I, H]
        put("masked.grad.layer0.gate_proj", gu[:, :I, :], "d loss / d experts.{e}.gate_proj.weight, [E, I, H]")
        put("masked.grad.layer0.up_proj", gu[:, I:, :], "d loss / d experts.{e}.up_proj.weight, [E, I, H]")
        put("masked.grad.layer0.down_proj", ex.down_proj.grad, "d loss / d experts.{e}.down_proj.weight, [E, H, I]")
        meta["masked_loss"] = out_m.loss.item()
    finally:
        modeling_olmoe.OlmoeTopKRouter.forward = orig

    save_file(ref, os.path.join(args.out, "reference.safetensors"))
    json.dump(meta, open(os.path.join(args.out, "reference.json"), "w"), indent=2)
    print("wrote", args.out, "min greedy margin %.4f" % min(margins))


if __name__ == "__main__":
    main()
