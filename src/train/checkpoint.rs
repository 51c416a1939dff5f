//! Training checkpoints under `train/checkpoint/`: burn-train writes `model-{n}.mpk`,
//! `optim-{n}.mpk` and `scheduler-{n}.mpk` after window `n`. Two rules keep them safe to resume
//! from after a kill at any moment:
//! - every file is written through [`AtomicMpkRecorder`]: to `*.mpk.tmp`, synced, then renamed, so
//!   a `.mpk` file is always whole (burn's own recorder writes in place);
//! - a window's checkpoint counts only when all three files exist ([`latest`]); a later, partial
//!   one (a kill between its files) is ignored, and removed before training resumes.
//!
//! burn-train hands each window's records to three checkpointer threads, which read the model's
//! and the optimizer's tensors while the training thread goes on with the next window. burn-fusion
//! 0.21 can lose a tensor's handle when tensors cross threads like that (`Should have handle for
//! tensor`, burn issues #4347 and #4947, reworked after 0.21.0; `benches/gpu-2026-12-03/ddp-one-rank/`
//! measured it on CUDA). So the recorder reports each record it has taken in to a [`Taken`], and
//! the training thread waits on it right after each checkpoint ([`RecordsTaken`], the one hook
//! burn-train calls there): no tensor is read on another thread while training runs, nor while
//! the training thread drops the learner after the last window. The files themselves are written
//! while training goes on.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use burn::record::{FileRecorder, PrecisionSettings, Recorder, RecorderError};
use burn::tensor::backend::Backend;
use burn::train::EarlyStoppingStrategy;
use burn::train::metric::store::EventStoreClient;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The files of one window's checkpoint.
pub const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// How many records a run's recorder has taken in (their tensors read into host memory), for the
/// training thread to wait on.
#[derive(Debug, Default)]
pub struct Taken {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Taken {
    fn one_more(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Block until `records` records have been taken in. A checkpointer thread that died before
    /// taking its record in never reports it: after `patience` without one, say so and return
    /// (burn-train then reports the checkpointer's failure itself).
    pub fn wait_for(&self, records: usize, patience: Duration) {
        let count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (count, timeout) = self.changed.wait_timeout_while(count, patience, |c| *c < records).unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            tracing::warn!("went on training after waiting {patience:?} for checkpoint records: {} of {records} taken in", *count);
        }
    }
}

/// burn-train's hook right after each window's checkpoint, on the training thread (an early
/// stopping strategy that never stops): it waits until that checkpoint's records, and every earlier
/// one's of this run, are taken in. Each rank's clone counts its own windows.
#[derive(Debug, Clone)]
pub struct RecordsTaken {
    taken: Arc<Taken>,
    windows: usize,
    patience: Duration,
}

impl RecordsTaken {
    /// Wait on `taken`, at most `patience` each window.
    pub fn new(taken: Arc<Taken>, patience: Duration) -> Self {
        Self { taken, windows: 0, patience }
    }

    /// One more window's checkpoint was handed to the checkpointer threads: wait for its records.
    fn after_checkpoint(&mut self) {
        self.windows += 1;
        self.taken.wait_for(PARTS.len() * self.windows, self.patience);
    }
}

impl EarlyStoppingStrategy for RecordsTaken {
    fn should_stop(&mut self, _epoch: usize, _store: &EventStoreClient) -> bool {
        self.after_checkpoint();
        false
    }
}

/// burn's named-MessagePack format (`NamedMpkFileRecorder`'s), each file written atomically.
#[derive(Debug, Default, Clone)]
pub struct AtomicMpkRecorder<S: PrecisionSettings> {
    /// Told of each record taken in, when set.
    taken: Option<Arc<Taken>>,
    _settings: PhantomData<S>,
}

impl<S: PrecisionSettings> AtomicMpkRecorder<S> {
    /// A recorder.
    pub fn new() -> Self {
        Self { taken: None, _settings: PhantomData }
    }

    /// A recorder that tells `taken` of each record it has taken in.
    pub fn reporting_to(taken: Arc<Taken>) -> Self {
        Self { taken: Some(taken), _settings: PhantomData }
    }
}

fn unknown(path: &Path, e: impl std::fmt::Display) -> RecorderError {
    RecorderError::Unknown(format!("{}: {e}", path.display()))
}

impl<S: PrecisionSettings, B: Backend> Recorder<B> for AtomicMpkRecorder<S> {
    type Settings = S;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, file: Self::RecordArgs) -> Result<(), RecorderError> {
        // `Recorder::record` has turned the record into `item`: its tensors are read.
        if let Some(taken) = &self.taken {
            taken.one_more();
        }
        let path = file.with_extension("mpk");
        let tmp = file.with_extension("mpk.tmp");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| unknown(parent, e))?;
        }
        let write = || -> Result<(), RecorderError> {
            let f = std::fs::File::create(&tmp).map_err(|e| unknown(&tmp, e))?;
            let mut w = std::io::BufWriter::new(f);
            rmp_serde::encode::write_named(&mut w, &item).map_err(|e| unknown(&tmp, e))?;
            let f = w.into_inner().map_err(|e| unknown(&tmp, e.error()))?;
            f.sync_all().map_err(|e| unknown(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| unknown(&path, e))
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut Self::LoadArgs) -> Result<I, RecorderError> {
        let path = file.with_extension("mpk");
        let f = std::fs::File::open(&path).map_err(|e| RecorderError::FileNotFound(format!("{}: {e}", path.display())))?;
        rmp_serde::decode::from_read(std::io::BufReader::new(f)).map_err(|e| RecorderError::DeserializeError(format!("{}: {e}", path.display())))
    }
}

impl<S: PrecisionSettings, B: Backend> FileRecorder<B> for AtomicMpkRecorder<S> {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

/// Windows with at least one checkpoint file under `dir/checkpoint`, and whether each is whole.
fn windows(dir: &Path) -> std::collections::BTreeMap<usize, Vec<&'static str>> {
    let mut out: std::collections::BTreeMap<usize, Vec<&'static str>> = Default::default();
    for e in std::fs::read_dir(dir.join("checkpoint")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".mpk") else { continue };
        let Some((part, n)) = stem.rsplit_once('-') else { continue };
        if let (Some(part), Ok(n)) = (PARTS.iter().find(|p| **p == part), n.parse()) {
            out.entry(n).or_default().push(part);
        }
    }
    out
}

/// The latest window whose checkpoint is whole (all of [`PARTS`]).
pub fn latest(dir: &Path) -> Option<usize> {
    windows(dir).into_iter().filter(|(_, parts)| parts.len() == PARTS.len()).map(|(n, _)| n).max()
}

/// Remove every file of window `n`'s checkpoint.
fn remove_window(dir: &Path, n: usize) {
    for part in PARTS {
        let _ = std::fs::remove_file(dir.join("checkpoint").join(format!("{part}-{n}.mpk")));
    }
}

/// Remove what cannot be resumed from: partial checkpoints after the latest whole one, and
/// leftover `*.tmp` files. Returns the windows removed.
pub fn remove_partial(dir: &Path) -> Vec<usize> {
    let whole = latest(dir).unwrap_or(0);
    let partial: Vec<usize> = windows(dir).into_iter().filter(|(n, parts)| *n > whole && parts.len() < PARTS.len()).map(|(n, _)| n).collect();
    for &n in &partial {
        remove_window(dir, n);
    }
    for e in std::fs::read_dir(dir.join("checkpoint")).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    partial
}

/// Remove the checkpoints of windows `from` and later; how many windows had files.
pub fn remove_from(dir: &Path, from: usize) -> usize {
    let doomed: Vec<usize> = windows(dir).into_keys().filter(|&n| n >= from).collect();
    for &n in &doomed {
        remove_window(dir, n);
    }
    doomed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::create_dir_all(dir.join("checkpoint")).unwrap();
        std::fs::write(dir.join("checkpoint").join(name), b"x").unwrap();
    }

    #[test]
    fn only_whole_checkpoints_count_and_partial_ones_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert_eq!(latest(d), None);
        for p in PARTS {
            touch(d, &format!("{p}-1.mpk"));
            touch(d, &format!("{p}-2.mpk"));
        }
        touch(d, "model-3.mpk");
        touch(d, "optim-3.mpk.tmp");
        assert_eq!(latest(d), Some(2), "window 3 lacks its optimizer and scheduler");
        assert_eq!(remove_partial(d), vec![3]);
        assert!(!d.join("checkpoint/model-3.mpk").exists() && !d.join("checkpoint/optim-3.mpk.tmp").exists());
        assert_eq!(latest(d), Some(2));
        assert_eq!(remove_from(d, 2), 1);
        assert_eq!(latest(d), Some(1));
    }

    #[test]
    fn the_recorder_round_trips_and_leaves_no_temporary_file() {
        use burn::record::FullPrecisionSettings;
        type B = burn::backend::NdArray<f32>;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("checkpoint/model-1");
        let r = AtomicMpkRecorder::<FullPrecisionSettings>::new();
        Recorder::<B>::save_item(&r, vec![1.5f32, -2.0], file.clone()).unwrap();
        assert!(tmp.path().join("checkpoint/model-1.mpk").is_file());
        assert!(!tmp.path().join("checkpoint/model-1.mpk.tmp").exists());
        let back: Vec<f32> = Recorder::<B>::load_item(&r, &mut file.clone()).unwrap();
        assert_eq!(back, vec![1.5, -2.0]);
        // A truncated file is an error, not a panic.
        std::fs::write(tmp.path().join("checkpoint/model-1.mpk"), [0x92u8]).unwrap();
        assert!(Recorder::<B>::load_item::<Vec<f32>>(&r, &mut file.clone()).is_err());
    }

    #[test]
    fn a_waiter_returns_once_the_records_are_taken_in_or_patience_runs_out() {
        use burn::record::FullPrecisionSettings;
        type B = burn::backend::NdArray<f32>;
        let tmp = tempfile::tempdir().unwrap();
        let taken = Arc::new(Taken::default());
        let r = AtomicMpkRecorder::<FullPrecisionSettings>::reporting_to(taken.clone());
        taken.wait_for(0, Duration::ZERO);
        let saver = {
            let r = r.clone();
            let dir = tmp.path().to_path_buf();
            std::thread::spawn(move || {
                for part in PARTS {
                    Recorder::<B>::save_item(&r, vec![1.0f32], dir.join(format!("checkpoint/{part}-1"))).unwrap();
                }
            })
        };
        // Returns when the third record is in, long before its patience.
        let start = std::time::Instant::now();
        taken.wait_for(3, Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!(*taken.count.lock().unwrap(), 3);
        saver.join().unwrap();
        // A fourth never comes: it gives up after its patience.
        let start = std::time::Instant::now();
        taken.wait_for(4, Duration::from_millis(50));
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn after_each_checkpoint_the_training_thread_waits_for_its_records() {
        use burn::record::FullPrecisionSettings;
        use std::time::Instant;
        type B = burn::backend::NdArray<f32>;
        let tmp = tempfile::tempdir().unwrap();
        let taken = Arc::new(Taken::default());
        let recorder = AtomicMpkRecorder::<FullPrecisionSettings>::reporting_to(taken.clone());
        let mut hook = RecordsTaken::new(taken, Duration::from_secs(60));
        const DELAY: Duration = Duration::from_millis(300);
        // Window n's three records come in DELAY after the training thread reaches the hook.
        for window in 1..=2 {
            let start = Instant::now();
            let saver = {
                let (r, dir) = (recorder.clone(), tmp.path().to_path_buf());
                std::thread::spawn(move || {
                    std::thread::sleep(DELAY);
                    for part in PARTS {
                        Recorder::<B>::save_item(&r, vec![0u8], dir.join(format!("checkpoint/{part}-{window}"))).unwrap();
                    }
                })
            };
            hook.after_checkpoint();
            let waited = start.elapsed();
            assert!(waited >= DELAY, "window {window}: went on before its checkpoint's records were taken in");
            assert!(waited < Duration::from_secs(30), "window {window}: waited for more than its own records");
            saver.join().unwrap();
        }
    }
}
