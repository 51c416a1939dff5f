//! How many sequences a generation (or scoring) call takes together: a number from the config, or
//! `"auto"`: as many as the device's free memory holds, by an estimate of what one more row costs
//! (its KV cache, the prompt pass's activations and attention scores, its logits, its captured
//! routing). A decode step reads every weight once for all its rows, so on a GPU more rows cost
//! little more time until the memory runs out.
//!
//! The estimate is deliberately generous ([`RowCost`]) and only [`HEADROOM`] of the free memory
//! is planned for; where the device's free memory is not known (the CPU, wgpu), `"auto"` is the
//! caller's fallback: what the fixed default was before, so that a run there is unchanged.

use std::fmt;

use burn::tensor::backend::Backend;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::MoeLm;
use crate::validate::{Invalid, at_least};

/// Share of the free memory `"auto"` plans for.
pub const HEADROOM: f64 = 0.8;
/// Most rows `"auto"` picks (past this a decode step is no longer bound by reading the weights).
pub const MAX_AUTO_ROWS: usize = 256;

/// A count in a config: a number, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCount {
    /// Decided at run time from the device's free memory.
    Auto,
    /// This many.
    Fixed(usize),
}

impl BatchCount {
    /// At least `min` when fixed.
    pub fn validate(&self, key: &str, min: usize) -> Result<(), Invalid> {
        match self {
            BatchCount::Auto => Ok(()),
            BatchCount::Fixed(n) => at_least(key, *n, min),
        }
    }

    /// The fixed number, or `auto()` for `"auto"`.
    pub fn or_else(self, auto: impl FnOnce() -> usize) -> usize {
        match self {
            BatchCount::Auto => auto(),
            BatchCount::Fixed(n) => n,
        }
    }
}

impl fmt::Display for BatchCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchCount::Auto => f.write_str("auto"),
            BatchCount::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for BatchCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchCount::Auto => s.serialize_str("auto"),
            BatchCount::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for BatchCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| D::Error::custom("expected a whole number or \"auto\""))?
        {
            Raw::Number(n) => Ok(BatchCount::Fixed(n)),
            Raw::Text(t) if t == "auto" => Ok(BatchCount::Auto),
            Raw::Text(t) => Err(D::Error::custom(format!(
                "expected a whole number or \"auto\", got \"{t}\""
            ))),
        }
    }
}

/// What one more row of a call holds on the device, from the model's shape (bytes; an upper
/// estimate: every large intermediate of the prompt pass counted as if all were alive at once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowCost {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Query width (heads × head width).
    pub q_width: usize,
    /// Key (and value) width a layer keeps a position.
    pub kv_width: usize,
    /// Experts a MoE layer.
    pub experts: usize,
    /// Experts a token.
    pub top_k: usize,
    /// An expert's width.
    pub inter: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Bytes of an activation.
    pub elem: usize,
}

impl RowCost {
    /// A token's activations in a full pass, besides attention's scores: the hidden states and
    /// residuals, the q/k/v projections, the k chosen experts' gate, up and product, and the
    /// router's logits and probabilities in float32.
    fn token(&self) -> usize {
        let widths = 12 * self.hidden + 3 * (self.q_width + 2 * self.kv_width);
        let experts = 2 * self.top_k * (self.hidden + 3 * self.inter);
        (widths + experts) * self.elem + 2 * self.experts * 4
    }

    /// Attention's scores over `seq` positions for one position: float32 scores, probabilities
    /// and their cast.
    fn scores(&self, seq: usize) -> usize {
        3 * self.heads * seq * 4
    }

    /// A generated row: a `prompt`-token prompt pass, then `new` decode steps (`capture`: every
    /// layer's router logits kept on the device in float32, as collection keeps them).
    pub fn generation(&self, prompt: usize, new: usize, capture: bool) -> usize {
        let positions = prompt + new + 1;
        let kv = self.layers * 2 * self.kv_width * positions * self.elem;
        let prefill = prompt * (self.token() + self.scores(prompt));
        let logits = 3 * self.vocab * 4;
        let routing = match capture {
            true => self.layers * positions * self.experts * 4,
            false => 0,
        };
        kv + prefill + logits + routing
    }

    /// A scored row of `seq` tokens (a teacher-forced pass with float32 logits at every position
    /// and their log-softmax).
    pub fn scoring(&self, seq: usize) -> usize {
        seq * (self.token() + self.scores(seq) + 3 * self.vocab * 4)
    }
}

impl RowCost {
    /// `model`'s: its first layer's attention and first MoE block's experts, activations in its
    /// LM head's dtype.
    pub fn of<B: Backend>(model: &MoeLm<B>) -> Self {
        let [hidden, vocab] = model.lm_head.weight.dims();
        let attention = &model.model.layers[0].self_attn;
        let block = model.moe_blocks().next();
        Self {
            layers: model.num_layers(),
            hidden,
            heads: attention.num_heads(),
            q_width: attention.q_proj.weight.dims()[1],
            kv_width: attention.k_proj.weight.dims()[1],
            experts: model.num_experts(),
            top_k: block.map_or(0, |b| b.top_k()),
            inter: block
                .and_then(|b| b.experts.first())
                .map_or(0, |e| e.gate_proj.weight.dims()[1]),
            vocab,
            elem: model.lm_head.weight.dtype().size(),
        }
    }
}

/// The rows `"auto"` picks with `free` bytes free on the device and `per_row` bytes a row: as many
/// as [`HEADROOM`] of it holds, at least 1 and at most [`MAX_AUTO_ROWS`], a multiple of 8 from 16
/// up.
pub fn rows_that_fit(free: u64, per_row: usize) -> usize {
    let rows = (free as f64 * HEADROOM / per_row.max(1) as f64).floor() as usize;
    let rows = rows.clamp(1, MAX_AUTO_ROWS);
    match rows >= 16 {
        true => rows / 8 * 8,
        false => rows,
    }
}

/// Bytes `device` can still allocate (the driver's free memory and what cubecl's pools hold
/// unused), when it is a CUDA device; `None` otherwise (the CPU and wgpu do not say).
pub fn free_memory<B: Backend>(device: &B::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Some(free) = crate::cuda::free_memory(device) {
        return Some(free);
    }
    let _ = device;
    None
}

/// `count` (the config's `key`) resolved on `device`: the fixed number, or with `"auto"` the rows
/// that fit at `per_row` bytes each (logged), or `fallback` where the free memory is not known.
pub fn resolve<B: Backend>(
    key: &str,
    count: BatchCount,
    device: &B::Device,
    per_row: impl FnOnce() -> usize,
    fallback: usize,
) -> usize {
    count.or_else(|| match free_memory::<B>(device) {
        Some(free) => {
            let per_row = per_row();
            let rows = rows_that_fit(free, per_row);
            tracing::info!(
                "{key} = \"auto\": {rows} rows ({:.1} GiB free, about {:.0} MiB a row)",
                free as f64 / (1u64 << 30) as f64,
                per_row as f64 / (1u64 << 20) as f64
            );
            rows
        }
        None => fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Table {
        n: BatchCount,
    }

    fn parse(s: &str) -> Result<Table, String> {
        toml::from_str::<Table>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn a_count_is_a_number_or_auto() {
        assert_eq!(parse("n = 32").unwrap().n, BatchCount::Fixed(32));
        assert_eq!(parse("n = \"auto\"").unwrap().n, BatchCount::Auto);
        let err = parse("n = \"many\"").unwrap_err();
        assert!(err.contains("\"many\"") && err.contains("auto"), "{err}");
        assert!(parse("n = -3").unwrap_err().contains("whole number"));
        for n in [BatchCount::Auto, BatchCount::Fixed(7)] {
            let text = toml::to_string(&Table { n }).unwrap();
            assert_eq!(parse(&text).unwrap().n, n, "{text}");
        }
        assert_eq!(BatchCount::Fixed(5).or_else(|| 9), 5);
        assert_eq!(BatchCount::Auto.or_else(|| 9), 9);
        assert!(BatchCount::Fixed(0).validate("eval.batch_size", 1).is_err());
        assert!(BatchCount::Auto.validate("eval.batch_size", 1).is_ok());
    }

    /// OLMoE-1B-7B in bf16.
    fn olmoe() -> RowCost {
        RowCost {
            layers: 16,
            hidden: 2048,
            heads: 16,
            q_width: 2048,
            kv_width: 2048,
            experts: 64,
            top_k: 8,
            inter: 1024,
            vocab: 50304,
            elem: 2,
        }
    }

    #[test]
    fn a_row_costs_its_cache_activations_logits_and_routing() {
        let c = olmoe();
        // Per prompt token: (12·2048 + 3·6144 + 2·8·(2048 + 3072)) · 2 + 2·64·4 = 250,368 bytes.
        assert_eq!(c.token(), 250_368);
        let (prompt, new) = (464, 48);
        let kv = 16 * 2 * 2048 * 513 * 2;
        let prefill = 464 * (250_368 + 3 * 16 * 464 * 4);
        let logits = 3 * 50304 * 4;
        assert_eq!(c.generation(prompt, new, false), kv + prefill + logits);
        assert_eq!(
            c.generation(prompt, new, true),
            kv + prefill + logits + 16 * 513 * 64 * 4
        );
        assert_eq!(
            c.scoring(512),
            512 * (250_368 + 3 * 16 * 512 * 4 + 3 * 50304 * 4)
        );
    }

    #[test]
    fn auto_plans_for_part_of_the_free_memory() {
        // 20 GiB free at 100 MiB a row: 0.8 · 204.8 = 163.8 → 160 (a multiple of 8).
        assert_eq!(rows_that_fit(20 << 30, 100 << 20), 160);
        assert_eq!(rows_that_fit(1 << 40, 1), MAX_AUTO_ROWS);
        assert_eq!(rows_that_fit(0, 100), 1);
        // Below 16 rows, every row that fits.
        assert_eq!(rows_that_fit(1000, 100), 8);
        assert_eq!(rows_that_fit(1300, 100), 10);
        // OLMoE-1B-7B's eval rows (464 + 48 tokens) with 60 GiB free.
        // 225,351,168 bytes a row: 0.8 · 60 GiB / that = 228.7 → 224.
        let per_row = olmoe().generation(464, 48, false);
        assert_eq!(per_row, 225_351_168);
        assert_eq!(rows_that_fit(60 << 30, per_row), 224);
    }
}
