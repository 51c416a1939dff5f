//! Dose-response: attack success and utility against the number of experts trained or forced
//! off, one curve per selection (`analysis.experts`: risk difference, random, anti-ranked,
//! planted), and where the ranked set falls among random sets of the same size.
//!
//! A sweep has a dose axis when its cells differ in `analysis.top_k` (trained experts) or
//! evaluate forced-off steering (`steer-dN`) at several sizes. Cells that agree on every other
//! setting form a *family* (e.g. one token scope); each family gets its own curves. The dose of a
//! trained evaluation is its `analysis.top_k` (the plot's x is the mean number of experts it
//! actually trained: the union of the per-batch sets), that of a steered one the number of experts
//! forced off.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::ResultRow;
use super::spec::Sweep;
use super::stats::{Estimate, estimate};

/// Settings that make the curves rather than separate them.
const CURVE_KEYS: [&str; 3] = ["analysis.experts", "analysis.top_k", "eval.variants"];

/// How a dose is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The experts trained on refusals.
    Trained,
    /// The experts forced out of every token's top-k (SteerMoE steering, no training).
    ForcedOff,
}

impl Kind {
    /// As the summary and the plot name it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Trained => "trained",
            Kind::ForcedOff => "forced off",
        }
    }
}

/// One point of a curve: a selection at one dose, over seeds.
#[derive(Debug, Clone)]
pub struct DosePoint {
    /// The family's settings, as text (`analysis.token_scope=prompt`; empty for one family).
    pub family: String,
    /// Trained or forced off.
    pub kind: Kind,
    /// `risk_diff`, `random`, `anti_ranked`, `planted`.
    pub selection: String,
    /// `analysis.top_k` (trained) or experts forced off (steered).
    pub dose: usize,
    /// Mean number of experts it touched (x of the plot).
    pub experts: f64,
    /// Per-seed values: ASR, benign refusal rate, trained-answer NLL (each where measured).
    pub asr: Vec<f64>,
    /// Benign refusal rates.
    pub benign: Vec<f64>,
    /// Trained-answer NLLs.
    pub retained: Vec<f64>,
}

impl DosePoint {
    /// Mean and 95% interval of a metric.
    pub fn est(&self, metric: Metric) -> Option<Estimate> {
        estimate(self.values(metric))
    }

    /// The per-seed values of a metric.
    pub fn values(&self, metric: Metric) -> &[f64] {
        match metric {
            Metric::Asr => &self.asr,
            Metric::BenignRefused => &self.benign,
            Metric::TrainedNll => &self.retained,
        }
    }
}

/// What a curve measures (lower is better for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Held-out jailbreak ASR.
    Asr,
    /// Benign prompts refused.
    BenignRefused,
    /// NLL of answers the model was trained on.
    TrainedNll,
}

impl Metric {
    /// Every metric, in plot order.
    pub const ALL: [Metric; 3] = [Metric::Asr, Metric::BenignRefused, Metric::TrainedNll];

    /// Axis label.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Asr => "jailbreak ASR (%)",
            Metric::BenignRefused => "benign refused (%)",
            Metric::TrainedNll => "trained-answer NLL (nats)",
        }
    }

    /// Whether it is a rate shown in percent.
    pub fn percent(self) -> bool {
        !matches!(self, Metric::TrainedNll)
    }
}

/// The family of a cell: its settings outside [`CURVE_KEYS`], as `key=value` text.
fn family(sweep: &Sweep, cell: usize) -> String {
    let mut s: Vec<String> = sweep.cells[cell]
        .settings
        .iter()
        .filter(|(k, _)| !CURVE_KEYS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", super::spec::value_text(v)))
        .collect();
    s.sort();
    s.dedup();
    s.join(", ")
}

/// The dose-response points of a sweep's evaluations: trained rows by `analysis.top_k`, pure
/// forced-off steering by its size. Empty when no family has two doses of one kind.
pub fn points(sweep: &Sweep, rows: &[ResultRow]) -> Vec<DosePoint> {
    type Key = (String, Kind, String, usize);
    let mut by: BTreeMap<Key, (Vec<f64>, Vec<&ResultRow>)> = BTreeMap::new();
    for r in rows {
        let Some(job) = sweep
            .jobs
            .iter()
            .find(|j| j.cell == r.cell && j.seed == r.seed)
        else {
            continue;
        };
        let analysis = &job.config.analysis;
        let (kind, dose, experts) = if r.variant == "trained" {
            let Some(n) = r.trained_experts else { continue };
            (Kind::Trained, analysis.top_k, n as f64)
        } else if r.variant.starts_with("steer")
            && r.report.activated_experts.is_empty()
            && !r.report.deactivated_experts.is_empty()
        {
            let n = r.report.deactivated_experts.len();
            (Kind::ForcedOff, n, n as f64)
        } else {
            continue;
        };
        let key = (
            family(sweep, r.cell),
            kind,
            analysis.experts.to_string(),
            dose,
        );
        let e = by.entry(key).or_default();
        e.0.push(experts);
        e.1.push(r);
    }
    let points: Vec<DosePoint> = by
        .into_iter()
        .map(|((family, kind, selection, dose), (experts, rs))| {
            let vals = |f: &dyn Fn(&ResultRow) -> Option<f64>| -> Vec<f64> {
                rs.iter().filter_map(|r| f(r)).collect()
            };
            DosePoint {
                family,
                kind,
                selection,
                dose,
                experts: experts.iter().sum::<f64>() / experts.len() as f64,
                asr: vals(&|r| r.report.asr),
                benign: vals(&|r| r.report.benign_refusal_rate),
                retained: vals(&|r| r.report.trained_answer_nll),
            }
        })
        .collect();
    // Keep a (family, kind) only where some selection has two doses.
    let curve = |p: &DosePoint| {
        let mut doses: Vec<usize> = points
            .iter()
            .filter(|q| q.family == p.family && q.kind == p.kind && q.selection == p.selection)
            .map(|q| q.dose)
            .collect();
        doses.dedup();
        doses.len() >= 2
    };
    let keep: Vec<(String, Kind)> = points
        .iter()
        .filter(|p| curve(p))
        .map(|p| (p.family.clone(), p.kind))
        .collect();
    points
        .iter()
        .filter(|p| keep.contains(&(p.family.clone(), p.kind)))
        .cloned()
        .collect()
}

/// Where `value` falls among `random` values of a lower-is-better metric: the percentage of
/// random values it beats (strictly lower), ties counting half. 100 = better than every random
/// set; with n random sets the resolution is 100/n. Values within 1e-9 (relative) of each other
/// tie: the mean of n equal rates is not always that rate in floating point (10 × 0.93 / 10 is
/// 0.9299999999999999), and a set must not beat its equal by rounding.
pub fn percentile(value: f64, random: &[f64]) -> Option<f64> {
    if random.is_empty() {
        return None;
    }
    let tie = |r: f64| (value - r).abs() <= 1e-9 * value.abs().max(r.abs()).max(1.0);
    let beats: f64 = random
        .iter()
        .map(|&r| {
            if tie(r) {
                0.5
            } else if value < r {
                1.0
            } else {
                0.0
            }
        })
        .sum();
    Some(100.0 * beats / random.len() as f64)
}

fn fmt(e: Option<Estimate>, percent: bool) -> String {
    let Some(e) = e else { return "–".into() };
    let scale = if percent { 100.0 } else { 1.0 };
    let digits = if percent { 1 } else { 3 };
    let unit = if percent { "%" } else { "" };
    match e.half_width {
        Some(h) => format!(
            "{:.*}{unit} ± {:.*}",
            digits,
            e.mean * scale,
            digits,
            h * scale
        ),
        None => format!("{:.*}{unit}", digits, e.mean * scale),
    }
}

/// The summary's dose-response section (empty without a dose axis).
pub fn summary_section(points: &[DosePoint]) -> String {
    if points.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n## Dose-response\n\nEach selection at each dose (`analysis.top_k` for trained experts: the experts column is the mean number actually trained; the number forced off for steering). \"ranked beats random\": the percentage of random sets (one per seed) the mean of the ranked (`risk_diff`) set beats, for ASR / benign refused / trained NLL (lower is better for each; ties count half; with n random seeds the resolution is 100/n). Plotted in `dose_response.png`.\n\n| family | kind | selection | dose | experts | n | jailbreak ASR | benign refused | trained NLL | ranked beats random (ASR / benign / trained NLL) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in points {
        let beats = if p.selection == "risk_diff" {
            points
                .iter()
                .find(|q| {
                    q.family == p.family
                        && q.kind == p.kind
                        && q.dose == p.dose
                        && q.selection == "random"
                })
                .map(|q| {
                    Metric::ALL
                        .iter()
                        .map(|&m| {
                            let mine = p.est(m).map(|e| e.mean);
                            match mine.and_then(|v| percentile(v, q.values(m))) {
                                Some(pc) => format!("{pc:.0}%"),
                                None => "–".into(),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_else(|| "–".into())
        } else {
            String::new()
        };
        let family = if p.family.is_empty() {
            "–"
        } else {
            &p.family
        };
        let _ = writeln!(
            out,
            "| {family} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {beats} |",
            p.kind.label(),
            p.selection,
            p.dose,
            p.experts,
            p.asr.len(),
            fmt(p.est(Metric::Asr), true),
            fmt(p.est(Metric::BenignRefused), true),
            fmt(p.est(Metric::TrainedNll), false),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_counts_random_sets_beaten() {
        assert_eq!(percentile(0.1, &[0.2, 0.3, 0.05, 0.1]), Some(62.5));
        assert_eq!(percentile(0.0, &[0.2, 0.3]), Some(100.0));
        assert_eq!(percentile(0.5, &[0.2, 0.3]), Some(0.0));
        assert_eq!(percentile(0.5, &[]), None);
        // The mean of ten equal rates ties with that rate.
        let mean = [0.93; 10].iter().sum::<f64>() / 10.0;
        assert!(mean < 0.93);
        assert_eq!(percentile(mean, &[0.93, 0.97, 0.91]), Some(50.0));
    }
}
