//! Training inputs made up at a model's shape, for what measures or checks training without a
//! collected run (`benches/gpu.rs --what learner`, the CUDA data-parallel check): random tokens,
//! every token counted by the loss, safe and unsafe examples alternating, every batch training
//! the same experts.

use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::analysis::select::ExpertId;
use crate::data::batch::Label;
use crate::model::ModelConfig;

use super::TrainInputs;
use super::sft::{SftExample, SftGroup};

/// `batches` analysis batches of `batch` sequences of `seq` tokens drawn from `seed`, each
/// training `trained` (its routing mask too); no validation pairs.
pub fn inputs(
    model_cfg: &ModelConfig,
    trained: Vec<ExpertId>,
    batches: usize,
    batch: usize,
    seq: usize,
    seed: u64,
) -> TrainInputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Token 0..2 are special in the OLMoE tokenizer; anything else in the vocabulary will do.
    let vocab = model_cfg.vocab_size.max(3) as u32;
    let groups: Vec<SftGroup> = (0..batches)
        .map(|batch_idx| SftGroup {
            batch_idx,
            examples: (0..batch)
                .map(|in_batch_idx| {
                    let input_ids: Vec<u32> =
                        (0..seq).map(|_| rng.random_range(2..vocab)).collect();
                    SftExample {
                        batch_idx,
                        in_batch_idx,
                        label: if in_batch_idx % 2 == 0 {
                            Label::Safe
                        } else {
                            Label::Unsafe
                        },
                        labels: input_ids.iter().map(|&t| t as i64).collect(),
                        input_ids,
                    }
                })
                .collect(),
        })
        .collect();
    TrainInputs {
        sets: (0..batches).map(|b| (b, trained.clone())).collect(),
        trained,
        num_examples: batches * batch,
        groups: Arc::new(groups),
        valid: Arc::new(Vec::new()),
        model_cfg: model_cfg.clone(),
        pad_id: model_cfg.pad_token_id.unwrap_or(1),
        router_rows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_alternate_labels_and_stay_in_the_vocabulary() {
        let hub = r#"{"model_type":"olmoe","vocab_size":20,"hidden_size":16,"intermediate_size":8,"num_hidden_layers":2,
            "num_attention_heads":4,"num_experts":4,"num_experts_per_tok":2,"eos_token_id":0,"pad_token_id":1}"#;
        let cfg = ModelConfig::from_json_str(hub, std::path::Path::new("config.json")).unwrap();
        let a = inputs(&cfg, vec![[0, 1]], 3, 4, 7, 9);
        assert_eq!(a.groups.len(), 3);
        assert_eq!(a.num_examples, 12);
        for g in a.groups.iter() {
            let labels: Vec<Label> = g.examples.iter().map(|e| e.label).collect();
            assert_eq!(
                labels,
                [Label::Safe, Label::Unsafe, Label::Safe, Label::Unsafe]
            );
            for e in &g.examples {
                assert_eq!(e.input_ids.len(), 7);
                assert!(
                    e.input_ids
                        .iter()
                        .all(|&t| (2..cfg.vocab_size as u32).contains(&t))
                );
            }
        }
        assert_eq!(
            a.sets,
            vec![(0, vec![[0, 1]]), (1, vec![[0, 1]]), (2, vec![[0, 1]])]
        );
        assert_eq!(
            inputs(&cfg, vec![[0, 1]], 3, 4, 7, 9).groups,
            a.groups,
            "seeded"
        );
        assert_ne!(inputs(&cfg, vec![[0, 1]], 3, 4, 7, 10).groups, a.groups);
    }
}
