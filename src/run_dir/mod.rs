//! A run directory: one type, [`RunDir`], that knows every artifact's path and format. Stages ask
//! it for their inputs and outputs by meaning (`dir.unsafe_experts()`, `dir.metrics()`,
//! `dir.final_model()`, `dir.eval(&variant)`) and never build a file name; each artifact has one
//! type, used by its writer and every reader, written atomically (a temporary file renamed into
//! place, see [`files`]).
//!
//! | file | stage | holds |
//! |---|---|---|
//! | `config.toml` | every | the resolved config that made the files present ([`RunDir::reconcile`]) |
//! | `provenance.json` | every | steermoe version, git revision, seed, config path and overrides |
//! | `routing/index.json` | collect | [`records::RoutingIndex`]: MoE layers, experts, top-k, batches planned and finished |
//! | `routing/batch-NNNNN.json` | collect | that batch's [`records::SampleRecord`]s (written after its tensors: marks the batch finished) |
//! | `routing/batch-NNNNN.safetensors` | collect | per kept sample `prompt.{i}` / `gen.{i}` router logits `[layers, tokens, experts]` f16; per kept pair `reply_safe.{i}` / `reply_unsafe.{i}` chosen experts `[layers, tokens, k]` u16 ([`routing`]) |
//! | `samples.jsonl` | collect | every sample of the finished batches, in batch order |
//! | `risk_diff.csv`, `risk_diff_aggregated.csv` | analyze | [`analysis::RiskCsvRow`]s, per batch and aggregated, riskiest first |
//! | `unsafe_experts.json` | analyze | [`analysis::UnsafeExperts`]: per-batch, global and union sets, the full ranking, the settings |
//! | `expert_masks.safetensors` | analyze | `per_batch` `[batches, layers, experts]`, `global`, `union` (f32, 1 = may be chosen), `batch_idx` |
//! | `risk_diff_heatmap.png` | analyze | aggregated risk difference, layers × experts, global set outlined, planted experts dotted |
//! | `recovery.json` | analyze | on a planted model: [`analysis::Recovery`], how each ranking recovers the planted experts |
//! | `train/checkpoint/*.mpk` | train | burn-train's checkpoints of each window ([`checkpoints`]) |
//! | `metrics.jsonl` | train | one line per step and per validation ([`training`]) |
//! | `loss_curve.png` | train | loss, its moving average, validation loss, learning rate |
//! | `final_model/` | train | the fine-tuned model in Hub layout, written whole as `final_model.partial/` and renamed |
//! | `training_metadata.json` | train | [`training::TrainingMetadata`], written last |
//! | `eval/<variant>/eval.json`, `responses.jsonl` | eval | [`eval::EvalReport`] and every answer ([`eval::EvalDir`]) |
//! | `eval/table.txt` | eval | the before/after table of every finished evaluation |
//!
//! A stage is done when its artifacts exist *and read back* ([`RunDir::is_done`]): a damaged or
//! missing artifact makes the stage run again (collect redoes just the damaged batches, training
//! resumes from its last whole checkpoint), never a failure. A directory is held by one process
//! at a time ([`RunDir::lock`]).

pub mod analysis;
pub mod checkpoints;
pub mod eval;
pub mod files;
pub mod records;
pub mod routing;
pub mod stage;
pub mod training;

use std::path::{Path, PathBuf};

pub use checkpoints::Checkpoints;
pub use eval::EvalDir;
pub use files::{
    BlobFile, BlobKind, CsvFile, JsonFile, JsonLines, remove_path, replace_dir, write_atomic,
    write_csv,
};
pub use stage::{Stage, SteerSetting, Variant};
pub use training::MetricsFile;

use records::{RoutingIndex, SampleRecord};

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
        stage: String,
    },
    /// Another process holds the directory.
    #[error("{} is in use by another steermoe process{}; wait for it or pass another --out", dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, if it wrote one.
        pid: Option<u32>,
    },
    /// A file is unreadable or malformed.
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

/// The exclusive hold of a directory: an OS file lock on its `.lock` file, released when this
/// value is dropped or the process ends (a killed process leaves no stale lock).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Create `dir` and hold it for this process: a second process gets [`RunDirError::Locked`]
/// naming the holder's pid.
fn lock(dir: &Path) -> Result<DirLock, RunDirError> {
    use std::io::{Read, Seek, Write};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunDirError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(RunDirError::Locked {
                dir: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(RunDirError::Io { path, source }),
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| write!(file, "{}", std::process::id()))
        .map_err(io(&path))?;
    Ok(DirLock { _file: file })
}

/// One run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Create the directory and hold it for this process (see [`DirLock`]).
    pub fn lock(&self) -> Result<DirLock, RunDirError> {
        lock(&self.root)
    }

    // ---- every stage ----

    /// `config.toml`: the resolved config that made the files present.
    pub fn config(&self) -> BlobFile {
        BlobFile::at(self.root.join("config.toml"), BlobKind::Text)
    }

    /// `provenance.json`.
    pub fn provenance(&self) -> JsonFile<serde_json::Value> {
        JsonFile::at(self.root.join("provenance.json"))
    }

    // ---- collect ----

    /// `routing/index.json`.
    pub fn routing_index(&self) -> JsonFile<RoutingIndex> {
        JsonFile::at(self.root.join("routing/index.json"))
    }

    /// The records of batch `i` (`routing/batch-NNNNN.json`).
    pub fn batch_records(&self, i: usize) -> JsonFile<Vec<SampleRecord>> {
        JsonFile::at(self.root.join(format!("routing/batch-{i:05}.json")))
    }

    /// The routing tensors of batch `i` (`routing/batch-NNNNN.safetensors`, see [`routing`]).
    pub fn batch_routing(&self, i: usize) -> BlobFile {
        BlobFile::at(
            self.root.join(format!("routing/batch-{i:05}.safetensors")),
            BlobKind::Safetensors,
        )
    }

    /// Whether batch `i` is finished: its records and its tensors read back.
    pub fn batch_done(&self, i: usize) -> bool {
        self.batch_records(i).reads_back() && self.batch_routing(i).reads_back()
    }

    /// The batches whose record file exists, sorted (finished or damaged: see
    /// [`RunDir::batch_done`]).
    pub fn recorded_batches(&self) -> Vec<usize> {
        let mut out: Vec<usize> = std::fs::read_dir(self.root.join("routing"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .into_string()
                    .ok()?
                    .strip_prefix("batch-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Remove batch `i`'s files (to redo a damaged batch).
    pub fn remove_batch(&self, i: usize) -> Result<(), RunDirError> {
        remove_path(self.batch_records(i).path())?;
        remove_path(self.batch_routing(i).path())
    }

    /// `samples.jsonl`.
    pub fn samples(&self) -> JsonLines<SampleRecord> {
        JsonLines::at(self.root.join("samples.jsonl"))
    }

    // ---- analyze ----

    /// `risk_diff.csv`.
    pub fn risk_diff(&self) -> CsvFile<analysis::RiskCsvRow> {
        CsvFile::at(self.root.join("risk_diff.csv"))
    }

    /// `risk_diff_aggregated.csv`.
    pub fn risk_diff_aggregated(&self) -> CsvFile<analysis::RiskCsvRow> {
        CsvFile::at(self.root.join("risk_diff_aggregated.csv"))
    }

    /// `unsafe_experts.json`.
    pub fn unsafe_experts(&self) -> JsonFile<analysis::UnsafeExperts> {
        JsonFile::at(self.root.join("unsafe_experts.json"))
    }

    /// `expert_masks.safetensors`.
    pub fn expert_masks(&self) -> BlobFile {
        BlobFile::at(
            self.root.join("expert_masks.safetensors"),
            BlobKind::Safetensors,
        )
    }

    /// `recovery.json` (a planted model's analyses only).
    pub fn recovery(&self) -> JsonFile<analysis::Recovery> {
        JsonFile::at(self.root.join("recovery.json"))
    }

    /// `risk_diff_heatmap.png`.
    pub fn risk_heatmap(&self) -> BlobFile {
        BlobFile::at(self.root.join("risk_diff_heatmap.png"), BlobKind::Png)
    }

    /// `effects.json` (an effect ranking's analyses only).
    pub fn effects(&self) -> JsonFile<analysis::EffectsReport> {
        JsonFile::at(self.root.join("effects.json"))
    }

    /// `effects.safetensors`: every expert's measured effects, `[layers, experts]` per score.
    pub fn effects_tensors(&self) -> BlobFile {
        BlobFile::at(self.root.join("effects.safetensors"), BlobKind::Safetensors)
    }

    /// `effects_heatmap.png`.
    pub fn effects_heatmap(&self) -> BlobFile {
        BlobFile::at(self.root.join("effects_heatmap.png"), BlobKind::Png)
    }

    // ---- train ----

    /// burn-train's checkpoints (`train/`).
    pub fn checkpoints(&self) -> Checkpoints {
        Checkpoints::at(self.root.join("train"))
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> MetricsFile {
        MetricsFile::at(self.root.join("metrics.jsonl"))
    }

    /// `loss_curve.png`.
    pub fn loss_curve(&self) -> BlobFile {
        BlobFile::at(self.root.join("loss_curve.png"), BlobKind::Png)
    }

    /// The exported model, `final_model/`.
    pub fn final_model(&self) -> PathBuf {
        self.root.join("final_model")
    }

    /// Where the exported model is written before it is renamed into place.
    pub fn final_model_staging(&self) -> PathBuf {
        self.root.join("final_model.partial")
    }

    /// `training_metadata.json`.
    pub fn training_metadata(&self) -> JsonFile<training::TrainingMetadata> {
        JsonFile::at(self.root.join("training_metadata.json"))
    }

    // ---- eval ----

    /// The folder of the evaluation of `variant`, `eval/<name>/`.
    pub fn eval(&self, variant: &Variant) -> EvalDir {
        EvalDir::at(self.root.join("eval").join(variant.name()))
    }

    /// Every finished evaluation here, named, in table order.
    pub fn eval_reports(&self) -> Vec<(String, eval::EvalReport)> {
        EvalDir::reports_in(&self.root.join("eval"))
    }

    /// `eval/table.txt`.
    pub fn eval_table(&self) -> BlobFile {
        BlobFile::at(self.root.join("eval/table.txt"), BlobKind::Text)
    }

    // ---- stages ----

    /// The paths `stage` writes (files and folders), for removing or checking them.
    fn stage_paths(&self, stage: &Stage) -> Vec<PathBuf> {
        match stage {
            Stage::Collect => vec![
                self.root.join("routing"),
                self.samples().path().to_path_buf(),
            ],
            Stage::Analyze => vec![
                self.risk_diff().path().to_path_buf(),
                self.risk_diff_aggregated().path().to_path_buf(),
                self.unsafe_experts().path().to_path_buf(),
                self.expert_masks().path().to_path_buf(),
                self.risk_heatmap().path().to_path_buf(),
                self.recovery().path().to_path_buf(),
                self.effects().path().to_path_buf(),
                self.effects_tensors().path().to_path_buf(),
                self.effects_heatmap().path().to_path_buf(),
            ],
            Stage::Train => vec![
                self.checkpoints().dir().to_path_buf(),
                self.metrics().path().to_path_buf(),
                self.loss_curve().path().to_path_buf(),
                self.final_model(),
                self.final_model_staging(),
                self.training_metadata().path().to_path_buf(),
            ],
            Stage::Eval(v) => vec![
                self.eval(v).path().to_path_buf(),
                self.eval_table().path().to_path_buf(),
            ],
        }
    }

    /// Whether any file of `stage` exists here.
    pub fn has_files(&self, stage: &Stage) -> bool {
        let own = |p: &PathBuf| *p != self.eval_table().path();
        self.stage_paths(stage)
            .iter()
            .filter(|p| own(p))
            .any(|p| p.exists())
    }

    /// Remove every file of `stage` (the before/after table goes with any evaluation).
    pub fn remove_files(&self, stage: &Stage) -> Result<(), RunDirError> {
        self.stage_paths(stage)
            .iter()
            .try_for_each(|p| remove_path(p))
    }

    /// Whether `stage` is finished here: its artifacts exist and read back. Collect: the index
    /// records how many batches it plans and each of them, its records and its tensors read
    /// back; analyze: every table, the masks, the heatmap, and experts that are the collected
    /// model's; train: the metadata
    /// and an exported model whose config and weight files read back; an evaluation: its report
    /// and answers.
    pub fn is_done(&self, stage: &Stage) -> bool {
        match stage {
            Stage::Collect => {
                let Ok(index) = self.routing_index().read() else {
                    return false;
                };
                index
                    .planned
                    .is_some_and(|n| index.batches.len() == n && (0..n).all(|i| self.batch_done(i)))
                    && self.samples().reads_back()
            }
            Stage::Analyze => {
                // The experts must be the collected model's (an edited or foreign file is redone).
                let (fits, causal) =
                    match (self.unsafe_experts().read(), self.routing_index().read()) {
                        (Ok(u), Ok(index)) => (
                            u.check_shape(index.layers, index.experts).is_ok(),
                            u.params.ranking != "riskdiff",
                        ),
                        _ => (false, false),
                    };
                let effects = !causal
                    || (self.effects().reads_back()
                        && self.effects_tensors().reads_back()
                        && self.effects_heatmap().reads_back());
                fits && effects
                    && self.risk_diff().reads_back()
                    && self.risk_diff_aggregated().reads_back()
                    && self.expert_masks().reads_back()
                    && self.risk_heatmap().reads_back()
            }
            Stage::Train => {
                self.training_metadata().reads_back() && model_reads_back(&self.final_model())
            }
            Stage::Eval(v) => self.eval(v).is_done(),
        }
    }

    /// The files `stage` leaves here, relative to the directory, its completion marker last (for
    /// linking a finished stage into another directory).
    pub fn stage_files(&self, stage: &Stage) -> Vec<PathBuf> {
        let rel = |p: &Path| {
            p.strip_prefix(&self.root)
                .expect("inside the run directory")
                .to_path_buf()
        };
        match stage {
            Stage::Collect => {
                let mut files = files_under(&self.root, Path::new("routing"));
                // The index marks the stage finished: link it last.
                let index = rel(self.routing_index().path());
                files.retain(|f| *f != index);
                files.push(rel(self.samples().path()));
                files.push(index);
                files
            }
            // `recovery.json` is there on a planted model only, the effects with an effect
            // ranking only; `unsafe_experts.json` marks the stage finished: link it last.
            Stage::Analyze => {
                let marker = rel(self.unsafe_experts().path());
                let mut files: Vec<PathBuf> = self
                    .stage_paths(stage)
                    .iter()
                    .filter(|p| p.exists())
                    .map(|p| rel(p))
                    .filter(|p| *p != marker)
                    .collect();
                files.push(marker);
                files
            }
            Stage::Train => {
                let mut files = vec![rel(self.metrics().path()), rel(self.loss_curve().path())];
                files.extend(files_under(&self.root, &rel(&self.final_model())));
                files.push(rel(self.training_metadata().path()));
                files
            }
            Stage::Eval(v) => {
                let e = self.eval(v);
                let mut files = vec![rel(e.responses().path())];
                // The HTTP judge's verdicts, when it ran.
                if e.judge_cache().path().is_file() {
                    files.push(rel(e.judge_cache().path()));
                }
                files.push(rel(e.report().path()));
                files
            }
        }
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
            remove_path(&dst)?;
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(io(&src))?;
            }
        }
        Ok(())
    }

    /// Bring the directory in line with a config before running the stages from `from` on:
    /// `stages` holds each stage of the new config with the settings it depends on (its
    /// fingerprint), `recorded` the same for the config recorded here (`None`: nothing recorded
    /// yet). Where a stage's fingerprint changed and it has files:
    /// - if it is collect, or comes before `from`: refused, naming the changed keys (those files
    ///   were made with the old settings; collected batches are never thrown away silently);
    /// - otherwise its files are removed, to be redone.
    ///
    /// Evaluations no longer configured are removed too. Then `config_text` is recorded as
    /// `config.toml`, which thus always describes the files present.
    pub fn reconcile(
        &self,
        recorded: Option<&[(Stage, serde_json::Value)]>,
        stages: &[(Stage, serde_json::Value)],
        from: Stage,
        config_text: &str,
    ) -> Result<Reconciled, RunDirError> {
        std::fs::create_dir_all(&self.root).map_err(|source| RunDirError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut done = Reconciled::default();
        if let Some(recorded) = recorded {
            let old = |s: &Stage| recorded.iter().find(|(r, _)| r == s).map(|(_, v)| v);
            let changed: Vec<(&Stage, Vec<String>)> = stages
                .iter()
                .filter_map(|(s, new)| {
                    let keys = match old(s) {
                        Some(old) => changed_keys(old, new),
                        None => vec![format!("{s} (not run before)")],
                    };
                    (!keys.is_empty() && self.has_files(s)).then_some((s, keys))
                })
                .collect();
            if let Some((stage, keys)) = changed
                .iter()
                .find(|(s, _)| **s == Stage::Collect || s.order() < from.order())
            {
                return Err(RunDirError::OtherConfig {
                    dir: self.root.clone(),
                    recorded: self.config().path().to_path_buf(),
                    keys: keys.clone(),
                    stage: stage.name(),
                });
            }
            for (stage, keys) in changed {
                self.remove_files(stage)?;
                done.redone.push(*stage);
                for k in keys {
                    if !done.changed.contains(&k) {
                        done.changed.push(k);
                    }
                }
            }
            for (stage, _) in recorded
                .iter()
                .filter(|(s, _)| matches!(s, Stage::Eval(_)) && !stages.iter().any(|(n, _)| n == s))
            {
                if self.has_files(stage) {
                    self.remove_files(stage)?;
                    done.dropped.push(*stage);
                }
            }
        }
        if self.config().read().ok().as_deref() != Some(config_text.as_bytes()) {
            self.config().write(config_text.as_bytes())?;
        }
        Ok(done)
    }
}

/// What [`RunDir::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Settings that differ from the recorded config, dotted, of the stages redone.
    pub changed: Vec<String>,
    /// Stages whose files were removed to be redone.
    pub redone: Vec<Stage>,
    /// Evaluations removed because the config no longer lists them.
    pub dropped: Vec<Stage>,
}

impl Reconciled {
    /// A one-line account for the user, if anything was removed.
    pub fn message(&self) -> Option<String> {
        let names = |s: &[Stage]| s.iter().map(Stage::name).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !self.redone.is_empty() {
            parts.push(format!(
                "config changed ({}): the files of {} were removed and will be redone",
                self.changed.join(", "),
                names(&self.redone)
            ));
        }
        if !self.dropped.is_empty() {
            parts.push(format!(
                "evaluations no longer configured were removed: {}",
                names(&self.dropped)
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Dotted keys whose values differ between two JSON objects (present in one only included).
pub fn changed_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(
        prefix: &str,
        a: Option<&serde_json::Value>,
        b: Option<&serde_json::Value>,
        out: &mut Vec<String>,
    ) {
        match (a, b) {
            (Some(serde_json::Value::Object(x)), Some(serde_json::Value::Object(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, x.get(k), y.get(k), out);
                }
            }
            (x, y) if x != y => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", Some(a), Some(b), &mut out);
    out
}

/// Whether a Hub-layout model directory's config and weight files read back: `config.json`
/// parses, and every safetensors file (the single one, or each shard of the index) is whole.
fn model_reads_back(dir: &Path) -> bool {
    let json = |name: &str| {
        JsonFile::<serde_json::Value>::at(dir.join(name))
            .read()
            .ok()
    };
    if json("config.json").is_none() {
        return false;
    }
    match json("model.safetensors.index.json") {
        Some(index) => {
            let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
                return false;
            };
            let shards: std::collections::BTreeSet<&str> =
                map.values().filter_map(|v| v.as_str()).collect();
            !shards.is_empty()
                && shards
                    .iter()
                    .all(|s| files::check_safetensors(&dir.join(s)).is_ok())
        }
        None => files::check_safetensors(&dir.join("model.safetensors")).is_ok(),
    }
}

/// Files under `root/sub`, recursively, relative to `root`, sorted.
fn files_under(root: &Path, sub: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![sub.to_path_buf()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel))
            .into_iter()
            .flatten()
            .flatten()
        {
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
    use serde_json::json;

    fn touch(dir: &RunDir, rel: &str) {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, rel).unwrap();
    }

    #[test]
    fn links_stage_files_with_the_marker_last() {
        let tmp = tempfile::tempdir().unwrap();
        let a = RunDir::new(tmp.path().join("a"));
        for f in [
            "routing/batch-00000.json",
            "routing/index.json",
            "routing/batch-00000.safetensors",
            "samples.jsonl",
        ] {
            touch(&a, f);
        }
        let files = a.stage_files(&Stage::Collect);
        assert_eq!(files.last().unwrap(), Path::new("routing/index.json"));
        assert_eq!(files.len(), 4);
        let b = RunDir::new(tmp.path().join("b"));
        b.link_from(&a, &files).unwrap();
        assert_eq!(
            std::fs::read_to_string(b.path().join("samples.jsonl")).unwrap(),
            "samples.jsonl"
        );
        assert!(!b.is_done(&Stage::Collect), "index.json does not parse");
    }

    fn fingerprints(
        collect: u64,
        analysis: u64,
        variants: &[Variant],
    ) -> Vec<(Stage, serde_json::Value)> {
        let mut out = vec![
            (
                Stage::Collect,
                json!({"collect": {"max_new_tokens": collect}}),
            ),
            (
                Stage::Analyze,
                json!({"collect": {"max_new_tokens": collect}, "analysis": {"top_k": analysis}}),
            ),
            (
                Stage::Train,
                json!({"collect": {"max_new_tokens": collect}, "analysis": {"top_k": analysis}, "train": {}}),
            ),
        ];
        // The base model's evaluation depends on neither collect nor analysis; the trained one's on both.
        out.extend(variants.iter().map(|v| match v {
            Variant::Base => (Stage::Eval(*v), json!({"eval": v.name()})),
            _ => (Stage::Eval(*v), json!({"eval": v.name(), "collect": {"max_new_tokens": collect}, "analysis": {"top_k": analysis}})),
        }));
        out
    }

    #[test]
    fn a_changed_stage_is_redone_or_refused_by_its_fingerprint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path().join("run"));
        let v = [Variant::Base, Variant::Trained];
        let first = fingerprints(4, 3, &v);
        assert_eq!(
            dir.reconcile(None, &first, Stage::Collect, "a").unwrap(),
            Reconciled::default()
        );
        for f in [
            "samples.jsonl",
            "risk_diff.csv",
            "unsafe_experts.json",
            "metrics.jsonl",
            "eval/base/eval.json",
            "eval/trained/eval.json",
            "eval/table.txt",
        ] {
            touch(&dir, f);
        }
        // The same fingerprints: nothing happens.
        assert_eq!(
            dir.reconcile(Some(&first), &first, Stage::Collect, "a")
                .unwrap(),
            Reconciled::default()
        );
        // Analysis changed: refused when the command starts at train (its files are kept)…
        let second = fingerprints(4, 5, &v[..1]);
        let err = dir
            .reconcile(Some(&first), &second, Stage::Train, "b")
            .unwrap_err();
        assert!(
            matches!(&err, RunDirError::OtherConfig { keys, stage, .. } if keys == &["analysis.top_k"] && stage == "analyze"),
            "{err}"
        );
        // …redone from analyze on otherwise, the base evaluation kept, the trained one dropped.
        let done = dir
            .reconcile(Some(&first), &second, Stage::Analyze, "b")
            .unwrap();
        assert_eq!(done.redone, vec![Stage::Analyze, Stage::Train]);
        assert_eq!(done.changed, vec!["analysis.top_k".to_string()]);
        assert_eq!(done.dropped, vec![Stage::Eval(Variant::Trained)]);
        assert!(done.message().unwrap().contains("analysis.top_k"));
        assert!(
            dir.path().join("samples.jsonl").exists()
                && !dir.path().join("risk_diff.csv").exists()
                && !dir.path().join("metrics.jsonl").exists()
        );
        assert!(
            dir.path().join("eval/base/eval.json").exists()
                && !dir.path().join("eval/trained").exists()
        );
        assert_eq!(std::fs::read_to_string(dir.config().path()).unwrap(), "b");
        // Collect's files are never thrown away silently.
        let third = fingerprints(9, 5, &v[..1]);
        let err = dir
            .reconcile(Some(&second), &third, Stage::Collect, "c")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("collect.max_new_tokens differs from the recorded config"),
            "{err}"
        );
        // A directory whose collect wrote nothing takes it.
        std::fs::remove_file(dir.path().join("samples.jsonl")).unwrap();
        dir.reconcile(Some(&second), &third, Stage::Collect, "c")
            .unwrap();
    }

    #[test]
    fn a_held_directory_is_refused_with_the_holders_pid_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path().join("run"));
        let held = dir.lock().unwrap();
        let err = dir.lock().unwrap_err();
        assert!(
            matches!(err, RunDirError::Locked { pid: Some(p), .. } if p == std::process::id()),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("in use by another steermoe process")
        );
        drop(held);
        dir.lock().expect("released with its holder");
        let e = EvalDir::at(tmp.path().join("out"));
        let _held = e.lock().unwrap();
        assert!(e.lock().is_err(), "an evaluation folder is held too");
    }
}
