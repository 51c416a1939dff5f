//! The answers an expert's effect is measured on, read back from a collected run: in every
//! analysed batch, each kept jailbreak with the answer the model gave it (its compliance: the
//! *unsafe* side) and each kept plain goal with its answer (its refusal: the *safe* side), as the
//! quality filter keeps them. Teacher-forced, they give the per-answer NLL ([`Teacher::nll`]) that
//! ablation and attribution move.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::data::batch::Label;
use crate::model::loss::{IGNORE_INDEX, Targets, token_nll};
use crate::model::{LmInput, MoeLm};
use crate::run_dir::{RunDir, RunDirError};

/// One prompt and the answer the model gave it during collect.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    /// Prompt ids, then answer ids.
    pub ids: Vec<u32>,
    /// Prompt tokens (the answer starts here).
    pub prompt_len: usize,
    /// The jailbreak's side (its compliance), not the plain goal's (its refusal).
    pub is_unsafe: bool,
}

/// The answers of one collected batch.
#[derive(Debug, Clone, PartialEq)]
pub struct AnsweredBatch {
    /// The batch.
    pub batch_idx: usize,
    /// Its kept samples with a non-empty answer, in batch order.
    pub items: Vec<Answered>,
}

impl AnsweredBatch {
    /// Answers on the unsafe side.
    pub fn unsafe_count(&self) -> usize {
        self.items.iter().filter(|a| a.is_unsafe).count()
    }

    /// Answers on the safe side.
    pub fn safe_count(&self) -> usize {
        self.items.len() - self.unsafe_count()
    }

    /// The answers of one side (`is_unsafe`), in batch order.
    pub fn side(&self, is_unsafe: bool) -> Vec<Answered> {
        self.items
            .iter()
            .filter(|a| a.is_unsafe == is_unsafe)
            .cloned()
            .collect()
    }

    /// Whether both sides have an answer (what an effect needs).
    pub fn has_both(&self) -> bool {
        self.unsafe_count() > 0 && self.safe_count() > 0
    }
}

/// The kept answers of the batches `batches` of the collected run `dir`, each cut to its first
/// `answer_tokens` tokens (0 = whole).
pub fn read(
    dir: &RunDir,
    batches: &[usize],
    answer_tokens: usize,
) -> Result<Vec<AnsweredBatch>, RunDirError> {
    batches
        .iter()
        .map(|&b| {
            let records = dir.batch_records(b).read()?;
            let items = records
                .iter()
                .filter(|r| r.kept && !r.new_ids.is_empty())
                .map(|r| {
                    let n = match answer_tokens {
                        0 => r.new_ids.len(),
                        n => r.new_ids.len().min(n),
                    };
                    Answered {
                        ids: [&r.prompt_ids[..], &r.new_ids[..n]].concat(),
                        prompt_len: r.prompt_ids.len(),
                        is_unsafe: r.label == Label::Unsafe,
                    }
                })
                .collect();
            Ok(AnsweredBatch {
                batch_idx: b,
                items,
            })
        })
        .collect()
}

/// A batch of answers as model inputs: right-padded ids, and the answer positions whose logits
/// are scored.
#[derive(Debug, Clone)]
pub struct Teacher<B: Backend> {
    /// Ids and padding mask.
    pub input: LmInput<B>,
    /// The answer tokens' positions and labels.
    pub targets: Targets<B>,
    /// The answer each target belongs to.
    pub owner: Vec<usize>,
    /// Answer tokens of each answer.
    pub tokens: Vec<usize>,
}

impl<B: Backend> Teacher<B> {
    /// The inputs of `items` on `device`.
    pub fn new(items: &[Answered], device: &B::Device) -> Self {
        let batch = items.len();
        let seq = items.iter().map(|a| a.ids.len()).max().unwrap_or(1);
        let mut ids = vec![0i64; batch * seq];
        let mut valid = vec![false; batch * seq];
        let mut labels = vec![IGNORE_INDEX; batch * seq];
        let mut owner = Vec::new();
        let mut tokens = Vec::with_capacity(batch);
        for (r, a) in items.iter().enumerate() {
            for (t, &tok) in a.ids.iter().enumerate() {
                ids[r * seq + t] = tok as i64;
                valid[r * seq + t] = true;
                if t >= a.prompt_len.max(1) {
                    labels[r * seq + t] = tok as i64;
                    owner.push(r);
                }
            }
            tokens.push(a.ids.len() - a.prompt_len.max(1).min(a.ids.len()));
        }
        Self {
            input: LmInput::padded(
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), device),
                Tensor::<B, 2, Bool>::from_data(TensorData::new(valid, [batch, seq]), device),
            ),
            targets: Targets::from_labels(&labels, batch, seq, device),
            owner,
            tokens,
        }
    }

    /// The mean NLL of each answer's tokens given the final hidden states `hidden` of its input.
    ///
    /// # Shapes
    /// - `hidden`: `[answers, seq, hidden]`
    pub fn nll(&self, model: &MoeLm<B>, hidden: Tensor<B, 3>) -> Vec<f64> {
        let per_token: Vec<f32> = token_nll(hidden, &model.lm_head, &self.targets)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("float32 NLLs");
        let mut sums = vec![0f64; self.tokens.len()];
        for (&o, &v) in self.owner.iter().zip(&per_token) {
            sums[o] += v as f64;
        }
        sums.iter()
            .zip(&self.tokens)
            .map(|(s, &n)| s / n.max(1) as f64)
            .collect()
    }

    /// `times` copies of this batch, one after another (inputs, targets and owners), for a
    /// forward pass over as many copies of the batch ([`crate::model::MoeLm::resume_repeated`]).
    pub fn repeated(&self, times: usize) -> Self {
        let [batch, seq] = self.input.input_ids.dims();
        let answers = self.tokens.len();
        let positions = (0..times)
            .map(|t| {
                self.targets
                    .positions
                    .clone()
                    .add_scalar((t * batch * seq) as i64)
            })
            .collect();
        Self {
            input: LmInput {
                input_ids: self.input.input_ids.clone().repeat_dim(0, times),
                attention_mask: self
                    .input
                    .attention_mask
                    .clone()
                    .map(|m| m.repeat_dim(0, times)),
                positions: self.input.positions.clone().map(|p| p.repeat_dim(0, times)),
            },
            targets: Targets {
                positions: Tensor::cat(positions, 0),
                labels: self.targets.labels.clone().repeat_dim(0, times),
            },
            owner: (0..times)
                .flat_map(|t| self.owner.iter().map(move |&o| t * answers + o))
                .collect(),
            tokens: self.tokens.repeat(times),
        }
    }

    /// Per-target weights whose sum with the token NLLs is the mean over the answers of each
    /// answer's mean NLL: what attribution differentiates.
    pub fn mean_weights(&self, device: &B::Device) -> Tensor<B, 1> {
        let answers = self.tokens.len().max(1) as f32;
        let w: Vec<f32> = self
            .owner
            .iter()
            .map(|&o| 1.0 / (self.tokens[o].max(1) as f32 * answers))
            .collect();
        let n = w.len();
        Tensor::from_data(TensorData::new(w, [n]), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn targets_are_the_answer_tokens_and_owners_follow_them() {
        let items = [
            Answered {
                ids: vec![5, 6, 7, 8],
                prompt_len: 2,
                is_unsafe: true,
            },
            Answered {
                ids: vec![9, 10, 11],
                prompt_len: 2,
                is_unsafe: false,
            },
        ];
        let t = Teacher::<NdArray<f32>>::new(&items, &Default::default());
        assert_eq!(t.owner, vec![0, 0, 1]);
        assert_eq!(t.tokens, vec![2, 1]);
        let labels: Vec<i64> = t.targets.labels.into_data().to_vec().unwrap();
        assert_eq!(labels, vec![7, 8, 11]);
        // Position t predicts token t + 1: rows 1, 2 of answer 0 and row 1 of answer 1 (seq 4).
        let pos: Vec<i64> = t.targets.positions.into_data().to_vec().unwrap();
        assert_eq!(pos, vec![1, 2, 5]);
    }
}
