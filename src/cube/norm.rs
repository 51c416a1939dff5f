//! RMSNorm as one kernel ([`norm_kernel`](super::norm_kernel)) and one operation of burn's fusion
//! stream, with or without autodiff (the gradient with respect to the input is one kernel too):
//! it replaces a fused reduction that burn (autotune off) runs one thread a row — ~140 µs on the
//! 16 rows of a decode step, four norms a layer — and the casts and products around it.

use std::marker::PhantomData;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_cubecl::cubecl::prelude::CubeDim;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeRuntime};
use burn_fusion::stream::Operation;
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer};

use super::norm_kernel::{add_rms_norm_kernel, rms_norm_backward_kernel, rms_norm_kernel};
use super::{Cube, Fused, as_backend, back, empty_output, grid, register};

/// `weight · (x / sqrt(mean(x²) + eps))` over the last axis, as `model::norm::RmsNorm` computes
/// it (see [`rms_norm_kernel`] for where it rounds), in one kernel, when `B` is burn's CUDA or
/// wgpu backend (with or without autodiff) and `weight` has `x`'s float dtype; `None` otherwise.
///
/// Under autodiff the gradient with respect to `x` is one kernel
/// ([`rms_norm_backward_kernel`](super::norm_kernel::rms_norm_backward_kernel), computed in float32
/// where burn's ops would round `grad · weight` to the dtype first); the weight's, when it is
/// tracked, burn's ops.
///
/// # Shapes
/// - `x`: `[..., width]` (any strides); `weight`: `[width]` → `[..., width]` contiguous
pub fn try_rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, D>> {
    if !applies(x, weight) {
        return None;
    }
    macro_rules! on {
        ($fused:ty) => {
            if let Some(x) = as_backend::<Tensor<$fused, D>>(x) {
                let weight = as_backend::<Tensor<$fused, 1>>(weight)?;
                return back(fused(x, weight, eps));
            }
            if let Some(x) = as_backend::<Tensor<Autodiff<$fused>, D>>(x) {
                let weight = as_backend::<Tensor<Autodiff<$fused>, 1>>(weight)?;
                return back(fused_autodiff(x, weight, eps));
            }
        };
    }
    each_gpu_backend!(on);
    None
}

/// A residual sum and its RMSNorm, `(x + y, norm(x + y))`, in one kernel
/// ([`add_rms_norm_kernel`](super::norm_kernel::add_rms_norm_kernel): the same bits as burn's add
/// followed by [`try_rms_norm`]), when `B` is burn's CUDA or wgpu backend *without* autodiff (a
/// decoder layer's residual add and the next norm, in inference) and the three share a float
/// dtype; `None` otherwise, and when `STEERMOE_FUSED_RESIDUAL=0` (read once: the add and the norm
/// apart, for comparing the two).
///
/// # Shapes
/// - `x`, `y`: `[..., width]` (any strides); `weight`: `[width]` → both `[..., width]` contiguous
pub fn try_add_rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    y: &Tensor<B, D>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<(Tensor<B, D>, Tensor<B, D>)> {
    static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let fused =
        *FUSED.get_or_init(|| !std::env::var("STEERMOE_FUSED_RESIDUAL").is_ok_and(|v| v == "0"));
    if !fused || !applies(x, weight) || y.dtype() != x.dtype() || y.dims() != x.dims() {
        return None;
    }
    macro_rules! on {
        ($fused:ty) => {
            if let Some(x) = as_backend::<Tensor<$fused, D>>(x) {
                let y = as_backend::<Tensor<$fused, D>>(y)?;
                let weight = as_backend::<Tensor<$fused, 1>>(weight)?;
                let (sum, normed) = add_fused(x, y, weight, eps);
                return Some((back(sum)?, back(normed)?));
            }
        };
    }
    each_gpu_backend!(on);
    None
}

/// Whether the norm kernels take `x` and `weight`: kernels on, a float dtype the two share, a
/// weight as wide as `x`'s last axis, and something to normalise.
fn applies<B: Backend, const D: usize>(x: &Tensor<B, D>, weight: &Tensor<B, 1>) -> bool {
    let width = x.dims()[D - 1];
    super::enabled()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && weight.dtype() == x.dtype()
        && weight.dims() == [width]
        && width != 0
        && x.shape().num_elements() != 0
}

/// Which kernel an [`RmsNormOp`] launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Inputs `[x, weight]` → `[norm(x)]`.
    Forward,
    /// Inputs `[x, weight, grad]` → `[dx]`.
    Backward,
    /// Inputs `[x, y, weight]` → `[x + y, norm(x + y)]`.
    AddForward,
}

/// One of the RMSNorm kernels as an operation of burn's fusion stream.
#[derive(Debug)]
struct RmsNormOp<R, BT> {
    desc: CustomOpIr,
    eps: f32,
    kind: Kind,
    backend: PhantomData<fn() -> (R, BT)>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for RmsNormOp<R, BT> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let input = |i: usize, handles: &mut HandleContainer<_>| {
            into_contiguous(handles.get_float_tensor::<Cube<R, BT>>(&self.desc.inputs[i]))
        };
        let x = input(0, handles);
        let weight_at = match self.kind {
            Kind::AddForward => 2,
            Kind::Forward | Kind::Backward => 1,
        };
        let weight = input(weight_at, handles);
        let out_ir = &self.desc.outputs[0];
        let client = x.client.clone();
        let shape = out_ir.shape.clone();
        let width = weight.meta.shape()[0];
        let rows = shape.num_elements() / width;
        let out = empty_output(&x, shape.clone(), x.dtype);
        // A thread per feature up to 256 (at least a warp), the rest in strides.
        let threads = width.next_power_of_two().clamp(32, 256);
        let dtype = x.dtype;
        let count = grid(rows);
        let dim = CubeDim::new_1d(threads as u32);
        match self.kind {
            Kind::Forward => rms_norm_kernel::launch::<R>(
                &client,
                count,
                dim,
                x.into_tensor_arg(),
                weight.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                self.eps,
                width as f32,
                rows,
                threads,
                dtype.into(),
            ),
            Kind::Backward => {
                let grad = input(2, handles);
                rms_norm_backward_kernel::launch::<R>(
                    &client,
                    count,
                    dim,
                    x.into_tensor_arg(),
                    weight.into_tensor_arg(),
                    grad.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    self.eps,
                    width as f32,
                    rows,
                    threads,
                    dtype.into(),
                )
            }
            Kind::AddForward => {
                let y = input(1, handles);
                let normed = empty_output(&x, shape, x.dtype);
                add_rms_norm_kernel::launch::<R>(
                    &client,
                    count,
                    dim,
                    x.into_tensor_arg(),
                    y.into_tensor_arg(),
                    weight.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    normed.clone().into_tensor_arg(),
                    self.eps,
                    width as f32,
                    rows,
                    threads,
                    dtype.into(),
                );
                handles.register_float_tensor::<Cube<R, BT>>(&self.desc.outputs[1].id, normed);
            }
        }
        handles.register_float_tensor::<Cube<R, BT>>(&out_ir.id, out);
    }
}

type Primitive<R> = FusionTensor<FusionCubeRuntime<R>>;

/// Register the forward kernel (`grad` `None`) or the gradient's on the fusion stream: an output
/// of `x`'s shape and dtype.
fn launch<R: CubeRuntime, BT: BoolElement>(
    x: Primitive<R>,
    weight: Primitive<R>,
    grad: Option<Primitive<R>>,
    eps: f32,
) -> Primitive<R> {
    let (shape, dtype) = (x.shape.clone(), x.dtype);
    let kind = match grad.is_some() {
        false => Kind::Forward,
        true => Kind::Backward,
    };
    let inputs = [x, weight].into_iter().chain(grad).collect();
    let name = match kind {
        Kind::Backward => "steermoe_rms_norm_backward",
        _ => "steermoe_rms_norm",
    };
    let op = |desc| RmsNormOp::<R, BT> {
        desc,
        eps,
        kind,
        backend: PhantomData,
    };
    register(name, inputs, &[(shape, dtype)], op).remove(0)
}

/// A tensor of burn's fused CUDA or wgpu backend.
type FusedTensor<R, BT, const D: usize> = Tensor<Fused<R, BT>, D>;

fn add_fused<R: CubeRuntime, BT: BoolElement, const D: usize>(
    x: FusedTensor<R, BT, D>,
    y: FusedTensor<R, BT, D>,
    weight: FusedTensor<R, BT, 1>,
    eps: f64,
) -> (FusedTensor<R, BT, D>, FusedTensor<R, BT, D>) {
    let shape = x.shape();
    let inputs: Vec<Primitive<R>> = vec![
        x.into_primitive().tensor(),
        y.into_primitive().tensor(),
        weight.into_primitive().tensor(),
    ];
    let dtype = inputs[0].dtype;
    let op = |desc| RmsNormOp::<R, BT> {
        desc,
        eps: eps as f32,
        kind: Kind::AddForward,
        backend: PhantomData,
    };
    let outputs = [(shape.clone(), dtype), (shape, dtype)];
    let mut out = register("steermoe_add_rms_norm", inputs, &outputs, op);
    let wrap = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
    let normed = wrap(out.remove(1));
    (wrap(out.remove(0)), normed)
}

fn fused<R: CubeRuntime, BT: BoolElement, const D: usize>(
    x: Tensor<Fused<R, BT>, D>,
    weight: Tensor<Fused<R, BT>, 1>,
    eps: f64,
) -> Tensor<Fused<R, BT>, D> {
    let out = launch::<R, BT>(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        None,
        eps as f32,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The gradients of [`fused`]: `x`'s by the gradient kernel, the weight's (when tracked) by burn's
/// ops, `Σ_rows grad · F(x · inv)`.
#[derive(Debug)]
struct RmsNormBackward<R, BT>(PhantomData<fn() -> (R, BT)>);

impl<R: CubeRuntime, BT: BoolElement> Backward<Fused<R, BT>, 2> for RmsNormBackward<R, BT> {
    /// `x`, the weight, eps.
    type State = (Primitive<R>, Primitive<R>, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Fused<R, BT>>(&ops.node);
        let (x, weight, eps) = ops.state;
        let [node_x, node_w] = ops.parents;
        if let Some(node) = node_w {
            let width = weight.shape[0];
            let rows = x.shape.num_elements() / width;
            let as2 = |t: Primitive<R>| {
                Tensor::<Fused<R, BT>, 2>::from_primitive(TensorPrimitive::Float(t))
                    .reshape([rows, width])
            };
            let xs = as2(x.clone());
            let dtype = xs.dtype();
            let xf = xs.cast(FloatDType::F32);
            let normed =
                (xf.clone() * xf.square().mean_dim(1).add_scalar(eps).sqrt().recip()).cast(dtype);
            let dw = (as2(grad.clone()) * normed).sum_dim(0).reshape([width]);
            grads.register::<Fused<R, BT>>(node.id, dw.into_primitive().tensor());
        }
        if let Some(node) = node_x {
            grads.register::<Fused<R, BT>>(node.id, launch::<R, BT>(x, weight, Some(grad), eps));
        }
    }
}

fn fused_autodiff<R: CubeRuntime, BT: BoolElement, const D: usize>(
    x: Tensor<Autodiff<Fused<R, BT>>, D>,
    weight: Tensor<Autodiff<Fused<R, BT>>, 1>,
    eps: f64,
) -> Tensor<Autodiff<Fused<R, BT>>, D> {
    let x = x.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let output = launch::<R, BT>(
        x.primitive.clone(),
        weight.primitive.clone(),
        None,
        eps as f32,
    );
    let out = match RmsNormBackward::<R, BT>(PhantomData)
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, eps as f32), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
