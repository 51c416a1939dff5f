//! A run directory: where each stage's artifacts live, when a stage counts as done, and the
//! recorded config a directory was made with.
//!
//! `steermoe run` and every cell of `steermoe sweep` work in one; the stages' own modules write
//! the files, this module knows their names and what "finished" means for each stage, so
//! resuming, skipping and sharing a stage between sweep cells ask one place.

use std::path::{Path, PathBuf};

pub mod records;
pub mod routing;

use crate::config::Config;

/// What can go wrong preparing or reading a run directory.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Settings that made files of a finished stage were changed: those files would no longer
    /// match the recorded config.
    #[error("{}: {} differ{} from the recorded config (see {}) and made the {stage} stage's files there; pass another --out, or remove those files to redo {stage}", dir.display(), keys.join(", "), if keys.len() == 1 { "s" } else { "" }, recorded.display())]
    OtherConfig {
        /// The run directory.
        dir: PathBuf,
        /// Its recorded config.
        recorded: PathBuf,
        /// The changed keys, dotted.
        keys: Vec<String>,
        /// The stage whose files they made.
        stage: &'static str,
    },
    /// Another process holds the directory.
    #[error("{} is in use by another steermoe process{}; wait for it or pass another --out", dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The run directory.
        dir: PathBuf,
        /// The holder's pid, if it wrote one.
        pid: Option<u32>,
    },
    /// A file of an earlier stage is unreadable or malformed.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read, written or linked.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Write `bytes` to `path` through a temporary file beside it, flushed to disk and renamed into
/// place: a reader (or a rerun after a kill) sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    use std::io::Write;
    let io = |source| RunDirError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Write `rows` as a CSV file with a header of their field names (through [`write_atomic`]).
pub fn write_csv<T: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<(), RunDirError> {
    let csv_err = |e: csv::Error| RunDirError::Corrupt { path: path.to_path_buf(), reason: format!("CSV: {e}") };
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row).map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| csv_err(e.into_error().into()))?;
    write_atomic(path, &bytes)
}

/// Move the directory `staged` to `dest`, replacing what was there: a directory written whole
/// beside its destination (e.g. `final_model.partial/`) appears at once.
pub fn replace_dir(staged: &Path, dest: &Path) -> Result<(), RunDirError> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|source| RunDirError::Io { path: dest.to_path_buf(), source })?;
    }
    std::fs::rename(staged, dest).map_err(|source| RunDirError::Io { path: dest.to_path_buf(), source })
}

/// The stages of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Generation with routing capture.
    Collect,
    /// Risk difference and expert sets.
    Analyze,
    /// Expert-only fine-tuning and export.
    Train,
}

/// The steps of a run, stages and evaluation, in order: what a config key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// `collect` (and the model, data, judge and seed every later step depends on).
    Collect,
    /// `analyze`.
    Analyze,
    /// `train`.
    Train,
    /// `eval`.
    Eval,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 4] = [Step::Collect, Step::Analyze, Step::Train, Step::Eval];

    /// The step whose files a dotted config key shapes first.
    pub fn owning(key: &str) -> Step {
        match key.split('.').next().unwrap_or("") {
            "analysis" => Step::Analyze,
            "train" => Step::Train,
            "eval" => Step::Eval,
            _ => Step::Collect,
        }
    }

    /// Its name, as the subcommand.
    pub fn name(self) -> &'static str {
        match self {
            Step::Collect => "collect",
            Step::Analyze => "analyze",
            Step::Train => "train",
            Step::Eval => "eval",
        }
    }

    /// The files and directories it writes, relative to the run directory.
    fn paths(self) -> Vec<&'static str> {
        match self {
            Step::Collect => vec!["routing", "samples.jsonl"],
            Step::Analyze => ANALYSIS_FILES.to_vec(),
            Step::Train => vec!["train", "metrics.jsonl", "loss_curve.png", "final_model", "final_model.partial", "training_metadata.json"],
            Step::Eval => vec!["eval"],
        }
    }
}

/// What [`RunDir::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Config keys that differ from the recorded config, dotted.
    pub changed: Vec<String>,
    /// Steps whose files were removed to be redone.
    pub redone: Vec<Step>,
}

impl Reconciled {
    /// A one-line account for the user, if anything changed.
    pub fn message(&self) -> Option<String> {
        (!self.changed.is_empty()).then(|| {
            let redone: Vec<&str> = self.redone.iter().map(|s| s.name()).collect();
            match redone.is_empty() {
                true => format!("config changed ({}): recorded", self.changed.join(", ")),
                false => format!("config changed ({}): the files of {} were removed and will be redone", self.changed.join(", "), redone.join(", ")),
            }
        })
    }
}

/// Dotted keys whose values differ between two TOML tables (present in one only included).
fn changed_keys(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&path, x.get(k), y.get(k), out);
                }
            }
            (x, y) if x != y => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", Some(&toml::Value::Table(a.clone())), Some(&toml::Value::Table(b.clone())), &mut out);
    out
}

/// Files `analyze` writes.
pub const ANALYSIS_FILES: [&str; 5] = [
    "risk_diff.csv",
    "risk_diff_aggregated.csv",
    "unsafe_experts.json",
    "expert_masks.safetensors",
    "risk_diff_heatmap.png",
];

/// Files an evaluation writes into its directory (`eval.json` last: it marks it finished).
pub const EVAL_FILES: [&str; 2] = ["responses.jsonl", "eval.json"];

/// The exclusive hold of a run directory: an OS file lock on its `.lock` file, released when
/// this value is dropped or the process ends (a killed process leaves no stale lock).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// One run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

/// Config keys that say where a run computes, not what it computes.
const WHERE_NOT_WHAT: [&str; 2] = ["model.backend", "model.devices"];

impl RunDir {
    /// The run directory at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The recorded config.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// The exported model.
    pub fn final_model(&self) -> PathBuf {
        self.root.join("final_model")
    }

    /// `training_metadata.json`: what training did (written last: the train stage is finished
    /// when it exists).
    pub fn training_metadata(&self) -> PathBuf {
        self.root.join("training_metadata.json")
    }

    /// The directory of the evaluation named `variant`.
    pub fn eval_dir(&self, variant: &str) -> PathBuf {
        self.root.join("eval").join(variant)
    }

    /// Create the directory and hold it for this process: a second process gets
    /// [`RunDirError::Locked`] naming the holder's pid.
    pub fn lock(&self) -> Result<DirLock, RunDirError> {
        use std::io::{Read, Seek, Write};
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunDirError::Io { path, source }
        };
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let path = self.root.join(".lock");
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(RunDirError::Locked {
                    dir: self.root.clone(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(RunDirError::Io { path, source }),
        }
        file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id())).map_err(io(&path))?;
        Ok(DirLock { _file: file })
    }

    /// Create the directory, bring it in line with `cfg` ([`RunDir::reconcile`] from collect on)
    /// and record `provenance` (`provenance.json`).
    pub fn prepare(&self, cfg: &Config, provenance: &serde_json::Value) -> Result<Reconciled, RunDirError> {
        std::fs::create_dir_all(&self.root).map_err(|source| RunDirError::Io {
            path: self.root.clone(),
            source,
        })?;
        let reconciled = self.reconcile(cfg, Step::Collect)?;
        write_atomic(&self.root.join("provenance.json"), format!("{provenance:#}\n").as_bytes())?;
        Ok(reconciled)
    }

    /// Make the recorded config `cfg` before running `from` (and the steps after it), so that it
    /// always describes the files present. Where a setting changed:
    /// - of a step before `from`, or of collect, whose files exist: refused, with the keys named
    ///   (those files were made with the old value; collect's are never thrown away silently);
    /// - otherwise: the files of the earliest changed step and of every step after it are
    ///   removed (they are redone) and the new config recorded.
    ///
    /// `model.backend` and `model.devices` are where a run computes, not what: they may change
    /// freely. A directory whose
    /// steps wrote nothing takes any config (e.g. after a failed model load).
    pub fn reconcile(&self, cfg: &Config, from: Step) -> Result<Reconciled, RunDirError> {
        let recorded = self.config_path();
        let resolved = cfg.to_toml();
        let Ok(old_text) = std::fs::read_to_string(&recorded) else {
            write_atomic(&recorded, resolved.as_bytes())?;
            return Ok(Reconciled::default());
        };
        let old: toml::Table = toml::from_str(&old_text).map_err(|e| RunDirError::Corrupt { path: recorded.clone(), reason: e.message().to_string() })?;
        let new: toml::Table = toml::from_str(&resolved).expect("a config's TOML parses");
        let changed: Vec<String> = changed_keys(&old, &new).into_iter().filter(|k| !WHERE_NOT_WHAT.contains(&k.as_str())).collect();
        if changed.is_empty() {
            if old_text != resolved {
                write_atomic(&recorded, resolved.as_bytes())?;
            }
            return Ok(Reconciled::default());
        }
        let earliest = changed.iter().map(|k| Step::owning(k)).min().expect("a changed key");
        let blocked: Vec<String> = changed
            .iter()
            .filter(|k| {
                let owner = Step::owning(k);
                (owner < from || owner == Step::Collect) && self.has_files(owner)
            })
            .cloned()
            .collect();
        if let Some(first) = blocked.first() {
            return Err(RunDirError::OtherConfig {
                dir: self.root.clone(),
                recorded,
                stage: Step::owning(first).name(),
                keys: blocked,
            });
        }
        let mut redone = Vec::new();
        for step in Step::ALL.into_iter().filter(|&s| s >= earliest) {
            if self.has_files(step) {
                self.remove_files(step)?;
                redone.push(step);
            }
        }
        write_atomic(&recorded, resolved.as_bytes())?;
        Ok(Reconciled { changed, redone })
    }

    /// Whether any file of `step` exists here.
    pub fn has_files(&self, step: Step) -> bool {
        step.paths().iter().any(|p| self.root.join(p).exists())
    }

    fn remove_files(&self, step: Step) -> Result<(), RunDirError> {
        for p in step.paths() {
            let path = self.root.join(p);
            let removed = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(_) => Ok(()),
            };
            removed.map_err(|source| RunDirError::Io { path, source })?;
        }
        Ok(())
    }

    /// Whether `stage` is finished here. Collect is finished when its index lists `batches`
    /// batches; analyze when every analysis file exists; train when the exported model's
    /// metadata (written last) exists.
    pub fn is_done(&self, stage: Stage, batches: usize) -> bool {
        match stage {
            Stage::Collect => {
                let index = self.root.join("routing/index.json");
                std::fs::read_to_string(index)
                    .ok()
                    .and_then(|t| serde_json::from_str::<records::RoutingIndex>(&t).ok())
                    .is_some_and(|i| i.batches.len() >= batches)
            }
            Stage::Analyze => ANALYSIS_FILES.iter().all(|f| self.root.join(f).is_file()),
            Stage::Train => self.training_metadata().is_file() && self.final_model().join("config.json").is_file(),
        }
    }

    /// Whether the evaluation named `variant` is finished.
    pub fn is_evaluated(&self, variant: &str) -> bool {
        let dir = self.eval_dir(variant);
        EVAL_FILES.iter().all(|f| dir.join(f).is_file())
    }

    /// The files `stage` leaves here, relative to the directory, its completion marker last.
    pub fn stage_files(&self, stage: Stage) -> Vec<PathBuf> {
        match stage {
            Stage::Collect => {
                let mut files = files_under(&self.root, Path::new("routing"));
                // index.json marks the stage finished: link it last.
                files.sort_by_key(|f| f.ends_with("index.json"));
                files.insert(files.len().saturating_sub(1), PathBuf::from("samples.jsonl"));
                files
            }
            Stage::Analyze => ANALYSIS_FILES.iter().map(PathBuf::from).collect(),
            Stage::Train => {
                let mut files = files_under(&self.root, Path::new("final_model"));
                files.splice(0..0, [PathBuf::from("metrics.jsonl"), PathBuf::from("loss_curve.png")]);
                files.push(PathBuf::from("training_metadata.json"));
                files
            }
        }
    }

    /// The files of the evaluation named `variant`, relative to the directory, `eval.json` last.
    pub fn eval_files(&self, variant: &str) -> Vec<PathBuf> {
        EVAL_FILES.iter().map(|f| Path::new("eval").join(variant).join(f)).collect()
    }

    /// Hard-link (or copy, across file systems) `files` of `from` into this directory, replacing
    /// what is there, in the order given.
    pub fn link_from(&self, from: &RunDir, files: &[PathBuf]) -> Result<(), RunDirError> {
        for f in files {
            let (src, dst) = (from.root.join(f), self.root.join(f));
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| RunDirError::Io { path, source }
            };
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            if dst.exists() {
                std::fs::remove_file(&dst).map_err(io(&dst))?;
            }
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(io(&src))?;
            }
        }
        Ok(())
    }
}

/// Files under `root/sub`, recursively, relative to `root`, sorted.
fn files_under(root: &Path, sub: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![sub.to_path_buf()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).into_iter().flatten().flatten() {
            let rel = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(rel),
                Ok(_) => out.push(rel),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stage_files_with_the_marker_last_and_refuses_another_config() {
        let tmp = tempfile::tempdir().unwrap();
        let a = RunDir::new(tmp.path().join("a"));
        for f in ["routing/batch-00000.json", "routing/index.json", "routing/batch-00000.safetensors", "samples.jsonl"] {
            let p = a.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        let files = a.stage_files(Stage::Collect);
        assert_eq!(files.last().unwrap(), Path::new("routing/index.json"));
        assert_eq!(files.len(), 4);
        let b = RunDir::new(tmp.path().join("b"));
        b.link_from(&a, &files).unwrap();
        assert_eq!(std::fs::read_to_string(b.path().join("samples.jsonl")).unwrap(), "samples.jsonl");

        let cfg = Config::default();
        let prov = serde_json::json!({});
        b.prepare(&cfg, &prov).unwrap();
        b.prepare(&cfg, &prov).unwrap();
        let other = Config { seed: 9, ..Config::default() };
        let err = b.prepare(&other, &prov).unwrap_err();
        assert!(matches!(&err, RunDirError::OtherConfig { keys, stage: "collect", .. } if keys == &["seed"]), "{err}");
        assert!(err.to_string().contains("seed differs from the recorded config"), "{err}");
    }

    #[test]
    fn a_changed_later_setting_removes_that_steps_files_and_records_the_new_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path().join("run"));
        let mut cfg = Config::default();
        dir.prepare(&cfg, &serde_json::json!({})).unwrap();
        for f in ["samples.jsonl", "risk_diff.csv", "unsafe_experts.json", "metrics.jsonl", "eval/base/eval.json"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        cfg.analysis.top_k += 1;
        cfg.model.backend = match cfg.model.backend {
            crate::backend::BackendKind::Cpu => crate::backend::BackendKind::Wgpu,
            _ => crate::backend::BackendKind::Cpu,
        };
        let done = dir.reconcile(&cfg, Step::Train).unwrap_err();
        assert!(matches!(&done, RunDirError::OtherConfig { keys, stage: "analyze", .. } if keys == &["analysis.top_k"]), "{done}");
        let done = dir.reconcile(&cfg, Step::Analyze).unwrap();
        assert_eq!(done.changed, vec!["analysis.top_k".to_string()], "model.backend is not an experiment setting");
        assert_eq!(done.redone, vec![Step::Analyze, Step::Train, Step::Eval]);
        assert!(dir.path().join("samples.jsonl").exists());
        for gone in ["risk_diff.csv", "unsafe_experts.json", "metrics.jsonl", "eval"] {
            assert!(!dir.path().join(gone).exists(), "{gone}");
        }
        assert_eq!(std::fs::read_to_string(dir.config_path()).unwrap(), cfg.to_toml());
        // A directory whose collect wrote nothing takes a changed collect setting.
        std::fs::remove_file(dir.path().join("samples.jsonl")).unwrap();
        cfg.collect.max_new_tokens += 1;
        assert_eq!(dir.prepare(&cfg, &serde_json::json!({})).unwrap().changed, vec!["collect.max_new_tokens".to_string()]);
    }

    #[test]
    fn a_held_directory_is_refused_with_the_holders_pid_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path().join("run"));
        let held = dir.lock().unwrap();
        let err = dir.lock().unwrap_err();
        assert!(matches!(err, RunDirError::Locked { pid: Some(p), .. } if p == std::process::id()), "{err}");
        assert!(err.to_string().contains("in use by another steermoe process"));
        drop(held);
        dir.lock().expect("released with its holder");
    }
}
