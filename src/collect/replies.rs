//! Teacher-forced replies, for the `response` token scope (the SteerMoE paper's contrast: one
//! prompt, a refusing and a complying reply). For each kept pair of a batch the jailbreak prompt
//! is followed by
//! - the model's own answer to the plain goal (its refusal): the *safe* side;
//! - the model's own answer to the jailbreak (its compliance): the *unsafe* side;
//!
//! and one forward pass records the experts the model really chose on the reply tokens (masks and
//! ties as the forward pass resolved them, not a re-ranking of stored logits). A reply token's
//! routing is that of the position reading it, as for generated tokens.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::data::batch::Label;
use crate::generate::ChosenExperts;
use crate::model::{LmInput, MoeLm, Routing};
use crate::run_dir::records::SampleRecord;

/// The two teacher-forced replies of one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyRouting {
    /// `in_batch_idx` of the pair's unsafe sample (names the tensors on disk).
    pub unsafe_idx: usize,
    /// The plain goal's answer after the jailbreak prompt.
    pub safe: ChosenExperts,
    /// The jailbreak's answer after the jailbreak prompt.
    pub unsafe_: ChosenExperts,
}

/// Route the replies of every kept pair in `records` (one batch) in one forward pass.
pub fn route<B: Backend>(
    model: &MoeLm<B>,
    records: &[SampleRecord],
    pad_id: u32,
    device: &B::Device,
) -> Vec<ReplyRouting> {
    let mut pairs: BTreeMap<usize, [Option<&SampleRecord>; 2]> = BTreeMap::new();
    for r in records.iter().filter(|r| r.kept) {
        pairs.entry(r.record).or_default()[(r.label == Label::Unsafe) as usize] = Some(r);
    }
    // (unsafe sample, prompt, [safe reply, unsafe reply]) of complete pairs with both replies.
    let pairs: Vec<(&SampleRecord, [&[u32]; 2])> = pairs
        .values()
        .filter_map(|[safe, unsafe_]| {
            let (safe, unsafe_) = ((*safe)?, (*unsafe_)?);
            (!safe.new_ids.is_empty() && !unsafe_.new_ids.is_empty())
                .then_some((unsafe_, [&safe.new_ids[..], &unsafe_.new_ids[..]]))
        })
        .collect();
    if pairs.is_empty() {
        return Vec::new();
    }
    let seqs: Vec<Vec<u32>> = pairs
        .iter()
        .flat_map(|(u, replies)| replies.map(|reply| [&u.prompt_ids[..], reply].concat()))
        .collect();
    let width = seqs.iter().map(Vec::len).max().expect("pairs exist");
    let batch = seqs.len();
    let mut ids = Vec::with_capacity(batch * width);
    let mut valid = Vec::with_capacity(batch * width);
    for s in &seqs {
        ids.extend(
            s.iter()
                .map(|&t| t as i64)
                .chain(std::iter::repeat_n(pad_id as i64, width - s.len())),
        );
        valid.extend(
            std::iter::repeat_n(true, s.len()).chain(std::iter::repeat_n(false, width - s.len())),
        );
    }
    let input = LmInput::padded(
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, width]), device),
        Tensor::<B, 2, Bool>::from_data(TensorData::new(valid, [batch, width]), device),
    );
    let chosen = model
        .forward_hidden(input, &Routing::capturing())
        .chosen
        .expect("capture on");
    let [layers, _, _, k] = chosen.dims();
    let host: Vec<i64> = chosen.into_data().iter::<i64>().collect();
    let slice = |row: usize, start: usize, len: usize| {
        let mut values = Vec::with_capacity(layers * len * k);
        for l in 0..layers {
            let base = ((l * batch + row) * width + start) * k;
            values.extend(host[base..base + len * k].iter().map(|&e| e as u16));
        }
        ChosenExperts {
            layers,
            tokens: len,
            k,
            values,
        }
    };
    pairs
        .iter()
        .enumerate()
        .map(|(p, (u, [safe, unsafe_]))| {
            let start = u.prompt_ids.len();
            ReplyRouting {
                unsafe_idx: u.in_batch_idx,
                safe: slice(2 * p, start, safe.len()),
                unsafe_: slice(2 * p + 1, start, unsafe_.len()),
            }
        })
        .collect()
}
