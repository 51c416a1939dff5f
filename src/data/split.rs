//! Split files (`split.json`): which records of a dataset a run trains on and which it holds out.
//!
//! The organism's file has one object per dataset, each with lists of record indices:
//! `{"flipattack": {"train_ids": [..], "heldout_ids": [..]}, "alpaca_eval": {"train_index": [..],
//! "heldout_index": [..]}}`.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use super::DataError;

/// Which part of a split file to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPart {
    /// Goals the pipeline trains on (`train_ids`).
    Train,
    /// Goals it is evaluated on (`heldout_ids`).
    Heldout,
}

impl SplitPart {
    /// The list's name in an attack dataset's entry.
    pub fn field(self) -> &'static str {
        match self {
            SplitPart::Train => "train_ids",
            SplitPart::Heldout => "heldout_ids",
        }
    }
}

/// The record indices listed under `key.field` of a split file.
pub fn split_list(path: &Path, key: &str, field: &str) -> Result<HashSet<usize>, DataError> {
    Ok(split_order(path, key, field)?.into_iter().collect())
}

/// The record indices listed under `key.field` of a split file, in the order listed.
pub fn split_order(path: &Path, key: &str, field: &str) -> Result<Vec<usize>, DataError> {
    let err = |reason: String| DataError::Field {
        path: path.to_path_buf(),
        record: None,
        field: format!("{key}.{field}"),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let list = v
        .get(key)
        .and_then(|s| s.get(field))
        .and_then(Value::as_array)
        .ok_or_else(|| err("missing or not a list".into()))?;
    list.iter()
        .map(|x| {
            x.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| err(format!("{x} is not a record index")))
        })
        .collect()
}

/// Check that the lists `key.{fields}` of a split file name records of a file of `records`
/// records only, and that no record is in two of them (a goal both trained on and held out would
/// make the held-out evaluation a measure of memory).
pub fn check_lists(
    path: &Path,
    key: &str,
    fields: &[&str],
    records: usize,
) -> Result<(), DataError> {
    let mut seen: std::collections::HashMap<usize, &str> = Default::default();
    for &field in fields {
        let mut ids: Vec<usize> = split_list(path, key, field)?.into_iter().collect();
        ids.sort_unstable();
        let err = |reason: String| DataError::Field {
            path: path.to_path_buf(),
            record: None,
            field: format!("{key}.{field}"),
            reason,
        };
        if let Some(&beyond) = ids.iter().find(|&&i| i >= records) {
            return Err(err(format!(
                "names record {beyond}, but the dataset has {records} records (0 to {})",
                records.saturating_sub(1)
            )));
        }
        for i in ids {
            if let Some(other) = seen.insert(i, field) {
                return Err(err(format!(
                    "record {i} is also in {key}.{other}: a record cannot be both trained on and held out"
                )));
            }
        }
    }
    Ok(())
}

/// [`check_lists`] on an attack dataset's `train_ids` and `heldout_ids`.
pub fn check_split(path: &Path, key: &str, records: usize) -> Result<(), DataError> {
    check_lists(
        path,
        key,
        &[SplitPart::Train.field(), SplitPart::Heldout.field()],
        records,
    )
}

/// Record ids of one part of an attack dataset's split (`{key: {train_ids, heldout_ids}}`).
pub fn split_ids(path: &Path, key: &str, part: SplitPart) -> Result<HashSet<usize>, DataError> {
    split_list(path, key, part.field())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("split.json");
        std::fs::write(
            &path,
            r#"{"d": {"train_ids": [0, 2], "heldout_ids": [1], "bad": [1, "x"]}}"#,
        )
        .unwrap();
        assert_eq!(
            split_ids(&path, "d", SplitPart::Train).unwrap(),
            HashSet::from([0, 2])
        );
        assert_eq!(
            split_ids(&path, "d", SplitPart::Heldout).unwrap(),
            HashSet::from([1])
        );
        let err = split_list(&path, "d", "bad").unwrap_err().to_string();
        assert!(err.contains("d.bad") && err.contains("\"x\""), "{err}");
        let err = split_list(&path, "e", "train_ids").unwrap_err().to_string();
        assert!(err.contains("e.train_ids: missing"), "{err}");
    }

    #[test]
    fn overlapping_lists_and_records_beyond_the_dataset_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("split.json");
        std::fs::write(&path, r#"{"d": {"train_ids": [0, 2], "heldout_ids": [1]}, "o": {"train_ids": [0, 1], "heldout_ids": [1]}}"#).unwrap();
        check_split(&path, "d", 3).unwrap();
        let err = check_split(&path, "d", 2).unwrap_err().to_string();
        assert!(
            err.contains("d.train_ids: names record 2, but the dataset has 2 records"),
            "{err}"
        );
        let err = check_split(&path, "o", 3).unwrap_err().to_string();
        assert!(
            err.contains("o.heldout_ids: record 1 is also in o.train_ids"),
            "{err}"
        );
    }
}
