//! `[data]`: the attack dataset, how its fields map onto pairs, and which of its records a run
//! trains on and which it holds out.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::DataError;
use super::attack::{FieldMap, Pair, read_pairs};
use super::split::{SplitPart, check_split, split_ids};
use crate::validate::{Invalid, ensure, not_blank};

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// JSON array or JSONL of attack records.
    pub path: PathBuf,
    /// How record fields map onto pairs.
    pub fields: FieldMap,
    /// The split file (`split.json`): which records are trained on and which held out.
    pub split: Option<PathBuf>,
    /// Key of this dataset in the split file.
    pub split_key: String,
    /// Use at most this many goals of the train split (0 = all).
    pub max_goals: usize,
    /// `true` (the default): evaluation answers the split's held-out records, and a config that
    /// evaluates must name `split`. `false`: there is no split; training and evaluation both use
    /// every record, and every report says the evaluation is not held out.
    pub heldout: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/data/flipattack.json"),
            fields: FieldMap::default(),
            split: None,
            split_key: "flipattack".into(),
            max_goals: 0,
            heldout: true,
        }
    }
}

impl DataConfig {
    /// Check the values (not the files: see [`DataConfig::check_files`]).
    pub fn validate(&self) -> Result<(), Invalid> {
        not_blank("data.fields.goal", &self.fields.goal)?;
        not_blank("data.fields.unsafe_messages", &self.fields.unsafe_messages)?;
        not_blank("data.split_key", &self.split_key)?;
        ensure(self.split.is_none() || self.heldout, "data.heldout", || {
            "is false, which means no split, but data.split names one: remove one of the two".into()
        })?;
        ensure(!self.path.as_os_str().is_empty(), "data.path", || {
            "must name the attack dataset".into()
        })
    }

    /// What evaluating needs: a split to hold goals out, or `heldout = false` said explicitly.
    pub fn check_heldout(&self) -> Result<(), Invalid> {
        ensure(self.split.is_some() || !self.heldout, "data.split", || {
            "is needed to evaluate on held-out goals: name a split file, or set data.heldout = false to train and evaluate on every record (reported as not held out)".into()
        })
    }

    /// Before any work: the dataset reads, and the split file (if any) names records of it
    /// only, with no record both trained on and held out.
    pub fn check_files(&self) -> Result<(), DataError> {
        let records = super::attack::read_records(&self.path)?.len();
        if let Some(split) = &self.split {
            check_split(split, &self.split_key, records)?;
        }
        read_pairs(&self.path, &self.fields)?;
        Ok(())
    }

    /// The dataset's pairs (filter applied), restricted to `part` of the split if there is one.
    pub fn pairs(&self, part: SplitPart) -> Result<Vec<Pair>, DataError> {
        let mut pairs = read_pairs(&self.path, &self.fields)?;
        if let Some(split) = &self.split {
            let ids = split_ids(split, &self.split_key, part)?;
            pairs.retain(|p| ids.contains(&p.record));
        }
        Ok(pairs)
    }
}
