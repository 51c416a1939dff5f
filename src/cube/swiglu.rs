//! The dense experts' SwiGLU times routing weight as one kernel
//! ([`swiglu_kernel`](super::swiglu_kernel)) and one operation of burn's fusion stream, for
//! decode steps: it replaces about a dozen launches a layer (burn's float32 sigmoid as casts,
//! negations, exponentials and a logarithm, then three products, which its fusion ran one by one
//! between the routing kernel and the GEMMs).

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{BoolElement, CubeRuntime};
use burn_fusion::stream::Operation;
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer};

use super::swiglu_kernel::swiglu_kernel;
use super::{Cube, Fused, as_backend, back, empty_output, per_output, register};

/// `silu(g) · u · w` of every expert's columns, as `StackedExperts::forward` computes it with
/// burn's ops (see [`swiglu_kernel`] for where it rounds), in one kernel, when `B` is burn's CUDA
/// or wgpu backend *without* autodiff and `weights` is float32; `None` otherwise.
///
/// # Shapes
/// - `gate_up`: `[tokens, 2 · experts · inter]` (every expert's gate columns, then every
///   expert's up columns); `weights`: `[tokens, experts]` float32 → `[tokens, experts · inter]`
pub fn try_swiglu<B: Backend>(
    gate_up: &Tensor<B, 2>,
    weights: &Tensor<B, 2>,
    inter: usize,
) -> Option<Tensor<B, 2>> {
    let [tokens, both] = gate_up.dims();
    let [rows, experts] = weights.dims();
    let supported = matches!(gate_up.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && weights.dtype() == DType::F32;
    if !super::enabled()
        || !supported
        || rows != tokens
        || inter == 0
        || both != 2 * experts * inter
        || tokens == 0
    {
        return None;
    }
    macro_rules! on {
        ($fused:ty) => {
            if let Some(gate_up) = as_backend::<Tensor<$fused, 2>>(gate_up) {
                let weights = as_backend::<Tensor<$fused, 2>>(weights)?;
                return back(fused(gate_up, weights, inter));
            }
        };
    }
    each_gpu_backend!(on);
    None
}

#[derive(Debug)]
struct SwigluOp<R, BT> {
    desc: CustomOpIr,
    inter: usize,
    backend: PhantomData<fn() -> (R, BT)>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for SwigluOp<R, BT> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let gate_up = handles.get_float_tensor::<Cube<R, BT>>(&self.desc.inputs[0]);
        let weights = handles.get_float_tensor::<Cube<R, BT>>(&self.desc.inputs[1]);
        let out_ir = &self.desc.outputs[0];
        let client = gate_up.client.clone();
        let shape = out_ir.shape.clone();
        let n = shape.num_elements();
        let dtype = gate_up.dtype;
        let out = empty_output(&gate_up, shape, dtype);
        let (count, dim) = per_output(n);
        swiglu_kernel::launch::<R>(
            &client,
            count,
            dim,
            gate_up.into_tensor_arg(),
            weights.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            self.inter,
            dtype.into(),
        );
        handles.register_float_tensor::<Cube<R, BT>>(&out_ir.id, out);
    }
}

fn fused<R: CubeRuntime, BT: BoolElement>(
    gate_up: Tensor<Fused<R, BT>, 2>,
    weights: Tensor<Fused<R, BT>, 2>,
    inter: usize,
) -> Tensor<Fused<R, BT>, 2> {
    let [tokens, both] = gate_up.dims();
    let shape = Shape::new([tokens, both / 2]);
    let dtype = gate_up.dtype();
    let inputs: Vec<FusionTensor<FusionCubeRuntime<R>>> = vec![
        gate_up.into_primitive().tensor(),
        weights.into_primitive().tensor(),
    ];
    let op = |desc| SwigluOp::<R, BT> {
        desc,
        inter,
        backend: PhantomData,
    };
    let mut outs = register("steermoe_swiglu", inputs, &[(shape, dtype)], op);
    Tensor::from_primitive(TensorPrimitive::Float(outs.remove(0)))
}
