//! cubecl kernels of this crate, on burn's GPU backends (CUDA and wgpu): the routers' top-k (with
//! or without autodiff) and, for inference, a router's whole decision ([`routing`]), a decode
//! step's attention over the KV cache ([`attention`]), the dense experts' SwiGLU times routing
//! weight ([`swiglu`]), a decode step's experts reading only those routed to (CUDA,
//! [`routed_experts`]), RoPE ([`rope`]) and RMSNorm, for inference with the residual add before
//! it ([`norm`]), each as one kernel and one operation of burn's fusion stream.
//!
//! Why: a decode step at the OLMoE-1B-7B shape launched ~66 burn kernels a layer, about twenty of
//! them the routing's (softmax, the rank-based top-k's comparisons, casts and sums, the gather,
//! the dense experts' scatter) and about ten its attention's, and a step's time is bound by the
//! number of launches (`benches/results/kernels.jsonl`, issue 17). The model stays generic over
//! `B: Backend`: each `try_*` function recognises these backends by type and returns `None` on
//! any other (the CPU), which then runs burn's ops; each computes what those ops compute.
//!
//! `STEERMOE_CUBE_KERNELS=0` turns them off (burn's ops run everywhere), for comparing the two.
//!
//! A leaf: it depends on burn and its cubecl crates, nothing else of this crate.

/// Expand the calling function's local macro `$on!(backend)` once for each of burn's GPU
/// backends compiled in (CUDA, wgpu): how every `try_*` here recognises them.
macro_rules! each_gpu_backend {
    ($on:ident) => {
        #[cfg(feature = "cuda")]
        $on!(burn::backend::Cuda);
        #[cfg(feature = "wgpu")]
        $on!(burn::backend::Wgpu);
    };
}

pub mod attention;
mod attention_kernel;
pub mod norm;
mod norm_kernel;
pub mod rope;
mod rope_kernel;
#[cfg(feature = "cuda")]
pub mod routed_experts;
#[cfg(feature = "cuda")]
mod routed_experts_kernel;
pub mod routing;
mod routing_kernels;
pub mod swiglu;
mod swiglu_kernel;

use std::any::Any;

use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionTensor};
use burn_ir::{CustomOpIr, OperationIr, TensorIr};

pub use attention::try_decode_attention;
pub use norm::{try_add_rms_norm, try_rms_norm};
pub use rope::try_rope;
#[cfg(feature = "cuda")]
pub use routed_experts::{try_routed_experts, try_routed_experts_with};
pub use routing::{Route, RouteKernel, try_route, try_route_by, try_top_k};
pub use swiglu::try_swiglu;

/// burn's CUDA or wgpu backend below fusion (float32 and i32 element types, as burn's `Cuda` and
/// `Wgpu` aliases have them).
type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;
/// The same with fusion: what `burn::backend::Cuda` and `burn::backend::Wgpu` are.
type Fused<R, BT> = Fusion<Cube<R, BT>>;

/// Register the custom operation `op(descriptor)` (named `name`) on the fusion streams of
/// `inputs`, with outputs of these shapes and dtypes; returns the outputs.
fn register<R: CubeRuntime, O: Operation<FusionCubeRuntime<R>> + 'static>(
    name: &'static str,
    inputs: Vec<FusionTensor<FusionCubeRuntime<R>>>,
    outputs: &[(Shape, DType)],
    op: impl FnOnce(CustomOpIr) -> O,
) -> Vec<FusionTensor<FusionCubeRuntime<R>>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outs: Vec<TensorIr> = outputs
        .iter()
        .map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape.clone(), *dtype))
        .collect();
    let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &irs, &outs);
    client.register(streams, OperationIr::Custom(desc.clone()), op(desc))
}

/// A new contiguous tensor of `shape` and `dtype` on `like`'s device, its contents undefined: a
/// kernel's output.
fn empty_output<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    let bytes = shape.num_elements() * dtype.size();
    let buffer = like.client.empty(bytes);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        buffer,
        dtype,
    )
}

/// Cubes along the grid's first axis at most (WebGPU's limit an axis); the rest go on the second.
const GRID_X: usize = 65_535;

/// A grid of `cubes` cubes: up to [`GRID_X`] along the first axis, rows of them along the second
/// (a kernel finds its cube by [`cube_index`]; those past `cubes` must do nothing).
fn grid(cubes: usize) -> CubeCount {
    CubeCount::Static(cubes.min(GRID_X) as u32, cubes.div_ceil(GRID_X) as u32, 1)
}

/// The grid and cube of a kernel that runs a thread an output (SwiGLU, RoPE): 256 threads a cube,
/// enough cubes for `outputs`; thread `cube_index() · 256 + UNIT_POS_X`.
fn per_output(outputs: usize) -> (CubeCount, CubeDim) {
    const THREADS: usize = 256;
    (
        grid(outputs.div_ceil(THREADS)),
        CubeDim::new_1d(THREADS as u32),
    )
}

/// This cube's index in a [`grid`].
#[cube]
fn cube_index() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// Sum `values[0..CUBE_DIM_X]` (one entry a unit, written) into `values[0]`, by halves; every
/// unit of the cube calls it.
#[cube]
fn cube_sum(values: &mut SharedMemory<f32>) {
    cube_halves(values, false);
}

/// The largest of `values[0..CUBE_DIM_X]` (one entry a unit, written) into `values[0]`, by
/// halves; every unit of the cube calls it.
#[cube]
fn cube_max(values: &mut SharedMemory<f32>) {
    cube_halves(values, true);
}

/// `values[0..CUBE_DIM_X]` folded into `values[0]` by halves (`values[t] ∘= values[t + half]`),
/// `∘` the maximum or the sum.
#[cube]
fn cube_halves(values: &mut SharedMemory<f32>, #[comptime] max: bool) {
    sync_cube();
    let t = UNIT_POS_X as usize;
    // The cube's size read at run time: a comptime value would not change in the loop.
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if t < half {
            let other = values[t + half];
            if max {
                if other > values[t] {
                    values[t] = other;
                }
            } else {
                values[t] += other;
            }
        }
        sync_cube();
        half /= 2;
    }
}

/// Whether the kernels run: not when `STEERMOE_CUBE_KERNELS=0` (read once).
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| !std::env::var("STEERMOE_CUBE_KERNELS").is_ok_and(|v| v == "0"))
}

/// `v` as the concrete type `T`, when it is one.
pub(crate) fn as_backend<T: Any + Clone>(v: &dyn Any) -> Option<T> {
    v.downcast_ref::<T>().cloned()
}

/// A concrete tensor back as the generic `Tensor<B, D>` (or `Tensor<B, D, Int>`) it was.
pub(crate) fn back<T: Any, U: Any>(t: T) -> Option<U> {
    (Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .ok()
        .map(|b| *b)
}
