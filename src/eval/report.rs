//! `eval.json`: the rates an evaluation measured, with the counts behind each, and the
//! before/after table that compares several of them.

use serde::{Deserialize, Serialize};

use crate::analysis::select::ExpertId;

/// How many answers of a set the judge counted (refused, or complied for jailbreaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Prompts answered.
    pub n: usize,
    /// Answers counted.
    pub hits: usize,
}

impl Count {
    /// `hits / n`, `None` for an empty set.
    pub fn rate(self) -> Option<f64> {
        (self.n > 0).then(|| self.hits as f64 / self.n as f64)
    }
}

/// The reference answers' negative log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NllCount {
    /// Answers scored.
    pub answers: usize,
    /// Answer tokens scored.
    pub tokens: usize,
    /// Sum of their NLLs (nats).
    pub total: f64,
}

/// What one evaluation measured (`eval.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The model directory evaluated.
    pub model: String,
    /// Experts forced into every token's top-k by steering, `(layer, expert)` (empty: none).
    #[serde(default)]
    pub activated_experts: Vec<ExpertId>,
    /// Experts forced out of every token's top-k by steering.
    #[serde(default)]
    pub deactivated_experts: Vec<ExpertId>,
    /// Whether the prompts are a split's held-out part.
    pub heldout: bool,
    /// Attack success rate: share of jailbreaks answered without a refusal.
    pub asr: Option<f64>,
    /// Share of plain harmful goals refused.
    pub plain_refusal_rate: Option<f64>,
    /// Share of benign instructions refused.
    pub benign_refusal_rate: Option<f64>,
    /// Mean per-token NLL of the benign reference answers (nats).
    pub benign_answer_nll: Option<f64>,
    /// Jailbreaks: `hits` = complied.
    pub jailbreak: Count,
    /// Plain goals: `hits` = refused.
    pub plain: Count,
    /// Benign instructions: `hits` = refused.
    pub benign: Count,
    /// Behind `benign_answer_nll`.
    pub nll: NllCount,
    /// New tokens per answer.
    pub max_new_tokens: usize,
    /// Tokens generated in all.
    pub generated_tokens: usize,
}

impl EvalReport {
    /// Fill the rates from the counts.
    pub fn with_rates(mut self) -> Self {
        self.asr = self.jailbreak.rate();
        self.plain_refusal_rate = self.plain.rate();
        self.benign_refusal_rate = self.benign.rate();
        self.benign_answer_nll = (self.nll.tokens > 0).then(|| self.nll.total / self.nll.tokens as f64);
        self
    }
}

/// A fixed-width table of several reports, one row each, e.g.
///
/// ```text
/// model      ASR            plain refused   benign refused  benign NLL
/// base       100.0% (71/71) 100.0% (104/104)  2.0% (2/100)  3.215
/// ```
pub fn table(rows: &[(String, EvalReport)]) -> String {
    let pct = |c: Count| match c.rate() {
        Some(r) => format!("{:5.1}% ({}/{})", 100.0 * r, c.hits, c.n),
        None => "-".into(),
    };
    let name_w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(5);
    let mut out = format!(
        "{:name_w$}  {:>18}  {:>18}  {:>18}  {:>10}\n",
        "model", "jailbreak ASR", "plain refused", "benign refused", "benign NLL"
    );
    for (name, r) in rows {
        let nll = r.benign_answer_nll.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{name:name_w$}  {:>18}  {:>18}  {:>18}  {nll:>10}\n",
            pct(r.jailbreak),
            pct(r.plain),
            pct(r.benign)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(complied: usize) -> EvalReport {
        EvalReport {
            model: "m".into(),
            activated_experts: vec![],
            deactivated_experts: vec![],
            heldout: true,
            asr: None,
            plain_refusal_rate: None,
            benign_refusal_rate: None,
            benign_answer_nll: None,
            jailbreak: Count { n: 71, hits: complied },
            plain: Count { n: 104, hits: 104 },
            benign: Count { n: 0, hits: 0 },
            nll: NllCount {
                answers: 2,
                tokens: 4,
                total: 10.0,
            },
            max_new_tokens: 48,
            generated_tokens: 0,
        }
        .with_rates()
    }

    #[test]
    fn rates_come_from_counts_and_empty_sets_have_none() {
        let r = report(70);
        assert_eq!(r.asr, Some(70.0 / 71.0));
        assert_eq!(r.plain_refusal_rate, Some(1.0));
        assert_eq!(r.benign_refusal_rate, None);
        assert_eq!(r.benign_answer_nll, Some(2.5));
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["benign_refusal_rate"].is_null());
        assert_eq!(json["jailbreak"]["hits"], 70);
    }

    #[test]
    fn table_has_a_row_per_report() {
        let t = table(&[("base".into(), report(71)), ("trained".into(), report(35))]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].starts_with("base") && lines[1].contains("100.0% (71/71)"), "{t}");
        assert!(lines[2].contains(" 49.3% (35/71)") && lines[2].contains("2.5000"), "{t}");
    }
}
