//! Analysis throughput on the CPU, with criterion: top-k activation counting plus the risk-
//! difference table of one mixed batch (8 safe + 8 unsafe samples) at the OLMoE-1B-7B routing
//! shape (16 layers × 64 experts, top-8), per token scope; `analyze` runs one such batch per
//! core.
//!
//! `cargo bench --bench analysis` reports the time per batch and tokens/s (criterion's
//! throughput); `TOKENS` (per sample, default 512 generated tokens) sets the size. The seeds'
//! per-token Python loop counts about 2.7k tokens/s on the CI CPU. Routing is random logits from
//! a seeded ChaCha stream, so every run measures the same input.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use steermoe::analysis::risk::{SampleRouting, TokenScope, count_batch, risk_table};
use steermoe::generate::RouterLogits;

const LAYERS: usize = 16;
const EXPERTS: usize = 64;
const TOP_K: usize = 8;
const PROMPT_TOKENS: usize = 64;

fn routing(rng: &mut ChaCha8Rng, tokens: usize) -> RouterLogits {
    RouterLogits {
        layers: LAYERS,
        tokens,
        experts: EXPERTS,
        values: (0..LAYERS * tokens * EXPERTS)
            .map(|_| f16::from_f32(rng.random::<f32>() * 8.0 - 4.0))
            .collect(),
    }
}

fn analysis(c: &mut Criterion) {
    let generated: usize = std::env::var("TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let batch: Vec<SampleRouting> = (0..16)
        .map(|i| SampleRouting {
            is_unsafe: i >= 8,
            prompt: routing(&mut rng, PROMPT_TOKENS),
            generation: routing(&mut rng, generated),
            replies: None,
        })
        .collect();
    let mut group = c.benchmark_group("count_and_risk_diff_one_batch");
    group.sample_size(10);
    for (scope, tokens) in [
        (TokenScope::Prompt, PROMPT_TOKENS),
        (TokenScope::Generation, generated),
        (TokenScope::All, PROMPT_TOKENS + generated),
    ] {
        group.throughput(Throughput::Elements((16 * tokens) as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{scope:?}").to_lowercase()),
            &scope,
            |b, &scope| {
                b.iter(|| {
                    let (safe, uns) = count_batch(&batch, scope, 0, LAYERS, EXPERTS, TOP_K);
                    risk_table(&safe, &uns, EXPERTS)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, analysis);
criterion_main!(benches);
