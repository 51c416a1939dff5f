//! How training writes its checkpoints (burn-train writes window `n`'s model, optimizer and
//! scheduler records after the window; the run directory's [`Checkpoints`] names them and picks
//! the one to resume from). Every file is written through [`AtomicMpkRecorder`]: to `*.mpk.tmp`,
//! synced, then renamed, so a `.mpk` file is never left half-written by a kill (burn's own
//! recorder writes in place).
//!
//! burn-train hands each window's records to three checkpointer threads, which read the model's
//! and the optimizer's tensors while the training thread goes on with the next window. burn-fusion
//! 0.21 can lose a tensor's handle when tensors cross threads like that (`Should have handle for
//! tensor`, burn issues #4347 and #4947, reworked after 0.21.0;
//! `benches/results/ddp-one-rank.jsonl` measured it on CUDA). So the recorder reports each record it has taken in to a [`Taken`], and
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

#[cfg(doc)]
use crate::run_dir::Checkpoints;
use crate::run_dir::checkpoints::PARTS;

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
        let (count, timeout) = self
            .changed
            .wait_timeout_while(count, patience, |c| *c < records)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            tracing::warn!(
                "went on training after waiting {patience:?} for checkpoint records: {} of {records} taken in",
                *count
            );
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
        Self {
            taken,
            windows: 0,
            patience,
        }
    }

    /// One more window's checkpoint was handed to the checkpointer threads: wait for its records.
    fn after_checkpoint(&mut self) {
        self.windows += 1;
        self.taken
            .wait_for(PARTS.len() * self.windows, self.patience);
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
        Self {
            taken: None,
            _settings: PhantomData,
        }
    }

    /// A recorder that tells `taken` of each record it has taken in.
    pub fn reporting_to(taken: Arc<Taken>) -> Self {
        Self {
            taken: Some(taken),
            _settings: PhantomData,
        }
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

    fn save_item<I: Serialize>(
        &self,
        item: I,
        file: Self::RecordArgs,
    ) -> Result<(), RecorderError> {
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

    fn load_item<I: DeserializeOwned>(
        &self,
        file: &mut Self::LoadArgs,
    ) -> Result<I, RecorderError> {
        let path = file.with_extension("mpk");
        let f = std::fs::File::open(&path)
            .map_err(|e| RecorderError::FileNotFound(format!("{}: {e}", path.display())))?;
        rmp_serde::decode::from_read(std::io::BufReader::new(f))
            .map_err(|e| RecorderError::DeserializeError(format!("{}: {e}", path.display())))
    }
}

impl<S: PrecisionSettings, B: Backend> FileRecorder<B> for AtomicMpkRecorder<S> {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    Recorder::<B>::save_item(
                        &r,
                        vec![1.0f32],
                        dir.join(format!("checkpoint/{part}-1")),
                    )
                    .unwrap();
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
                        Recorder::<B>::save_item(
                            &r,
                            vec![0u8],
                            dir.join(format!("checkpoint/{part}-{window}")),
                        )
                        .unwrap();
                    }
                })
            };
            hook.after_checkpoint();
            let waited = start.elapsed();
            assert!(
                waited >= DELAY,
                "window {window}: went on before its checkpoint's records were taken in"
            );
            assert!(
                waited < Duration::from_secs(30),
                "window {window}: waited for more than its own records"
            );
            saver.join().unwrap();
        }
    }
}
