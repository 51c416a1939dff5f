//! Hub checkpoints in and out: `config.json` plus `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`, under transformers' key names.
//!
//! Tensors are read straight from memory-mapped safetensors (bf16, f16 or f32 stored) and
//! converted on the host to the compute dtype. The one remap is the orientation of linear
//! weights: the Hub stores `[out, in]`, burn's `Linear` holds `[in, out]`; loading transposes a
//! view and saving transposes back, so a round trip is bit-exact.
//!
//! Every tensor the model needs must be present with its exact shape, and every tensor in the
//! files must be used (bar RoPE `inv_freq` buffers, which transformers recomputes): anything else
//! is an error naming the file, the tensor and both shapes. Saving writes each file to a
//! temporary name and renames it, so a reader never sees a half-written checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::LoadError;
use super::attention::Attention;
use super::config::{Arch, ModelConfig, QkNorm};
use super::experts::Expert;
use super::lm::{DecoderLayer, DecoderStack, FeedForward, MoeLm};
use super::moe::MoeBlock;
use super::norm::RmsNorm;

/// Largest shard [`save`] writes before starting another (transformers' default is 5 GB).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Floating-point precision to compute in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 (the reference; CPU default).
    F32,
    /// bfloat16 (GPU default for real checkpoints).
    Bf16,
}

impl Precision {
    /// The burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// The safetensors files of a checkpoint directory, memory-mapped.
struct Shards {
    files: Vec<(PathBuf, memmap2::Mmap)>,
}

impl Shards {
    fn open(dir: &Path) -> Result<Self, LoadError> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let names: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|source| LoadError::Io {
                path: index.clone(),
                source,
            })?;
            let parsed: Value = serde_json::from_str(&text).map_err(|e| LoadError::Config {
                path: index.clone(),
                field: String::new(),
                reason: e.to_string(),
            })?;
            let map = parsed
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| LoadError::Config {
                    path: index.clone(),
                    field: "weight_map".into(),
                    reason: "missing or not an object".into(),
                })?;
            let mut shards: Vec<String> = Vec::new();
            for (key, file) in map {
                let file = file.as_str().ok_or_else(|| LoadError::Config {
                    path: index.clone(),
                    field: format!("weight_map.{key}"),
                    reason: "not a file name".into(),
                })?;
                if !shards.iter().any(|s| s == file) {
                    shards.push(file.to_string());
                }
            }
            shards.sort();
            let mut paths = Vec::new();
            for shard in shards {
                let path = dir.join(&shard);
                if !path.is_file() {
                    return Err(LoadError::MissingShard {
                        index: index.clone(),
                        shard: path,
                    });
                }
                paths.push(path);
            }
            paths
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(LoadError::NoWeights {
                dir: dir.to_path_buf(),
            });
        };
        let mut files = Vec::new();
        for path in names {
            let file = File::open(&path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only and lives as long as `Shards`; a checkpoint that is
            // rewritten while we read it is outside what any loader can guard against.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            files.push((path, map));
        }
        Ok(Self { files })
    }
}

/// Tensors of a checkpoint by name, converted on demand.
struct TensorTable<'a> {
    views: HashMap<String, (&'a Path, safetensors::tensor::TensorView<'a>)>,
    used: std::collections::HashSet<String>,
    arch: Arch,
}

/// `" from config.json's ..."`: the config keys that decide whether tensor `key` exists and its
/// shape, for errors about it (a wrong `head_dim` shows up as a q_proj of the wrong shape).
fn implied_by(key: &str, arch: Arch) -> String {
    let qwen = arch == Arch::Qwen3Moe;
    let keys = if key.contains("self_attn.q_proj") || key.contains("self_attn.o_proj") {
        if qwen {
            "hidden_size, num_attention_heads, head_dim"
        } else {
            "hidden_size"
        }
    } else if key.contains("self_attn.k_proj") || key.contains("self_attn.v_proj") {
        if qwen {
            "hidden_size, num_key_value_heads, head_dim"
        } else {
            "hidden_size, num_attention_heads, num_key_value_heads"
        }
    } else if key.contains("self_attn.q_norm") {
        if qwen { "head_dim" } else { "hidden_size" }
    } else if key.contains("self_attn.k_norm") {
        if qwen {
            "head_dim"
        } else {
            "hidden_size, num_attention_heads, num_key_value_heads"
        }
    } else if key.contains(".mlp.experts.") {
        if qwen {
            "hidden_size, moe_intermediate_size, num_experts; MoE layers by decoder_sparse_step, mlp_only_layers"
        } else {
            "hidden_size, intermediate_size, num_experts"
        }
    } else if key.contains(".mlp.gate.") {
        if qwen {
            "hidden_size, num_experts; MoE layers by decoder_sparse_step, mlp_only_layers"
        } else {
            "hidden_size, num_experts"
        }
    } else if key.contains(".mlp.") {
        "hidden_size, intermediate_size; dense layers by decoder_sparse_step, mlp_only_layers"
    } else if key.contains("embed_tokens") || key.starts_with("lm_head") {
        "vocab_size, hidden_size"
    } else if key.contains("layers.") {
        "hidden_size, num_hidden_layers"
    } else {
        "hidden_size"
    };
    format!(", from config.json's {keys}")
}

/// Which tensor of a safetensors file's header is wrong, where the safetensors crate's error
/// does not say: a shape and dtype whose size disagrees with the bytes the header gives it, or
/// bytes beyond the file.
fn header_fault(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let data = bytes.len().saturating_sub(8 + n);
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype = info.get("dtype")?.as_str()?;
        let shape: Vec<usize> = info
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()?;
        let offsets: Vec<usize> = info
            .get("data_offsets")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()?;
        let [start, end] = offsets[..] else {
            return Some(format!(
                "tensor {name}: data_offsets {offsets:?} is not [start, end]"
            ));
        };
        let width = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => continue,
        };
        let want = shape.iter().product::<usize>() * width;
        if end < start || end - start != want {
            return Some(format!(
                "tensor {name}: shape {shape:?} of {dtype} needs {want} bytes, but its data_offsets [{start}, {end}] give {}",
                end.saturating_sub(start)
            ));
        }
        if end > data {
            return Some(format!(
                "tensor {name}: data_offsets [{start}, {end}] reach beyond the file's {data} bytes of data (a truncated file?)"
            ));
        }
    }
    None
}

impl<'a> TensorTable<'a> {
    fn new(shards: &'a Shards, arch: Arch) -> Result<Self, LoadError> {
        let mut views = HashMap::new();
        for (path, map) in &shards.files {
            let st = SafeTensors::deserialize(map).map_err(|e| LoadError::Safetensors {
                path: path.clone(),
                reason: header_fault(map).unwrap_or_else(|| e.to_string()),
            })?;
            for (name, view) in st.tensors() {
                views.insert(name, (path.as_path(), view));
            }
        }
        Ok(Self {
            views,
            used: Default::default(),
            arch,
        })
    }

    fn contains(&self, key: &str) -> bool {
        self.views.contains_key(key)
    }

    /// The tensor `key`, stored with exactly `shape`, as host data of `dtype`; with `transpose`, a 2-d tensor comes
    /// out transposed and contiguous (`[cols, rows]`).
    fn take(
        &mut self,
        key: &str,
        shape: &[usize],
        dtype: DType,
        dir: &Path,
        transpose: bool,
    ) -> Result<TensorData, LoadError> {
        let (path, view) = self
            .views
            .get(key)
            .ok_or_else(|| LoadError::MissingTensor {
                dir: dir.to_path_buf(),
                key: key.to_string(),
                expected: shape.to_vec(),
                implied_by: implied_by(key, self.arch),
            })?;
        if view.shape() != shape {
            return Err(LoadError::ShapeMismatch {
                path: path.to_path_buf(),
                key: key.to_string(),
                found: view.shape().to_vec(),
                expected: shape.to_vec(),
                implied_by: implied_by(key, self.arch),
            });
        }
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            other => {
                return Err(LoadError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Err(LoadError::NonFinite {
                path: path.to_path_buf(),
                key: key.to_string(),
                value: values[at],
                at,
            });
        }
        self.used.insert(key.to_string());
        let (values, shape) = match (transpose, shape) {
            (true, &[rows, cols]) => (transposed(&values, rows, cols), vec![cols, rows]),
            _ => (values, shape.to_vec()),
        };
        Ok(match dtype {
            DType::BF16 => TensorData::new(values.into_iter().map(bf16::from_f32).collect(), shape),
            _ => TensorData::new(values, shape),
        })
    }

    fn unused(&self) -> Option<(PathBuf, String)> {
        let mut left: Vec<_> = self
            .views
            .iter()
            .filter(|(k, _)| !self.used.contains(*k) && !k.ends_with("rotary_emb.inv_freq"))
            .map(|(k, (p, _))| (p.to_path_buf(), k.clone()))
            .collect();
        left.sort();
        left.into_iter().next()
    }
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major, in cache-sized tiles.
fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0f32; values.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

/// Builds modules on one device and dtype from a [`TensorTable`], or from random values (`None`).
struct Builder<'a, 'b, B: Backend> {
    table: Option<&'b mut TensorTable<'a>>,
    dir: &'b Path,
    device: &'b B::Device,
    dtype: DType,
}

/// Standard deviation of random weights (transformers' `initializer_range` default).
const INIT_STD: f64 = 0.02;

/// Where a weight's values come from.
enum Source {
    /// A checkpoint's, as read.
    Data(TensorData),
    /// Ones (a norm's weight of a random model).
    Ones,
    /// Normal with standard deviation [`INIT_STD`] (the rest of a random model).
    Random,
}

impl<B: Backend> Builder<'_, '_, B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        self.read(key, shape, false)
    }

    /// `key` stored as `shape` (reversed when `transpose`, for 2-d tensors).
    fn read<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        transpose: bool,
    ) -> Result<Tensor<B, D>, LoadError> {
        let mut out_shape = shape;
        if transpose {
            out_shape.reverse();
        }
        let source = match self.table.as_deref_mut() {
            Some(table) => Source::Data(table.take(key, &shape, self.dtype, self.dir, transpose)?),
            None if key.ends_with("norm.weight") => Source::Ones,
            None => Source::Random,
        };
        let (device, dtype) = (self.device, self.dtype);
        let make = move |source: Source| match source {
            Source::Data(data) => Tensor::<B, D>::from_data(data, (device, dtype)),
            Source::Ones => Tensor::ones(out_shape, (device, dtype)),
            Source::Random => Tensor::random(
                out_shape,
                Distribution::Normal(0.0, INIT_STD),
                (device, dtype),
            ),
        };
        if key.contains(".mlp.experts.") {
            return Ok(make(source));
        }
        // Every weight but the routed experts' in a buffer of its own size (the backend's
        // persistent allocations): `MoeLm::share_experts` frees the experts once it has stacked
        // them, and a pool page that also held one of these stayed reserved (at Qwen3-30B-A3B's
        // shape the pools kept 7.8 GB beyond the weights). The work runs inside, so that the
        // buffer is allocated there.
        Ok(B::memory_persistent_allocations(device, source, |source| {
            let tensor = make(source);
            let _ = B::sync(device);
            tensor
        }))
    }

    /// A bias-free `Linear` from a Hub `[out, in]` weight, held contiguous as `[in, out]` (a
    /// transposed view would be copied by some backends on every matmul).
    fn linear(&mut self, key: &str, d_in: usize, d_out: usize) -> Result<Linear<B>, LoadError> {
        let w = self.read(&format!("{key}.weight"), [d_out, d_in], true)?;
        Ok(Linear {
            weight: Param::from_tensor(w),
            bias: None,
        })
    }

    fn norm(&mut self, key: &str, width: usize, eps: f64) -> Result<RmsNorm<B>, LoadError> {
        let w = self.tensor(&format!("{key}.weight"), [width])?;
        Ok(RmsNorm::new(Param::from_tensor(w), eps))
    }
}

/// Load a Hub checkpoint directory onto `device`, computing in `precision`.
pub fn load<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
    precision: Precision,
) -> Result<(MoeLm<B>, ModelConfig), LoadError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(LoadError::NoModelDir {
            dir: dir.to_path_buf(),
        });
    }
    let cfg = ModelConfig::from_path(dir)?;
    let shards = Shards::open(dir)?;
    let mut table = TensorTable::new(&shards, cfg.arch)?;
    let model = build(&cfg, Some(&mut table), dir, device, precision.dtype())?;
    if let Some((path, key)) = table.unused() {
        return Err(LoadError::UnexpectedTensor { path, key });
    }
    Ok((model, cfg))
}

/// A model of shape `cfg` with random weights (normal, std 0.02; norms 1), drawn on `device` from
/// the backend's generator (seed it with `B::seed`): for benchmarks at a real model's shape
/// without its checkpoint.
pub fn random<B: Backend>(cfg: &ModelConfig, device: &B::Device, precision: Precision) -> MoeLm<B> {
    build(cfg, None, Path::new("<random>"), device, precision.dtype())
        .expect("random weights cannot fail")
}

fn build<B: Backend>(
    cfg: &ModelConfig,
    table: Option<&mut TensorTable<'_>>,
    dir: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<MoeLm<B>, LoadError> {
    let mut b = Builder::<B> {
        table,
        dir,
        device,
        dtype,
    };
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
    let (q_norm_width, k_norm_width) = match cfg.qk_norm {
        QkNorm::Full => (cfg.q_dim(), cfg.kv_dim()),
        QkNorm::PerHead => (cfg.head_dim, cfg.head_dim),
    };
    let embed = b.tensor("model.embed_tokens.weight", [cfg.vocab_size, h])?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let self_attn = Attention::new(
            b.linear(&format!("{p}.self_attn.q_proj"), h, cfg.q_dim())?,
            b.linear(&format!("{p}.self_attn.k_proj"), h, cfg.kv_dim())?,
            b.linear(&format!("{p}.self_attn.v_proj"), h, cfg.kv_dim())?,
            b.linear(&format!("{p}.self_attn.o_proj"), cfg.q_dim(), h)?,
            b.norm(&format!("{p}.self_attn.q_norm"), q_norm_width, eps)?,
            b.norm(&format!("{p}.self_attn.k_norm"), k_norm_width, eps)?,
            cfg,
        );
        let mlp = |b: &mut Builder<B>, q: &str, inter: usize| -> Result<Expert<B>, LoadError> {
            Ok(Expert {
                gate_proj: b.linear(&format!("{q}.gate_proj"), h, inter)?,
                up_proj: b.linear(&format!("{q}.up_proj"), h, inter)?,
                down_proj: b.linear(&format!("{q}.down_proj"), inter, h)?,
            })
        };
        let ffn = if cfg.is_moe(l) {
            let gate = b.linear(&format!("{p}.mlp.gate"), h, cfg.num_experts)?;
            let mut experts = Vec::with_capacity(cfg.num_experts);
            for e in 0..cfg.num_experts {
                experts.push(mlp(&mut b, &format!("{p}.mlp.experts.{e}"), i)?);
            }
            FeedForward::Moe(MoeBlock::new(gate, experts, cfg))
        } else {
            FeedForward::Dense(mlp(
                &mut b,
                &format!("{p}.mlp"),
                cfg.dense_intermediate_size,
            )?)
        };
        layers.push(DecoderLayer {
            self_attn,
            mlp: ffn,
            input_layernorm: b.norm(&format!("{p}.input_layernorm"), h, eps)?,
            post_attention_layernorm: b.norm(&format!("{p}.post_attention_layernorm"), h, eps)?,
        });
    }
    let norm = b.norm("model.norm", h, eps)?;
    let has_head = b
        .table
        .as_ref()
        .is_some_and(|t| t.contains("lm_head.weight"));
    let lm_head = if cfg.tie_word_embeddings && !has_head {
        let weight = match b.table {
            // The embedding again, transposed on the host so that the head is contiguous.
            Some(_) => b.read("model.embed_tokens.weight", [cfg.vocab_size, h], true)?,
            None => embed.clone().transpose(),
        };
        Linear {
            weight: Param::from_tensor(weight),
            bias: None,
        }
    } else {
        b.linear("lm_head", h, cfg.vocab_size)?
    };
    let model = DecoderStack {
        embed_tokens: Embedding {
            weight: Param::from_tensor(embed),
        },
        layers,
        norm,
    };
    // Pages that only held a random model's intermediates go back to the device.
    let _ = B::sync(device);
    B::memory_cleanup(device);
    Ok(MoeLm::new(model, lm_head, cfg))
}

/// One tensor to write: Hub key, shape, values.
struct Entry {
    key: String,
    shape: Vec<usize>,
    data: TensorData,
}

/// Every tensor of `model` under its Hub key, in the Hub's orientation (`[out, in]` for linear
/// layers), as float32 host data: for comparing two models tensor by tensor.
pub fn named_tensors<B: Backend>(
    model: &MoeLm<B>,
    cfg: &ModelConfig,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    hub_tensors(model, cfg)
        .into_iter()
        .map(|e| {
            let values = e
                .data
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("float32 host data");
            (e.key, e.shape, values)
        })
        .collect()
}

/// Every tensor of `model` under its Hub key and in the Hub's orientation.
fn hub_tensors<B: Backend>(model: &MoeLm<B>, cfg: &ModelConfig) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut put2 = |key: String, t: Tensor<B, 2>| {
        let shape = t.dims().to_vec();
        out.push(Entry {
            key,
            shape,
            data: t.into_data(),
        });
    };
    let lin = |l: &Linear<B>| l.weight.val().transpose();
    let vec2 = |n: &RmsNorm<B>| n.weight.val().unsqueeze_dim::<2>(0);
    put2(
        "model.embed_tokens.weight".into(),
        model.model.embed_tokens.weight.val(),
    );
    for (l, layer) in model.model.layers.iter().enumerate() {
        let p = format!("model.layers.{l}");
        let a = &layer.self_attn;
        put2(format!("{p}.self_attn.q_proj.weight"), lin(&a.q_proj));
        put2(format!("{p}.self_attn.k_proj.weight"), lin(&a.k_proj));
        put2(format!("{p}.self_attn.v_proj.weight"), lin(&a.v_proj));
        put2(format!("{p}.self_attn.o_proj.weight"), lin(&a.o_proj));
        put2(format!("{p}.self_attn.q_norm.weight"), vec2(&a.q_norm));
        put2(format!("{p}.self_attn.k_norm.weight"), vec2(&a.k_norm));
        let mlps: Vec<(String, &Expert<B>)> = match &layer.mlp {
            FeedForward::Moe(moe) => {
                put2(format!("{p}.mlp.gate.weight"), lin(&moe.gate));
                moe.experts
                    .iter()
                    .enumerate()
                    .map(|(e, ex)| (format!("{p}.mlp.experts.{e}"), ex))
                    .collect()
            }
            FeedForward::Dense(ex) => vec![(format!("{p}.mlp"), ex)],
        };
        for (q, ex) in mlps {
            put2(format!("{q}.gate_proj.weight"), lin(&ex.gate_proj));
            put2(format!("{q}.up_proj.weight"), lin(&ex.up_proj));
            put2(format!("{q}.down_proj.weight"), lin(&ex.down_proj));
        }
        put2(
            format!("{p}.input_layernorm.weight"),
            vec2(&layer.input_layernorm),
        );
        put2(
            format!("{p}.post_attention_layernorm.weight"),
            vec2(&layer.post_attention_layernorm),
        );
    }
    put2("model.norm.weight".into(), vec2(&model.model.norm));
    if !cfg.tie_word_embeddings {
        put2("lm_head.weight".into(), lin(&model.lm_head));
    }
    // Norm weights are vectors on the Hub.
    for entry in &mut out {
        if entry.key.ends_with("norm.weight") {
            entry.shape = vec![entry.shape[1]];
        }
    }
    out
}

/// Save `model` as a Hub checkpoint in `dir` (created if needed): `config.json` and bf16
/// safetensors, sharded with an index past [`MAX_SHARD_BYTES`], loadable by transformers.
pub fn save<B: Backend>(
    model: &MoeLm<B>,
    cfg: &ModelConfig,
    dir: impl AsRef<Path>,
) -> Result<(), LoadError> {
    save_with_shard_size(model, cfg, dir, MAX_SHARD_BYTES)
}

/// [`save`] with an explicit shard size in bytes.
pub fn save_with_shard_size<B: Backend>(
    model: &MoeLm<B>,
    cfg: &ModelConfig,
    dir: impl AsRef<Path>,
    max_shard_bytes: usize,
) -> Result<(), LoadError> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let entries = hub_tensors(model, cfg);
    // bf16 bytes of every tensor, grouped into shards in key order.
    // (key, shape, bf16 bytes) of each tensor of a shard.
    type Shard = Vec<(String, Vec<usize>, Vec<u8>)>;
    let mut shards: Vec<Shard> = vec![Vec::new()];
    let mut size = 0usize;
    for entry in entries {
        let bytes: Vec<u8> = entry
            .data
            .iter::<f32>()
            .flat_map(|v| bf16::from_f32(v).to_le_bytes())
            .collect();
        if size > 0 && size + bytes.len() > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes.len();
        shards
            .last_mut()
            .expect("at least one shard")
            .push((entry.key, entry.shape, bytes));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    for (s, shard) in shards.iter().enumerate() {
        let name = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", s + 1)
        };
        let mut views = Vec::new();
        for (key, shape, bytes) in shard {
            total += bytes.len();
            weight_map.insert(key.clone(), name.clone());
            let view = safetensors::tensor::TensorView::new(Dtype::BF16, shape.clone(), bytes)
                .expect("bf16 byte count matches the shape");
            views.push((key.clone(), view));
        }
        let bytes = safetensors::serialize(views, Some(metadata.clone())).map_err(|e| {
            LoadError::Safetensors {
                path: dir.join(&name),
                reason: e.to_string(),
            }
        })?;
        write_file(&dir.join(&name), &bytes)?;
    }
    if n > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_file(
            &dir.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)
                .expect("json")
                .as_bytes(),
        )?;
    } else if dir.join("model.safetensors.index.json").exists() {
        let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
    }
    let mut raw = cfg.raw.clone();
    if let Some(obj) = raw.as_object_mut() {
        let key = if obj.contains_key("dtype") {
            "dtype"
        } else {
            "torch_dtype"
        };
        obj.insert(key.into(), Value::String("bfloat16".into()));
    }
    write_file(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&raw).expect("json").as_bytes(),
    )
}

/// Write `bytes` to `path`. A model directory is made whole by its writer's caller (the train
/// stage writes `final_model/` beside itself and renames it into place; see `run_dir`).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    std::fs::write(path, bytes).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}
