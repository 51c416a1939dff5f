//! The causal effect of every expert on the collected behaviour: how much each answer's NLL rises
//! when the expert is removed, on the jailbreaks' answers (their compliance, *unsafe*) and on the
//! plain goals' answers (their refusals, *safe*); *specific* is the first minus the second. What
//! the effect rankings (`analysis.ranking`) rank by, computed by exact [`ablation`](super::ablation),
//! by [`attribution`](super::attribution), or attribution then ablation of its best candidates.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::ablation::{AT_ONCE, baseline, rises};
use super::answers::{AnsweredBatch, Teacher};
use super::attribution::attribute;
use super::config::{AnalysisConfig, EffectScore, Ranking};
use crate::model::{ExpertId, MoeLm, Removal};

/// Each expert's effect on both sides, `[layers × experts]` row-major (NaN: not measured).
#[derive(Debug, Clone, PartialEq)]
pub struct SideEffects {
    /// Rise of the jailbreaks' answer NLL.
    pub unsafe_: Vec<f64>,
    /// Rise of the plain goals' answer NLL.
    pub safe: Vec<f64>,
}

impl SideEffects {
    /// `unsafe − safe`.
    pub fn specific(&self) -> Vec<f64> {
        self.unsafe_
            .iter()
            .zip(&self.safe)
            .map(|(u, s)| u - s)
            .collect()
    }

    /// The score `score` names.
    pub fn score(&self, score: EffectScore) -> Vec<f64> {
        match score {
            EffectScore::Specific => self.specific(),
            EffectScore::Unsafe => self.unsafe_.clone(),
        }
    }
}

/// Progress of [`measure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectsEvent {
    /// Forward passes to run in all, one per batch, side and measurement (attribution's forward
    /// and backward count as one).
    Start(usize),
    /// One more pass done.
    Pass,
}

/// What [`measure`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// MoE layers.
    pub layers: usize,
    /// Experts per MoE layer.
    pub experts: usize,
    /// The ranking that asked for them.
    pub ranking: Ranking,
    /// Attribution of every expert (zeroing), when the ranking uses it.
    pub attribution: Option<SideEffects>,
    /// Exact ablation, per way of removing an expert (NaN where not ablated).
    pub ablation: Vec<(Removal, SideEffects)>,
    /// The experts ablated exactly, in the order they were chosen.
    pub ablated: Vec<ExpertId>,
    /// The ranking's score of every expert: the exact effect (of `analysis.removal`) where
    /// ablated, attribution elsewhere.
    pub score: Vec<f64>,
    /// Every expert by the ranking, most effective first: the ablated ones by their exact
    /// effect, then the others by attribution.
    pub order: Vec<ExpertId>,
    /// The same score per analysed batch: (batch index, scores).
    pub per_batch: Vec<(usize, Vec<f64>)>,
    /// Answers measured on each side: (unsafe, safe).
    pub answers: (usize, usize),
    /// Answer tokens scored in all.
    pub tokens: usize,
    /// Seconds spent on attribution and on ablation.
    pub seconds: (f64, f64),
}

/// Sums of one side's per-answer effects and how many answers they hold.
#[derive(Debug, Clone)]
struct Sums {
    total: Vec<f64>,
    n: usize,
}

impl Sums {
    fn new(len: usize) -> Self {
        Self {
            total: vec![0.0; len],
            n: 0,
        }
    }

    fn mean(&self) -> Vec<f64> {
        self.total
            .iter()
            .map(|t| t / self.n.max(1) as f64)
            .collect()
    }
}

/// Indices `0..scores.len()` by descending score (NaN last), ties to the lower index.
pub fn descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
        key(scores[b]).total_cmp(&key(scores[a])).then(a.cmp(&b))
    });
    order
}

/// Measure the effects `cfg.ranking` ranks by on `batches` (those with both sides) with the
/// model `model` (attribution on it, ablation on its inner backend).
pub fn measure<B: AutodiffBackend>(
    model: &MoeLm<B>,
    batches: &[AnsweredBatch],
    cfg: &AnalysisConfig,
    device: &B::Device,
    mut progress: impl FnMut(EffectsEvent),
) -> Effects {
    let [layers, experts] = [model.num_moe_layers(), model.num_experts()];
    let n = layers * experts;
    let id = |i: usize| [i / experts, i % experts];
    let batches: Vec<&AnsweredBatch> = batches.iter().filter(|b| b.has_both()).collect();
    let use_attribution = matches!(
        cfg.ranking,
        Ranking::Attribution | Ranking::AttributionAblation
    );
    let ablate_count = match cfg.ranking {
        Ranking::RiskDiff | Ranking::Attribution => 0,
        Ranking::Ablation => n,
        Ranking::AttributionAblation => cfg.ablate_top.min(n),
    };
    let removals: Vec<Removal> = match cfg.ablate_both {
        true => Removal::ALL.to_vec(),
        false => vec![cfg.removal],
    };
    progress(EffectsEvent::Start(
        batches.len() * 2 * (usize::from(use_attribution) + ablate_count * removals.len()),
    ));
    let answers = (
        batches.iter().map(|b| b.unsafe_count()).sum(),
        batches.iter().map(|b| b.safe_count()).sum(),
    );

    // Attribution: one backward pass per batch and side; a side's global effect is the mean over
    // all of its answers, each batch weighted by its answers.
    let start = Instant::now();
    let mut attribution_per_batch = Vec::new();
    let attribution = use_attribution.then(|| {
        let (mut u, mut s) = (Sums::new(n), Sums::new(n));
        for b in &batches {
            let mut side = |is_unsafe: bool, sums: &mut Sums, count: usize| {
                let a = attribute(model, &b.side(is_unsafe), device);
                progress(EffectsEvent::Pass);
                for (t, v) in sums.total.iter_mut().zip(&a) {
                    *t += v * count as f64;
                }
                sums.n += count;
                a
            };
            let bu = side(true, &mut u, b.unsafe_count());
            let bs = side(false, &mut s, b.safe_count());
            attribution_per_batch.push(SideEffects {
                unsafe_: bu,
                safe: bs,
            });
        }
        SideEffects {
            unsafe_: u.mean(),
            safe: s.mean(),
        }
    });
    let attribution_seconds = start.elapsed().as_secs_f64();

    let candidates: Vec<usize> = match (&attribution, cfg.ranking) {
        (Some(a), Ranking::AttributionAblation) => descending(&a.score(cfg.score))
            .into_iter()
            .take(ablate_count)
            .collect(),
        _ => (0..ablate_count).collect(),
    };

    // Exact ablation of every candidate, each removal measured; the candidates of one layer in groups of
    // up to `AT_ONCE`, one forward pass a group.
    let mut by_layer: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &c in &candidates {
        by_layer.entry(id(c)[0]).or_default().push(c);
    }
    let groups: Vec<Vec<usize>> = by_layer
        .values()
        .flat_map(|cs| cs.chunks(AT_ONCE).map(<[usize]>::to_vec))
        .collect();
    let start = Instant::now();
    let inner = model.valid();
    let mut tokens = 0;
    let mut sums: Vec<[Sums; 2]> = removals
        .iter()
        .map(|_| [Sums::new(n), Sums::new(n)])
        .collect();
    let mut ablation_per_batch: Vec<Vec<SideEffects>> = Vec::new();
    for b in &batches {
        // Each side in its own padded batch: a jailbreak is often ten times a plain goal's length.
        let sides = [true, false].map(|is_unsafe| Teacher::new(&b.side(is_unsafe), device));
        tokens += sides
            .iter()
            .map(|t| t.tokens.iter().sum::<usize>())
            .sum::<usize>();
        let mut per_removal = Vec::new();
        if !candidates.is_empty() {
            let bases = sides.each_ref().map(|t| baseline(&inner, t));
            for (r, &how) in removals.iter().enumerate() {
                let mut batch = SideEffects {
                    unsafe_: vec![f64::NAN; n],
                    safe: vec![f64::NAN; n],
                };
                for group in &groups {
                    let (layer, experts): (usize, Vec<usize>) =
                        (id(group[0])[0], group.iter().map(|&c| id(c)[1]).collect());
                    for (side, (teacher, base)) in sides.iter().zip(&bases).enumerate() {
                        let each = rises(&inner, teacher, base, layer, &experts, how);
                        for (&c, rise) in group.iter().zip(each) {
                            progress(EffectsEvent::Pass);
                            let total: f64 = rise.iter().sum();
                            sums[r][side].total[c] += total;
                            let mean = total / teacher.tokens.len() as f64;
                            match side {
                                0 => batch.unsafe_[c] = mean,
                                _ => batch.safe[c] = mean,
                            }
                        }
                    }
                }
                sums[r][0].n += b.unsafe_count();
                sums[r][1].n += b.safe_count();
                per_removal.push(batch);
            }
        }
        ablation_per_batch.push(per_removal);
    }
    let ablated_mask: Vec<bool> = (0..n).map(|i| candidates.contains(&i)).collect();
    let ablation: Vec<(Removal, SideEffects)> = match candidates.is_empty() {
        true => Vec::new(),
        false => removals
            .iter()
            .zip(&sums)
            .map(|(&how, [u, s])| {
                let nan_unless = |v: Vec<f64>| {
                    v.into_iter()
                        .zip(&ablated_mask)
                        .map(|(x, &m)| if m { x } else { f64::NAN })
                        .collect()
                };
                (
                    how,
                    SideEffects {
                        unsafe_: nan_unless(u.mean()),
                        safe: nan_unless(s.mean()),
                    },
                )
            })
            .collect(),
    };
    let ablation_seconds = start.elapsed().as_secs_f64();

    // The ranking's score: exact where ablated (the configured removal), attribution elsewhere.
    let removal_index = removals
        .iter()
        .position(|&r| r == cfg.removal)
        .expect("a removal");
    let combine = |exact: Option<&SideEffects>, approx: Option<&SideEffects>| -> Vec<f64> {
        let exact = exact.map(|e| e.score(cfg.score));
        let approx = approx.map(|a| a.score(cfg.score));
        (0..n)
            .map(|i| match (&exact, &approx) {
                (Some(e), _) if ablated_mask[i] => e[i],
                (_, Some(a)) => a[i],
                _ => f64::NAN,
            })
            .collect()
    };
    let score = combine(
        ablation.get(removal_index).map(|(_, e)| e),
        attribution.as_ref(),
    );
    let per_batch = batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                b.batch_idx,
                combine(
                    ablation_per_batch[i].get(removal_index),
                    attribution_per_batch.get(i),
                ),
            )
        })
        .collect();
    // Ablated experts first by their exact effect, then the rest by attribution.
    let mut order: Vec<usize> = descending(&score)
        .into_iter()
        .filter(|&i| ablated_mask[i])
        .collect();
    order.extend(descending(&score).into_iter().filter(|&i| !ablated_mask[i]));
    Effects {
        layers,
        experts,
        ranking: cfg.ranking,
        attribution,
        ablation,
        ablated: candidates.iter().map(|&c| id(c)).collect(),
        score,
        order: order.into_iter().map(id).collect(),
        per_batch,
        answers,
        tokens,
        seconds: (attribution_seconds, ablation_seconds),
    }
}

/// Spearman's rank correlation of `a` and `b` over the entries where both are finite (average
/// ranks for ties); `None` with fewer than two such entries or no spread.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(&x, &y)| (x, y))
        .collect();
    if pairs.len() < 2 {
        return None;
    }
    let ranks = |v: Vec<f64>| -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0;
            for &k in &idx[i..=j] {
                r[k] = avg;
            }
            i = j + 1;
        }
        r
    };
    let ra = ranks(pairs.iter().map(|p| p.0).collect());
    let rb = ranks(pairs.iter().map(|p| p.1).collect());
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let (ma, mb) = (mean(&ra), mean(&rb));
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_a_monotone_map_is_one_and_of_its_reverse_minus_one() {
        let a = [0.1, 0.5, -2.0, 3.0, f64::NAN];
        let b = [1.0, 2.0, 0.0, 9.0, 4.0];
        assert!((spearman(&a, &b).unwrap() - 1.0).abs() < 1e-12);
        let c: Vec<f64> = b.iter().map(|x| -x).collect();
        assert!((spearman(&a, &c).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0], &[2.0, 3.0]), None);
    }

    #[test]
    fn descending_puts_nan_last_and_ties_to_the_lower_index() {
        assert_eq!(descending(&[1.0, f64::NAN, 3.0, 1.0]), vec![2, 0, 3, 1]);
    }
}
