//! Typed files: each artifact of a run directory is one of these, so that it is read and written
//! one way wherever it is used. Writes go to a temporary file beside the target, are flushed to
//! disk and renamed into place: a reader, or a rerun after a kill, sees the old file or the new
//! one, never a part. Reads say which file is wrong and why.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RunDirError;

/// Write `bytes` to `path` through a temporary file beside it, flushed to disk and renamed into
/// place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    use std::io::Write;
    let io = |source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
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

/// Move the directory `staged` to `dest`, replacing what was there: a directory written whole
/// beside its destination appears at once.
pub fn replace_dir(staged: &Path, dest: &Path) -> Result<(), RunDirError> {
    remove_path(dest)?;
    std::fs::rename(staged, dest).map_err(|source| RunDirError::Io {
        path: dest.to_path_buf(),
        source,
    })
}

/// Remove a file or a directory tree, if it is there.
pub fn remove_path(path: &Path) -> Result<(), RunDirError> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    removed.map_err(|source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> RunDirError {
    RunDirError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A JSON file holding one `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFile<T> {
    path: PathBuf,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> JsonFile<T> {
    /// The file at `path`.
    pub fn at(path: PathBuf) -> Self {
        Self {
            path,
            _t: PhantomData,
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it exists.
    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// Read and parse it.
    pub fn read(&self) -> Result<T, RunDirError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| RunDirError::Io {
            path: self.path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| corrupt(&self.path, e))
    }

    /// Whether it exists and parses.
    pub fn reads_back(&self) -> bool {
        self.read().is_ok()
    }

    /// Write `value` (pretty, with a final newline), atomically.
    pub fn write(&self, value: &T) -> Result<(), RunDirError> {
        let mut text = serde_json::to_string_pretty(value).expect("artifacts serialise");
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())
    }
}

/// A JSON-lines file: one `T` a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonLines<T> {
    path: PathBuf,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> JsonLines<T> {
    /// The file at `path`.
    pub fn at(path: PathBuf) -> Self {
        Self {
            path,
            _t: PhantomData,
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every line, parsed (a missing file is an error).
    pub fn read(&self) -> Result<Vec<T>, RunDirError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| RunDirError::Io {
            path: self.path.clone(),
            source,
        })?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| corrupt(&self.path, format!("line {}: {e}", i + 1)))
            })
            .collect()
    }

    /// Whether it exists and every line parses.
    pub fn reads_back(&self) -> bool {
        self.read().is_ok()
    }

    /// The lines that parse, and how many did not (a missing file is empty): for files
    /// appended to as work goes, whose last line a kill may have cut.
    pub fn read_valid(&self) -> Result<(Vec<T>, usize), RunDirError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(source) => {
                return Err(RunDirError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let mut bad = 0;
        let items = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| {
                let item = serde_json::from_str(l).ok();
                bad += usize::from(item.is_none());
                item
            })
            .collect();
        Ok((items, bad))
    }

    /// Write `items`, one a line, atomically (replacing the file).
    pub fn write(&self, items: &[T]) -> Result<(), RunDirError> {
        write_atomic(&self.path, lines(items).as_bytes())
    }

    /// Append `items` to the file (created, with its folder, if missing). Not atomic: for files
    /// rewritten whole at their stage's start and end (`samples.jsonl`), or read with
    /// [`JsonLines::read_valid`] (`judge_cache.jsonl`).
    pub fn append(&self, items: &[T]) -> Result<(), RunDirError> {
        use std::io::Write;
        let parent = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        parent
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
            })
            .and_then(|mut f| f.write_all(lines(items).as_bytes()))
            .map_err(|source| RunDirError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn lines<T: Serialize>(items: &[T]) -> String {
    let mut out = String::new();
    for item in items {
        out.push_str(&serde_json::to_string(item).expect("artifacts serialise"));
        out.push('\n');
    }
    out
}

/// A CSV file of `T` rows with a header of their field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvFile<T> {
    path: PathBuf,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize> CsvFile<T> {
    /// The file at `path`.
    pub fn at(path: PathBuf) -> Self {
        Self {
            path,
            _t: PhantomData,
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `rows`, atomically.
    pub fn write(&self, rows: impl IntoIterator<Item = T>) -> Result<(), RunDirError> {
        write_csv(&self.path, rows)
    }

    /// Whether it exists and parses as CSV with a header.
    pub fn reads_back(&self) -> bool {
        csv::Reader::from_path(&self.path).is_ok_and(|mut r| {
            r.headers().is_ok_and(|h| !h.is_empty()) && r.records().all(|rec| rec.is_ok())
        })
    }
}

/// Write `rows` as a CSV file with a header of their field names (through [`write_atomic`]).
pub fn write_csv<T: Serialize>(
    path: &Path,
    rows: impl IntoIterator<Item = T>,
) -> Result<(), RunDirError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row)
            .map_err(|e| corrupt(path, format!("CSV: {e}")))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| corrupt(path, format!("CSV: {}", e.error())))?;
    write_atomic(path, &bytes)
}

/// A binary file whose contents another module encodes: a PNG, a safetensors file or text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFile {
    path: PathBuf,
    kind: BlobKind,
}

/// What a [`BlobFile`] holds, for checking that it reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A PNG image.
    Png,
    /// A safetensors file.
    Safetensors,
    /// UTF-8 text.
    Text,
}

impl BlobFile {
    /// The file at `path`.
    pub fn at(path: PathBuf, kind: BlobKind) -> Self {
        Self { path, kind }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it exists.
    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// Write `bytes`, atomically.
    pub fn write(&self, bytes: &[u8]) -> Result<(), RunDirError> {
        write_atomic(&self.path, bytes)
    }

    /// Its bytes.
    pub fn read(&self) -> Result<Vec<u8>, RunDirError> {
        std::fs::read(&self.path).map_err(|source| RunDirError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Read it whole and check that it is what it says: a PNG decodes its header and image
    /// data, a safetensors file's header matches its size, text is UTF-8.
    pub fn check(&self) -> Result<(), RunDirError> {
        match self.kind {
            BlobKind::Png => {
                let file = std::fs::File::open(&self.path).map_err(|source| RunDirError::Io {
                    path: self.path.clone(),
                    source,
                })?;
                let mut reader = png::Decoder::new(std::io::BufReader::new(file))
                    .read_info()
                    .map_err(|e| corrupt(&self.path, e))?;
                let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
                reader
                    .next_frame(&mut buf)
                    .map(drop)
                    .map_err(|e| corrupt(&self.path, e))
            }
            BlobKind::Safetensors => check_safetensors(&self.path),
            BlobKind::Text => String::from_utf8(self.read()?)
                .map(drop)
                .map_err(|e| corrupt(&self.path, e)),
        }
    }

    /// Whether [`BlobFile::check`] passes.
    pub fn reads_back(&self) -> bool {
        self.check().is_ok()
    }
}

/// A safetensors file whose header parses and whose tensors fit its size (a truncated file
/// fails), read through a memory map.
pub fn check_safetensors(path: &Path) -> Result<(), RunDirError> {
    let file = std::fs::File::open(path).map_err(|source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Safety: the map is read here and dropped before return; a concurrent truncation of a run
    // directory's file by another process is excluded by the directory's lock.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    safetensors::SafeTensors::deserialize(&map)
        .map(drop)
        .map_err(|e| corrupt(path, format!("not a whole safetensors file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_files_round_trip_and_damaged_ones_do_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let json: JsonFile<Vec<u32>> = JsonFile::at(dir.path().join("a/b.json"));
        assert!(!json.reads_back());
        json.write(&vec![1, 2]).unwrap();
        assert_eq!(json.read().unwrap(), vec![1, 2]);
        std::fs::write(json.path(), "[1,").unwrap();
        assert!(json.read().unwrap_err().to_string().contains("b.json"));

        let jl: JsonLines<u32> = JsonLines::at(dir.path().join("x.jsonl"));
        jl.write(&[1]).unwrap();
        jl.append(&[2, 3]).unwrap();
        assert_eq!(jl.read().unwrap(), vec![1, 2, 3]);
        std::fs::write(jl.path(), "1\nx\n").unwrap();
        assert!(jl.read().unwrap_err().to_string().contains("line 2"));

        let st = BlobFile::at(dir.path().join("t.safetensors"), BlobKind::Safetensors);
        let data = [0u8; 8];
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
        st.write(&safetensors::serialize([("x", view)], None).unwrap())
            .unwrap();
        st.check().unwrap();
        let bytes = st.read().unwrap();
        std::fs::write(st.path(), &bytes[..bytes.len() - 1]).unwrap();
        assert!(
            st.check()
                .unwrap_err()
                .to_string()
                .contains("not a whole safetensors file")
        );
        let png = BlobFile::at(dir.path().join("p.png"), BlobKind::Png);
        png.write(b"\x89PNG\r\n\x1a\n").unwrap();
        assert!(!png.reads_back());
    }
}
