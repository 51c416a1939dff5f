//! The verdict cache of the HTTP judge: `judge_cache.jsonl` in an evaluation folder
//! ([`crate::run_dir::EvalDir::judge_cache`]), one [`CachedVerdict`] a line.
//!
//! A verdict is keyed by the judge (endpoint and model), the rubric, the prompt and the answer
//! ([`cache_key`]: 64-bit FNV-1a of their JSON array, the same on every run and machine). The
//! file is read before judging and appended to as verdicts arrive, so a killed evaluation keeps
//! what it was told and a rerun asks only for what is missing. Settled replies are kept — verdicts,
//! and replies outside the rubric after every retry (reported as unparsed again, never guessed);
//! a failed request is asked again next time. A line broken by a kill
//! mid-write is dropped when the cache is opened.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Rubric, Verdict};
use crate::run_dir::RunDirError;
use crate::run_dir::files::JsonLines;

/// One line of `judge_cache.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedVerdict {
    /// [`cache_key`] of the judged pair.
    pub key: String,
    /// What the judge said.
    pub verdict: Verdict,
}

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cache key of `answer` to `prompt` judged by `judge` (its endpoint and model) with
/// `rubric`: 16 hex digits of [`fnv1a64`] over the JSON array of the four (JSON, so that no two
/// different tuples serialise alike).
pub fn cache_key(judge: &str, rubric: Rubric, prompt: &str, answer: &str) -> String {
    let tuple =
        serde_json::to_string(&(judge, rubric.name(), prompt, answer)).expect("strings serialise");
    format!("{:016x}", fnv1a64(tuple.as_bytes()))
}

/// Verdicts by key, backed by a JSON-lines file (or by nothing, [`VerdictCache::in_memory`]).
#[derive(Debug, Default)]
pub struct VerdictCache {
    file: Option<JsonLines<CachedVerdict>>,
    map: HashMap<String, Verdict>,
}

impl VerdictCache {
    /// A cache that writes nothing.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The cache in `file`: its verdicts loaded (a missing file is empty). Lines that do not
    /// parse, such as one cut by a kill, are dropped and the file rewritten without them.
    pub fn open(file: JsonLines<CachedVerdict>) -> Result<Self, RunDirError> {
        let (entries, bad) = file.read_valid()?;
        if bad > 0 {
            tracing::warn!(
                "{}: dropped {bad} unreadable line(s)",
                file.path().display()
            );
            file.write(&entries)?;
        }
        let map = entries.into_iter().map(|e| (e.key, e.verdict)).collect();
        Ok(Self {
            file: Some(file),
            map,
        })
    }

    /// The verdict stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Verdict> {
        self.map.get(key)
    }

    /// Store `verdict` under `key`, appending it to the file.
    pub fn insert(&mut self, key: String, verdict: Verdict) -> Result<(), RunDirError> {
        if let Some(file) = &self.file {
            file.append(&[CachedVerdict {
                key: key.clone(),
                verdict: verdict.clone(),
            }])?;
        }
        self.map.insert(key, verdict);
        Ok(())
    }

    /// Verdicts held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn keys_are_stable_and_tell_every_field_apart() {
        let k = cache_key("http://h/v1 m", Rubric::Refusal, "p", "a");
        assert_eq!(k, cache_key("http://h/v1 m", Rubric::Refusal, "p", "a"));
        assert_eq!(k.len(), 16);
        for other in [
            cache_key("http://h/v1 n", Rubric::Refusal, "p", "a"),
            cache_key("http://h/v1 m", Rubric::Harm, "p", "a"),
            cache_key("http://h/v1 m", Rubric::Refusal, "pa", ""),
            cache_key("http://h/v1 m", Rubric::Refusal, "p", "b"),
        ] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn the_file_survives_a_cut_line_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let file = JsonLines::at(dir.path().join("judge_cache.jsonl"));
        let mut c = VerdictCache::open(file.clone()).unwrap();
        assert!(c.is_empty());
        c.insert("a".into(), Verdict::Refusal).unwrap();
        c.insert("b".into(), Verdict::Harm(4)).unwrap();
        let mut text = std::fs::read_to_string(file.path()).unwrap();
        text.push_str("{\"key\":\"c\",\"verd");
        std::fs::write(file.path(), text).unwrap();
        let c = VerdictCache::open(file.clone()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b"), Some(&Verdict::Harm(4)));
        assert_eq!(file.read().unwrap().len(), 2, "the cut line is gone");
    }
}
