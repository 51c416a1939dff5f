//! The routers' top-k, and for inference a router's whole decision, each as one kernel
//! ([`routing_kernels`](super::routing_kernels)) and one operation of burn's fusion stream: they
//! replace about twenty of burn's kernels a MoE layer (the softmax, the rank-based top-k's
//! comparisons, casts and sums, the gather, the dense experts' scatter).

use std::marker::PhantomData;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{BoolElement, CubeRuntime};
use burn_fusion::stream::Operation;
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer};

use super::routing_kernels as kernels;
use super::{Cube, Fused, as_backend, back, empty_output, grid, register};

/// Rows a cube (thread block) of the thread-a-row kernels covers.
const ROWS_PER_CUBE: u32 = 64;

/// How [`try_route_by`] lays a router's decision out on the device; both give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKernel {
    /// One thread a row ([`route_kernel`](super::routing_kernels::route_kernel)): many rows
    /// (prefill, training-sized batches) fill the device.
    PerRow,
    /// One cube a row ([`route_cube_kernel`](super::routing_kernels::route_cube_kernel)): a
    /// decode step's few rows each get a cube's threads.
    PerCube,
}

impl RouteKernel {
    /// Rows from which one thread a row is used: fewer take a cube each. On an H100 a cube a row
    /// took 35 µs at 1,024 rows against 65 µs a thread a row (37 against 67 at 16 rows of 128
    /// experts; `benches/results/kernels.jsonl`); larger counts were not measured. Thread-a-row
    /// time stays flat until the rows fill the device, a cube a row grows with them, so they
    /// should cross near here (8,192 rows make 8 waves of 1,024 cubes on 132 SMs).
    pub const PER_ROW_FROM: usize = 8192;

    /// The layout for `rows` rows: [`RouteKernel::PerCube`] below
    /// [`PER_ROW_FROM`](Self::PER_ROW_FROM) rows, [`RouteKernel::PerRow`] from there;
    /// `STEERMOE_ROUTE_KERNEL=row|cube` (read once) fixes one for every call.
    pub fn for_rows(rows: usize) -> Self {
        static FORCED: std::sync::OnceLock<Option<RouteKernel>> = std::sync::OnceLock::new();
        let forced =
            FORCED.get_or_init(|| match std::env::var("STEERMOE_ROUTE_KERNEL").as_deref() {
                Ok("row") => Some(Self::PerRow),
                Ok("cube") => Some(Self::PerCube),
                _ => None,
            });
        forced.unwrap_or(match rows < Self::PER_ROW_FROM {
            true => Self::PerCube,
            false => Self::PerRow,
        })
    }
}

/// The `k` largest entries of each row of `x` `[rows, n]`, in descending order (ties to the lower
/// index; NaN last), as indices `[rows, k]` — what `model::routing::top_k`'s rank-based version
/// computes — in one kernel, when `B` is burn's CUDA or wgpu backend (with or without autodiff)
/// and `x` is float32; `None` otherwise. Indices carry no gradient: gather the values from `x`.
pub fn try_top_k<B: Backend>(x: &Tensor<B, 2>, k: usize) -> Option<Tensor<B, 2, Int>> {
    if !super::enabled() || x.dtype() != DType::F32 || k > x.dims()[1] {
        return None;
    }
    macro_rules! on {
        ($fused:ty) => {
            if let Some(x) = as_backend::<Tensor<$fused, 2>>(x) {
                return back(top_k_fused(x, k));
            }
            if let Some(x) = as_backend::<Tensor<Autodiff<$fused>, 2>>(x) {
                return back(Tensor::<Autodiff<$fused>, 2, Int>::from_inner(top_k_fused(
                    x.inner(),
                    k,
                )));
            }
        };
    }
    each_gpu_backend!(on);
    None
}

/// One router's decision for inference (see [`route_kernel`](super::routing_kernels::route_kernel)).
#[derive(Debug, Clone)]
pub struct Route<B: Backend> {
    /// `[rows, k]`: the chosen experts, by descending probability.
    pub indices: Tensor<B, 2, Int>,
    /// `[rows, k]` float32: their probabilities (renormalised over the k when asked).
    pub weights: Tensor<B, 2>,
    /// `[rows, n]` float32: the same weights at their experts' columns, zero elsewhere.
    pub dense: Tensor<B, 2>,
}

/// softmax, top-k, the chosen probabilities (renormalised when `renorm`) and their dense
/// `[rows, n]` layout, of the router scores `scores` `[rows, n]` taken to float32 (any float
/// dtype: the cast is the kernel's first step), in one kernel laid out as
/// [`RouteKernel::for_rows`] picks, when `B` is burn's CUDA or wgpu backend *without* autodiff
/// (nothing here is differentiable); `None` otherwise.
pub fn try_route<B: Backend>(scores: &Tensor<B, 2>, k: usize, renorm: bool) -> Option<Route<B>> {
    try_route_by(scores, k, renorm, RouteKernel::for_rows(scores.dims()[0]))
}

/// [`try_route`] with the kernel's layout given.
pub fn try_route_by<B: Backend>(
    scores: &Tensor<B, 2>,
    k: usize,
    renorm: bool,
    kernel: RouteKernel,
) -> Option<Route<B>> {
    if !super::enabled()
        || !matches!(scores.dtype(), DType::F32 | DType::BF16 | DType::F16)
        || k > scores.dims()[1]
        || scores.dims()[0] == 0
    {
        return None;
    }
    macro_rules! on {
        ($fused:ty) => {
            if let Some(scores) = as_backend::<Tensor<$fused, 2>>(scores) {
                let [indices, weights, dense] = route_fused(scores, k, renorm, kernel);
                return Some(Route {
                    indices: back(Tensor::<$fused, 2, Int>::from_primitive(indices))?,
                    weights: back(Tensor::<$fused, 2>::from_primitive(TensorPrimitive::Float(
                        weights,
                    )))?,
                    dense: back(Tensor::<$fused, 2>::from_primitive(TensorPrimitive::Float(
                        dense,
                    )))?,
                });
            }
        };
    }
    each_gpu_backend!(on);
    None
}

/// Which kernel an [`RoutingOp`] launches.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Inputs `[x]` → `[indices]`.
    TopK { k: usize },
    /// Inputs `[scores]` → `[indices, weights, dense]`.
    Route {
        k: usize,
        renorm: bool,
        kernel: RouteKernel,
    },
}

/// One routing kernel as an operation of burn's fusion stream.
#[derive(Debug)]
struct RoutingOp<R, BT> {
    desc: CustomOpIr,
    kind: Kind,
    backend: PhantomData<fn() -> (R, BT)>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for RoutingOp<R, BT> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let x = handles.get_float_tensor::<Cube<R, BT>>(&self.desc.inputs[0]);
        let [rows, n] = [x.meta.shape()[0], x.meta.shape()[1]];
        let client = x.client.clone();
        let empty = |shape: [usize; 2], dtype: DType| empty_output(&x, Shape::new(shape), dtype);
        let cube_dim = CubeDim::new_1d(ROWS_PER_CUBE);
        let cube_count = CubeCount::Static((rows as u32).div_ceil(ROWS_PER_CUBE).max(1), 1, 1);
        let outs = &self.desc.outputs;
        match self.kind {
            Kind::TopK { k } => {
                let indices = empty([rows, k], DType::I32);
                kernels::top_k_kernel::launch::<R>(
                    &client,
                    cube_count,
                    cube_dim,
                    x.into_tensor_arg(),
                    indices.clone().into_tensor_arg(),
                    f32::NEG_INFINITY,
                    k,
                );
                handles.register_int_tensor::<Cube<R, BT>>(&outs[0].id, indices);
            }
            Kind::Route { k, renorm, kernel } => {
                let indices = empty([rows, k], DType::I32);
                let weights = empty([rows, k], DType::F32);
                let dense = empty([rows, n], DType::F32);
                let dtype = x.dtype;
                match kernel {
                    RouteKernel::PerRow => kernels::route_kernel::launch::<R>(
                        &client,
                        cube_count,
                        cube_dim,
                        x.into_tensor_arg(),
                        indices.clone().into_tensor_arg(),
                        weights.clone().into_tensor_arg(),
                        dense.clone().into_tensor_arg(),
                        f32::NEG_INFINITY,
                        k,
                        renorm,
                        dtype.into(),
                    ),
                    RouteKernel::PerCube => {
                        let threads = n.next_power_of_two().clamp(32, 256);
                        kernels::route_cube_kernel::launch::<R>(
                            &client,
                            grid(rows),
                            CubeDim::new_1d(threads as u32),
                            x.into_tensor_arg(),
                            indices.clone().into_tensor_arg(),
                            weights.clone().into_tensor_arg(),
                            dense.clone().into_tensor_arg(),
                            f32::NEG_INFINITY,
                            rows,
                            n,
                            threads,
                            k,
                            renorm,
                            dtype.into(),
                        )
                    }
                }
                handles.register_int_tensor::<Cube<R, BT>>(&outs[0].id, indices);
                handles.register_float_tensor::<Cube<R, BT>>(&outs[1].id, weights);
                handles.register_float_tensor::<Cube<R, BT>>(&outs[2].id, dense);
            }
        }
    }
}

/// Register one routing kernel on the fusion stream of `x`: outputs of these shapes and dtypes.
fn register_routing<R: CubeRuntime, BT: BoolElement>(
    x: FusionTensor<FusionCubeRuntime<R>>,
    kind: Kind,
    outputs: &[([usize; 2], DType)],
) -> Vec<FusionTensor<FusionCubeRuntime<R>>> {
    let outputs: Vec<(Shape, DType)> = outputs
        .iter()
        .map(|&(shape, dtype)| (Shape::new(shape), dtype))
        .collect();
    register("steermoe_routing", vec![x], &outputs, |desc| RoutingOp::<
        R,
        BT,
    > {
        desc,
        kind,
        backend: PhantomData,
    })
}

fn top_k_fused<R: CubeRuntime, BT: BoolElement>(
    x: Tensor<Fused<R, BT>, 2>,
    k: usize,
) -> Tensor<Fused<R, BT>, 2, Int> {
    let [rows, _] = x.dims();
    let x = x.into_primitive().tensor();
    let mut out = register_routing::<R, BT>(x, Kind::TopK { k }, &[([rows, k], DType::I32)]);
    Tensor::from_primitive(out.remove(0))
}

fn route_fused<R: CubeRuntime, BT: BoolElement>(
    scores: Tensor<Fused<R, BT>, 2>,
    k: usize,
    renorm: bool,
    kernel: RouteKernel,
) -> [FusionTensor<FusionCubeRuntime<R>>; 3] {
    let [rows, n] = scores.dims();
    let scores = scores.into_primitive().tensor();
    let outputs = [
        ([rows, k], DType::I32),
        ([rows, k], DType::F32),
        ([rows, n], DType::F32),
    ];
    let out = register_routing::<R, BT>(scores, Kind::Route { k, renorm, kernel }, &outputs);
    out.try_into()
        .unwrap_or_else(|_| unreachable!("three outputs registered"))
}
