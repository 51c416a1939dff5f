//! Top-k activation counting over stored router logits.
//!
//! For each token and layer the k experts with the largest router probability are *activated*
//! (softmax is monotonic, so the largest logits). Ties are broken towards the lower expert
//! index, as a stable descending sort would: with `[1, 2, 2, 0]` and k = 1, expert 1 is chosen.

use half::f16;

use crate::generate::RouterLogits;

/// Counts top-k activations with a reusable k-slot buffer (no allocation per row).
#[derive(Debug, Clone)]
pub struct TopKCounter {
    k: usize,
    slots: Vec<(u16, usize)>,
}

/// An integer key ordered like the f16 value (negative values reversed below positive ones),
/// so rows are ranked without converting to f32. `-0.0` ranks just below `+0.0`.
#[inline]
fn order_key(v: f16) -> u16 {
    let bits = v.to_bits();
    if bits & 0x8000 != 0 {
        !bits
    } else {
        bits | 0x8000
    }
}

impl TopKCounter {
    /// A counter for `k` experts per token.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            slots: Vec::with_capacity(k),
        }
    }

    /// The top-k `(order key, index)` of `row`, best first.
    pub fn select(&mut self, row: &[f16]) -> &[(u16, usize)] {
        let k = self.k.min(row.len());
        self.slots.clear();
        for (i, v) in row.iter().enumerate() {
            let v = order_key(*v);
            if self.slots.len() == k {
                // Strictly greater to displace: an equal value with a higher index loses.
                if v <= self.slots[k - 1].0 {
                    continue;
                }
                self.slots.pop();
            }
            let at = self.slots.partition_point(|s| s.0 >= v);
            self.slots.insert(at, (v, i));
        }
        &self.slots
    }

    /// Add 1 to `acc[layer * experts + e]` for every activated (token, layer, expert) among the
    /// first `tokens` tokens of `rl`.
    pub fn count(&mut self, rl: &RouterLogits, tokens: usize, acc: &mut [u64]) {
        let e = rl.experts;
        for l in 0..rl.layers {
            let start = l * rl.tokens * e;
            for row in rl.values[start..start + tokens * e].chunks_exact(e) {
                for &(_, idx) in self.select(row) {
                    acc[l * e + idx] += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    #[test]
    fn picks_largest_and_breaks_ties_to_the_lower_index() {
        let idx = |c: &mut TopKCounter, v: &[f32]| {
            c.select(&h(v)).iter().map(|s| s.1).collect::<Vec<_>>()
        };
        assert_eq!(
            idx(&mut TopKCounter::new(2), &[0.5, 2.0, -1.0, 2.0, 1.0]),
            vec![1, 3]
        );
        assert_eq!(
            idx(&mut TopKCounter::new(3), &[1.0, 1.0, 1.0, 1.0]),
            vec![0, 1, 2]
        );
        let mut c = TopKCounter::new(1);
        assert_eq!(idx(&mut c, &[-5.0, -3.0, -4.0]), vec![1]);
        assert_eq!(idx(&mut c, &[1.0, 2.0, 2.0, 0.0]), vec![1]);
    }

    #[test]
    fn counts_every_layer_of_the_first_tokens() {
        // 2 layers, 3 tokens, 3 experts, k = 1; count only the first 2 tokens.
        let rl = RouterLogits {
            layers: 2,
            tokens: 3,
            experts: 3,
            values: h(&[
                1., 0., 0., 0., 1., 0., 0., 0., 9., /* layer 1 */ 0., 0., 1., 0., 0., 1., 5.,
                0., 0.,
            ]),
        };
        let mut acc = vec![0u64; 6];
        TopKCounter::new(1).count(&rl, 2, &mut acc);
        assert_eq!(acc, vec![1, 1, 0, 0, 0, 2]);
    }
}
