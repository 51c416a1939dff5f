//! Routing tensors on disk: one safetensors file per batch, f16 `[layers, tokens, experts]`
//! tensors named `prompt.{in_batch_idx}` and `gen.{in_batch_idx}`.

use std::collections::HashMap;
use std::path::Path;

use half::f16;
use safetensors::{Dtype, SafeTensors};

use crate::generate::RouterLogits;

/// Serialise named router logits to safetensors bytes.
pub fn encode(tensors: &[(String, &RouterLogits)]) -> Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, r)| r.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, r), b)| {
            safetensors::tensor::TensorView::new(Dtype::F16, vec![r.layers, r.tokens, r.experts], b)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("{name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

/// Read every tensor of a routing file.
pub fn read(path: &Path) -> Result<HashMap<String, RouterLogits>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let [layers, tokens, experts] = view.shape() else {
            return Err(format!("{name}: shape {:?}, expected [layers, tokens, experts]", view.shape()));
        };
        if view.dtype() != Dtype::F16 {
            return Err(format!("{name}: dtype {:?}, expected F16", view.dtype()));
        }
        let values = view
            .data()
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect();
        out.insert(
            name,
            RouterLogits {
                layers: *layers,
                tokens: *tokens,
                experts: *experts,
                values,
            },
        );
    }
    Ok(out)
}
