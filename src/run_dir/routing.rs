//! Routing tensors on disk: one safetensors file per batch, holding
//! - f16 router logits `[layers, tokens, experts]` named `prompt.{in_batch_idx}` and
//!   `gen.{in_batch_idx}` (the sample's prompt and generated tokens);
//! - u16 chosen experts `[layers, tokens, k]` named `reply_safe.{i}` and `reply_unsafe.{i}`, `i`
//!   the pair's unsafe sample: the teacher-forced replies of the `response` token scope.

use std::collections::HashMap;
use std::path::Path;

use half::f16;
use safetensors::{Dtype, SafeTensors};

use crate::generate::{ChosenExperts, RouterLogits};

/// Every tensor of one routing file, by name.
#[derive(Debug, Clone, Default)]
pub struct RoutingTensors {
    /// Router logits.
    pub logits: HashMap<String, RouterLogits>,
    /// Chosen experts.
    pub chosen: HashMap<String, ChosenExperts>,
}

/// Serialise named router logits and chosen experts to safetensors bytes.
pub fn encode(
    logits: &[(String, &RouterLogits)],
    chosen: &[(String, &ChosenExperts)],
) -> Result<Vec<u8>, String> {
    let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = logits
        .iter()
        .map(|(name, r)| {
            let bytes = r.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (
                name.clone(),
                Dtype::F16,
                vec![r.layers, r.tokens, r.experts],
                bytes,
            )
        })
        .collect();
    entries.extend(chosen.iter().map(|(name, c)| {
        let bytes = c.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        (
            name.clone(),
            Dtype::U16,
            vec![c.layers, c.tokens, c.k],
            bytes,
        )
    }));
    let views = entries
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("{name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

/// Read every tensor of a routing file.
pub fn read(path: &Path) -> Result<RoutingTensors, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let mut out = RoutingTensors::default();
    for (name, view) in st.tensors() {
        let &[layers, tokens, width] = view.shape() else {
            return Err(format!(
                "{name}: shape {:?}, expected [layers, tokens, experts or k]",
                view.shape()
            ));
        };
        match view.dtype() {
            Dtype::F16 => {
                let values = view
                    .data()
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                out.logits.insert(
                    name,
                    RouterLogits {
                        layers,
                        tokens,
                        experts: width,
                        values,
                    },
                );
            }
            Dtype::U16 => {
                let values = view
                    .data()
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                out.chosen.insert(
                    name,
                    ChosenExperts {
                        layers,
                        tokens,
                        k: width,
                        values,
                    },
                );
            }
            other => {
                return Err(format!(
                    "{name}: dtype {other:?}, expected F16 (router logits) or U16 (chosen experts)"
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_and_choices_round_trip() {
        let rl = RouterLogits {
            layers: 1,
            tokens: 2,
            experts: 3,
            values: [1.0f32, -2.0, 0.5, 0.0, 3.0, 1.0]
                .map(f16::from_f32)
                .to_vec(),
        };
        let ch = ChosenExperts {
            layers: 2,
            tokens: 1,
            k: 2,
            values: vec![2, 0, 1, 2],
        };
        let bytes = encode(&[("gen.0".into(), &rl)], &[("reply_safe.1".into(), &ch)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.logits["gen.0"], rl);
        assert_eq!(back.chosen["reply_safe.1"], ch);
    }
}
