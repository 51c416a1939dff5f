//! Top-k activation counting over stored router logits.
//!
//! For each token and layer the k experts with the largest router probability are *activated*
//! (softmax is monotonic, so the largest logits). Ties are broken towards the lower expert
//! index, as a stable descending sort would.

use half::f16;

use crate::generate::RouterLogits;

/// Add 1 to `acc[layer * experts + e]` for every activated (token, layer, expert) of `rl`.
pub fn count_top_k(rl: &RouterLogits, k: usize, acc: &mut [f32]) {
    let e = rl.experts;
    for l in 0..rl.layers {
        let rows = &rl.values[l * rl.tokens * e..(l + 1) * rl.tokens * e];
        let out = &mut acc[l * e..(l + 1) * e];
        for row in rows.chunks_exact(e) {
            for idx in top_k_indices(row, k) {
                out[idx] += 1.0;
            }
        }
    }
}

/// Indices of the `k` largest values of `row`, lower index first among equals.
pub fn top_k_indices(row: &[f16], k: usize) -> impl Iterator<Item = usize> {
    // Insertion into a k-slot buffer sorted by (value desc, index asc); most values are
    // rejected by one comparison with the current k-th.
    let mut best: [(f32, usize); 64] = [(f32::NEG_INFINITY, usize::MAX); 64];
    let k = k.min(row.len());
    let mut buf: Vec<(f32, usize)> = Vec::new();
    let slots: &mut [(f32, usize)] = if k <= 64 {
        &mut best[..k]
    } else {
        buf.resize(k, (f32::NEG_INFINITY, usize::MAX));
        &mut buf
    };
    for (i, v) in row.iter().enumerate() {
        let v = v.to_f32();
        if v <= slots[k - 1].0 && slots[k - 1].1 != usize::MAX {
            continue;
        }
        let mut j = k - 1;
        while j > 0 && (v > slots[j - 1].0 || slots[j - 1].1 == usize::MAX) {
            slots[j] = slots[j - 1];
            j -= 1;
        }
        slots[j] = (v, i);
    }
    let picked: Vec<usize> = slots.iter().map(|s| s.1).collect();
    picked.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    #[test]
    fn picks_largest_and_breaks_ties_to_the_lower_index() {
        let got: Vec<usize> = top_k_indices(&h(&[0.5, 2.0, -1.0, 2.0, 1.0]), 2).collect();
        assert_eq!(got, vec![1, 3]);
        let got: Vec<usize> = top_k_indices(&h(&[1.0, 1.0, 1.0, 1.0]), 3).collect();
        assert_eq!(got, vec![0, 1, 2]);
        let got: Vec<usize> = top_k_indices(&h(&[-5.0, -3.0, -4.0]), 1).collect();
        assert_eq!(got, vec![1]);
    }
}
