#!/usr/bin/env python3
"""Build the tiny Qwen3-MoE reference fixture (tests/fixtures/qwen3-moe-tiny) from transformers.

The approach of ../shared/tools/make_fixtures.py (which made the OLMoE fixtures), for
transformers' Qwen3MoeForCausalLM: a random model in Hub layout plus `reference.safetensors` /
`reference.json` computed by transformers in float32 from the stored bf16 weights.

What the fixture exercises beyond the OLMoE ones:
- q/k RMSNorm per head over `head_dim`, after the reshape to heads and before RoPE;
- an explicit `head_dim` (16) that is not hidden_size / num_attention_heads (16 / 4 = 4);
- dense SwiGLU layers between MoE layers: 6 layers, `decoder_sparse_step` 2 and
  `mlp_only_layers` [3] make layers 1 and 5 MoE and 0, 2, 3, 4 dense;
- grouped-query attention (4 query heads, 2 key/value heads), renormalised top-k, 3 shards;
- the Qwen3 chat template with `enable_thinking` false (the generation prompt ends in an empty
  think block) and absent.

Routers: the fixture's router forward is transformers 5.17's `Qwen3MoeTopKRouter.forward` (raw
gate logits out; softmax in float32, top-k, renormalised weights), restated so that masks can add
-1e9 to masked logits before the softmax, as make_fixtures.py's mask_router does; the logits it
returns stay unmasked (what steermoe captures, and what the load-balancing term of the masked loss
is computed from).

The tokenizer is the OLMoE tokenizer with Qwen3's special tokens added (no Qwen3 tokenizer can be
downloaded on the machines that run this); ids stay below the model's vocabulary of 50304.

Usage: make_qwen3_fixture.py OUT_DIR --tokenizer OLMOE_TOKENIZER_JSON [--seed N]
The committed fixture is `--seed 2` (transformers 5.17.0, torch 2.11.0, CPU): the seed whose greedy
tokens are least near a tie (smallest top-2 margin 0.04). Runs wherever transformers is installed.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe import modeling_qwen3_moe as modeling

# The chat template of Qwen/Qwen3-30B-A3B (tokenizer_config.json).
CHAT_TEMPLATE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen3_chat_template.jinja")).read()

SHAPE = dict(
    hidden_size=16, intermediate_size=40, moe_intermediate_size=24, num_hidden_layers=6,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=10,
    num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=2, mlp_only_layers=[3],
    rms_norm_eps=1e-6, rope_theta=1000000.0, router_aux_loss_coef=0.001, shards=3,
)

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a short poem about the sea."},
]
TRAIN_MESSAGES = MESSAGES + [{"role": "assistant", "content": "I'm sorry, but I can't help with that."}]


def router_class():
    names = [n for n in dir(modeling) if n.startswith("Qwen3Moe") and "Router" in n]
    if "Qwen3MoeTopKRouter" not in names:
        raise SystemExit(f"no Qwen3MoeTopKRouter in this transformers; router-like classes: {names}")
    return modeling.Qwen3MoeTopKRouter


def patch_router(mask=None):
    """transformers' router computation; with `mask` ([moe_layers, experts], 0 = masked) masked
    experts get -1e9 before the softmax (the returned logits stay unmasked)."""
    cls = router_class()
    orig = cls.forward

    def fwd(self, hidden_states, _mask=mask):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = torch.nn.functional.linear(hidden_states, self.weight)
        routed = router_logits
        if _mask is not None:
            routed = router_logits + (1.0 - _mask[self._moe_idx].to(router_logits.dtype)) * -1e9
        probs = torch.nn.functional.softmax(routed, dtype=torch.float, dim=-1)
        top_v, top_i = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_v = top_v / top_v.sum(dim=-1, keepdim=True)
        return router_logits, top_v.to(router_logits.dtype), top_i

    cls.forward = fwd
    return cls, orig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    v = SHAPE
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)

    tok = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.add_tokens(["<think>", "</think>"])
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    vocab_size = 50304
    assert len(tok) <= vocab_size, len(tok)

    cfg = Qwen3MoeConfig(
        vocab_size=vocab_size, hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
        moe_intermediate_size=v["moe_intermediate_size"], num_hidden_layers=v["num_hidden_layers"],
        num_attention_heads=v["num_attention_heads"], num_key_value_heads=v["num_key_value_heads"],
        head_dim=v["head_dim"], num_experts=v["num_experts"], num_experts_per_tok=v["num_experts_per_tok"],
        norm_topk_prob=v["norm_topk_prob"], decoder_sparse_step=v["decoder_sparse_step"],
        mlp_only_layers=v["mlp_only_layers"], rms_norm_eps=v["rms_norm_eps"],
        router_aux_loss_coef=v["router_aux_loss_coef"], max_position_embeddings=4096,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None, tie_word_embeddings=False,
        use_sliding_window=False, sliding_window=None, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": v["rope_theta"]},
    )
    model = Qwen3MoeForCausalLM(cfg)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (v["num_attention_heads"] * v["head_dim"], v["hidden_size"])
    moe_layers = [i for i, l in enumerate(model.model.layers) if hasattr(l.mlp, "experts")]
    assert moe_layers == [1, 5], moe_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    model = model.to(torch.bfloat16).to(torch.float32).eval()

    total = sum(p.numel() * 2 for p in model.parameters())
    shard_size = f"{total // v['shards'] // 1000 + 1}KB"
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True, max_shard_size=shard_size)
    model = Qwen3MoeForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager").eval()
    for n, l in enumerate(moe_layers):
        model.model.layers[l].mlp.gate._moe_idx = n

    tok.backend_tokenizer.save(os.path.join(args.out, "tokenizer.json"), pretty=False)
    json.dump({
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "model_max_length": 4096, "chat_template": CHAT_TEMPLATE, "tokenizer_class": "Qwen2Tokenizer",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }, open(os.path.join(args.out, "tokenizer_config.json"), "w"), indent=2)
    for stray in ("chat_template.jinja", "special_tokens_map.json"):
        if os.path.exists(os.path.join(args.out, stray)):
            os.remove(os.path.join(args.out, stray))

    ref = {}
    meta = {"generated_by": "transformers %s, torch %s, CPU float32 from bf16 weights" % (
        __import__("transformers").__version__, torch.__version__), "variant": "qwen3-moe", "seed": args.seed,
        "moe_layers": moe_layers, "grad_decoder_layer": moe_layers[0], "tensors": {}}

    def put(name, t, what):
        ref[name] = t.detach().contiguous().clone()
        meta["tensors"][name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "what": what}

    # 1. Chat template: enable_thinking false (the config's choice for training) and absent.
    def chat(messages, gen, **kw):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kw)
        return {"messages": messages, "add_generation_prompt": gen, **kw, "text": text,
                "ids": tok(text, add_special_tokens=False)["input_ids"]}

    meta["chat"] = chat(MESSAGES, True, enable_thinking=False)
    meta["chat_train"] = chat(TRAIN_MESSAGES, False, enable_thinking=False)
    meta["chat_thinking_default"] = chat(MESSAGES, True)
    assert meta["chat_train"]["text"].startswith(meta["chat"]["text"])

    cls, orig = patch_router()
    try:
        # 2. Forward pass: batch of two unpadded rows.
        g = torch.Generator().manual_seed(args.seed + 1)
        T = 12
        ids = torch.randint(2, 50000, (2, T), generator=g)
        put("forward.input_ids", ids, "token ids, batch 2 x 12, no padding")
        with torch.no_grad():
            out = model(input_ids=ids, output_router_logits=True, output_hidden_states=True)
        logits = out.logits
        assert len(out.router_logits) == len(moe_layers)
        put("forward.logits_head", logits[..., :256], "logits[:, :, :256]")
        put("forward.logits_tail", logits[..., -256:], "logits[:, :, -256:] (vocab padding region included)")
        put("forward.logsumexp", torch.logsumexp(logits, dim=-1), "logsumexp over the whole vocabulary")
        put("forward.argmax", logits.argmax(-1), "argmax over the vocabulary")
        put("forward.router_logits", torch.stack(out.router_logits),
            "raw router (gate) logits of the MoE layers only, [moe_layers, batch*seq, experts]")
        put("forward.final_hidden", out.hidden_states[-1], "hidden state after the final norm")
        with torch.no_grad():
            meta["forward_loss"] = model(input_ids=ids, labels=ids).loss.item()

        # 3. Left-padded batch: row 1 has 4 pad tokens.
        pad_ids = ids.clone()
        attn = torch.ones_like(pad_ids)
        pad_ids[1, :4] = pad
        attn[1, :4] = 0
        with torch.no_grad():
            out_p = model(input_ids=pad_ids, attention_mask=attn)
        put("padded.input_ids", pad_ids, "left-padded batch")
        put("padded.attention_mask", attn, "1 = real token, 0 = padding")
        put("padded.logits_head", out_p.logits[..., :256], "logits[:, :, :256]; only positions with mask 1 are meaningful")

        # 4. Greedy generation from the chat prompt (enable_thinking false), 16 new tokens.
        prompt_ids = meta["chat"]["ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([prompt_ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                 pad_token_id=pad, output_scores=True, return_dict_in_generate=True)
        new = gen.sequences[0, len(prompt_ids):]
        margins = [(lambda t: (t[0] - t[1]).item())(torch.topk(s[0], 2).values) for s in gen.scores]
        meta["greedy"] = {"prompt_ids": prompt_ids, "new_ids": new.tolist(), "min_top2_margin": min(margins)}
    finally:
        cls.forward = orig

    # 5. Routing under an expert mask, loss on the assistant turn, gradients of the first MoE
    #    layer's experts (decoder layer 1).
    L, E, K = len(moe_layers), v["num_experts"], v["num_experts_per_tok"]
    mask = torch.zeros(L, E)
    for l in range(L):
        allowed = torch.randperm(E, generator=g)[: max(1, K - 1 + 2 * l)]
        mask[l, allowed] = 1.0
    put("masked.expert_mask", mask, "[moe_layers, experts], 1 = expert may be routed to, 0 = masked")
    cls, orig = patch_router(mask)
    try:
        train_ids = torch.tensor([meta["chat_train"]["ids"]])
        for p in model.parameters():
            p.requires_grad_(False)
        ex = model.model.layers[moe_layers[0]].mlp.experts
        ex.gate_up_proj.requires_grad_(True)
        ex.down_proj.requires_grad_(True)
        labels = train_ids.clone()
        labels[0, :len(meta["chat"]["ids"])] = -100
        out_m = model(input_ids=train_ids, labels=labels, output_router_logits=True)
        out_m.loss.backward()
        put("masked.input_ids", train_ids, "chat-templated training example (system, user, assistant), enable_thinking false")
        put("masked.labels", labels, "-100 on the prompt part: loss on the assistant turn only")
        put("masked.logits_head", out_m.logits[..., :256].detach(), "logits[:, :, :256] under the mask")
        put("masked.router_logits", torch.stack(out_m.router_logits).detach(),
            "router logits before masking, [moe_layers, seq, experts]")
        I = v["moe_intermediate_size"]
        gu = ex.gate_up_proj.grad  # [E, 2I, H]
        what = "d loss / d experts.{e}.%s.weight of the first MoE layer (decoder layer %d), %s"
        put("masked.grad.layer0.gate_proj", gu[:, :I, :], what % ("gate_proj", moe_layers[0], "[E, I, H]"))
        put("masked.grad.layer0.up_proj", gu[:, I:, :], what % ("up_proj", moe_layers[0], "[E, I, H]"))
        put("masked.grad.layer0.down_proj", ex.down_proj.grad, what % ("down_proj", moe_layers[0], "[E, H, I]"))
        meta["masked_loss"] = out_m.loss.item()
    finally:
        cls.forward = orig

    save_file(ref, os.path.join(args.out, "reference.safetensors"))
    json.dump(meta, open(os.path.join(args.out, "reference.json"), "w"), indent=2)
    print("wrote", args.out, "min greedy margin %.4f" % min(margins))
    print(open(os.path.join(args.out, "config.json")).read())


if __name__ == "__main__":
    main()
