//! Checks of config values that parse but cannot work, and the error that names the key.
//!
//! Each stage's config table validates itself with these (`collect::CollectConfig::validate`,
//! `train::TrainConfig::validate`, …); the root config wraps the error with the file it came
//! from. Every numeric setting is checked for finiteness and range: a NaN or infinity never
//! reaches a stage (`temperature = nan` would sample one token forever, `grad_clip = nan` would
//! silently turn clipping off).

/// A value that cannot work: the dotted key and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct Invalid {
    /// The dotted key, e.g. `train.lr`.
    pub key: String,
    /// What is wrong, with the value found.
    pub reason: String,
}

impl Invalid {
    /// `key` is wrong because `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// `Ok` if `ok`, else [`Invalid`] for `key`.
pub fn ensure(ok: bool, key: &str, reason: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(key, reason()))
    }
}

/// A finite number (no NaN, no infinity).
pub fn finite(key: &str, v: f64) -> Result<(), Invalid> {
    ensure(v.is_finite(), key, || {
        format!("must be a finite number, got {v}")
    })
}

/// A finite number greater than zero.
pub fn positive(key: &str, v: f64) -> Result<(), Invalid> {
    ensure(v.is_finite() && v > 0.0, key, || {
        format!("must be a finite number above 0, got {v}")
    })
}

/// A finite number of at least zero.
pub fn non_negative(key: &str, v: f64) -> Result<(), Invalid> {
    ensure(v.is_finite() && v >= 0.0, key, || {
        format!("must be a finite number of at least 0, got {v}")
    })
}

/// A finite number in `[lo, hi]`.
pub fn within(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), Invalid> {
    ensure(v.is_finite() && (lo..=hi).contains(&v), key, || {
        format!("must be in [{lo}, {hi}], got {v}")
    })
}

/// A count of at least `min`.
pub fn at_least(key: &str, v: usize, min: usize) -> Result<(), Invalid> {
    ensure(v >= min, key, || format!("must be at least {min}, got {v}"))
}

/// A text that is not empty or blank.
pub fn not_blank(key: &str, v: &str) -> Result<(), Invalid> {
    ensure(!v.trim().is_empty(), key, || "must not be empty".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_and_out_of_range_values_name_the_key() {
        assert!(finite("a", 1.0).is_ok());
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = finite("train.grad_clip", v).unwrap_err();
            assert_eq!(e.key, "train.grad_clip");
            assert!(
                e.to_string()
                    .starts_with("train.grad_clip: must be a finite number"),
                "{e}"
            );
            assert!(
                positive("x", v).is_err()
                    && non_negative("x", v).is_err()
                    && within("x", v, 0.0, 1.0).is_err()
            );
        }
        assert!(positive("x", 0.0).is_err());
        assert!(non_negative("x", 0.0).is_ok());
        assert!(
            non_negative("train.weight_decay", -5.0)
                .unwrap_err()
                .to_string()
                .contains("got -5")
        );
        assert!(within("x", 1.0, 0.0, 1.0).is_ok() && within("x", 1.5, 0.0, 1.0).is_err());
        assert!(at_least("x", 0, 1).is_err() && at_least("x", 1, 1).is_ok());
        assert!(not_blank("x", " ").is_err() && not_blank("x", "a").is_ok());
    }
}
