//! The verdict cache of the HTTP judge. An evaluation folder backs it with `judge_cache.jsonl`,
//! one [`CachedVerdict`] a line (`EvalDir::open_judge_cache` in the run-directory module).
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

/// Where new verdicts go as they arrive (e.g. appended to a file); an error is a message.
pub type VerdictSink = Box<dyn FnMut(&CachedVerdict) -> Result<(), String> + Send>;

/// Verdicts by key, each new one also handed to a [`VerdictSink`] (or to nothing,
/// [`VerdictCache::in_memory`]).
#[derive(Default)]
pub struct VerdictCache {
    sink: Option<VerdictSink>,
    map: HashMap<String, Verdict>,
}

impl std::fmt::Debug for VerdictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictCache")
            .field("verdicts", &self.map.len())
            .field("backed", &self.sink.is_some())
            .finish()
    }
}

impl VerdictCache {
    /// A cache that writes nothing.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A cache holding `entries` (a later entry of a key wins), handing each new verdict to
    /// `sink`.
    pub fn backed(entries: Vec<CachedVerdict>, sink: VerdictSink) -> Self {
        let map = entries.into_iter().map(|e| (e.key, e.verdict)).collect();
        Self {
            sink: Some(sink),
            map,
        }
    }

    /// The verdict stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Verdict> {
        self.map.get(key)
    }

    /// Store `verdict` under `key` and hand it to the sink (its error, if any, is returned after
    /// the verdict is stored).
    pub fn insert(&mut self, key: String, verdict: Verdict) -> Result<(), String> {
        let sunk = match &mut self.sink {
            Some(sink) => sink(&CachedVerdict {
                key: key.clone(),
                verdict: verdict.clone(),
            }),
            None => Ok(()),
        };
        self.map.insert(key, verdict);
        sunk
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
}
