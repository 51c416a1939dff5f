//! Every seeded random stream of a run, in one place.
//!
//! The rule: a stream is ChaCha8 (`rand_chacha`: the same numbers on every platform and every
//! `rand` version) seeded with `seed_from_u64(seed)`, `seed` the config's `seed` (or a sampling
//! setting's own), on its own stream number, so a draw added for one purpose never shifts
//! another's numbers.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Token sampling in generation.
    Sampling,
    /// The random permutation of (layer, expert) pairs behind the random-experts ablation.
    ExpertPermutation,
    /// The random ranking of experts that random-expert steering takes its sets from.
    ExpertRanking,
    /// The experts a behaviour is planted into.
    PlantExperts,
    /// The examples of each planting step.
    PlantExamples,
    /// The order of training batches in one epoch.
    BatchOrder {
        /// The epoch (0-based).
        epoch: usize,
    },
}

impl Stream {
    /// The ChaCha stream number.
    fn id(self) -> u64 {
        match self {
            Stream::Sampling => 1,
            Stream::ExpertPermutation => 2,
            Stream::ExpertRanking => 3,
            Stream::PlantExperts => 4,
            Stream::PlantExamples => 5,
            Stream::BatchOrder { epoch } => 0x1_0000 + epoch as u64,
        }
    }
}

/// The generator of `stream` under `seed`.
pub fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream.id());
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let draw = |seed, stream| rng(seed, stream).random::<u64>();
        assert_eq!(draw(7, Stream::Sampling), draw(7, Stream::Sampling));
        assert_ne!(draw(7, Stream::Sampling), draw(8, Stream::Sampling));
        assert_ne!(
            draw(7, Stream::ExpertPermutation),
            draw(7, Stream::ExpertRanking)
        );
        assert_ne!(
            draw(7, Stream::BatchOrder { epoch: 0 }),
            draw(7, Stream::BatchOrder { epoch: 1 })
        );
    }
}
