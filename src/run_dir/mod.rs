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
use crate::model::checkpoint::write_atomic;

/// What can go wrong preparing or reading a run directory.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// The directory was made with another config: its finished stages would be skipped.
    #[error("{} was made with a different config (see {}); pass another --out or remove it", dir.display(), recorded.display())]
    OtherConfig {
        /// The run directory.
        dir: PathBuf,
        /// Its recorded config.
        recorded: PathBuf,
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

    /// Create the directory (a stale one made with another config is refused) and record the
    /// resolved config and `provenance` (`provenance.json`).
    pub fn prepare(&self, cfg: &Config, provenance: &serde_json::Value) -> Result<(), RunDirError> {
        let resolved = cfg.to_toml();
        let recorded = self.config_path();
        if let Ok(old) = std::fs::read_to_string(&recorded)
            && old != resolved
        {
            return Err(RunDirError::OtherConfig {
                dir: self.root.clone(),
                recorded,
            });
        }
        std::fs::create_dir_all(&self.root).map_err(|source| RunDirError::Io {
            path: self.root.clone(),
            source,
        })?;
        let write = |path: &Path, bytes: &[u8]| {
            write_atomic(path, bytes).map_err(|e| RunDirError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })
        };
        write(&recorded, resolved.as_bytes())?;
        write(&self.root.join("provenance.json"), format!("{provenance:#}\n").as_bytes())
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
        assert!(matches!(b.prepare(&other, &prov), Err(RunDirError::OtherConfig { .. })));
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
