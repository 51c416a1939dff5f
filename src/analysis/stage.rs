//! The `analyze` stage: read a collected run directory, compute per-batch and aggregated risk
//! differences, pick unsafe experts and write the analysis artifacts back into it (the risk
//! tables, the unsafe experts, the masks and the heatmap: see [`crate::run_dir`]). Same inputs,
//! same bytes.

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::Dtype;

use super::answers::{self, AnsweredBatch};
use super::config::AnalysisConfig;
use super::effects::{Effects, descending};
pub use super::error::AnalysisError;
use super::heatmap;
use super::risk::{
    RiskRow, SampleRouting, TokenScope, aggregate, by_risk, count_batch, risk_table,
};
use super::select::{
    ExpertId, ExpertSource, SelectionParams, apply, mask, random_ranking, relabel, union,
};
use crate::data::batch::Label;
use crate::run_dir::RunDir;
pub use crate::run_dir::analysis::UnsafeExperts;
use crate::run_dir::analysis::{RankingRecovery, Recovery, RiskCsvRow};
use crate::run_dir::records::RoutingIndex;
use crate::run_dir::routing as routing_file;

/// What the terminal summary shows.
#[derive(Debug, Clone)]
pub struct AnalysisSummary {
    /// Aggregated rows, riskiest first.
    pub top: Vec<RiskRow>,
    /// Unsafe experts and masks.
    pub experts: UnsafeExperts,
    /// Batches without both labels, skipped.
    pub skipped: Vec<usize>,
    /// Tokens counted in all.
    pub tokens: u64,
    /// Layers and experts.
    pub shape: [usize; 2],
}

impl AnalysisSummary {
    /// (min, max, mean) of the per-batch unsafe-expert counts.
    pub fn per_batch_counts(&self) -> (usize, usize, f64) {
        let n: Vec<usize> = self.experts.per_batch.iter().map(Vec::len).collect();
        let mean = n.iter().sum::<usize>() as f64 / n.len().max(1) as f64;
        (
            n.iter().copied().min().unwrap_or(0),
            n.iter().copied().max().unwrap_or(0),
            mean,
        )
    }

    /// Mean Jaccard overlap of the per-batch sets over all pairs of batches, and the number of
    /// experts in every batch's set.
    pub fn overlap(&self) -> (f64, usize) {
        let sets: Vec<std::collections::BTreeSet<ExpertId>> = self
            .experts
            .per_batch
            .iter()
            .map(|s| s.iter().copied().collect())
            .collect();
        let mut total = 0.0;
        let mut pairs = 0;
        for i in 0..sets.len() {
            for j in i + 1..sets.len() {
                let inter = sets[i].intersection(&sets[j]).count() as f64;
                let uni = sets[i].union(&sets[j]).count() as f64;
                total += if uni > 0.0 { inter / uni } else { 1.0 };
                pairs += 1;
            }
        }
        let common = sets
            .split_first()
            .map(|(first, rest)| {
                first
                    .iter()
                    .filter(|x| rest.iter().all(|s| s.contains(*x)))
                    .count()
            })
            .unwrap_or(0);
        (if pairs > 0 { total / pairs as f64 } else { 1.0 }, common)
    }
}

/// Read the kept samples' routing of every batch in the index.
fn read_batches(
    dir: &RunDir,
    index: &RoutingIndex,
    scope: TokenScope,
) -> Result<Vec<(usize, Vec<SampleRouting>)>, AnalysisError> {
    let mut out = Vec::new();
    for b in &index.batches {
        let file = dir.batch_routing(b.batch_idx);
        let path = file.path().to_path_buf();
        let input = |reason: String| AnalysisError::Input {
            path: path.clone(),
            reason,
        };
        let mut tensors = routing_file::read(&path).map_err(input)?;
        let records = dir.batch_records(b.batch_idx).read()?;
        let mut samples = Vec::new();
        for r in records.iter().filter(|r| r.kept) {
            let mut take = |kind: &str| {
                tensors
                    .logits
                    .remove(&format!("{kind}.{}", r.in_batch_idx))
                    .ok_or_else(|| input(format!("no tensor {kind}.{}", r.in_batch_idx)))
            };
            let (prompt, generation) = (take("prompt")?, take("gen")?);
            let mut reply = |side: &str| {
                tensors
                    .chosen
                    .remove(&format!("reply_{side}.{}", r.in_batch_idx))
            };
            let replies = match (reply("safe"), reply("unsafe")) {
                (Some(safe), Some(unsafe_)) => Some([safe, unsafe_]),
                _ => None,
            };
            for t in [&prompt, &generation] {
                if [t.layers, t.experts] != [index.layers, index.experts] {
                    return Err(input(format!(
                        "sample {}: routing of {} layers x {} experts, index says {} x {}",
                        r.in_batch_idx, t.layers, t.experts, index.layers, index.experts
                    )));
                }
            }
            samples.push(SampleRouting {
                is_unsafe: r.label == Label::Unsafe,
                prompt,
                generation,
                replies,
            });
        }
        if scope == TokenScope::Response
            && samples.iter().any(|s| s.is_unsafe)
            && samples.iter().all(|s| s.replies.is_none())
        {
            return Err(input(
                "no teacher-forced replies (reply_safe.*, reply_unsafe.*) for token_scope = \"response\": collect it again with this version".into(),
            ));
        }
        out.push((b.batch_idx, samples));
    }
    Ok(out)
}

/// The planted experts an analysis is scored against.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    /// The file they came from.
    pub file: PathBuf,
    /// The planted experts.
    pub experts: Vec<ExpertId>,
}

/// The risk tables of the batches that have both labels under `scope`, their batch indices, the
/// batches skipped, and the tokens counted. Batches are counted in parallel; integer counts merge
/// exactly, so the result is deterministic.
#[allow(clippy::type_complexity)]
fn risk_tables(
    batches: &[(usize, Vec<SampleRouting>)],
    scope: TokenScope,
    first_n: usize,
    index: &RoutingIndex,
) -> (Vec<(usize, Vec<RiskRow>)>, Vec<usize>, u64) {
    let (layers, experts) = (index.layers, index.experts);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = batches.len().div_ceil(threads).max(1);
    let counted: Vec<(usize, super::risk::Counts, super::risk::Counts)> = std::thread::scope(|s| {
        let handles: Vec<_> = batches
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(b, samples)| {
                            let (safe, uns) =
                                count_batch(samples, scope, first_n, layers, experts, index.top_k);
                            (*b, safe, uns)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("counting thread"))
            .collect()
    });
    let mut skipped = Vec::new();
    let mut tables = Vec::new();
    let mut tokens = 0;
    for (b, safe, uns) in counted {
        if safe.tokens == 0 || uns.tokens == 0 {
            skipped.push(b);
            continue;
        }
        tokens += safe.tokens + uns.tokens;
        tables.push((b, risk_table(&safe, &uns, experts)));
    }
    (tables, skipped, tokens)
}

/// Every expert of `rows`, most suspect first, with its score.
fn ranked(rows: &[RiskRow]) -> Vec<(ExpertId, f64)> {
    by_risk(rows)
        .into_iter()
        .map(|i| ([rows[i].layer, rows[i].expert], rows[i].risk_diff))
        .collect()
}

/// The collected answers of every batch of the run in `dir`, what an effect ranking measures on.
pub fn answered(dir: &RunDir, cfg: &AnalysisConfig) -> Result<Vec<AnsweredBatch>, AnalysisError> {
    let index = dir.routing_index().read()?;
    let batches: Vec<usize> = index.batches.iter().map(|b| b.batch_idx).collect();
    Ok(answers::read(dir, &batches, cfg.answer_tokens)?)
}

/// Analyse the collected run in `dir` and write the artifacts there; `seed` (the config's) draws
/// the random ablation; with `truth` (a planted model), also `recovery.json`. An effect ranking
/// (`cfg.ranking`) ranks by `effects` (measured by [`super::effects::measure`] on the
/// collected answers: [`answered`]) and writes them too.
pub fn analyze(
    dir: &RunDir,
    cfg: &AnalysisConfig,
    seed: u64,
    truth: Option<&Truth>,
    effects: Option<&Effects>,
) -> Result<AnalysisSummary, AnalysisError> {
    let index = dir.routing_index().read()?;
    let (layers, experts) = (index.layers, index.experts);
    if cfg.top_k > layers * experts {
        tracing::warn!(
            "analysis.top_k = {} is more than the model's {} experts ({layers} layers x {experts}): every expert above the threshold is taken",
            cfg.top_k,
            layers * experts
        );
    }
    if let Some(t) = truth
        && let Some(&[l, e]) = t
            .experts
            .iter()
            .find(|&&[l, e]| l >= layers || e >= experts)
    {
        return Err(AnalysisError::Input {
            path: t.file.clone(),
            reason: format!(
                "names expert [{l}, {e}], but the model has {layers} MoE layers × {experts} experts"
            ),
        });
    }
    let batches = read_batches(dir, &index, cfg.token_scope)?;
    let (tables, skipped, tokens) = risk_tables(&batches, cfg.token_scope, cfg.first_n, &index);
    if tables.is_empty() {
        return Err(AnalysisError::Empty {
            run_dir: dir.path().to_path_buf(),
        });
    }
    let agg = aggregate(&tables.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>());
    if cfg.ranking.is_causal() != effects.is_some() {
        return Err(AnalysisError::Input {
            path: dir.path().to_path_buf(),
            reason: format!(
                "analysis.ranking = \"{}\" {} measured effects",
                cfg.ranking,
                if effects.is_some() {
                    "takes no"
                } else {
                    "needs"
                }
            ),
        });
    }

    // The scores that rank: each batch's and the aggregate's, `[layers × experts]`; the risk
    // difference, or an effect ranking's scores (experts kept where the effect is positive).
    let grid = |rows: &[RiskRow]| rows.iter().map(|r| r.risk_diff).collect::<Vec<f64>>();
    let (batch_scores, agg_scores, order, thresholds): (Vec<Vec<f64>>, Vec<f64>, Vec<usize>, _) =
        match effects {
            None => (
                tables.iter().map(|(_, t)| grid(t)).collect(),
                grid(&agg),
                descending(&grid(&agg)),
                (cfg.batch_threshold, cfg.global_threshold),
            ),
            Some(e) => (
                tables
                    .iter()
                    .map(|(b, _)| {
                        e.per_batch
                            .iter()
                            .find(|(eb, _)| eb == b)
                            .map_or_else(|| e.score.clone(), |(_, s)| s.clone())
                    })
                    .collect(),
                e.score.clone(),
                e.order.iter().map(|&[l, x]| l * experts + x).collect(),
                (0.0, 0.0),
            ),
        };
    let id = |i: usize| -> ExpertId { [i / experts, i % experts] };
    let select = |scores: &[f64], threshold: f64| -> Vec<ExpertId> {
        descending(scores)
            .into_iter()
            .filter(|&i| scores[i] > threshold)
            .take(cfg.top_k)
            .map(id)
            .collect()
    };
    let negate = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<f64>>();
    let (per_batch, global, ranking): (Vec<Vec<ExpertId>>, Vec<ExpertId>, Vec<ExpertId>) = match cfg
        .experts
    {
        ExpertSource::RiskDiff => (
            batch_scores
                .iter()
                .map(|t| select(t, thresholds.0))
                .collect(),
            select(&agg_scores, thresholds.1),
            order.iter().map(|&i| id(i)).collect(),
        ),
        ExpertSource::Random => {
            let map = relabel(layers, experts, seed);
            (
                batch_scores
                    .iter()
                    .map(|t| apply(&map, &select(t, thresholds.0), experts))
                    .collect(),
                apply(&map, &select(&agg_scores, thresholds.1), experts),
                random_ranking(layers, experts, seed),
            )
        }
        ExpertSource::AntiRanked => (
            batch_scores
                .iter()
                .map(|t| select(&negate(t), thresholds.0))
                .collect(),
            select(&negate(&agg_scores), thresholds.1),
            descending(&negate(&agg_scores))
                .into_iter()
                .map(id)
                .collect(),
        ),
        ExpertSource::Planted => {
            let t = truth.ok_or_else(|| AnalysisError::Input {
                path: dir.path().to_path_buf(),
                reason: "analysis.experts = \"planted\" needs the planted experts: a model with planted.json, or analysis.truth".into(),
            })?;
            let mut ranking = t.experts.clone();
            ranking.extend(
                order
                    .iter()
                    .map(|&i| id(i))
                    .filter(|id| !t.experts.contains(id)),
            );
            (
                tables.iter().map(|_| t.experts.clone()).collect(),
                t.experts.clone(),
                ranking,
            )
        }
    };
    let result = UnsafeExperts {
        batch_idx: tables.iter().map(|(b, _)| *b).collect(),
        union: union(&per_batch),
        per_batch,
        global,
        ranking,
        params: SelectionParams {
            batch_threshold: cfg.batch_threshold,
            global_threshold: cfg.global_threshold,
            top_k: cfg.top_k,
            token_scope: cfg.scope_name(),
            experts: cfg.experts.to_string(),
            seed: (cfg.experts == ExpertSource::Random).then_some(seed),
            ranking: cfg.ranking.to_string(),
            score: effects.map(|_| cfg.score.to_string()),
            removal: effects.map(|_| cfg.removal.to_string()),
        },
    };

    let planted = truth.map_or(&[][..], |t| &t.experts[..]);
    if let Some(e) = effects {
        super::effects_report::write(dir, e, cfg, &grid(&agg), &result.global, planted)?;
    }
    write_outputs(dir, &tables, &agg, &result, layers, experts, planted)?;
    if let Some(t) = truth {
        let mut r = recovery(&batches, &index, cfg, t);
        if let Some(e) = effects {
            r.rankings
                .extend(super::effects_report::recoveries(e, cfg, &t.experts));
        }
        dir.recovery().write(&r)?;
    }
    let order = by_risk(&agg);
    Ok(AnalysisSummary {
        top: order.iter().map(|&i| agg[i].clone()).collect(),
        experts: result,
        skipped,
        tokens,
        shape: [layers, experts],
    })
}

/// How the risk difference over each token scope ranks the planted experts (the response scope
/// where the collect has its teacher-forced replies).
fn recovery(
    batches: &[(usize, Vec<SampleRouting>)],
    index: &RoutingIndex,
    cfg: &AnalysisConfig,
    truth: &Truth,
) -> Recovery {
    let n = index.layers * index.experts;
    let has_replies = batches
        .iter()
        .any(|(_, s)| s.iter().any(|x| x.replies.is_some()));
    let rankings = TokenScope::ALL
        .into_iter()
        .filter(|&scope| scope != TokenScope::Response || has_replies)
        .filter_map(|scope| {
            let (tables, _, _) = risk_tables(batches, scope, cfg.first_n, index);
            (!tables.is_empty()).then(|| {
                let agg = aggregate(&tables.into_iter().map(|(_, t)| t).collect::<Vec<_>>());
                let order = ranked(&agg);
                RankingRecovery {
                    method: "risk_diff".into(),
                    scope: scope.name(cfg.first_n),
                    score: super::recovery::score(&order, &truth.experts, cfg.top_k),
                    top: order
                        .iter()
                        .take(truth.experts.len())
                        .map(|(id, _)| *id)
                        .collect(),
                }
            })
        })
        .collect();
    Recovery {
        truth_file: truth.file.display().to_string(),
        truth: truth.experts.clone(),
        experts: n,
        configured_scope: cfg.scope_name(),
        random: super::recovery::random(n, truth.experts.len(), cfg.top_k),
        rankings,
    }
}

fn csv_row(batch_idx: Option<usize>, r: &RiskRow, abs: bool) -> RiskCsvRow {
    RiskCsvRow {
        batch_idx,
        layer: r.layer,
        expert: r.expert,
        a_safe: r.a_safe,
        d_safe: r.d_safe,
        a_unsafe: r.a_unsafe,
        d_unsafe: r.d_unsafe,
        a_safe_n: r.a_safe_n,
        a_unsafe_n: r.a_unsafe_n,
        risk_diff: r.risk_diff,
        risk_diff_abs: abs.then(|| r.risk_diff.abs()),
    }
}

fn write_outputs(
    dir: &RunDir,
    tables: &[(usize, Vec<RiskRow>)],
    agg: &[RiskRow],
    result: &UnsafeExperts,
    layers: usize,
    experts: usize,
    planted: &[ExpertId],
) -> Result<(), AnalysisError> {
    let per = tables.iter().flat_map(|(b, t)| {
        by_risk(t)
            .into_iter()
            .map(move |i| csv_row(Some(*b), &t[i], false))
    });
    dir.risk_diff().write(per)?;
    let aggregated = by_risk(agg)
        .into_iter()
        .map(|i| csv_row(None, &agg[i], true));
    dir.risk_diff_aggregated().write(aggregated)?;
    dir.unsafe_experts().write(result)?;

    // Masks: per-batch stack, global, union (f32, 1 = unsafe expert), and the batch indices.
    let stack: Vec<f32> = result
        .per_batch
        .iter()
        .flat_map(|ids| mask(ids, layers, experts))
        .collect();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let entries: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "per_batch",
            Dtype::F32,
            vec![result.per_batch.len(), layers, experts],
            f32_bytes(&stack),
        ),
        (
            "global",
            Dtype::F32,
            vec![layers, experts],
            f32_bytes(&mask(&result.global, layers, experts)),
        ),
        (
            "union",
            Dtype::F32,
            vec![layers, experts],
            f32_bytes(&mask(&result.union, layers, experts)),
        ),
        (
            "batch_idx",
            Dtype::I64,
            vec![result.batch_idx.len()],
            result
                .batch_idx
                .iter()
                .flat_map(|&b| (b as i64).to_le_bytes())
                .collect(),
        ),
    ];
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let file = dir.expert_masks();
    let bytes =
        safetensors::serialize(views, Some(HashMap::new())).map_err(|e| AnalysisError::Input {
            path: file.path().to_path_buf(),
            reason: e.to_string(),
        })?;
    file.write(&bytes)?;

    let grid: Vec<f64> = agg.iter().map(|r| r.risk_diff).collect();
    let title = match planted.is_empty() {
        true => "Risk difference (top-k rate, jailbreak − plain)",
        false => "Risk difference (jailbreak − plain); framed: selected, dot: planted",
    };
    dir.risk_heatmap().write(&heatmap::png(
        title,
        &grid,
        layers,
        experts,
        &result.global,
        planted,
    )?)?;
    Ok(())
}
