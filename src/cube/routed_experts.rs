//! A decode step's experts, routed only ([`routed_experts_kernel`](super::routed_experts_kernel)),
//! as one operation of burn's fusion stream on the CUDA backend: the stacked experts' two GEMMs
//! read every expert of a layer, these kernels only those the batch's tokens chose (82 of 128 a
//! layer at Qwen3-30B-A3B's shape and batch 16), with nothing read back to the host.
//!
//! They read an expert at ~80% of the GEMMs' bandwidth (H100,
//! `benches/results/routed-experts.jsonl`), so they pay only where a good share of a layer's
//! experts goes unchosen: the model decides (`model::experts::ROUTED_MAX_SHARE`).
//!
//! CUDA only (feature `cuda`): the kernels synchronise their cubes inside loops bounded by values
//! they read from memory, which WGSL's uniformity rules reject.

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeRuntime};
use burn_fusion::stream::Operation;
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer};

use super::routed_experts_kernel::{
    MAX_TOKENS, routed_down_kernel, routed_gate_up_kernel, slot_sum_kernel,
};
use super::{Cube, Fused, as_backend, back, empty_output, per_output, register};

/// `STEERMOE_ROUTED_EXPERTS` (read once): `Some(false)` for `0` (a decode step's experts run as
/// the stacked GEMMs), `Some(true)` for `1` (routed only whenever these kernels can), `None`
/// otherwise (the model's own choice, `StackedExperts::forward`'s).
pub fn routed_override() -> Option<bool> {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *MODE.get_or_init(
        || match std::env::var("STEERMOE_ROUTED_EXPERTS").as_deref() {
            Ok("0") => Some(false),
            Ok("1") => Some(true),
            _ => None,
        },
    )
}

/// Rows a group of the kernels loads before multiplying: `STEERMOE_ROUTED_UNROLL` (1, 2, 4 or
/// 8; read once), else 4.
fn unroll() -> usize {
    static UNROLL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *UNROLL.get_or_init(|| {
        std::env::var("STEERMOE_ROUTED_UNROLL")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|u| [1, 2, 4, 8].contains(u))
            .unwrap_or(4)
    })
}

/// The cube shape of a launch of the routed kernels: `lanes` units along the output columns
/// (each holding one vector of columns, so a group reads `lanes` vectors of a weight row in a
/// row), `groups` along the rows (each takes every `groups`-th row), and `pass` pairs served by
/// one pass over an expert's weights (an expert chosen by more pairs is read once per `pass`).
/// Each tile compiles to its own kernels; the sums' order depends on `groups` only through which
/// rows a group sums, so every tile gives float32 sums of the same products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Units of a cube along the output columns.
    pub lanes: usize,
    /// Units of a cube along the weights' rows.
    pub groups: usize,
    /// Pairs a pass over an expert's weights serves.
    pub pass: usize,
}

impl Tile {
    /// 16 lanes × 16 groups, passes of four pairs: the tile every earlier figure used.
    pub const DEFAULT: Tile = Tile {
        lanes: 16,
        groups: 16,
        pass: 4,
    };

    /// `lanes x groups x pass` (e.g. `32x8x4`), when it is a tile the kernels take
    /// ([`Tile::is_valid`]).
    pub fn parse(text: &str) -> Option<Tile> {
        let parts: Vec<usize> = text
            .split('x')
            .map(|p| p.trim().parse().ok())
            .collect::<Option<_>>()?;
        match parts[..] {
            [lanes, groups, pass] => Some(Tile {
                lanes,
                groups,
                pass,
            })
            .filter(Tile::is_valid),
            _ => None,
        }
    }

    /// 64 to 512 units a cube with a power-of-two count of lanes, and one to eight pairs a pass
    /// (the shared memory of a cube stays within 48 KiB).
    pub fn is_valid(&self) -> bool {
        let units = self.lanes * self.groups;
        self.lanes.is_power_of_two()
            && self.groups > 0
            && (64..=512).contains(&units)
            && (1..=8).contains(&self.pass)
    }

    /// `STEERMOE_ROUTED_TILE` (read once) when it parses, else [`Tile::DEFAULT`].
    pub fn chosen() -> Tile {
        static TILE: std::sync::OnceLock<Tile> = std::sync::OnceLock::new();
        *TILE.get_or_init(|| {
            std::env::var("STEERMOE_ROUTED_TILE")
                .ok()
                .and_then(|v| Tile::parse(&v))
                .unwrap_or(Tile::DEFAULT)
        })
    }
}

/// `Σ_s weights[t, s] · expert_{indices[t, s]}(x_t)` for every token `t`, reading only the chosen
/// experts' weights from the stacks, when `B` is burn's CUDA backend *without* autodiff, the
/// dtypes agree (float32, bf16 or f16; indices i32, weights float32) and there are at most
/// 64 tokens (the kernels' `MAX_TOKENS`); `None` otherwise.
///
/// # Shapes
/// - `x`: `[tokens, hidden]`; `gate_up`: `[hidden, 2 · experts · inter]` (every expert's gate
///   columns, then every expert's up columns); `down`: `[experts · inter, hidden]`;
///   `indices`, `weights`: `[tokens, k]` (each row `k` distinct experts below `experts`, as the
///   routers choose them) → `[tokens, hidden]`
pub fn try_routed_experts<B: Backend>(
    x: &Tensor<B, 2>,
    gate_up: &Tensor<B, 2>,
    down: &Tensor<B, 2>,
    indices: &Tensor<B, 2, Int>,
    weights: &Tensor<B, 2>,
    experts: usize,
) -> Option<Tensor<B, 2>> {
    try_routed_experts_with(x, gate_up, down, indices, weights, experts, Tile::chosen())
}

/// [`try_routed_experts`] with cubes of `tile`'s shape (`None` also for a tile that is not
/// [`Tile::is_valid`]).
pub fn try_routed_experts_with<B: Backend>(
    x: &Tensor<B, 2>,
    gate_up: &Tensor<B, 2>,
    down: &Tensor<B, 2>,
    indices: &Tensor<B, 2, Int>,
    weights: &Tensor<B, 2>,
    experts: usize,
    tile: Tile,
) -> Option<Tensor<B, 2>> {
    let [tokens, hidden] = x.dims();
    let [rows, k] = indices.dims();
    let [gate_rows, both] = gate_up.dims();
    let [down_rows, down_cols] = down.dims();
    let dtype = x.dtype();
    let supported = matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        && gate_up.dtype() == dtype
        && down.dtype() == dtype
        && indices.dtype() == DType::I32
        && weights.dtype() == DType::F32
        && weights.dims() == [rows, k];
    let shapes = rows == tokens
        && (1..=MAX_TOKENS).contains(&tokens)
        && k > 0
        && gate_rows == hidden
        && down_cols == hidden
        && both == 2 * down_rows
        && experts > 0
        && down_rows > 0
        && down_rows % experts == 0;
    if !super::enabled() || !supported || !shapes || !tile.is_valid() {
        return None;
    }
    if let Some(x) = as_backend::<Tensor<burn::backend::Cuda, 2>>(x) {
        let gate_up = as_backend::<Tensor<burn::backend::Cuda, 2>>(gate_up)?;
        let down = as_backend::<Tensor<burn::backend::Cuda, 2>>(down)?;
        let indices = as_backend::<Tensor<burn::backend::Cuda, 2, Int>>(indices)?;
        let weights = as_backend::<Tensor<burn::backend::Cuda, 2>>(weights)?;
        return back(fused(x, gate_up, down, indices, weights, experts, tile));
    }
    None
}

/// The widest vector (16 bytes at most) that divides every row of `widths` for `dtype`.
fn vector_size(dtype: DType, widths: &[usize]) -> usize {
    let mut n = 16 / dtype.size();
    while n > 1 && widths.iter().any(|w| w % n != 0) {
        n /= 2;
    }
    n
}

#[derive(Debug)]
struct RoutedExpertsOp<R, BT> {
    desc: CustomOpIr,
    experts: usize,
    tile: Tile,
    backend: PhantomData<fn() -> (R, BT)>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for RoutedExpertsOp<R, BT> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let inputs = &self.desc.inputs;
        let x = handles.get_float_tensor::<Cube<R, BT>>(&inputs[0]);
        let gate_up = into_contiguous(handles.get_float_tensor::<Cube<R, BT>>(&inputs[1]));
        let down = into_contiguous(handles.get_float_tensor::<Cube<R, BT>>(&inputs[2]));
        let indices = handles.get_int_tensor::<Cube<R, BT>>(&inputs[3]);
        let weights = handles.get_float_tensor::<Cube<R, BT>>(&inputs[4]);
        let [tokens, hidden] = [x.meta.shape()[0], x.meta.shape()[1]];
        let k = indices.meta.shape()[1];
        let experts = self.experts;
        let Tile {
            lanes,
            groups,
            pass,
        } = self.tile;
        let inter = down.meta.shape()[0] / experts;
        let dtype = x.dtype;
        let client = x.client.clone();
        let empty = |shape: [usize; 2], dtype: DType| empty_output(&x, Shape::new(shape), dtype);
        let h = empty([tokens * k, inter], dtype);
        let partial = empty([tokens * k, hidden], DType::F32);
        let out = empty([tokens, hidden], dtype);
        let cube = CubeDim::new_2d(lanes as u32, groups as u32);
        let tiles = |width: usize, n: usize| (width / n).div_ceil(lanes) as u32;

        let n = vector_size(dtype, &[inter, 2 * experts * inter]);
        // SAFETY: every index the kernels compute is in bounds for these shapes: columns are
        // guarded by `live`, rows by the weights' and inputs' shapes, pairs by `indices`' shape
        // (at most MAX_TOKENS tokens, checked by `try_routed_experts`).
        unsafe {
            routed_gate_up_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(tiles(inter, n), experts as u32, 1),
                cube,
                n,
                x.into_tensor_arg(),
                gate_up.into_tensor_arg(),
                indices.clone().into_tensor_arg(),
                weights.into_tensor_arg(),
                h.clone().into_tensor_arg(),
                inter,
                lanes,
                groups,
                pass,
                unroll(),
                dtype.into(),
            );
        }
        let n = vector_size(dtype, &[hidden]);
        // SAFETY: as above.
        unsafe {
            routed_down_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(tiles(hidden, n), experts as u32, 1),
                cube,
                n,
                h.into_tensor_arg(),
                down.into_tensor_arg(),
                indices.into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                lanes,
                groups,
                pass,
                unroll(),
                dtype.into(),
            );
        }
        let (count, dim) = per_output(tokens * hidden);
        slot_sum_kernel::launch::<R>(
            &client,
            count,
            dim,
            partial.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            k,
            dtype.into(),
        );
        handles.register_float_tensor::<Cube<R, BT>>(&self.desc.outputs[0].id, out);
    }
}

fn fused<R: CubeRuntime, BT: BoolElement>(
    x: Tensor<Fused<R, BT>, 2>,
    gate_up: Tensor<Fused<R, BT>, 2>,
    down: Tensor<Fused<R, BT>, 2>,
    indices: Tensor<Fused<R, BT>, 2, Int>,
    weights: Tensor<Fused<R, BT>, 2>,
    experts: usize,
    tile: Tile,
) -> Tensor<Fused<R, BT>, 2> {
    let shape = Shape::new(x.dims());
    let dtype = x.dtype();
    let inputs: Vec<FusionTensor<FusionCubeRuntime<R>>> = vec![
        x.into_primitive().tensor(),
        gate_up.into_primitive().tensor(),
        down.into_primitive().tensor(),
        indices.into_primitive(),
        weights.into_primitive().tensor(),
    ];
    let op = |desc| RoutedExpertsOp::<R, BT> {
        desc,
        experts,
        tile,
        backend: PhantomData,
    };
    let mut outs = register("steermoe_routed_experts", inputs, &[(shape, dtype)], op);
    Tensor::from_primitive(TensorPrimitive::Float(outs.remove(0)))
}

#[cfg(test)]
mod tests {
    use super::Tile;

    #[test]
    fn tiles_parse_and_refuse_what_the_kernels_do_not_take() {
        let t = |lanes, groups, pass| Tile {
            lanes,
            groups,
            pass,
        };
        assert_eq!(Tile::parse("16x16x4"), Some(Tile::DEFAULT));
        assert_eq!(Tile::parse("32x8x8"), Some(t(32, 8, 8)));
        assert_eq!(Tile::parse(" 64 x 2 x 1"), Some(t(64, 2, 1)));
        for bad in [
            "",
            "16x16",
            "16x16x4x1",
            "24x8x4",
            "16x2x4",
            "32x32x4",
            "16x16x9",
            "16x16x0",
        ] {
            assert_eq!(Tile::parse(bad), None, "{bad:?}");
        }
    }
}
