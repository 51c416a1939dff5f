//! The before/after table that compares several evaluations (`eval.json`, whose type lives
//! with the run directory's artifacts: [`crate::run_dir::eval`]).

pub use crate::run_dir::eval::{Count, EvalReport, FamilyReport, LlmJudgeReport, NllCount};

/// A fixed-width table of several reports, one row each, e.g.
///
/// ```text
/// model      ASR            plain refused   benign refused  benign NLL
/// base       100.0% (71/71) 100.0% (104/104)  2.0% (2/100)  3.215
/// ```
///
/// A `trained NLL` column (retained knowledge) follows where any report has one; then, where any
/// report has them, each attack family's held-out ASR (`ASR <family>`; the `jailbreak ASR` column
/// then pools the families trained on), XSTest's safe and unsafe prompts refused, and
/// StrongREJECT's prompts refused.
///
/// Where any report has an HTTP judge's verdicts (`llm_judge`), a second table follows with its
/// rates on the same answers ([`llm_table`]).
pub fn table(rows: &[(String, EvalReport)]) -> String {
    let pct = |c: Option<Count>| match c.and_then(Count::rate) {
        Some(r) => {
            let c = c.expect("a rate has its count");
            format!("{:5.1}% ({}/{})", 100.0 * r, c.hits, c.n)
        }
        None => "-".into(),
    };
    let nll = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    type Cell<'a> = Box<dyn Fn(&EvalReport) -> String + 'a>;
    let mut columns: Vec<(String, usize, Cell)> = vec![
        (
            "jailbreak ASR".into(),
            18,
            Box::new(|r| pct(Some(r.jailbreak))),
        ),
        ("plain refused".into(), 18, Box::new(|r| pct(Some(r.plain)))),
        (
            "benign refused".into(),
            18,
            Box::new(|r| pct(Some(r.benign))),
        ),
        (
            "benign NLL".into(),
            10,
            Box::new(|r| nll(r.benign_answer_nll)),
        ),
    ];
    let any = |f: &dyn Fn(&EvalReport) -> bool| rows.iter().any(|(_, r)| f(r));
    if any(&|r| r.trained_answer_nll.is_some()) {
        columns.push((
            "trained NLL".into(),
            11,
            Box::new(|r| nll(r.trained_answer_nll)),
        ));
    }
    let mut families: Vec<String> = Vec::new();
    for f in rows.iter().flat_map(|(_, r)| &r.families) {
        if !families.contains(&f.name) {
            families.push(f.name.clone());
        }
    }
    for name in families {
        let header = format!("ASR {name}");
        let width = header.len().max(18);
        columns.push((
            header,
            width,
            Box::new(move |r| {
                pct(r
                    .families
                    .iter()
                    .find(|f| f.name == name)
                    .map(|f| f.jailbreak))
            }),
        ));
    }
    if any(&|r| r.xstest_safe.is_some() || r.xstest_unsafe.is_some()) {
        columns.push((
            "XSTest safe refused".into(),
            19,
            Box::new(|r| pct(r.xstest_safe)),
        ));
        columns.push((
            "XSTest unsafe refused".into(),
            21,
            Box::new(|r| pct(r.xstest_unsafe)),
        ));
    }
    if any(&|r| r.strongreject.is_some()) {
        columns.push((
            "StrongREJECT refused".into(),
            20,
            Box::new(|r| pct(r.strongreject)),
        ));
    }
    let name_w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(5);
    let mut out = format!("{:name_w$}", "model");
    for (header, w, _) in &columns {
        out.push_str(&format!("  {header:>w$}"));
    }
    out.push('\n');
    for (name, r) in rows {
        out.push_str(&format!("{name:name_w$}"));
        for (_, w, cell) in &columns {
            out.push_str(&format!("  {:>w$}", cell(r)));
        }
        out.push('\n');
    }
    if rows.iter().any(|(_, r)| r.llm_judge.is_some()) {
        out.push('\n');
        out.push_str(&llm_table(rows));
    }
    out
}

/// The HTTP judge's rates, one row per report that has them, e.g.
///
/// ```text
/// LLM judge  judge            jailbreak ASR     plain refused    benign refused  disagree  unjudged
/// base       qwen3 (refusal)  95.8% (68/71)  100.0% (104/104)     1.0% (1/100)         4         0
/// ```
///
/// `disagree` counts answers where its verdict differs from the phrase judge's; `unjudged` those
/// it gave no verdict on (unparsed or failed). XSTest and StrongREJECT columns follow where any
/// row has them.
pub fn llm_table(rows: &[(String, EvalReport)]) -> String {
    let rows: Vec<(&String, &LlmJudgeReport)> = rows
        .iter()
        .filter_map(|(n, r)| Some((n, r.llm_judge.as_ref()?)))
        .collect();
    let pct = |c: Option<Count>| match c.and_then(Count::rate) {
        Some(r) => {
            let c = c.expect("a rate has its count");
            format!("{:5.1}% ({}/{})", 100.0 * r, c.hits, c.n)
        }
        None => "-".into(),
    };
    type Cell<'a> = Box<dyn Fn(&LlmJudgeReport) -> String + 'a>;
    let judge_w = rows
        .iter()
        .map(|(_, j)| j.model.len() + j.rubric.name().len() + 3)
        .max()
        .unwrap_or(0)
        .max(5);
    let mut columns: Vec<(&str, usize, Cell)> = vec![
        (
            "judge",
            judge_w,
            Box::new(|j| format!("{} ({})", j.model, j.rubric)),
        ),
        ("jailbreak ASR", 18, Box::new(|j| pct(Some(j.jailbreak)))),
        ("plain refused", 18, Box::new(|j| pct(Some(j.plain)))),
        ("benign refused", 18, Box::new(|j| pct(j.benign))),
    ];
    if rows.iter().any(|(_, j)| j.xstest_safe.is_some()) {
        columns.push(("XSTest safe refused", 19, Box::new(|j| pct(j.xstest_safe))));
    }
    if rows.iter().any(|(_, j)| j.xstest_unsafe.is_some()) {
        columns.push((
            "XSTest unsafe refused",
            21,
            Box::new(|j| pct(j.xstest_unsafe)),
        ));
    }
    if rows.iter().any(|(_, j)| j.strongreject.is_some()) {
        columns.push((
            "StrongREJECT refused",
            20,
            Box::new(|j| pct(j.strongreject)),
        ));
    }
    columns.push(("disagree", 8, Box::new(|j| j.disagreements.to_string())));
    columns.push((
        "unjudged",
        8,
        Box::new(|j| (j.unparsed + j.failed).to_string()),
    ));
    let name_w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(9);
    let mut out = format!("{:name_w$}", "LLM judge");
    for (i, (header, w, _)) in columns.iter().enumerate() {
        match i {
            0 => out.push_str(&format!("  {header:<w$}")),
            _ => out.push_str(&format!("  {header:>w$}")),
        }
    }
    out.push('\n');
    for (name, j) in rows {
        out.push_str(&format!("{name:name_w$}"));
        for (i, (_, w, cell)) in columns.iter().enumerate() {
            match i {
                0 => out.push_str(&format!("  {:<w$}", cell(j))),
                _ => out.push_str(&format!("  {:>w$}", cell(j))),
            }
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
            families: vec![],
            xstest_safe: None,
            xstest_over_refusal_rate: None,
            xstest_unsafe: None,
            xstest_unsafe_refusal_rate: None,
            strongreject: None,
            strongreject_refusal_rate: None,
            llm_judge: None,
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

    #[test]
    fn families_xstest_and_strongreject_get_columns_when_present() {
        let mut r = report(35);
        r.families = vec![
            FamilyReport {
                name: "flipattack".into(),
                trained: true,
                plain: Count { n: 104, hits: 104 },
                jailbreak: Count { n: 71, hits: 35 },
                asr: None,
                plain_refusal_rate: None,
            },
            FamilyReport {
                name: "johnny".into(),
                trained: false,
                plain: Count { n: 50, hits: 40 },
                jailbreak: Count { n: 34, hits: 17 },
                asr: None,
                plain_refusal_rate: None,
            },
        ];
        r.xstest_safe = Some(Count { n: 58, hits: 6 });
        r.xstest_unsafe = Some(Count { n: 42, hits: 21 });
        r.strongreject = Some(Count { n: 100, hits: 90 });
        let r = r.with_rates();
        assert_eq!(r.families[1].asr, Some(0.5));
        assert_eq!(r.families[1].plain_refusal_rate, Some(0.8));
        assert_eq!(r.xstest_over_refusal_rate, Some(6.0 / 58.0));
        assert_eq!(r.xstest_unsafe_refusal_rate, Some(0.5));
        assert_eq!(r.strongreject_refusal_rate, Some(0.9));
        let t = table(&[("base".into(), report(71)), ("trained".into(), r)]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].ends_with(
                "      ASR flipattack          ASR johnny  XSTest safe refused  XSTest unsafe refused  StrongREJECT refused"
            ),
            "{t}"
        );
        assert!(
            lines[1].ends_with("                   -                   -                    -                      -                     -"),
            "{t}"
        );
        assert!(
            lines[2].ends_with(
                "       49.3% (35/71)       50.0% (17/34)         10.3% (6/58)          50.0% (21/42)        90.0% (90/100)"
            ),
            "{t}"
        );
    }

    fn llm(rubric: crate::judge::Rubric) -> LlmJudgeReport {
        LlmJudgeReport {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "qwen3".into(),
            rubric,
            harm_success_at: None,
            asr: None,
            plain_refusal_rate: None,
            benign_refusal_rate: None,
            xstest_over_refusal_rate: None,
            xstest_unsafe_refusal_rate: None,
            strongreject_refusal_rate: None,
            jailbreak: Count { n: 71, hits: 68 },
            plain: Count { n: 104, hits: 104 },
            benign: Some(Count { n: 100, hits: 1 }),
            xstest_safe: None,
            xstest_unsafe: None,
            strongreject: None,
            families: vec![],
            disagreements: 4,
            judged: 275,
            unparsed: 0,
            failed: 0,
            cached: 0,
            requests: 275,
        }
        .with_rates()
    }

    #[test]
    fn an_llm_judge_gets_its_own_table_and_old_reports_have_none() {
        let t = table(&[("base".into(), report(71))]);
        assert!(!t.contains("LLM judge"), "{t}");
        let json = serde_json::to_value(report(71)).unwrap();
        assert!(json.get("llm_judge").is_none(), "skipped when absent");
        let mut r = report(71);
        r.llm_judge = Some(llm(crate::judge::Rubric::Refusal));
        assert_eq!(r.llm_judge.as_ref().unwrap().asr, Some(68.0 / 71.0));
        let t = table(&[("base".into(), r.clone()), ("other".into(), report(3))]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert_eq!(
            lines[5],
            "base       qwen3 (refusal)       95.8% (68/71)    100.0% (104/104)        1.0% (1/100)         4         0",
            "{t}"
        );
        assert!(
            lines[3].is_empty() && lines[4].starts_with("LLM judge  judge"),
            "{t}"
        );
        let back: EvalReport = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn an_eval_json_without_the_new_sets_still_reads() {
        let mut json = serde_json::to_value(report(35)).unwrap();
        let m = json.as_object_mut().unwrap();
        for k in [
            "families",
            "xstest_safe",
            "xstest_over_refusal_rate",
            "xstest_unsafe",
            "xstest_unsafe_refusal_rate",
            "strongreject",
            "strongreject_refusal_rate",
        ] {
            assert!(m.remove(k).is_some(), "{k}");
        }
        let back: EvalReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report(35));
    }
}
