//! The cross-attack table: each attack family's held-out ASR (columns) for the trained model of
//! each cell, by the families its experts were chosen on and trained on (rows), with the base
//! model's row above them — whether a repair learnt on one attack transfers to the others (RASA's
//! claim). Means over seeds ± 95% intervals; drawn by [`super::cross_plot`] as
//! `cross_attack.png`. Only sweeps whose evaluations report several families have one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::{ResultRow, family_names, fmt, trained_on};
use super::stats::{Estimate, estimate};

/// One row of the cross-attack table.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossRow {
    /// The families trained on, joined by `+`; `base model` for the base model's row.
    pub trained_on: String,
    /// The cell's name; `all jobs` for the base model's row (every job's copy pooled).
    pub cell: String,
    /// Evaluations behind it (seeds, or jobs for the base model).
    pub n: usize,
    /// Each family's held-out ASR, in [`CrossAttack::families`] order.
    pub asr: Vec<Option<Estimate>>,
    /// Whether the row trained on each family, same order.
    pub trained: Vec<bool>,
}

/// The cross-attack table of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossAttack {
    /// The evaluated families (the columns), in config order.
    pub families: Vec<String>,
    /// The base model's row (if evaluated), then one row per cell's trained model, ordered by
    /// the first family trained on, then by cell.
    pub rows: Vec<CrossRow>,
}

/// The cross-attack table of `rows` (`cells` names the sweep's cells by index); `None` when no
/// evaluation reports several families.
pub fn cross_attack(cells: &[String], rows: &[ResultRow]) -> Option<CrossAttack> {
    let families = family_names(rows);
    if families.is_empty() {
        return None;
    }
    let row = |trained_on: String, cell: String, rs: &[&ResultRow]| {
        let asr = families
            .iter()
            .map(|f| {
                let v: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.report.families.iter().find(|x| &x.name == f)?.asr)
                    .collect();
                estimate(&v)
            })
            .collect();
        let trained = families
            .iter()
            .map(|f| {
                rs.first()
                    .is_some_and(|r| r.report.families.iter().any(|x| &x.name == f && x.trained))
            })
            .collect();
        CrossRow {
            trained_on,
            cell,
            n: rs.len(),
            asr,
            trained,
        }
    };
    let mut out = Vec::new();
    let base: Vec<&ResultRow> = rows
        .iter()
        .filter(|r| r.variant == "base" && !r.report.families.is_empty())
        .collect();
    if !base.is_empty() {
        let mut r = row("base model".into(), "all jobs".into(), &base);
        r.trained = vec![false; families.len()];
        out.push(r);
    }
    let mut by_cell: BTreeMap<usize, Vec<&ResultRow>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.variant == "trained" && !r.report.families.is_empty())
    {
        by_cell.entry(r.cell).or_default().push(r);
    }
    let mut trained: Vec<(usize, usize, CrossRow)> = by_cell
        .into_iter()
        .map(|(cell, rs)| {
            let name = cells.get(cell).cloned().unwrap_or_else(|| cell.to_string());
            let r = row(trained_on(&rs[0].report), name, &rs);
            let first = r.trained.iter().position(|&t| t).unwrap_or(usize::MAX);
            (first, cell, r)
        })
        .collect();
    trained.sort_by_key(|(first, cell, _)| (*first, *cell));
    out.extend(trained.into_iter().map(|(_, _, r)| r));
    Some(CrossAttack {
        families,
        rows: out,
    })
}

/// The `summary.md` section of the table.
pub fn summary_section(table: &CrossAttack) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Cross-attack transfer\n\nHeld-out jailbreak ASR of each attack family (columns; each on its own held-out split) for the trained model of each cell, by the families its experts were chosen and trained on (rows), and for the base model: mean over seeds ± 95% CI, n = evaluations. **Bold**: a family the row trained on. Drawn in `cross_attack.png`.\n"
    );
    let _ = write!(out, "| trained on | cell | n |");
    for f in &table.families {
        let _ = write!(out, " {f} |");
    }
    let _ = writeln!(
        out,
        "\n|---|---|---|{}",
        "---|".repeat(table.families.len())
    );
    for r in &table.rows {
        let _ = write!(out, "| {} | {} | {} |", r.trained_on, r.cell, r.n);
        for (e, &t) in r.asr.iter().zip(&r.trained) {
            let v = fmt(*e, true);
            if t {
                let _ = write!(out, " **{v}** |");
            } else {
                let _ = write!(out, " {v} |");
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::report::tests::{FAMILIES, report, row};

    /// Cell 0 trains on johnny, cell 1 on flipattack; two seeds each; the base model evaluated
    /// by every job.
    fn rows() -> Vec<ResultRow> {
        let johnny = ["johnny"];
        let flip = ["flipattack"];
        vec![
            row(0, 0, "base", report([45, 40, 30], &johnny)),
            row(0, 0, "trained", report([20, 2, 10], &johnny)),
            row(0, 1, "base", report([45, 40, 30], &johnny)),
            row(0, 1, "trained", report([30, 4, 14], &johnny)),
            row(1, 0, "base", report([45, 40, 30], &flip)),
            row(1, 0, "trained", report([1, 25, 20], &flip)),
            row(1, 1, "base", report([45, 40, 30], &flip)),
            row(1, 1, "trained", report([3, 35, 20], &flip)),
        ]
    }

    #[test]
    fn rows_are_the_trained_on_families_and_columns_every_familys_asr() {
        let cells = vec!["train_on=johnny".to_string(), "train_on=flip".to_string()];
        let t = cross_attack(&cells, &rows()).unwrap();
        assert_eq!(t.families, FAMILIES.map(String::from).to_vec());
        let labels: Vec<(&str, &str, usize)> = t
            .rows
            .iter()
            .map(|r| (r.trained_on.as_str(), r.cell.as_str(), r.n))
            .collect();
        // Base first, then by the first family trained on: flipattack before johnny.
        assert_eq!(
            labels,
            [
                ("base model", "all jobs", 4),
                ("flipattack", "train_on=flip", 2),
                ("johnny", "train_on=johnny", 2)
            ]
        );
        let base = &t.rows[0];
        let e = base.asr[0].unwrap();
        assert!(
            (e.mean - 0.9).abs() < 1e-12 && e.half_width.unwrap().abs() < 1e-12,
            "{e:?}"
        );
        assert_eq!(base.trained, [false; 3]);
        // Johnny-trained: flipattack (20 + 30) / 2 of 50 = 0.5, ± t(0.975, 1) · 0.1414 / √2 =
        // 12.706 · 0.1 = 1.2706.
        let johnny = &t.rows[2];
        assert_eq!(johnny.trained, [false, true, false]);
        let e = johnny.asr[0].unwrap();
        assert!((e.mean - 0.5).abs() < 1e-12, "{e:?}");
        assert!((e.half_width.unwrap() - 1.270620).abs() < 1e-5, "{e:?}");
        assert!((johnny.asr[1].unwrap().mean - 0.06).abs() < 1e-12);

        let md = summary_section(&t);
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(
            lines,
            [
                "| trained on | cell | n | flipattack | johnny | deepinception |",
                "|---|---|---|---|---|---|",
                "| base model | all jobs | 4 | 90.0% ± 0.0 | 80.0% ± 0.0 | 60.0% ± 0.0 |",
                "| flipattack | train_on=flip | 2 | **4.0% ± 25.4** | 60.0% ± 127.1 | 40.0% ± 0.0 |",
                "| johnny | train_on=johnny | 2 | 50.0% ± 127.1 | **6.0% ± 25.4** | 24.0% ± 50.8 |",
            ],
            "{md}"
        );
    }

    #[test]
    fn one_family_has_no_table() {
        let mut r = report([1, 2, 3], &["johnny"]);
        r.families.clear();
        assert!(cross_attack(&[], &[row(0, 0, "trained", r)]).is_none());
    }
}
