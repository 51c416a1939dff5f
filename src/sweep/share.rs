//! Work shared between the jobs of a sweep: each stage is keyed by the settings it depends on
//! (its fingerprint, `Stage::key`: the same answer a run directory's reconciliation uses), done
//! once by the first job that needs it, and hard-linked into every other job with the same key,
//! so each job's run directory is complete and ordinary. [`Sharing`] is the pipeline hook that
//! does it.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use crate::Error;
use crate::pipeline::{Hook, Outcome};
use crate::run_dir::{RunDir, Stage};

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
        self.slots
            .lock()
            .expect("registry lock")
            .entry(key)
            .or_insert_with(|| Slot::Done(dir.clone()));
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
                        dir.link_from(&owner, &files(&owner))
                            .map_err(ShareError::Link)?;
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

/// The pipeline hook of a sweep's jobs: each stage through the [`Registry`], and a finished
/// training's checkpoints dropped (the exported model is the result; a sweep of many jobs keeps
/// no resume checkpoints, each holding the whole model in f32).
#[derive(Debug)]
pub struct Sharing<'a> {
    /// The sweep's registry.
    pub registry: &'a Registry,
}

impl Hook for Sharing<'_> {
    fn around(
        &self,
        stage: &Stage,
        key: &str,
        dir: &RunDir,
        done: bool,
        work: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<Outcome, Error> {
        let outcome = self
            .registry
            .share(key, dir, done, |owner| owner.stage_files(stage), work)
            .map_err(|e| match e {
                ShareError::Work(e) => e,
                ShareError::Failed(reason) => Error::Share(reason),
                ShareError::Link(e) => e.into(),
            })?;
        if *stage == Stage::Train && outcome == Outcome::Ran {
            dir.checkpoints().remove_all()?;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_job_works_the_others_link() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::default();
        let (a, b) = (
            RunDir::new(tmp.path().join("a")),
            RunDir::new(tmp.path().join("b")),
        );
        let files = |_: &RunDir| vec![std::path::PathBuf::from("x.txt")];
        let out = reg
            .share("k", &a, false, files, || {
                std::fs::create_dir_all(a.path()).unwrap();
                std::fs::write(a.path().join("x.txt"), "1")
            })
            .unwrap();
        assert_eq!(out, Outcome::Ran);
        let out = reg
            .share("k", &b, false, files, || -> std::io::Result<()> {
                panic!("shared work runs once")
            })
            .unwrap();
        assert_eq!(out, Outcome::Linked);
        assert_eq!(
            std::fs::read_to_string(b.path().join("x.txt")).unwrap(),
            "1"
        );
        let failed = reg.share("f", &a, false, files, || Err("boom"));
        assert!(matches!(failed, Err(ShareError::Work("boom"))));
        assert!(
            matches!(reg.share("f", &b, false, files, || Ok::<(), &str>(())), Err(ShareError::Failed(m)) if m.contains("boom"))
        );
    }
}
