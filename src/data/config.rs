//! `[data]`: the attack datasets (families), how their fields map onto pairs, which of their
//! records a run trains on and which it holds out, and which families it trains on.
//!
//! `[data]` itself names the first family (`name`, `path`, `fields`, `split_key`); each
//! `[[data.attacks]]` table adds one more. Evaluation answers every family's held-out split;
//! collect, analysis and training take the families `train_on` names (the first one if it is
//! empty), their goals interleaved. A record is numbered by its index in its file plus the records
//! of the families before it, so that pairs of two families never share a number.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::DataError;
use super::attack::{FieldMap, Pair, read_pairs};
use super::split::{SplitPart, check_split, split_ids};
use crate::validate::{Invalid, ensure, not_blank};

/// One more attack family (`[[data.attacks]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackFamily {
    /// Its name in reports and in `data.train_on`.
    pub name: String,
    /// JSON array or JSONL of its records.
    pub path: PathBuf,
    /// How its fields map onto pairs, and its success rule (the filter).
    #[serde(default)]
    pub fields: FieldMap,
    /// Its key in `data.split` (empty: its name).
    #[serde(default)]
    pub split_key: String,
}

/// An attack family as a run reads it: `[data]`'s own or one of `[[data.attacks]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Its name.
    pub name: String,
    /// Its records.
    pub path: PathBuf,
    /// Its field map and success rule.
    pub fields: FieldMap,
    /// Its key in the split file.
    pub split_key: String,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The name of `[data]`'s own family (empty: `split_key`).
    pub name: String,
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
    /// More attack families, evaluated beside the first (and trained on where `train_on` names
    /// them).
    pub attacks: Vec<AttackFamily>,
    /// The families collect, analysis and training take, by name (empty: the first); one name
    /// may stand alone (`train_on = "johnny"`, as a sweep axis gives it).
    #[serde(deserialize_with = "one_or_many")]
    pub train_on: Vec<String>,
}

/// A list of names, or one name alone.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            path: PathBuf::from("models/data/flipattack.json"),
            fields: FieldMap::default(),
            split: None,
            split_key: "flipattack".into(),
            max_goals: 0,
            heldout: true,
            attacks: Vec::new(),
            train_on: Vec::new(),
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
        })?;
        let mut names = std::collections::HashSet::new();
        names.insert(self.first_name().to_string());
        for (i, a) in self.attacks.iter().enumerate() {
            let key = |k: &str| format!("data.attacks[{i}].{k}");
            not_blank(&key("name"), &a.name)?;
            not_blank(&key("fields.goal"), &a.fields.goal)?;
            not_blank(&key("fields.unsafe_messages"), &a.fields.unsafe_messages)?;
            ensure(!a.path.as_os_str().is_empty(), &key("path"), || {
                "must name the family's dataset".into()
            })?;
            ensure(names.insert(a.name.clone()), &key("name"), || {
                format!("{:?} names two families", a.name)
            })?;
        }
        for (i, n) in self.train_on.iter().enumerate() {
            ensure(names.contains(n), &format!("data.train_on[{i}]"), || {
                let mut known: Vec<&String> = names.iter().collect();
                known.sort();
                format!("{n:?} is no family of this config (it has {known:?})")
            })?;
        }
        Ok(())
    }

    fn first_name(&self) -> &str {
        if self.name.is_empty() {
            &self.split_key
        } else {
            &self.name
        }
    }

    /// Every family, `[data]`'s own first.
    pub fn families(&self) -> Vec<Family> {
        let first = Family {
            name: self.first_name().to_string(),
            path: self.path.clone(),
            fields: self.fields.clone(),
            split_key: self.split_key.clone(),
        };
        std::iter::once(first)
            .chain(self.attacks.iter().map(|a| Family {
                name: a.name.clone(),
                path: a.path.clone(),
                fields: a.fields.clone(),
                split_key: if a.split_key.is_empty() {
                    a.name.clone()
                } else {
                    a.split_key.clone()
                },
            }))
            .collect()
    }

    /// Whether the run trains on family `name`.
    pub fn trains_on(&self, name: &str) -> bool {
        if self.train_on.is_empty() {
            name == self.first_name()
        } else {
            self.train_on.iter().any(|n| n == name)
        }
    }

    /// The names of the families trained on, in config order.
    pub fn trained_names(&self) -> Vec<String> {
        self.families()
            .into_iter()
            .filter(|f| self.trains_on(&f.name))
            .map(|f| f.name)
            .collect()
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
        for f in self.families() {
            let records = super::attack::read_records(&f.path)?.len();
            if let Some(split) = &self.split {
                check_split(split, &f.split_key, records)?;
            }
            read_pairs(&f.path, &f.fields)?;
        }
        Ok(())
    }

    /// Each family with the number its records start at (the records of the families before it).
    pub fn numbered_families(&self) -> Result<Vec<(Family, usize)>, DataError> {
        let mut offset = 0;
        let mut out = Vec::new();
        for f in self.families() {
            let records = match out.is_empty() && self.attacks.is_empty() {
                true => 0,
                false => super::attack::read_records(&f.path)?.len(),
            };
            out.push((f, offset));
            offset += records;
        }
        Ok(out)
    }

    /// The pairs of one family under `fields` (its own, or another filter), restricted to `part`
    /// of the split if there is one, numbered from `offset`.
    pub fn family_pairs(
        &self,
        family: &Family,
        fields: &FieldMap,
        offset: usize,
        part: SplitPart,
    ) -> Result<Vec<Pair>, DataError> {
        let mut pairs = read_pairs(&family.path, fields)?;
        if let Some(split) = &self.split {
            let ids = split_ids(split, &family.split_key, part)?;
            pairs.retain(|p| ids.contains(&p.record));
        }
        for p in &mut pairs {
            p.record += offset;
        }
        Ok(pairs)
    }

    /// The pairs of the families trained on (filter applied), restricted to `part` of the split
    /// if there is one; with several families, their goals interleaved (one of each in turn).
    pub fn pairs(&self, part: SplitPart) -> Result<Vec<Pair>, DataError> {
        let mut lists = Vec::new();
        for (f, offset) in self.numbered_families()? {
            if self.trains_on(&f.name) {
                lists.push(self.family_pairs(&f, &f.fields, offset, part)?.into_iter());
            }
        }
        let mut pairs = Vec::new();
        loop {
            let before = pairs.len();
            pairs.extend(lists.iter_mut().filter_map(Iterator::next));
            if pairs.len() == before {
                return Ok(pairs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// The repository's three families as `configs/rasa-organism.toml` names them.
    fn three(train_on: &[&str]) -> DataConfig {
        let family = |name: &str, field: &str| AttackFamily {
            name: name.into(),
            path: repo(&format!("models/data/{name}.json")),
            fields: FieldMap {
                goal: "prompt".into(),
                filter_field: field.into(),
                filter_at_least: Some(1.0),
                ..FieldMap::default()
            },
            split_key: String::new(),
        };
        DataConfig {
            name: "flipattack".into(),
            path: repo("models/data/flipattack.json"),
            split: Some(repo("models/data/split.json")),
            attacks: vec![
                family("johnny", "judge_result.score"),
                family("deepinception", "inception_attack_score"),
            ],
            train_on: train_on.iter().map(|s| s.to_string()).collect(),
            ..DataConfig::default()
        }
    }

    #[test]
    fn families_are_numbered_apart_and_interleaved() {
        let data = three(&["johnny", "deepinception"]);
        data.validate().unwrap();
        data.check_files().unwrap();
        let offsets: Vec<(String, usize)> = data
            .numbered_families()
            .unwrap()
            .into_iter()
            .map(|(f, o)| (f.name, o))
            .collect();
        // 500 FlipAttack records, then 258 persuasion ones (models/README.md).
        assert_eq!(
            offsets,
            [
                ("flipattack".into(), 0),
                ("johnny".into(), 500),
                ("deepinception".into(), 758)
            ]
        );
        let held = data.pairs(SplitPart::Heldout).unwrap();
        // Every kept record of both families' held-out lists (50 each; all scored above 0).
        assert_eq!(held.len(), 100);
        assert!((500..758).contains(&held[0].record));
        assert!(held[1].record >= 758, "one of each in turn");
        assert_eq!(data.trained_names(), ["johnny", "deepinception"]);
        let first = three(&[]);
        assert_eq!(first.trained_names(), ["flipattack"]);
        assert_eq!(first.pairs(SplitPart::Heldout).unwrap().len(), 100);
    }

    #[test]
    fn a_score_threshold_filters_and_unknown_families_are_named() {
        let mut data = three(&["johnny"]);
        data.attacks[0].fields.filter_at_least = Some(2.0);
        let kept = data.pairs(SplitPart::Train).unwrap().len();
        assert!(kept > 0 && kept < 208, "scores of 1 left out: {kept}");
        let bad = three(&["persuasion"]);
        let err = bad.validate().unwrap_err();
        assert_eq!(err.key, "data.train_on[0]");
        let toml = "train_on = \"johnny\"";
        let one: DataConfig = toml::from_str(toml).unwrap();
        assert_eq!(one.train_on, ["johnny"]);
        let mut twice = three(&[]);
        twice.attacks[1].name = "johnny".into();
        assert_eq!(twice.validate().unwrap_err().key, "data.attacks[1].name");
    }
}
