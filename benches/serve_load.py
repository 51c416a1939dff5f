#!/usr/bin/env python3
"""Throughput of a running `steermoe serve` (issue 40): rounds of CONCURRENCY requests sent at
once to /v1/completions, greedy, `ignore_eos` so that every request decodes exactly
--max-tokens; one JSON line per round (the first compiles kernels: a warm-up).

    python3 benches/serve_load.py http://127.0.0.1:PORT/v1 MODEL [--concurrency 16]
        [--prompt-tokens 64] [--max-tokens 128] [--rounds 3]

Only the standard library: threads and urllib.
"""
import argparse
import json
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def post(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return time.perf_counter() - t, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("model")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    url = a.base.rstrip("/") + "/completions"
    for rnd in range(a.rounds):
        # A different tag per request and round (4 tokens with OLMoE's tokenizer): no two prompts alike.
        bodies = [
            {
                "model": a.model,
                "prompt": " ".join([f"w{rnd}x{i}"] + ["hello"] * (a.prompt_tokens - 4)),
                "max_tokens": a.max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            for i in range(a.concurrency)
        ]
        t = time.perf_counter()
        with ThreadPoolExecutor(a.concurrency) as pool:
            results = list(pool.map(lambda b: post(url, b), bodies))
        wall = time.perf_counter() - t
        completion = sum(o["usage"]["completion_tokens"] for _, o in results)
        prompts = [o["usage"]["prompt_tokens"] for _, o in results]
        latencies = sorted(s for s, _ in results)
        print(
            json.dumps(
                {
                    "what": "serve_throughput",
                    "impl": "steermoe serve",
                    "run": "first" if rnd == 0 else "again",
                    "concurrency": a.concurrency,
                    "prompt_tokens": [min(prompts), max(prompts)],
                    "max_tokens": a.max_tokens,
                    "completion_tokens": completion,
                    "seconds": round(wall, 3),
                    "new_tokens_per_s": round(completion / wall),
                    "latency_p50_s": round(statistics.median(latencies), 3),
                    "latency_max_s": round(latencies[-1], 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
