//! Work shared between the jobs of a sweep: each stage is keyed by the settings it depends on,
//! done once by the first job that needs it, and hard-linked into every other job with the same
//! key, so each job's run directory is complete and ordinary.
//!
//! Keys (a hash of the settings named, as JSON):
//! - collect: `model`, `data`, `collect`, `judge` (+ `seed` when sampling);
//! - analyze: collect's key + `analysis` (+ `seed` for the random ablation);
//! - train: analyze's key + `train` + `seed`;
//! - evaluation of the base model: `model`, `data`, `judge`, `eval` (less its variant lists);
//! - a steered evaluation: the base key + the experts forced on and off (so random-expert
//!   settings that draw the same experts share one);
//! - the trained model's evaluation: train's key + the base key.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use serde::Serialize;

use crate::analysis::select::ExpertSource;
use crate::config::Config;
use crate::generate::Sampling;
use crate::run_dir::RunDir;

/// A stable 64-bit FNV-1a hash, hex.
fn fnv(text: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn key(stage: &str, parts: impl Serialize) -> String {
    format!("{stage}-{}", fnv(&serde_json::to_string(&parts).expect("settings serialise")))
}

/// The key of collect.
pub fn collect_key(cfg: &Config) -> String {
    let seed = (!matches!(cfg.collect.sampling, Sampling::Greedy)).then_some(cfg.seed);
    key("collect", (&cfg.model, &cfg.data, &cfg.collect, &cfg.judge, seed))
}

/// The key of analyze.
pub fn analyze_key(cfg: &Config) -> String {
    let seed = (cfg.analysis.experts == ExpertSource::Random).then_some(cfg.seed);
    key("analyze", (collect_key(cfg), &cfg.analysis, seed))
}

/// The key of train.
pub fn train_key(cfg: &Config) -> String {
    key("train", (analyze_key(cfg), &cfg.train, cfg.seed))
}

/// The key of the base model's evaluation.
pub fn base_eval_key(cfg: &Config) -> String {
    let mut eval = cfg.eval.clone();
    eval.variants.clear();
    eval.steer.clear();
    key("eval-base", (&cfg.model, &cfg.data, &cfg.judge, eval))
}

/// The key of a steered evaluation forcing `on` and `off`.
pub fn steer_eval_key(cfg: &Config, on: &[[usize; 2]], off: &[[usize; 2]]) -> String {
    key("eval-steer", (base_eval_key(cfg), on, off))
}

/// The key of the trained model's evaluation.
pub fn trained_eval_key(cfg: &Config) -> String {
    key("eval-trained", (train_key(cfg), base_eval_key(cfg)))
}

/// How a job got a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was finished in the job's own directory already.
    Done,
    /// The job did the work.
    Ran,
    /// Linked from the job that did it.
    Linked,
}

impl Outcome {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Ran => "ran",
            Outcome::Linked => "linked",
        }
    }
}

#[derive(Debug, Clone)]
enum Slot {
    Running,
    Done(RunDir),
    Failed(String),
}

/// The registry of shared stages, for the threads of one sweep.
#[derive(Debug, Default)]
pub struct Registry {
    slots: Mutex<HashMap<String, Slot>>,
    changed: Condvar,
}

impl Registry {
    /// Record that `dir` holds the finished stage `key` (from an earlier run).
    pub fn found(&self, key: String, dir: &RunDir) {
        self.slots.lock().expect("registry lock").entry(key).or_insert_with(|| Slot::Done(dir.clone()));
    }

    /// Give `dir` the stage `key`: nothing if `done` already, else link it from the job that
    /// did it (waiting while one is at it), else do it with `work` and tell the others. `files`
    /// lists what to link, relative to a run directory, given the owner's directory.
    pub fn share<E: std::fmt::Display>(
        &self,
        key: &str,
        dir: &RunDir,
        done: bool,
        files: impl Fn(&RunDir) -> Vec<std::path::PathBuf>,
        work: impl FnOnce() -> Result<(), E>,
    ) -> Result<Outcome, ShareError<E>> {
        if done {
            self.found(key.to_string(), dir);
            return Ok(Outcome::Done);
        }
        let mut slots = self.slots.lock().expect("registry lock");
        loop {
            match slots.get(key).cloned() {
                None => {
                    slots.insert(key.to_string(), Slot::Running);
                    drop(slots);
                    let result = work();
                    let mut slots = self.slots.lock().expect("registry lock");
                    let slot = match &result {
                        Ok(()) => Slot::Done(dir.clone()),
                        Err(e) => Slot::Failed(format!("{e} (in {})", dir.path().display())),
                    };
                    slots.insert(key.to_string(), slot);
                    self.changed.notify_all();
                    return result.map(|()| Outcome::Ran).map_err(ShareError::Work);
                }
                Some(Slot::Running) => slots = self.changed.wait(slots).expect("registry lock"),
                Some(Slot::Done(owner)) => {
                    drop(slots);
                    if owner != *dir {
                        dir.link_from(&owner, &files(&owner)).map_err(ShareError::Link)?;
                    }
                    return Ok(Outcome::Linked);
                }
                Some(Slot::Failed(reason)) => return Err(ShareError::Failed(reason)),
            }
        }
    }
}

/// Why a job could not get a stage.
#[derive(Debug, thiserror::Error)]
pub enum ShareError<E> {
    /// This job's own work failed.
    #[error("{0}")]
    Work(E),
    /// The job doing the shared work failed.
    #[error("the job sharing this stage failed: {0}")]
    Failed(String),
    /// Linking the finished stage failed.
    #[error(transparent)]
    Link(crate::run_dir::RunDirError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_exactly_the_settings_a_stage_reads() {
        let a = Config::default();
        let mut b = a.clone();
        b.train.lr *= 2.0;
        assert_eq!(analyze_key(&a), analyze_key(&b));
        assert_ne!(train_key(&a), train_key(&b));
        let mut c = a.clone();
        c.seed = 7;
        assert_eq!(analyze_key(&a), analyze_key(&c), "risk difference does not depend on the seed");
        assert_ne!(train_key(&a), train_key(&c));
        c.analysis.experts = ExpertSource::Random;
        let mut d = c.clone();
        d.seed = 8;
        assert_ne!(analyze_key(&c), analyze_key(&d), "the random ablation does");
        assert_eq!(collect_key(&c), collect_key(&d));
        let mut e = a.clone();
        e.eval.steer.clear();
        assert_eq!(base_eval_key(&a), base_eval_key(&e));
        assert_ne!(steer_eval_key(&a, &[[0, 1]], &[]), steer_eval_key(&a, &[], &[[0, 1]]));
    }

    #[test]
    fn the_first_job_works_the_others_link() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::default();
        let (a, b) = (RunDir::new(tmp.path().join("a")), RunDir::new(tmp.path().join("b")));
        let files = |_: &RunDir| vec![std::path::PathBuf::from("x.txt")];
        let out = reg
            .share("k", &a, false, files, || {
                std::fs::create_dir_all(a.path()).unwrap();
                std::fs::write(a.path().join("x.txt"), "1")
            })
            .unwrap();
        assert_eq!(out, Outcome::Ran);
        let out = reg.share("k", &b, false, files, || -> std::io::Result<()> { panic!("shared work runs once") }).unwrap();
        assert_eq!(out, Outcome::Linked);
        assert_eq!(std::fs::read_to_string(b.path().join("x.txt")).unwrap(), "1");
        let failed = reg.share("f", &a, false, files, || Err("boom"));
        assert!(matches!(failed, Err(ShareError::Work("boom"))));
        assert!(matches!(reg.share("f", &b, false, files, || Ok::<(), &str>(())), Err(ShareError::Failed(m)) if m.contains("boom")));
    }
}
