//! What an effect ranking leaves in the run directory: `effects.safetensors` (every expert's
//! measured effects, `[layers, experts]` per score, and the ranking's score per batch),
//! `effects.json` (the settings, times, the ranking's first experts with all their values, each
//! ranking's top set and how the sets overlap, attribution against exact ablation) and
//! `effects_heatmap.png`; on a planted model, the recovery of the planted experts by each
//! ranking the effects give.

use std::collections::{BTreeSet, HashMap};

use safetensors::Dtype;

use super::config::{AnalysisConfig, EffectScore, Ranking};
use super::effects::{Effects, SideEffects, descending, spearman};
use super::error::AnalysisError;
use super::heatmap;
use super::recovery;
use crate::model::{ExpertId, Removal};
use crate::run_dir::RunDir;
use crate::run_dir::analysis::{EffectRow, EffectsReport, Overlap, RankingRecovery, TopSet};

const SCORES: [EffectScore; 2] = [EffectScore::Unsafe, EffectScore::Specific];

/// The first `k` experts of `scores` (finite ones only), highest first.
fn top(scores: &[f64], experts: usize, k: usize) -> Vec<ExpertId> {
    descending(scores)
        .into_iter()
        .filter(|&i| scores[i].is_finite())
        .take(k)
        .map(|i| [i / experts, i % experts])
        .collect()
}

/// The named top sets: the risk difference's, attribution's, each exact ablation's (among the
/// experts ablated), and the configured ranking's.
fn top_sets(e: &Effects, cfg: &AnalysisConfig, risk_diff: &[f64]) -> Vec<TopSet> {
    let k = cfg.top_k;
    let mut sets = vec![TopSet {
        ranking: "riskdiff".into(),
        experts: top(risk_diff, e.experts, k),
    }];
    if let Some(a) = &e.attribution {
        sets.push(TopSet {
            ranking: "attribution".into(),
            experts: top(&a.score(cfg.score), e.experts, k),
        });
    }
    for (how, s) in &e.ablation {
        sets.push(TopSet {
            ranking: format!("ablation ({how})"),
            experts: top(&s.score(cfg.score), e.experts, k),
        });
    }
    if e.ranking == Ranking::AttributionAblation {
        sets.push(TopSet {
            ranking: e.ranking.to_string(),
            experts: e.order.iter().take(k).copied().collect(),
        });
    }
    sets
}

fn overlaps(sets: &[TopSet]) -> Vec<Overlap> {
    let mut out = Vec::new();
    for (i, a) in sets.iter().enumerate() {
        for b in &sets[i + 1..] {
            let (x, y): (BTreeSet<_>, BTreeSet<_>) = (
                a.experts.iter().copied().collect(),
                b.experts.iter().copied().collect(),
            );
            let shared = x.intersection(&y).count();
            let union = x.union(&y).count();
            out.push(Overlap {
                a: a.ranking.clone(),
                b: b.ranking.clone(),
                shared,
                jaccard: if union > 0 {
                    shared as f64 / union as f64
                } else {
                    1.0
                },
            });
        }
    }
    out
}

fn ablation_of(e: &Effects, how: Removal) -> Option<&SideEffects> {
    e.ablation.iter().find(|(h, _)| *h == how).map(|(_, s)| s)
}

/// Write the effects files of `e` into `dir`: `risk_diff` is the aggregated risk difference
/// (for the top sets), `global` the selected experts (outlined), `planted` the truth (dotted).
pub fn write(
    dir: &RunDir,
    e: &Effects,
    cfg: &AnalysisConfig,
    risk_diff: &[f64],
    global: &[ExpertId],
    planted: &[ExpertId],
) -> Result<(), AnalysisError> {
    let (layers, experts) = (e.layers, e.experts);
    let finite = |v: f64| v.is_finite().then_some(v);
    let at = |s: Option<&SideEffects>, i: usize| {
        s.map_or((None, None), |s| (finite(s.unsafe_[i]), finite(s.safe[i])))
    };
    let rows: Vec<EffectRow> = e
        .order
        .iter()
        .take(cfg.top_k)
        .map(|&[l, x]| {
            let i = l * experts + x;
            let (zero_unsafe, zero_safe) = at(ablation_of(e, Removal::Zero), i);
            let (route_unsafe, route_safe) = at(ablation_of(e, Removal::Route), i);
            let (attribution_unsafe, attribution_safe) = at(e.attribution.as_ref(), i);
            EffectRow {
                layer: l,
                expert: x,
                score: e.score[i],
                zero_unsafe,
                zero_safe,
                route_unsafe,
                route_safe,
                attribution_unsafe,
                attribution_safe,
            }
        })
        .collect();
    let sets = top_sets(e, cfg, risk_diff);
    let report = EffectsReport {
        ranking: e.ranking.to_string(),
        score: cfg.score.to_string(),
        removal: cfg.removal.to_string(),
        unsafe_answers: e.answers.0,
        safe_answers: e.answers.1,
        answer_tokens: cfg.answer_tokens,
        tokens: e.tokens,
        ablated: e.ablated.len(),
        attribution_seconds: e.seconds.0,
        ablation_seconds: e.seconds.1,
        top: rows,
        overlaps: overlaps(&sets),
        top_sets: sets,
        attribution_vs_ablation: match (&e.attribution, ablation_of(e, Removal::Zero)) {
            (Some(a), Some(z)) => spearman(&a.score(cfg.score), &z.score(cfg.score)),
            _ => None,
        },
    };

    // effects.safetensors: float64 grids (NaN: not measured).
    let mut grids: Vec<(String, Vec<usize>, Vec<f64>)> =
        vec![("score".into(), vec![layers, experts], e.score.clone())];
    let mut side = |name: &str, s: &SideEffects| {
        grids.push((
            format!("{name}.unsafe"),
            vec![layers, experts],
            s.unsafe_.clone(),
        ));
        grids.push((
            format!("{name}.safe"),
            vec![layers, experts],
            s.safe.clone(),
        ));
        grids.push((
            format!("{name}.specific"),
            vec![layers, experts],
            s.specific(),
        ));
    };
    if let Some(a) = &e.attribution {
        side("attribution", a);
    }
    for (how, s) in &e.ablation {
        side(&format!("ablation.{how}"), s);
    }
    grids.push((
        "per_batch".into(),
        vec![e.per_batch.len(), layers, experts],
        e.per_batch
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect(),
    ));
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = grids
        .into_iter()
        .map(|(n, shape, v)| {
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n, Dtype::F64, shape, b)
        })
        .chain([(
            "batch_idx".into(),
            Dtype::I64,
            vec![e.per_batch.len()],
            e.per_batch
                .iter()
                .flat_map(|(b, _)| (*b as i64).to_le_bytes())
                .collect(),
        )])
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let file = dir.effects_tensors();
    let blob = safetensors::serialize(views, Some(HashMap::new())).map_err(|err| {
        AnalysisError::Input {
            path: file.path().to_path_buf(),
            reason: err.to_string(),
        }
    })?;
    file.write(&blob)?;
    dir.effects().write(&report)?;
    let title = format!(
        "Effect of removing each expert ({}, {}): rise of answer NLL (nats)",
        cfg.score, cfg.removal
    );
    dir.effects_heatmap().write(&heatmap::png(
        &title, &e.score, layers, experts, global, planted,
    )?)?;
    Ok(())
}

/// How each ranking the effects give recovers `truth`: attribution and (every expert ablated)
/// each exact ablation by both scores, and attribution then ablation as configured.
pub fn recoveries(e: &Effects, cfg: &AnalysisConfig, truth: &[ExpertId]) -> Vec<RankingRecovery> {
    let ranked = |scores: &[f64]| -> Vec<(ExpertId, f64)> {
        descending(scores)
            .into_iter()
            .map(|i| ([i / e.experts, i % e.experts], scores[i]))
            .collect()
    };
    let row = |method: &str, scope: String, order: Vec<(ExpertId, f64)>| RankingRecovery {
        method: method.into(),
        scope,
        score: recovery::score(&order, truth, cfg.top_k),
        top: order.iter().take(truth.len()).map(|(id, _)| *id).collect(),
    };
    let mut out = Vec::new();
    if let Some(a) = &e.attribution {
        for s in SCORES {
            out.push(row("attribution", s.to_string(), ranked(&a.score(s))));
        }
    }
    if e.ablated.len() == e.layers * e.experts {
        for (how, side) in &e.ablation {
            for s in SCORES {
                out.push(row(
                    "ablation",
                    format!("{s}, {how}"),
                    ranked(&side.score(s)),
                ));
            }
        }
    }
    if e.ranking == Ranking::AttributionAblation {
        let order = e
            .order
            .iter()
            .map(|&[l, x]| ([l, x], e.score[l * e.experts + x]))
            .collect();
        out.push(row(
            "attribution+ablation",
            format!("{}, {}", cfg.score, cfg.removal),
            order,
        ));
    }
    out
}
