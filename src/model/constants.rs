//! The small device tensors a forward pass needs besides the weights, made once and sliced:
//! the index `0..n` (attention's causal mask, default positions, the routers' top-k) and RoPE's
//! inverse frequencies.
//!
//! Why not `arange` where each is needed: on burn's CUDA backend an upload (`from_data`,
//! `arange`) is a *blocking* call to cubecl's device thread (it stages the bytes there), so the
//! caller waits until that thread has launched everything queued before it. One upload per MoE
//! layer (the top-k's index) and three per forward pass made a decode step wait about twenty
//! times. A forward pass now makes these tensors once, and a [`KvCache`](super::KvCache) keeps
//! them for every decode step of a generation call.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::rope::Rope;

/// `0..len` and RoPE's inverse frequencies on one device.
#[derive(Debug, Clone)]
pub struct Constants<B: Backend> {
    index: Tensor<B, 1, Int>,
    inv_freq: Tensor<B, 1>,
}

impl<B: Backend> Constants<B> {
    /// Upload `0..len` and `rope`'s inverse frequencies (float32) to `device`.
    pub fn new(len: usize, rope: &Rope, device: &B::Device) -> Self {
        let inv_freq = rope.inv_freq();
        Self {
            index: Tensor::arange(0..len as i64, device),
            inv_freq: Tensor::from_data(
                TensorData::new(inv_freq.to_vec(), [inv_freq.len()]),
                (device, DType::F32),
            ),
        }
    }

    /// Length of the index.
    pub fn len(&self) -> usize {
        self.index.dims()[0]
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `start..end` as a tensor.
    ///
    /// # Panics
    /// When `end` passes [`Constants::len`].
    pub fn range(&self, range: std::ops::Range<usize>) -> Tensor<B, 1, Int> {
        assert!(
            range.end <= self.len(),
            "index {range:?} beyond the constants' {}",
            self.len()
        );
        self.index.clone().slice(range)
    }

    /// RoPE's inverse frequencies, `[head_dim / 2]`, float32.
    pub fn inv_freq(&self) -> Tensor<B, 1> {
        self.inv_freq.clone()
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;

    #[test]
    fn slices_of_one_index_and_the_ropes_frequencies() {
        let device = Default::default();
        let rope = Rope::new(4, 100.0);
        let c = Constants::<NdArray<f32>>::new(6, &rope, &device);
        assert_eq!(c.len(), 6);
        assert_eq!(
            c.range(2..5).into_data().iter::<i64>().collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(
            c.inv_freq().into_data().to_vec::<f32>().unwrap(),
            rope.inv_freq()
        );
    }

    #[test]
    #[should_panic(expected = "beyond the constants")]
    fn a_range_past_the_index_is_refused() {
        let c = Constants::<NdArray<f32>>::new(3, &Rope::new(4, 100.0), &Default::default());
        let _ = c.range(1..4);
    }
}
