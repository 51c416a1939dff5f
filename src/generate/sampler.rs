//! Choosing the next token: greedy, or seeded temperature + nucleus (top-p) sampling with the
//! semantics of transformers' `TemperatureLogitsWarper` and `TopPLogitsWarper`.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Sampling {
    /// Always the most likely token (ties: the lowest id).
    Greedy,
    /// Sample from the tempered distribution restricted to the top-p nucleus.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// RNG seed (see [`crate::seeds`]): the same seed, prompts and model give the same tokens.
        seed: u64,
    },
}

impl Sampling {
    /// Check the values of a sampling setting found at `key` (e.g. `collect.sampling`):
    /// temperature finite and above 0, top-p in (0, 1].
    pub fn validate(&self, key: &str) -> Result<(), crate::validate::Invalid> {
        if let Sampling::Sample {
            temperature, top_p, ..
        } = *self
        {
            crate::validate::positive(&format!("{key}.temperature"), temperature)?;
            crate::validate::ensure(
                top_p.is_finite() && top_p > 0.0 && top_p <= 1.0,
                &format!("{key}.top_p"),
                || format!("must be in (0, 1], got {top_p}"),
            )?;
        }
        Ok(())
    }
}

/// Stateful token chooser (owns the RNG of a sampling run).
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for `sampling`.
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling,
            rng: crate::seeds::rng(seed, crate::seeds::Stream::Sampling),
        }
    }

    /// Whether this is greedy decoding (the engine then takes the argmax on the device).
    pub fn is_greedy(&self) -> bool {
        matches!(self.sampling, Sampling::Greedy)
    }

    /// Pick a token from one row of logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let (temperature, top_p) = match self.sampling {
            Sampling::Greedy => return argmax(logits),
            Sampling::Sample {
                temperature, top_p, ..
            } => (temperature, top_p),
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        // Nucleus: the most likely tokens whose mass reaches top_p (at least one).
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut mass = 0.0;
        let mut keep = 0;
        for p in &probs {
            keep += 1;
            mass += p.1;
            if mass >= top_p {
                break;
            }
        }
        probs.truncate(keep);
        let mut u = self.rng.random::<f64>() * mass;
        for &(id, p) in &probs {
            if u < p {
                return id;
            }
            u -= p;
        }
        probs.last().expect("nucleus is not empty").0
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(Sampling::Greedy);
        assert_eq!(s.pick(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_nucleus_respected() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let sampling = Sampling::Sample {
            temperature: 0.8,
            top_p: 0.9,
            seed: 7,
        };
        let draw = |s: &mut Sampler| (0..200).map(|_| s.pick(&logits)).collect::<Vec<_>>();
        let a = draw(&mut Sampler::new(sampling));
        let b = draw(&mut Sampler::new(sampling));
        assert_eq!(a, b);
        let c = draw(&mut Sampler::new(Sampling::Sample {
            temperature: 0.8,
            top_p: 0.9,
            seed: 8,
        }));
        assert_ne!(a, c, "another seed draws other tokens");
        // top_p tiny: only the argmax survives.
        let mut s = Sampler::new(Sampling::Sample {
            temperature: 1.0,
            top_p: 1e-9,
            seed: 1,
        });
        assert!((0..50).all(|_| s.pick(&logits) == argmax(&logits)));
    }
}
