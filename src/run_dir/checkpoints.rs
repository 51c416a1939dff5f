//! The train stage's checkpoints, `train/checkpoint/{model,optim,scheduler}-N.mpk`: burn-train
//! writes window `N`'s three records after that window (through the project's atomic recorder,
//! `train::checkpoint`), and resumes from the one this module picks.
//!
//! A window counts only when its three files are there and each decodes whole: a kill between
//! its files leaves a partial window, and disk trouble or a copy cut short can leave a truncated
//! file. Either is set aside — removed, with a one-line warning naming the file — and training
//! resumes from the previous whole window instead of stopping on burn's error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files of one window's checkpoint.
pub const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// The checkpoints of a run directory's training.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoints {
    root: PathBuf,
}

/// Why a window cannot be resumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// The window.
    pub window: usize,
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}; checkpoint {} set aside",
            self.file.display(),
            self.reason,
            self.window
        )
    }
}

impl Checkpoints {
    pub(super) fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// The directory burn-train works in (it keeps its checkpoints under `checkpoint/`).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    fn files(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    /// The file of `part` of window `n` (`model`, `optim`, `scheduler`), without its extension,
    /// as burn's recorders take it.
    pub fn record(&self, part: &str, n: usize) -> PathBuf {
        self.files().join(format!("{part}-{n}"))
    }

    /// Windows with at least one checkpoint file, and which parts each has.
    fn windows(&self) -> BTreeMap<usize, Vec<&'static str>> {
        let mut out: BTreeMap<usize, Vec<&'static str>> = BTreeMap::new();
        for e in std::fs::read_dir(self.files())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".mpk") else {
                continue;
            };
            let Some((part, n)) = stem.rsplit_once('-') else {
                continue;
            };
            if let (Some(part), Ok(n)) = (PARTS.iter().find(|p| **p == part), n.parse()) {
                out.entry(n).or_default().push(part);
            }
        }
        out
    }

    /// The latest window with all three files (not checked to decode: see
    /// [`Checkpoints::resumable`]).
    pub fn latest(&self) -> Option<usize> {
        self.windows()
            .into_iter()
            .filter(|(_, parts)| parts.len() == PARTS.len())
            .map(|(n, _)| n)
            .max()
    }

    /// Remove every file of window `n`.
    fn remove_window(&self, n: usize) {
        for part in PARTS {
            let _ = std::fs::remove_file(self.record(part, n).with_extension("mpk"));
        }
    }

    /// Check that each of window `n`'s files decodes whole (MessagePack, walked without keeping
    /// its values).
    fn check(&self, n: usize) -> Result<(), Unusable> {
        for part in PARTS {
            let file = self.record(part, n).with_extension("mpk");
            let unusable = |reason: String| Unusable {
                window: n,
                file: file.clone(),
                reason,
            };
            let f = std::fs::File::open(&file).map_err(|e| unusable(e.to_string()))?;
            let mut reader = std::io::BufReader::new(f);
            rmp_serde::from_read::<_, serde::de::IgnoredAny>(&mut reader)
                .map_err(|e| unusable(format!("does not decode whole ({e}), e.g. cut short")))?;
            let mut rest = [0u8; 1];
            if std::io::Read::read(&mut reader, &mut rest).map_err(|e| unusable(e.to_string()))? > 0
            {
                return Err(unusable("has bytes after its record".into()));
            }
        }
        Ok(())
    }

    /// The window to resume from: the latest whose three files are there and decode whole.
    /// Everything that cannot be resumed from is removed first — partial windows, leftover
    /// `*.tmp` files, and whole-looking windows with a damaged file after the one chosen — and
    /// each damaged window is returned, for a warning naming its file.
    pub fn resumable(&self) -> (Option<usize>, Vec<Unusable>) {
        for e in std::fs::read_dir(self.files())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut damaged = Vec::new();
        let windows = self.windows();
        for (&n, parts) in windows.iter().rev() {
            if parts.len() < PARTS.len() {
                self.remove_window(n);
                continue;
            }
            match self.check(n) {
                Ok(()) => return (Some(n), damaged),
                Err(u) => {
                    self.remove_window(n);
                    damaged.push(u);
                }
            }
        }
        (None, damaged)
    }

    /// Remove every checkpoint (a finished training whose exported model is all that is kept).
    pub fn remove_all(&self) -> Result<(), super::RunDirError> {
        super::remove_path(&self.files())
    }

    /// Remove the checkpoints of windows `from` and later; how many windows had files.
    pub fn remove_from(&self, from: usize) -> usize {
        let doomed: Vec<usize> = self.windows().into_keys().filter(|&n| n >= from).collect();
        for &n in &doomed {
            self.remove_window(n);
        }
        doomed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(c: &Checkpoints, part: &str, n: usize, bytes: &[u8]) {
        let path = c.record(part, n).with_extension("mpk");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn whole() -> Vec<u8> {
        rmp_serde::to_vec_named(&std::collections::BTreeMap::from([(
            "w",
            vec![1.5f32, 2.0, 3.0],
        )]))
        .unwrap()
    }

    #[test]
    fn partial_and_damaged_windows_are_set_aside_for_the_previous_whole_one() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Checkpoints::at(tmp.path().join("train"));
        assert_eq!(c.resumable(), (None, vec![]));
        for n in 1..=3 {
            for p in PARTS {
                write(&c, p, n, &whole());
            }
        }
        write(&c, "model", 4, &whole());
        write(&c, "optim", 4, b"x");
        std::fs::write(c.files().join("optim-4.mpk.tmp"), b"x").unwrap();
        assert_eq!(c.latest(), Some(3));
        // Window 3's model file cut short: window 2 it is.
        let w = whole();
        write(&c, "model", 3, &w[..w.len() - 2]);
        let (n, damaged) = c.resumable();
        assert_eq!(n, Some(2));
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].file, c.files().join("model-3.mpk"));
        let text = damaged[0].to_string();
        assert!(
            text.contains("model-3.mpk") && text.contains("set aside") && !text.contains("format"),
            "{text}"
        );
        assert_eq!(
            c.latest(),
            Some(2),
            "window 3 removed, window 4's partial files too"
        );
        assert!(
            !c.files().join("model-4.mpk").exists() && !c.files().join("optim-4.mpk.tmp").exists()
        );
        assert_eq!(c.remove_from(2), 1);
        assert_eq!(c.resumable(), (Some(1), vec![]));
    }
}
