//! A sweep's results: `results.csv` (one row per cell × seed × evaluation, read from the jobs'
//! `eval.json`), `summary.md` (means and 95% intervals over seeds, the matched random-experts
//! cell beside each risk-difference cell) and the data of `asr_vs_utility.png`. Each attack
//! family's ASR, XSTest's and StrongREJECT's rates get columns where some evaluation has them
//! (the cross-attack table is [`super::cross`]'s).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::SweepError;
use super::spec::Sweep;
use super::stats::{Estimate, estimate};
use crate::analysis::ExpertSource;
use crate::eval::{Count, EvalReport, possible_nll};
use crate::model::ExpertId;
use crate::run_dir::{RunDir, Variant};

/// One evaluation of one job.
#[derive(Debug, Clone)]
pub struct ResultRow {
    /// Index into [`Sweep::cells`].
    pub cell: usize,
    /// The job's seed.
    pub seed: u64,
    /// `base`, `steer-…`, `trained`.
    pub variant: String,
    /// What it measured.
    pub report: EvalReport,
    /// Experts trained (trained rows).
    pub trained_experts: Option<usize>,
    /// Parameters trained (trained rows).
    pub trainable_params: Option<usize>,
    /// The job's run directory (`results.csv` gives it relative to the sweep directory).
    pub run_dir: PathBuf,
}

/// Read every finished evaluation of every job.
pub fn collect_rows(sweep: &Sweep) -> Result<Vec<ResultRow>, SweepError> {
    let mut rows = Vec::new();
    for job in &sweep.jobs {
        let dir = RunDir::new(&job.run_dir);
        for v in &job.config.eval.variants {
            let name = v.name();
            if !dir.eval(v).is_done() {
                continue;
            }
            let report = dir.eval(v).report().read()?;
            let (trained_experts, trainable_params) = match v {
                Variant::Trained => dir
                    .training_metadata()
                    .read()
                    .map(|m| (Some(m.num_unsafe_experts), Some(m.trainable_params)))
                    .unwrap_or((None, None)),
                _ => (None, None),
            };
            rows.push(ResultRow {
                cell: job.cell,
                seed: job.seed,
                variant: name,
                report,
                trained_experts,
                trainable_params,
                run_dir: job.run_dir.clone(),
            });
        }
    }
    Ok(rows)
}

/// Evaluations a job's config asks for that have no `eval.json`, and how many it asks for.
fn job_evaluations(job: &super::spec::Job) -> (usize, usize) {
    let dir = RunDir::new(&job.run_dir);
    let variants = &job.config.eval.variants;
    let missing = variants.iter().filter(|v| !dir.eval(v).is_done()).count();
    (missing, variants.len())
}

/// Evaluations the jobs' configs ask for that have no `eval.json`, and how many they ask for.
pub fn missing_evaluations(sweep: &Sweep) -> (usize, usize) {
    sweep
        .jobs
        .iter()
        .map(job_evaluations)
        .fold((0, 0), |(m, e), (jm, je)| (m + jm, e + je))
}

/// Jobs with every evaluation finished.
pub fn finished_jobs(sweep: &Sweep) -> usize {
    sweep
        .jobs
        .iter()
        .filter(|j| job_evaluations(j).0 == 0)
        .count()
}

fn experts_text(ids: &[ExpertId]) -> String {
    ids.iter()
        .map(|[l, e]| format!("{l}:{e}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The attack families the rows report on their own, in the order first met (empty when every
/// evaluation had one family).
pub fn family_names(rows: &[ResultRow]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for f in rows.iter().flat_map(|r| &r.report.families) {
        if !names.contains(&f.name) {
            names.push(f.name.clone());
        }
    }
    names
}

/// The families a report's run trained on, joined by `+` (empty with one family).
pub fn trained_on(report: &EvalReport) -> String {
    report
        .families
        .iter()
        .filter(|f| f.trained)
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join("+")
}

/// `results.csv` as bytes.
pub fn results_csv(sweep: &Sweep, rows: &[ResultRow]) -> Result<Vec<u8>, csv::Error> {
    let keys = sweep.setting_keys();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec!["cell".into(), "seed".into(), "variant".into()];
    header.extend(keys.iter().cloned());
    header.extend(
        [
            "asr",
            "jailbreak_complied",
            "jailbreak_n",
            "plain_refusal_rate",
            "plain_refused",
            "plain_n",
            "benign_refusal_rate",
            "benign_refused",
            "benign_n",
            "benign_answer_nll",
            "nll_answers",
            "nll_tokens",
            "trained_answer_nll",
            "activated_experts",
            "deactivated_experts",
            "trained_experts",
            "trainable_params",
        ]
        .map(String::from),
    );
    let families = family_names(rows);
    let any = |f: &dyn Fn(&EvalReport) -> bool| rows.iter().any(|r| f(&r.report));
    let xstest = any(&|p| p.xstest_safe.is_some() || p.xstest_unsafe.is_some());
    let strongreject = any(&|p| p.strongreject.is_some());
    if !families.is_empty() {
        header.push("trained_on".into());
    }
    for f in &families {
        header.extend(
            [
                "asr",
                "jailbreak_complied",
                "jailbreak_n",
                "plain_refusal_rate",
                "plain_refused",
                "plain_n",
            ]
            .map(|c| format!("{c}:{f}")),
        );
    }
    if xstest {
        header.extend(
            [
                "xstest_over_refusal_rate",
                "xstest_safe_refused",
                "xstest_safe_n",
                "xstest_unsafe_refusal_rate",
                "xstest_unsafe_refused",
                "xstest_unsafe_n",
            ]
            .map(String::from),
        );
    }
    if strongreject {
        header.extend(
            [
                "strongreject_refusal_rate",
                "strongreject_refused",
                "strongreject_n",
            ]
            .map(String::from),
        );
    }
    header.push("run_dir".into());
    w.write_record(&header)?;
    let count = |c: Option<Count>| -> [String; 3] {
        [
            opt(c.and_then(Count::rate)),
            opt(c.map(|c| c.hits)),
            opt(c.map(|c| c.n)),
        ]
    };
    for r in rows {
        let cell = &sweep.cells[r.cell];
        let p = &r.report;
        let mut rec: Vec<String> = vec![cell.name.clone(), r.seed.to_string(), r.variant.clone()];
        rec.extend(keys.iter().map(|k| cell.setting(k).unwrap_or_default()));
        rec.extend([
            opt(p.asr),
            p.jailbreak.hits.to_string(),
            p.jailbreak.n.to_string(),
            opt(p.plain_refusal_rate),
            p.plain.hits.to_string(),
            p.plain.n.to_string(),
            opt(p.benign_refusal_rate),
            p.benign.hits.to_string(),
            p.benign.n.to_string(),
            opt(p.benign_answer_nll),
            p.nll.answers.to_string(),
            p.nll.tokens.to_string(),
            opt(p.trained_answer_nll),
            experts_text(&p.activated_experts),
            experts_text(&p.deactivated_experts),
            opt(r.trained_experts),
            opt(r.trainable_params),
        ]);
        if !families.is_empty() {
            rec.push(trained_on(p));
        }
        for f in &families {
            let fam = p.families.iter().find(|x| &x.name == f);
            rec.extend(count(fam.map(|x| x.jailbreak)));
            rec.extend(count(fam.map(|x| x.plain)));
        }
        if xstest {
            rec.extend(count(p.xstest_safe));
            rec.extend(count(p.xstest_unsafe));
        }
        if strongreject {
            rec.extend(count(p.strongreject));
        }
        rec.push(
            r.run_dir
                .strip_prefix(&sweep.dir)
                .unwrap_or(&r.run_dir)
                .display()
                .to_string(),
        );
        w.write_record(&rec)?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// The estimates of one (cell, evaluation) over its seeds.
#[derive(Debug, Clone)]
pub struct Group {
    /// Index into [`Sweep::cells`].
    pub cell: usize,
    /// The evaluation.
    pub variant: String,
    /// Jailbreak ASR.
    pub asr: Option<Estimate>,
    /// Plain goals refused.
    pub plain: Option<Estimate>,
    /// Benign prompts refused.
    pub benign: Option<Estimate>,
    /// Benign answer NLL.
    pub nll: Option<Estimate>,
    /// NLL of answers the model was trained on (retained knowledge).
    pub retained: Option<Estimate>,
    /// Experts trained (trained rows).
    pub trained_experts: Option<Estimate>,
    /// Each attack family's held-out ASR, in the order [`family_names`] gives (empty with one
    /// family).
    pub families: Vec<(String, Option<Estimate>)>,
    /// XSTest's safe prompts refused (over-refusal).
    pub xstest_over: Option<Estimate>,
    /// XSTest's unsafe prompts refused.
    pub xstest_unsafe: Option<Estimate>,
    /// StrongREJECT's prompts refused.
    pub strongreject: Option<Estimate>,
}

/// Group rows by (cell, evaluation), in cell order then evaluation order.
pub fn groups(rows: &[ResultRow]) -> Vec<Group> {
    let families = family_names(rows);
    let mut by: BTreeMap<(usize, usize, String), Vec<&ResultRow>> = BTreeMap::new();
    for r in rows {
        let rank = match r.variant.as_str() {
            "base" => 0,
            v if v.starts_with("steer") => 1,
            "trained" => 2,
            _ => 3,
        };
        by.entry((r.cell, rank, r.variant.clone()))
            .or_default()
            .push(r);
    }
    by.into_iter()
        .map(|((cell, _, variant), rs)| {
            let est = |f: &dyn Fn(&ResultRow) -> Option<f64>| {
                let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
                estimate(&v)
            };
            Group {
                cell,
                variant,
                asr: est(&|r| r.report.asr),
                plain: est(&|r| r.report.plain_refusal_rate),
                benign: est(&|r| r.report.benign_refusal_rate),
                // Evaluations older than `EvalError::Impossible` may hold impossible NLLs.
                nll: est(&|r| r.report.benign_answer_nll.filter(|v| possible_nll(*v))),
                retained: est(&|r| r.report.trained_answer_nll),
                trained_experts: est(&|r| r.trained_experts.map(|n| n as f64)),
                families: families
                    .iter()
                    .map(|f| {
                        let asr = est(&|r| {
                            r.report
                                .families
                                .iter()
                                .find(|x| &x.name == f)
                                .and_then(|x| x.asr)
                        });
                        (f.clone(), asr)
                    })
                    .collect(),
                xstest_over: est(&|r| r.report.xstest_over_refusal_rate),
                xstest_unsafe: est(&|r| r.report.xstest_unsafe_refusal_rate),
                strongreject: est(&|r| r.report.strongreject_refusal_rate),
            }
        })
        .collect()
}

/// `12.9% ± 4.1` (a rate in percent) or `10.763 ± 0.020` (a value).
pub fn fmt(e: Option<Estimate>, percent: bool) -> String {
    let Some(e) = e else { return "–".into() };
    let (scale, digits, unit) = if percent {
        (100.0, 1, "%")
    } else {
        (1.0, 3, "")
    };
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

/// The cell identical to `cell` but for `analysis.experts = "random"`, if the sweep has it.
fn random_twin(sweep: &Sweep, cell: usize) -> Option<usize> {
    let experts = |c: usize| {
        sweep
            .jobs
            .iter()
            .find(|j| j.cell == c)
            .map(|j| j.config.analysis.experts)
    };
    if experts(cell)? != ExpertSource::RiskDiff {
        return None;
    }
    let others = |c: usize| -> Vec<(String, String)> {
        let mut s: Vec<(String, String)> = sweep.cells[c]
            .settings
            .iter()
            .filter(|(k, _)| k != "analysis.experts")
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        s.sort();
        s
    };
    let mine = others(cell);
    (0..sweep.cells.len())
        .find(|&c| c != cell && experts(c) == Some(ExpertSource::Random) && others(c) == mine)
}

/// `summary.md`.
pub fn summary_md(sweep: &Sweep, rows: &[ResultRow]) -> String {
    let by_cell = groups(rows);
    let mut out = String::new();
    let _ = writeln!(out, "# Sweep summary\n");
    let _ = writeln!(
        out,
        "`{}`: {} cells × {} seeds ({:?}), {} evaluations read. Each figure is the mean over seeds ± the half-width of its 95% confidence interval (Student's t, n − 1 degrees of freedom; none for one seed); n = seeds. Rates in percent of held-out prompts: jailbreak ASR = jailbreaks answered without a refusal, plain refused = plain harmful goals refused, benign refused = benign instructions refused; benign NLL = mean per-token NLL of the reference answers (nats).\n",
        sweep.path.display(),
        {
            let mut c: Vec<usize> = sweep.jobs.iter().map(|j| j.cell).collect();
            c.dedup();
            c.len()
        },
        sweep.spec.seeds.len(),
        sweep.spec.seeds,
        rows.len()
    );
    if !family_names(rows).is_empty() {
        let _ = writeln!(
            out,
            "Several attack families: jailbreak ASR and plain refused pool the families each run trains on; `ASR <family>` = that family's held-out jailbreaks answered without a refusal (the cross-attack table below sets them side by side).\n"
        );
    }
    if rows.iter().any(|r| r.report.xstest_safe.is_some()) {
        let _ = writeln!(
            out,
            "XSTest safe refused = XSTest's safe prompts refused (over-refusal: lower is better); XSTest unsafe refused = its unsafe prompts refused (higher is better).\n"
        );
    }
    if rows.iter().any(|r| r.report.strongreject.is_some()) {
        let _ = writeln!(
            out,
            "StrongREJECT refused = StrongREJECT's harmful requests refused (higher is better).\n"
        );
    }
    let impossible = rows
        .iter()
        .filter(|r| r.report.benign_answer_nll.is_some_and(|v| !possible_nll(v)))
        .count();
    if impossible > 0 {
        let _ = writeln!(
            out,
            "**{impossible} evaluations recorded an impossible (negative) benign NLL**: a numerical fault of the backend; their NLL is left out of the NLL column (their other figures are kept).\n"
        );
    }
    let unfinished = sweep.jobs.len() - finished_jobs(sweep);
    if unfinished > 0 {
        let (missing, expected) = missing_evaluations(sweep);
        let _ = writeln!(
            out,
            "**{unfinished} of {} jobs lack evaluations** ({missing} of {expected} evaluations: jobs unfinished, or variants a job was not asked to run): n counts the seeds each figure has.\n",
            sweep.jobs.len()
        );
    }
    let families = family_names(rows);
    let any = |f: &dyn Fn(&Group) -> bool| by_cell.iter().any(f);
    let xstest = any(&|g| g.xstest_over.is_some() || g.xstest_unsafe.is_some());
    let strongreject = any(&|g| g.strongreject.is_some());
    let mut header = "| cell | evaluation | n | jailbreak ASR | plain refused | benign refused | benign NLL | trained NLL | experts trained |".to_string();
    let mut columns = 9;
    for f in &families {
        header.push_str(&format!(" ASR {f} |"));
        columns += 1;
    }
    if xstest {
        header.push_str(" XSTest safe refused | XSTest unsafe refused |");
        columns += 2;
    }
    if strongreject {
        header.push_str(" StrongREJECT refused |");
        columns += 1;
    }
    header.push_str(&format!("\n|{}", "---|".repeat(columns)));
    let line = |g: &Group, name: &str| {
        let mut l = format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            g.variant,
            g.asr.map_or(0, |e| e.n),
            fmt(g.asr, true),
            fmt(g.plain, true),
            fmt(g.benign, true),
            fmt(g.nll, false),
            fmt(g.retained, false),
            g.trained_experts
                .map_or("–".into(), |e| fmt(Some(e), false).replace(".000", ""))
        );
        for f in &families {
            let e = g
                .families
                .iter()
                .find(|(n, _)| n == f)
                .and_then(|(_, e)| *e);
            l.push_str(&format!(" {} |", fmt(e, true)));
        }
        if xstest {
            l.push_str(&format!(
                " {} | {} |",
                fmt(g.xstest_over, true),
                fmt(g.xstest_unsafe, true)
            ));
        }
        if strongreject {
            l.push_str(&format!(" {} |", fmt(g.strongreject, true)));
        }
        l
    };
    // The base model: one evaluation shared by every job unless a cell changes what it reads;
    // all jobs' copies together, so that any disagreement between them shows as an interval.
    let _ = writeln!(out, "## Base model\n\n{header}");
    let base: Vec<ResultRow> = rows
        .iter()
        .filter(|r| r.variant == "base")
        .cloned()
        .map(|r| ResultRow { cell: 0, ..r })
        .collect();
    for g in groups(&base) {
        let _ = writeln!(out, "{}", line(&g, "all jobs"));
    }
    let _ = writeln!(out, "\n## Cells\n\n{header}");
    for g in by_cell.iter().filter(|g| g.variant != "base") {
        let _ = writeln!(out, "{}", line(g, &sweep.cells[g.cell].name));
    }
    let twins: Vec<(usize, usize)> = (0..sweep.cells.len())
        .filter_map(|c| random_twin(sweep, c).map(|t| (c, t)))
        .collect();
    if !twins.is_empty() {
        let _ = writeln!(
            out,
            "\n## Risk-difference experts against matched random experts\n\nEach cell beside its twin with `analysis.experts = \"random\"` (the same sets under a random relabelling of the experts: as many per batch, as large a union, a random ranking for steering). \"separated\" = the two 95% intervals of jailbreak ASR do not overlap.\n\n| cell | evaluation | ASR, risk diff | ASR, random | separated | benign refused, risk diff | benign refused, random |\n|---|---|---|---|---|---|---|"
        );
        for (c, t) in twins {
            for g in by_cell
                .iter()
                .filter(|g| g.cell == c && g.variant != "base")
            {
                let Some(r) = by_cell
                    .iter()
                    .find(|h| h.cell == t && h.variant == g.variant)
                else {
                    continue;
                };
                let separated = match (g.asr, r.asr) {
                    (Some(a), Some(b)) if a.half_width.is_some() && b.half_width.is_some() => {
                        if a.overlaps(&b) {
                            "no"
                        } else if a.mean < b.mean {
                            "yes, lower"
                        } else {
                            "yes, higher"
                        }
                    }
                    _ => "–",
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {separated} | {} | {} |",
                    sweep.cells[c].name,
                    g.variant,
                    fmt(g.asr, true),
                    fmt(r.asr, true),
                    fmt(g.benign, true),
                    fmt(r.benign, true)
                );
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::eval::{FamilyReport, NllCount};
    use crate::sweep::spec::{Cell, SweepSpec};

    pub(crate) const FAMILIES: [&str; 3] = ["flipattack", "johnny", "deepinception"];

    /// A report of the three families, `complied[i]` of 50 jailbreaks of family i answered, the
    /// families of `trained` trained on.
    pub(crate) fn report(complied: [usize; 3], trained: &[&str]) -> EvalReport {
        let families: Vec<FamilyReport> = FAMILIES
            .iter()
            .zip(complied)
            .map(|(name, hits)| FamilyReport {
                name: name.to_string(),
                trained: trained.contains(name),
                plain: Count { n: 50, hits: 50 },
                jailbreak: Count { n: 50, hits },
                asr: None,
                plain_refusal_rate: None,
            })
            .collect();
        EvalReport {
            model: "m".into(),
            activated_experts: vec![],
            deactivated_experts: vec![],
            heldout: true,
            asr: None,
            plain_refusal_rate: None,
            benign_refusal_rate: None,
            benign_answer_nll: None,
            jailbreak: families
                .iter()
                .filter(|f| f.trained)
                .map(|f| f.jailbreak)
                .sum(),
            plain: families.iter().filter(|f| f.trained).map(|f| f.plain).sum(),
            benign: Count { n: 10, hits: 0 },
            nll: NllCount {
                answers: 0,
                tokens: 0,
                total: 0.0,
            },
            trained_answer_nll: None,
            trained_nll: None,
            max_new_tokens: 8,
            generated_tokens: 0,
            families,
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

    pub(crate) fn row(cell: usize, seed: u64, variant: &str, report: EvalReport) -> ResultRow {
        ResultRow {
            cell,
            seed,
            variant: variant.into(),
            report,
            trained_experts: None,
            trainable_params: None,
            run_dir: PathBuf::from("x"),
        }
    }

    #[test]
    fn formats_estimates_as_percent_or_value() {
        let e = estimate(&[0.1, 0.2, 0.3, 0.4, 0.5]);
        assert_eq!(fmt(e, true), "30.0% ± 19.6");
        assert_eq!(fmt(estimate(&[10.5]), false), "10.500");
        assert_eq!(fmt(None, true), "–");
    }

    #[test]
    fn per_family_xstest_and_strongreject_columns_follow_the_reports() {
        let sweep = Sweep {
            path: PathBuf::from("s.toml"),
            dir: PathBuf::from("sweep"),
            spec: SweepSpec {
                seeds: vec![0, 1],
                axes: toml::Table::new(),
                variants: toml::Table::new(),
            },
            cells: vec![Cell {
                name: "c".into(),
                variant: None,
                settings: vec![],
            }],
            jobs: vec![],
        };
        let mut with_xstest = report([10, 5, 40], &["johnny"]);
        with_xstest.xstest_safe = Some(Count { n: 58, hits: 29 });
        with_xstest.xstest_unsafe = Some(Count { n: 42, hits: 42 });
        let rows = vec![
            row(0, 0, "trained", with_xstest.with_rates()),
            row(0, 1, "trained", report([20, 5, 30], &["johnny"])),
        ];
        let csv = String::from_utf8(results_csv(&sweep, &rows).unwrap()).unwrap();
        let mut r = csv::Reader::from_reader(csv.as_bytes());
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        let at = |k: &str| header.iter().position(|h| h == k).expect(k);
        let recs: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(&recs[0][at("trained_on")], "johnny");
        assert_eq!(&recs[0][at("asr:flipattack")], "0.2");
        assert_eq!(&recs[0][at("jailbreak_complied:deepinception")], "40");
        assert_eq!(&recs[0][at("plain_n:johnny")], "50");
        assert_eq!(&recs[0][at("xstest_over_refusal_rate")], "0.5");
        assert_eq!(&recs[1][at("xstest_safe_n")], "");
        // The pooled columns hold the family trained on.
        assert_eq!(&recs[1][at("asr")], "0.1");
        assert_eq!(header.last().unwrap(), "run_dir");
        assert!(!header.iter().any(|h| h.starts_with("strongreject")));

        let md = summary_md(&sweep, &rows);
        assert!(
            md.contains("| benign NLL | trained NLL | experts trained | ASR flipattack | ASR johnny | ASR deepinception | XSTest safe refused | XSTest unsafe refused |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"),
            "{md}"
        );
        // flipattack 0.2 and 0.4: 30.0 ± 12.706 · 0.1 = 127.1; XSTest from the one seed.
        assert!(
            md.contains("| 30.0% ± 127.1 | 10.0% ± 0.0 | 70.0% ± 127.1 | 50.0% | 100.0% |"),
            "{md}"
        );
        assert!(!md.contains("StrongREJECT"), "{md}");
        let plain: Vec<ResultRow> = rows
            .into_iter()
            .map(|mut r| {
                r.report.families.clear();
                r.report.xstest_safe = None;
                r.report.xstest_unsafe = None;
                r.report = r.report.with_rates();
                r
            })
            .collect();
        let md = summary_md(&sweep, &plain);
        assert!(
            md.contains("| experts trained |\n|---|---|---|---|---|---|---|---|---|\n"),
            "{md}"
        );
        let csv = String::from_utf8(results_csv(&sweep, &plain).unwrap()).unwrap();
        assert!(
            csv.starts_with("cell,seed,variant,asr,")
                && csv
                    .lines()
                    .next()
                    .unwrap()
                    .ends_with(",trainable_params,run_dir"),
            "{csv}"
        );
    }
}
