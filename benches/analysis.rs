//! Analysis throughput: top-k activation counting and risk difference over 1M tokens of
//! routing at the OLMoE-1B-7B shape (16 layers x 64 experts, top-8), as `analyze` runs it
//! (batches counted on all cores).
//!
//! `cargo bench --bench analysis` prints one JSON line with tokens/s. The seeds' per-token
//! Python loop counts about 2.7k tokens/s on the CI CPU.

use std::time::Instant;

use half::f16;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use steermoe::analysis::risk::{SampleRouting, TokenScope, count_batch, risk_table};
use steermoe::generate::RouterLogits;

const LAYERS: usize = 16;
const EXPERTS: usize = 64;
const TOP_K: usize = 8;

fn routing(rng: &mut StdRng, tokens: usize) -> RouterLogits {
    RouterLogits {
        layers: LAYERS,
        tokens,
        experts: EXPERTS,
        values: (0..LAYERS * tokens * EXPERTS).map(|_| f16::from_f32(rng.random::<f32>() * 8.0 - 4.0)).collect(),
    }
}

fn main() {
    let total_tokens: usize = std::env::var("TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let (batches, per_batch) = (16, 16);
    let per_sample = total_tokens / (batches * per_batch);
    let mut rng = StdRng::seed_from_u64(0);
    let data: Vec<Vec<SampleRouting>> = (0..batches)
        .map(|_| {
            (0..per_batch)
                .map(|i| SampleRouting {
                    is_unsafe: i >= per_batch / 2,
                    prompt: routing(&mut rng, 1),
                    generation: routing(&mut rng, per_sample),
                })
                .collect()
        })
        .collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let start = Instant::now();
    let chunk = batches.div_ceil(threads);
    let tables: usize = std::thread::scope(|s| {
        data.chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|b| {
                            let (safe, uns) = count_batch(b, TokenScope::Generation, 0, LAYERS, EXPERTS, TOP_K);
                            risk_table(&safe, &uns, EXPERTS).len()
                        })
                        .sum::<usize>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum()
    });
    let secs = start.elapsed().as_secs_f64();
    let tokens = batches * per_batch * per_sample;
    assert_eq!(tables, batches * LAYERS * EXPERTS);
    println!(
        "{{\"bench\":\"analysis\",\"tokens\":{tokens},\"layers\":{LAYERS},\"experts\":{EXPERTS},\"top_k\":{TOP_K},\"threads\":{threads},\"seconds\":{secs:.3},\"tokens_per_s\":{:.0},\"vs_seeds_loop\":{:.0}}}",
        tokens as f64 / secs,
        tokens as f64 / secs / 2700.0
    );
}
