//! Greedy decoding's argmax over the vocabulary, on the device, in two levels.
//!
//! burn reduces a row with one thread when autotune is off (as this crate builds it): in cubecl's
//! profile of a greedy generation at Qwen3-30B-A3B's shape (151,936 logits a row) its reductions
//! took ~2 ms a launch, ~4 ms of each decode step, the argmax over the vocabulary the largest of
//! them (H200, `benches/results/profiles.jsonl`). Split into chunks, the rows become many short
//! ones: each chunk's argmax and max, then the best chunk's. Equal values resolve as burn's own
//! argmax resolves them at both levels, so the winner is the one `argmax(1)` picks.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Entries a chunk holds.
const CHUNK: usize = 1024;

/// Whether `STEERMOE_ARGMAX=burn` asks for burn's one-level `argmax(1)` (read once; to measure
/// the two levels against it).
fn one_level() -> bool {
    static ONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONE.get_or_init(|| std::env::var("STEERMOE_ARGMAX").as_deref() == Ok("burn"))
}

/// `x.argmax(1)`: each row's index of its largest entry, `[rows, 1]`, through chunks of
/// [`CHUNK`] entries when the rows are longer than four chunks (the last chunk padded with −∞,
/// which no entry is below). `STEERMOE_ARGMAX=burn` keeps burn's `argmax(1)` throughout.
///
/// # Shapes
/// - `x`: `[rows, n]` → `[rows, 1]`
pub fn argmax_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2, Int> {
    let [rows, n] = x.dims();
    if n <= 4 * CHUNK || one_level() {
        return x.argmax(1);
    }
    let chunks = n.div_ceil(CHUNK);
    let x = match chunks * CHUNK - n {
        0 => x,
        pad => {
            let fill = Tensor::full([rows, pad], f32::NEG_INFINITY, (&x.device(), x.dtype()));
            Tensor::cat(vec![x, fill], 1)
        }
    };
    let x = x.reshape([rows, chunks, CHUNK]);
    let within = x.clone().argmax(2).reshape([rows, chunks]);
    let best = x.max_dim(2).reshape([rows, chunks]).argmax(1);
    within.gather(1, best.clone()) + best.mul_scalar(CHUNK as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, TensorData};

    type B = NdArray<f32>;

    fn ids(t: Tensor<B, 2, Int>) -> Vec<i64> {
        t.into_data().convert::<i64>().to_vec().unwrap()
    }

    /// Against burn's `argmax(1)` on rows of a vocabulary's size and of a chunk's multiple, with
    /// values rounded to a few levels (many ties inside a chunk and across chunks), a maximum in
    /// the padded last chunk, and rows of one value throughout.
    #[test]
    fn matches_burn_argmax_with_ties() {
        let device = Default::default();
        for n in [151_936, 8 * CHUNK, 50_304] {
            let x = Tensor::<B, 2>::random([5, n], Distribution::Normal(0.0, 1.0), &device)
                .mul_scalar(2.0)
                .round();
            assert_eq!(
                ids(argmax_rows(x.clone())),
                ids(x.clone().argmax(1)),
                "{n} wide"
            );
            // One maximum in the last (padded) chunk, one value throughout.
            let mut last = vec![0f32; n];
            last[n - 1] = 9.0;
            let flat = vec![-3f32; n];
            let x =
                Tensor::<B, 2>::from_data(TensorData::new([last, flat].concat(), [2, n]), &device);
            assert_eq!(
                ids(argmax_rows(x.clone())),
                ids(x.argmax(1)),
                "{n} wide, edge rows"
            );
        }
        // Short rows: burn's argmax itself.
        let x = Tensor::<B, 2>::random([3, 100], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(ids(argmax_rows(x.clone())), ids(x.argmax(1)));
    }
}
