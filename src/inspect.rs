//! One forward pass over given token ids, written to safetensors: how users inspect routing
//! (`steermoe forward`) and how parity with transformers is checked on unseen cases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::model::{LmInput, LoadError, MoeLm, Precision, Routing};
use crate::run_dir::write_atomic;

/// What can go wrong in `forward`.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Loading the model.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Writing the output.
    #[error(transparent)]
    Write(#[from] crate::run_dir::RunDirError),
    /// The token ids are unusable.
    #[error("input ids: {0}")]
    Ids(String),
    /// The mask file is unusable.
    #[error("{}: {reason}", path.display())]
    Mask {
        /// The mask file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Parse `1,2,3;4,5,6` into equal-length rows.
pub fn parse_ids(text: &str) -> Result<Vec<Vec<u32>>, InspectError> {
    let rows: Vec<Vec<u32>> = text
        .split(';')
        .enumerate()
        .map(|(r, row)| {
            row.split(',')
                .map(|t| {
                    t.trim().parse::<u32>().map_err(|_| {
                        InspectError::Ids(format!("row {r}: {:?} is not a token id", t.trim()))
                    })
                })
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let len = rows[0].len();
    if let Some((r, row)) = rows.iter().enumerate().find(|(_, row)| row.len() != len) {
        return Err(InspectError::Ids(format!(
            "row {r} has {} ids, row 0 has {len}",
            row.len()
        )));
    }
    Ok(rows)
}

/// Read an expert mask: a safetensors file with a tensor `mask` of shape `[layers, experts]`,
/// nonzero = allowed.
pub fn read_mask(path: &Path, layers: usize, experts: usize) -> Result<Vec<bool>, InspectError> {
    let err = |reason: String| InspectError::Mask {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let view = st
        .tensor("mask")
        .map_err(|_| err("no tensor named \"mask\"".into()))?;
    if view.shape() != [layers, experts] {
        return Err(err(format!(
            "tensor mask has shape {:?}, expected [{layers}, {experts}]",
            view.shape()
        )));
    }
    let data = view.data();
    let allowed: Vec<bool> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) != 0.0)
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) != 0.0)
            .collect(),
        Dtype::BF16 | Dtype::F16 | Dtype::I16 => data
            .chunks_exact(2)
            .map(|b| b[0] != 0 || (b[1] & 0x7f) != 0)
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| b.iter().any(|&x| x != 0))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| b.iter().any(|&x| x != 0))
            .collect(),
        Dtype::U8 | Dtype::I8 | Dtype::BOOL => data.iter().map(|&x| x != 0).collect(),
        other => return Err(err(format!("tensor mask has unsupported dtype {other:?}"))),
    };
    Ok(allowed)
}

/// Run `model` over `ids` (equal-length rows) with an optional `[layers, experts]` mask and
/// return `logits` `[batch, seq, vocab]` and `router_logits` `[layers, batch, seq, experts]`.
pub fn forward<B: Backend>(
    model: &MoeLm<B>,
    ids: &[Vec<u32>],
    mask: Option<&[bool]>,
    device: &B::Device,
) -> (Tensor<B, 3>, Tensor<B, 4>) {
    let (batch, seq) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, seq]), device);
    let mut routing = Routing::capturing();
    if let Some(mask) = mask {
        let allow = Tensor::<B, 2, Bool>::from_data(
            TensorData::new(mask.to_vec(), [model.num_moe_layers(), model.num_experts()]),
            device,
        );
        routing = routing.with_mask(allow);
    }
    let out = model.forward(LmInput::ids(input), &routing);
    (
        out.logits,
        out.router_logits.expect("capture was asked for"),
    )
}

/// What [`forward_to_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSummary {
    /// `[moe_layers, batch, seq, experts]` of `router_logits`.
    pub router_shape: [usize; 4],
    /// The decoder index of each MoE layer: the rows of `router_logits` (also in the file's
    /// metadata as `moe_layers`).
    pub moe_layers: Vec<usize>,
    /// Decoder layers in all.
    pub num_layers: usize,
}

/// Load `model_dir`, run [`forward`] and write `logits` and `router_logits` (f32; router logits of
/// the MoE layers only, their decoder indices in the metadata) to `out`.
pub fn forward_to_file<B: Backend>(
    model_dir: &Path,
    ids_text: &str,
    mask_path: Option<&Path>,
    precision: Precision,
    out: &Path,
    device: &B::Device,
) -> Result<ForwardSummary, InspectError> {
    let ids = parse_ids(ids_text)?;
    let (model, cfg) = crate::model::load::<B>(model_dir, device, precision)?;
    if let Some((r, t)) = ids.iter().enumerate().find_map(|(r, row)| {
        row.iter()
            .find(|&&t| t as usize >= cfg.vocab_size)
            .map(|&t| (r, t))
    }) {
        return Err(InspectError::Ids(format!(
            "row {r}: id {t} is outside the vocabulary of {}",
            cfg.vocab_size
        )));
    }
    if let Some((r, row)) = ids
        .iter()
        .enumerate()
        .find(|(_, row)| row.len() > cfg.max_position_embeddings)
    {
        return Err(InspectError::Ids(format!(
            "row {r}: {} ids, more than the model's max_position_embeddings ({})",
            row.len(),
            cfg.max_position_embeddings
        )));
    }
    let mask = mask_path
        .map(|p| read_mask(p, cfg.num_moe_layers(), cfg.num_experts))
        .transpose()?;
    let (logits, router_logits) = forward(&model, &ids, mask.as_deref(), device);
    let router_shape = router_logits.dims();
    let moe_layers = model.moe_layers();
    let listed = moe_layers
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let tensors = vec![
        ("logits", logits.into_data()),
        ("router_logits", router_logits.into_data()),
    ];
    write_f32_with(out, tensors, [("moe_layers".to_string(), listed)].into())?;
    Ok(ForwardSummary {
        router_shape,
        moe_layers,
        num_layers: model.num_layers(),
    })
}

/// Write named tensors to a safetensors file as float32 (atomically).
pub fn write_f32<S: Into<String>>(
    out: &Path,
    tensors: Vec<(S, TensorData)>,
) -> Result<(), InspectError> {
    write_f32_with(out, tensors, HashMap::new())
}

/// [`write_f32`] with string metadata in the file's header.
pub fn write_f32_with<S: Into<String>>(
    out: &Path,
    tensors: Vec<(S, TensorData)>,
    metadata: HashMap<String, String>,
) -> Result<(), InspectError> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, data)| {
            let bytes = data.iter::<f32>().flat_map(f32::to_le_bytes).collect();
            (name.into(), data.shape.to_vec(), bytes)
        })
        .collect();
    let views: Vec<_> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("f32 bytes"),
            )
        })
        .collect();
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| LoadError::Safetensors {
            path: out.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(write_atomic(out, &bytes)?)
}
