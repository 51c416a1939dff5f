//! The before/after table that compares several evaluations (`eval.json`, whose type lives
//! with the run directory's artifacts: [`crate::run_dir::eval`]).

pub use crate::run_dir::eval::{Count, EvalReport, NllCount};

/// A fixed-width table of several reports, one row each, e.g.
///
/// ```text
/// model      ASR            plain refused   benign refused  benign NLL
/// base       100.0% (71/71) 100.0% (104/104)  2.0% (2/100)  3.215
/// ```
///
/// A `trained NLL` column (retained knowledge) follows where any report has one.
pub fn table(rows: &[(String, EvalReport)]) -> String {
    let pct = |c: Count| match c.rate() {
        Some(r) => format!("{:5.1}% ({}/{})", 100.0 * r, c.hits, c.n),
        None => "-".into(),
    };
    let name_w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(5);
    let nll = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    let retained = rows.iter().any(|(_, r)| r.trained_answer_nll.is_some());
    let mut out = format!(
        "{:name_w$}  {:>18}  {:>18}  {:>18}  {:>10}",
        "model", "jailbreak ASR", "plain refused", "benign refused", "benign NLL"
    );
    if retained {
        out.push_str(&format!("  {:>11}", "trained NLL"));
    }
    out.push('\n');
    for (name, r) in rows {
        out.push_str(&format!(
            "{name:name_w$}  {:>18}  {:>18}  {:>18}  {:>10}",
            pct(r.jailbreak),
            pct(r.plain),
            pct(r.benign),
            nll(r.benign_answer_nll)
        ));
        if retained {
            out.push_str(&format!("  {:>11}", nll(r.trained_answer_nll)));
        }
        out.push('\n');
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
            jailbreak: Count {
                n: 71,
                hits: complied,
            },
            plain: Count { n: 104, hits: 104 },
            benign: Count { n: 0, hits: 0 },
            nll: NllCount {
                answers: 2,
                tokens: 4,
                total: 10.0,
            },
            trained_answer_nll: None,
            trained_nll: None,
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
        assert!(
            lines[1].starts_with("base") && lines[1].contains("100.0% (71/71)"),
            "{t}"
        );
        assert!(
            lines[2].contains(" 49.3% (35/71)") && lines[2].contains("2.5000"),
            "{t}"
        );
        assert!(!t.contains("trained NLL"), "{t}");
        let mut kept = report(35);
        kept.trained_nll = Some(NllCount {
            answers: 1,
            tokens: 8,
            total: 12.0,
        });
        let t = table(&[
            ("base".into(), report(71)),
            ("trained".into(), kept.with_rates()),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("trained NLL"), "{t}");
        assert!(lines[1].ends_with(" -"), "{t}");
        assert!(lines[2].ends_with("1.5000"), "{t}");
    }
}
