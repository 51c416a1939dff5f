//! Attention of one new token per sequence over its KV cache as one kernel
//! ([`attention_kernel`](super::attention_kernel)) and one operation of burn's fusion stream, for
//! decode steps: it replaces the scores' GEMM, the scale, the mask, the softmax's reductions, the
//! cast and the GEMM with the values (about ten launches a layer).

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{BoolElement, CubeRuntime};
use burn_fusion::stream::Operation;
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer};

use super::attention_kernel::{LANES, THREADS, decode_attention_kernel, shared_words};
use super::{Cube, Fused, as_backend, back, empty_output, register};

/// Key slots above which burn's ops run instead of the kernel.
pub const MAX_SLOTS: usize = 4096;

/// Bytes of shared memory a launch may take: WebGPU's default limit a workgroup (16 KiB) on
/// wgpu, 48 KiB (any CUDA device's) on CUDA. With 128 features a head, up to 2,048 key slots
/// fit on wgpu and 4,096 on CUDA.
fn shared_budget(backend: std::any::TypeId) -> usize {
    #[cfg(feature = "cuda")]
    if backend == std::any::TypeId::of::<burn::backend::Cuda>() {
        return 48 * 1024;
    }
    let _ = backend;
    16 * 1024
}

/// Whether a launch over `slots` key slots and `dim` features a head fits `B`'s shared memory.
fn fits<B: 'static>(slots: usize, dim: usize) -> bool {
    let words = shared_words(cap(slots), dim.div_ceil(LANES));
    slots <= MAX_SLOTS && words * 4 <= shared_budget(std::any::TypeId::of::<B>())
}

/// The shared scores' size for `slots` key slots (a power of two, so that a cache growing slot by
/// slot compiles few kernels).
fn cap(slots: usize) -> usize {
    slots.next_power_of_two().max(64)
}

/// `softmax(scale · q · kᵀ, masked → −∞) · v` for one query position per sequence, as
/// `model::attention` computes it (see [`decode_attention_kernel`] for where it rounds), in one
/// kernel, when `B` is burn's CUDA or wgpu backend *without* autodiff; `None` otherwise, or when
/// `q` has more than one position or the cache more slots than the kernel's shared memory holds
/// (at most [`MAX_SLOTS`]).
///
/// # Shapes
/// - `q`: `[batch, heads, 1, dim]`; `k`, `v`: `[batch, kv_heads, slots, dim]`; `masked`:
///   `[batch, 1, 1, slots]` (`true` = may not attend) → `[batch, heads, 1, dim]`
pub fn try_decode_attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    masked: &Tensor<B, 4, Bool>,
    scale: f64,
) -> Option<Tensor<B, 4>> {
    let [batch, heads, seq, dim] = q.dims();
    let [_, kv_heads, slots, _] = k.dims();
    let supported = matches!(q.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && k.dtype() == q.dtype()
        && v.dtype() == q.dtype();
    if !super::enabled()
        || seq != 1
        || !fits::<B>(slots, dim)
        || kv_heads == 0
        || heads % kv_heads != 0
        || !supported
        || masked.dims() != [batch, 1, 1, slots]
        || k.dims()[3] != dim
    {
        return None;
    }
    macro_rules! on {
        ($fused:ty) => {
            if let Some(q) = as_backend::<Tensor<$fused, 4>>(q) {
                let k = as_backend::<Tensor<$fused, 4>>(k)?;
                let v = as_backend::<Tensor<$fused, 4>>(v)?;
                let masked = as_backend::<Tensor<$fused, 4, Bool>>(masked)?;
                return back(fused(q, k, v, masked, scale));
            }
        };
    }
    each_gpu_backend!(on);
    None
}

#[derive(Debug)]
struct DecodeAttentionOp<R, BT> {
    desc: CustomOpIr,
    scale: f32,
    backend: PhantomData<fn() -> (R, BT)>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for DecodeAttentionOp<R, BT> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let [q, k, v] =
            [0, 1, 2].map(|i| handles.get_float_tensor::<Cube<R, BT>>(&self.desc.inputs[i]));
        let masked = handles.get_bool_tensor::<Cube<R, BT>>(&self.desc.inputs[3]);
        let out_ir = &self.desc.outputs[0];
        let client = q.client.clone();
        let shape = out_ir.shape.clone();
        let out = empty_output(&q, shape.clone(), q.dtype);
        let [batch, heads, _, dim] = [shape[0], shape[1], shape[2], shape[3]];
        let slots = k.meta.shape()[2];
        // One cube per (sequence, head).
        let dtypes = [q.dtype.into(), masked.dtype.into()];
        decode_attention_kernel::launch::<R>(
            &client,
            CubeCount::Static((batch * heads) as u32, 1, 1),
            CubeDim::new_1d(THREADS as u32),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            masked.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            self.scale,
            f32::NEG_INFINITY,
            cap(slots),
            dim.div_ceil(LANES),
            dtypes,
        );
        handles.register_float_tensor::<Cube<R, BT>>(&out_ir.id, out);
    }
}

fn fused<R: CubeRuntime, BT: BoolElement>(
    q: Tensor<Fused<R, BT>, 4>,
    k: Tensor<Fused<R, BT>, 4>,
    v: Tensor<Fused<R, BT>, 4>,
    masked: Tensor<Fused<R, BT>, 4, Bool>,
    scale: f64,
) -> Tensor<Fused<R, BT>, 4> {
    let shape = Shape::new(q.dims());
    let dtype = q.dtype();
    let [q, k, v]: [FusionTensor<FusionCubeRuntime<R>>; 3] =
        [q, k, v].map(|t| t.into_primitive().tensor());
    let masked: FusionTensor<FusionCubeRuntime<R>> = masked.into_primitive();
    let op = |desc| DecodeAttentionOp::<R, BT> {
        desc,
        scale: scale as f32,
        backend: PhantomData,
    };
    let mut outs = register(
        "steermoe_decode_attention",
        vec![q, k, v, masked],
        &[(shape, dtype)],
        op,
    );
    Tensor::from_primitive(TensorPrimitive::Float(outs.remove(0)))
}
