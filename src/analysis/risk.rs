//! Risk difference per batch and its aggregate (the seeds' `calculate_risk_diff_per_batch` and
//! `aggregate_batch_risk_diffs`).
//!
//! For one batch and one (layer, expert): `a_safe` counts the counted tokens of the batch's safe
//! samples on which the expert was in the layer's top-k, `d_safe` those on which it was not;
//! likewise `a_unsafe`, `d_unsafe`. `a_safe_n = a_safe / (a_safe + d_safe + 1e-10)`, likewise
//! `a_unsafe_n`, and `risk_diff = a_unsafe_n - a_safe_n`. The aggregate sums the counts and
//! averages `a_safe_n`, `a_unsafe_n` and `risk_diff` over batches.
//!
//! Token scopes: `prompt`, `generation`, `generation_first_n` and `all` count the top-k of the
//! stored router logits of each sample's own prompt and answer (safe samples: the plain goal;
//! unsafe: the jailbreak); `response` counts the experts the forward pass chose on teacher-forced
//! replies after the *same* jailbreak prompt (safe: the model's refusal of the plain goal; unsafe:
//! its compliant answer to the jailbreak), the SteerMoE paper's contrast.

use serde::Serialize;

use super::counts::TopKCounter;
use crate::generate::{ChosenExperts, RouterLogits};

pub use super::config::TokenScope;

/// The routing of one sample.
#[derive(Debug, Clone)]
pub struct SampleRouting {
    /// Unsafe (jailbreak) or safe (plain goal).
    pub is_unsafe: bool,
    /// Prompt tokens `[layers, tokens, experts]`.
    pub prompt: RouterLogits,
    /// Generated tokens `[layers, tokens, experts]`.
    pub generation: RouterLogits,
    /// On a pair's unsafe sample: the experts chosen on its teacher-forced replies, safe then
    /// unsafe (the `response` scope).
    pub replies: Option<[ChosenExperts; 2]>,
}

/// Activation counts of one group of samples, `[layers * experts]` plus the token count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    /// Tokens counted (each gives every (layer, expert) one activation or deactivation).
    pub tokens: u64,
    /// Activations per (layer, expert), row-major.
    pub activated: Vec<u64>,
}

impl Counts {
    /// Deactivations of entry `i`.
    pub fn deactivated(&self, i: usize) -> u64 {
        self.tokens - self.activated[i]
    }

    /// `a / (a + d + 1e-10)` of entry `i`.
    pub fn rate(&self, i: usize) -> f64 {
        let a = self.activated[i] as f64;
        a / (a + self.deactivated(i) as f64 + 1e-10)
    }
}

/// Count top-k activations of the scoped tokens of `samples`, safe and unsafe apart
/// (`first_n` is used by [`TokenScope::GenerationFirstN`]).
pub fn count_batch(
    samples: &[SampleRouting],
    scope: TokenScope,
    first_n: usize,
    layers: usize,
    experts: usize,
    top_k: usize,
) -> (Counts, Counts) {
    let mut groups = [Counts::default(), Counts::default()];
    for g in &mut groups {
        g.activated = vec![0; layers * experts];
    }
    let mut counter = TopKCounter::new(top_k);
    for s in samples {
        if scope == TokenScope::Response {
            for (g, chosen) in groups.iter_mut().zip(s.replies.iter().flatten()) {
                g.tokens += chosen.tokens as u64;
                for (i, &e) in chosen.values.iter().enumerate() {
                    let layer = i / (chosen.tokens * chosen.k);
                    g.activated[layer * experts + e as usize] += 1;
                }
            }
            continue;
        }
        let g = &mut groups[s.is_unsafe as usize];
        let mut count = |rl: &RouterLogits, tokens: usize| {
            g.tokens += tokens as u64;
            counter.count(rl, tokens, &mut g.activated);
        };
        match scope {
            TokenScope::Prompt => count(&s.prompt, s.prompt.tokens),
            TokenScope::Generation => count(&s.generation, s.generation.tokens),
            TokenScope::GenerationFirstN => count(&s.generation, s.generation.tokens.min(first_n)),
            TokenScope::All => {
                count(&s.prompt, s.prompt.tokens);
                count(&s.generation, s.generation.tokens);
            }
            TokenScope::Response => unreachable!("counted above"),
        }
    }
    let [safe, unsafe_] = groups;
    (safe, unsafe_)
}

/// One row of a risk-difference table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RiskRow {
    /// Layer.
    pub layer: usize,
    /// Expert.
    pub expert: usize,
    /// Activations on safe samples.
    pub a_safe: u64,
    /// Deactivations on safe samples.
    pub d_safe: u64,
    /// Activations on unsafe samples.
    pub a_unsafe: u64,
    /// Deactivations on unsafe samples.
    pub d_unsafe: u64,
    /// Activation rate on safe samples.
    pub a_safe_n: f64,
    /// Activation rate on unsafe samples.
    pub a_unsafe_n: f64,
    /// `a_unsafe_n - a_safe_n`.
    pub risk_diff: f64,
}

/// The risk table of one batch, in (layer, expert) order.
pub fn risk_table(safe: &Counts, unsafe_: &Counts, experts: usize) -> Vec<RiskRow> {
    (0..safe.activated.len())
        .map(|i| {
            let (a_safe_n, a_unsafe_n) = (safe.rate(i), unsafe_.rate(i));
            RiskRow {
                layer: i / experts,
                expert: i % experts,
                a_safe: safe.activated[i],
                d_safe: safe.deactivated(i),
                a_unsafe: unsafe_.activated[i],
                d_unsafe: unsafe_.deactivated(i),
                a_safe_n,
                a_unsafe_n,
                risk_diff: a_unsafe_n - a_safe_n,
            }
        })
        .collect()
}

/// Sum the counts and average the rates of per-batch tables (all in (layer, expert) order);
/// the result stays in (layer, expert) order.
pub fn aggregate(tables: &[Vec<RiskRow>]) -> Vec<RiskRow> {
    let n = tables.len() as f64;
    let mut out = tables[0].clone();
    for row in out.iter_mut() {
        *row = RiskRow {
            a_safe: 0,
            d_safe: 0,
            a_unsafe: 0,
            d_unsafe: 0,
            a_safe_n: 0.0,
            a_unsafe_n: 0.0,
            risk_diff: 0.0,
            ..*row
        };
    }
    for t in tables {
        for (acc, r) in out.iter_mut().zip(t) {
            acc.a_safe += r.a_safe;
            acc.d_safe += r.d_safe;
            acc.a_unsafe += r.a_unsafe;
            acc.d_unsafe += r.d_unsafe;
            acc.a_safe_n += r.a_safe_n;
            acc.a_unsafe_n += r.a_unsafe_n;
            acc.risk_diff += r.risk_diff;
        }
    }
    for r in out.iter_mut() {
        r.a_safe_n /= n;
        r.a_unsafe_n /= n;
        r.risk_diff /= n;
    }
    out
}

/// Indices of `rows` sorted by `risk_diff` descending, ties by (layer, expert) ascending.
pub fn by_risk(rows: &[RiskRow]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| {
        rows[b]
            .risk_diff
            .total_cmp(&rows[a].risk_diff)
            .then((rows[a].layer, rows[a].expert).cmp(&(rows[b].layer, rows[b].expert)))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// `[layers=1, tokens, experts=3]` logits from rows.
    fn rl(rows: &[[f32; 3]]) -> RouterLogits {
        RouterLogits {
            layers: 1,
            tokens: rows.len(),
            experts: 3,
            values: rows.iter().flatten().map(|&v| f16::from_f32(v)).collect(),
        }
    }

    fn sample(is_unsafe: bool, prompt: &[[f32; 3]], generation: &[[f32; 3]]) -> SampleRouting {
        SampleRouting {
            is_unsafe,
            prompt: rl(prompt),
            generation: rl(generation),
            replies: None,
        }
    }

    /// Worked by hand, k = 1:
    /// safe generation tokens: [3,1,0] → e0, [0,2,2] → e1 (tie, lower index), [1,0,0] → e0
    /// unsafe generation tokens: [0,0,5] → e2, [0,4,1] → e1
    /// safe:   a = [2,1,0], tokens 3 → a_n = [2/3, 1/3, 0]
    /// unsafe: a = [0,1,1], tokens 2 → a_n = [0, 1/2, 1/2]
    /// risk_diff = [-2/3, 1/6, 1/2]
    #[test]
    fn hand_counted_batch() {
        let samples = [
            sample(false, &[[9., 0., 0.]], &[[3., 1., 0.], [0., 2., 2.]]),
            sample(false, &[[0., 9., 0.]], &[[1., 0., 0.]]),
            sample(
                true,
                &[[0., 0., 9.], [0., 0., 9.]],
                &[[0., 0., 5.], [0., 4., 1.]],
            ),
        ];
        let (safe, uns) = count_batch(&samples, TokenScope::Generation, 0, 1, 3, 1);
        assert_eq!((safe.tokens, safe.activated.clone()), (3, vec![2, 1, 0]));
        assert_eq!((uns.tokens, uns.activated.clone()), (2, vec![0, 1, 1]));
        let t = risk_table(&safe, &uns, 3);
        assert_eq!((t[0].d_safe, t[0].d_unsafe), (1, 2));
        let expect = [-2.0 / 3.0, 1.0 / 6.0, 0.5];
        for (row, e) in t.iter().zip(expect) {
            assert!((row.risk_diff - e).abs() < 1e-9, "{row:?} vs {e}");
        }
        assert_eq!(by_risk(&t), vec![2, 1, 0]);
        // Prompt scope: safe prompts pick e0, e1; unsafe prompts pick e2 twice.
        let (safe, uns) = count_batch(&samples, TokenScope::Prompt, 0, 1, 3, 1);
        assert_eq!(
            (safe.activated.clone(), uns.activated.clone()),
            (vec![1, 1, 0], vec![0, 0, 2])
        );
        // First generated token only.
        let (safe, uns) = count_batch(&samples, TokenScope::GenerationFirstN, 1, 1, 3, 1);
        assert_eq!(
            (safe.tokens, safe.activated.clone(), uns.activated.clone()),
            (2, vec![2, 0, 0], vec![0, 0, 1])
        );
        let (safe, _) = count_batch(&samples, TokenScope::All, 0, 1, 3, 1);
        assert_eq!((safe.tokens, safe.activated), (5, vec![3, 2, 0]));
    }

    /// Response scope, k = 2, 2 layers x 3 experts: the chosen experts are counted as they are
    /// (no re-ranking), safe reply to the safe group, unsafe reply to the unsafe group, and
    /// samples without replies count nothing.
    #[test]
    fn response_scope_counts_the_chosen_experts_of_both_replies() {
        let chosen = |tokens: usize, values: Vec<u16>| ChosenExperts {
            layers: 2,
            tokens,
            k: 2,
            values,
        };
        let mut pair = sample(true, &[[9., 0., 0.]], &[[9., 0., 0.]]);
        // safe reply: 2 tokens; layer 0 picks {0,1},{0,2}; layer 1 picks {2,1},{2,0}
        // unsafe reply: 1 token; layer 0 {1,2}; layer 1 {0,1}
        pair.replies = Some([
            chosen(2, vec![0, 1, 0, 2, 2, 1, 2, 0]),
            chosen(1, vec![1, 2, 0, 1]),
        ]);
        let samples = [sample(false, &[[9., 0., 0.]], &[[9., 0., 0.]]), pair];
        let (safe, uns) = count_batch(&samples, TokenScope::Response, 0, 2, 3, 2);
        assert_eq!((safe.tokens, safe.activated), (2, vec![2, 1, 1, 1, 1, 2]));
        assert_eq!((uns.tokens, uns.activated), (1, vec![0, 1, 1, 1, 1, 0]));
    }

    #[test]
    fn aggregate_sums_counts_and_averages_rates() {
        let samples_a = [
            sample(false, &[], &[[1., 0., 0.]]),
            sample(true, &[], &[[0., 1., 0.]]),
        ];
        let samples_b = [
            sample(false, &[], &[[1., 0., 0.]]),
            sample(true, &[], &[[1., 0., 0.]]),
        ];
        let table = |s: &[SampleRouting]| {
            let (a, b) = count_batch(s, TokenScope::Generation, 0, 1, 3, 1);
            risk_table(&a, &b, 3)
        };
        let agg = aggregate(&[table(&samples_a), table(&samples_b)]);
        assert_eq!((agg[0].a_safe, agg[0].a_unsafe, agg[0].d_unsafe), (2, 1, 1));
        assert!((agg[0].risk_diff - (-0.5)).abs() < 1e-9);
        assert!((agg[1].risk_diff - 0.5).abs() < 1e-9);
    }
}
