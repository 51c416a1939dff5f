//! The `[sweep]` table of a config file and the cells and jobs it makes.
//!
//! ```toml
//! [sweep]
//! seeds = [0, 1, 2, 3, 4]
//! [sweep.axes]                       # cartesian product, the last axis varying fastest
//! "analysis.experts" = ["risk_diff", "random"]
//! [sweep.variants.prompt_free]       # named sets of overrides, each crossed with the axes
//! "analysis.token_scope" = "prompt"
//! "train.mask_scope" = "none"
//! ```
//!
//! A *cell* is one variant (or none) with one value of every axis; a *job* is a cell with one
//! seed: the rest of the file, the cell's overrides and `seed = s`, resolved and validated like
//! any config, run in `cells/<cell>/seed-<s>/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::SweepError;
use crate::config::Config;

/// The `[sweep]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Every cell runs once per seed (the config's `seed`).
    pub seeds: Vec<u64>,
    /// Config keys (dotted) and the values each takes.
    #[serde(default)]
    pub axes: toml::Table,
    /// Named override tables.
    #[serde(default)]
    pub variants: toml::Table,
}

/// One cell of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Its name (and directory under `cells/`).
    pub name: String,
    /// The variant it comes from, if the sweep has variants.
    pub variant: Option<String>,
    /// Its overrides in application order: `(dotted key, value)`.
    pub settings: Vec<(String, toml::Value)>,
}

impl Cell {
    /// The value it gives `key`, as text (`None` if it leaves the key to the base config).
    pub fn setting(&self, key: &str) -> Option<String> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| value_text(v))
    }
}

/// One cell with one seed.
#[derive(Debug, Clone)]
pub struct Job {
    /// Index into [`Sweep::cells`].
    pub cell: usize,
    /// The seed.
    pub seed: u64,
    /// The resolved config.
    pub config: Config,
    /// Its run directory.
    pub run_dir: PathBuf,
}

/// A parsed sweep: the spec, its cells and jobs.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The config file.
    pub path: PathBuf,
    /// The sweep directory.
    pub dir: PathBuf,
    /// The spec.
    pub spec: SweepSpec,
    /// Cells in order: variants, then axes, the last axis fastest.
    pub cells: Vec<Cell>,
    /// Jobs in order: cells, then seeds.
    pub jobs: Vec<Job>,
}

/// A TOML value as a person writes it in a table cell: strings bare, the rest as TOML.
pub fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A cell name made safe as a directory name.
fn dir_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=,+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Sweep {
    /// Read a config file with a `[sweep]` table and resolve every job's config; nothing is
    /// written. `overrides` (`key=value`) on `sweep.*` keys change the sweep table; the others
    /// apply to every job, before the cell's own.
    pub fn load(path: &Path, dir: &Path, overrides: &[String]) -> Result<Self, SweepError> {
        let bad = |key: &str, reason: String| SweepError::Spec {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| SweepError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut base = Config::table(&text, path)?;
        let raw = base.remove("sweep").ok_or_else(|| {
            bad(
                "sweep",
                "no [sweep] table: `steermoe run` runs a single experiment".into(),
            )
        })?;
        let (sweep_overrides, overrides): (Vec<&String>, Vec<&String>) = overrides
            .iter()
            .partition(|o| o.trim_start().starts_with("sweep."));
        let overrides: Vec<String> = overrides.into_iter().cloned().collect();
        let mut holder = toml::Table::new();
        holder.insert("sweep".into(), raw);
        for o in sweep_overrides {
            let (key, value) = o
                .split_once('=')
                .ok_or_else(|| bad(o, "override must be key=value".into()))?;
            crate::config::set_key(&mut holder, key.trim(), value.trim())
                .map_err(|reason| bad(key.trim(), reason))?;
        }
        let raw = holder.remove("sweep").expect("inserted above");
        let spec: SweepSpec = serde_path_to_error::deserialize(raw)
            .map_err(|e| bad(&format!("sweep.{}", e.path()), e.inner().to_string()))?;
        if spec.seeds.is_empty() {
            return Err(bad("sweep.seeds", "needs at least one seed".into()));
        }
        if let Some(s) = spec
            .seeds
            .iter()
            .enumerate()
            .find_map(|(i, s)| spec.seeds[..i].contains(s).then_some(s))
        {
            return Err(bad("sweep.seeds", format!("seed {s} is listed twice")));
        }
        let cells = cells(&spec).map_err(|(key, reason)| bad(&key, reason))?;
        let mut jobs = Vec::new();
        for (c, cell) in cells.iter().enumerate() {
            for &seed in &spec.seeds {
                let mut all: Vec<String> = overrides.clone();
                all.extend(cell.settings.iter().map(|(k, v)| format!("{k}={v}")));
                all.push(format!("seed={seed}"));
                let config = Config::from_table(base.clone(), path, &all)
                    .map_err(|e| bad(&format!("cell {}", cell.name), e.to_string()))?;
                let run_dir = dir
                    .join("cells")
                    .join(dir_name(&cell.name))
                    .join(format!("seed-{seed}"));
                jobs.push(Job {
                    cell: c,
                    seed,
                    config,
                    run_dir,
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            spec,
            cells,
            jobs,
        })
    }

    /// Keep only the jobs of cells whose name contains one of `patterns` (all if empty).
    pub fn retain_cells(&mut self, patterns: &[String]) -> Result<(), SweepError> {
        if patterns.is_empty() {
            return Ok(());
        }
        let cells = &self.cells;
        self.jobs.retain(|j| {
            patterns
                .iter()
                .any(|p| cells[j.cell].name.contains(p.as_str()))
        });
        if self.jobs.is_empty() {
            return Err(SweepError::Spec {
                path: self.path.clone(),
                key: "--cells".into(),
                reason: format!("no cell name contains any of {patterns:?}"),
            });
        }
        Ok(())
    }

    /// The keys any cell sets, in first-seen order (the settings columns of the results).
    pub fn setting_keys(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.cells
            .iter()
            .flat_map(|c| c.settings.iter().map(|(k, _)| k.clone()))
            .filter(|k| seen.insert(k.clone()))
            .collect()
    }
}

/// The cells of `spec`: every variant crossed with every combination of the axes.
fn cells(spec: &SweepSpec) -> Result<Vec<Cell>, (String, String)> {
    let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (key, values) in &spec.axes {
        let values = values.as_array().filter(|v| !v.is_empty()).ok_or_else(|| {
            (
                format!("sweep.axes.{key}"),
                "must be a non-empty list of values".to_string(),
            )
        })?;
        if key == "seed" {
            return Err((
                format!("sweep.axes.{key}"),
                "seeds are `sweep.seeds`".into(),
            ));
        }
        axes.push((key.clone(), values.clone()));
    }
    // (variant name, its overrides) of each variant, in order.
    type Overrides = Vec<(String, toml::Value)>;
    let mut variants: Vec<(Option<String>, Overrides)> = Vec::new();
    for (name, table) in &spec.variants {
        let table = table.as_table().ok_or_else(|| {
            (
                format!("sweep.variants.{name}"),
                "must be a table of overrides".to_string(),
            )
        })?;
        if let Some(k) = table
            .keys()
            .find(|k| *k == "seed" || axes.iter().any(|(a, _)| a == *k))
        {
            return Err((
                format!("sweep.variants.{name}.{k}"),
                "is swept elsewhere (an axis or `sweep.seeds`)".into(),
            ));
        }
        variants.push((
            Some(name.clone()),
            table.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ));
    }
    if variants.is_empty() {
        variants.push((None, Vec::new()));
    }
    // Short axis names (the last key part) where they are unambiguous.
    let short = |key: &str| {
        let last = key.rsplit('.').next().unwrap_or(key);
        if axes
            .iter()
            .filter(|(k, _)| k.rsplit('.').next() == Some(last))
            .count()
            > 1
        {
            key.to_string()
        } else {
            last.to_string()
        }
    };
    let mut combos: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values
                    .iter()
                    .map(move |v| [c.clone(), vec![(key.clone(), v.clone())]].concat())
            })
            .collect();
    }
    let mut out = Vec::new();
    for (variant, overrides) in &variants {
        for combo in &combos {
            let parts: Vec<String> = variant
                .iter()
                .cloned()
                .chain(
                    combo
                        .iter()
                        .map(|(k, v)| format!("{}={}", short(k), value_text(v))),
                )
                .collect();
            let name = if parts.is_empty() {
                "base".to_string()
            } else {
                parts.join(",")
            };
            out.push(Cell {
                name,
                variant: variant.clone(),
                settings: overrides.iter().chain(combo).cloned().collect(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> SweepSpec {
        let t: toml::Table = toml::from_str(text).unwrap();
        t["sweep"].clone().try_into().unwrap()
    }

    #[test]
    fn variants_cross_the_axes_the_last_axis_fastest() {
        let s = spec(
            "[sweep]\nseeds = [1]\n[sweep.axes]\n\"analysis.token_scope\" = [\"prompt\", \"response\"]\n\"analysis.experts\" = [\"risk_diff\", \"random\"]\n[sweep.variants.free]\n\"train.mask_scope\" = \"none\"\n[sweep.variants.k4]\n\"analysis.top_k\" = 4\n",
        );
        let c = cells(&s).unwrap();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names[..4],
            [
                "free,token_scope=prompt,experts=risk_diff",
                "free,token_scope=prompt,experts=random",
                "free,token_scope=response,experts=risk_diff",
                "free,token_scope=response,experts=random",
            ]
        );
        assert_eq!(c.len(), 8);
        assert_eq!(c[5].setting("analysis.top_k").as_deref(), Some("4"));
        assert_eq!(c[5].setting("analysis.experts").as_deref(), Some("random"));
        assert_eq!(c[5].setting("train.mask_scope"), None);
    }

    #[test]
    fn a_sweep_without_axes_or_variants_is_one_cell_and_bad_tables_are_named() {
        assert_eq!(
            cells(&spec("[sweep]\nseeds = [0, 1]\n")).unwrap()[0].name,
            "base"
        );
        let err = cells(&spec(
            "[sweep]\nseeds = [0]\n[sweep.axes]\n\"train.lr\" = []\n",
        ))
        .unwrap_err();
        assert_eq!(err.0, "sweep.axes.train.lr");
        let err = cells(&spec("[sweep]\nseeds = [0]\n[sweep.axes]\nseed = [1, 2]\n")).unwrap_err();
        assert!(err.1.contains("sweep.seeds"));
    }
}
