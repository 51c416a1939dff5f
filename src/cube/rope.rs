//! Rotary position embedding as one kernel ([`rope_kernel`](super::rope_kernel)) and one
//! operation of burn's fusion stream, for inference: it replaces the flip of the halves, the
//! casts of cos and sin and the products and sum (five launches a layer for q and k each in a
//! decode step, burn's fusion splitting them around the flip).

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{BoolElement, CubeRuntime};
use burn_fusion::stream::Operation;
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer};

use super::rope_kernel::rope_kernel;
use super::{Cube, Fused, as_backend, back, empty_output, per_output, register};

/// `x · cos + swapped halves · sin` as `model::rope::apply_rope` computes it (see
/// [`rope_kernel`] for where it rounds), in one kernel, when `B` is burn's CUDA or wgpu backend
/// *without* autodiff and cos and sin are float32; `None` otherwise.
///
/// # Shapes
/// - `x`: `[batch, seq, heads, dim]` (`dim` even); `cos`, `sin`: `[batch, seq, 1, dim]` float32
///   (the sin's first half negated) → `[batch, seq, heads, dim]` contiguous
pub fn try_rope<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    let [batch, seq, _, dim] = x.dims();
    let supported = matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && cos.dtype() == DType::F32
        && sin.dtype() == DType::F32;
    let angles = [batch, seq, 1, dim];
    if !super::enabled()
        || !supported
        || dim % 2 != 0
        || cos.dims() != angles
        || sin.dims() != angles
        || x.shape().num_elements() == 0
    {
        return None;
    }
    macro_rules! on {
        ($fused:ty) => {
            if let Some(x) = as_backend::<Tensor<$fused, 4>>(x) {
                let cos = as_backend::<Tensor<$fused, 4>>(cos)?;
                let sin = as_backend::<Tensor<$fused, 4>>(sin)?;
                return back(fused(x, cos, sin));
            }
        };
    }
    each_gpu_backend!(on);
    None
}

#[derive(Debug)]
struct RopeOp<R, BT> {
    desc: CustomOpIr,
    backend: PhantomData<fn() -> (R, BT)>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for RopeOp<R, BT> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let [x, cos, sin] =
            [0, 1, 2].map(|i| handles.get_float_tensor::<Cube<R, BT>>(&self.desc.inputs[i]));
        let out_ir = &self.desc.outputs[0];
        let client = x.client.clone();
        let shape = out_ir.shape.clone();
        let n = shape.num_elements();
        let dtype = x.dtype;
        let out = empty_output(&x, shape, dtype);
        let (count, dim) = per_output(n);
        rope_kernel::launch::<R>(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            dtype.into(),
        );
        handles.register_float_tensor::<Cube<R, BT>>(&out_ir.id, out);
    }
}

fn fused<R: CubeRuntime, BT: BoolElement>(
    x: Tensor<Fused<R, BT>, 4>,
    cos: Tensor<Fused<R, BT>, 4>,
    sin: Tensor<Fused<R, BT>, 4>,
) -> Tensor<Fused<R, BT>, 4> {
    let shape = Shape::new(x.dims());
    let dtype = x.dtype();
    let inputs: Vec<FusionTensor<FusionCubeRuntime<R>>> = [x, cos, sin]
        .into_iter()
        .map(|t| t.into_primitive().tensor())
        .collect();
    let op = |desc| RopeOp::<R, BT> {
        desc,
        backend: PhantomData,
    };
    let mut outs = register("steermoe_rope", inputs, &[(shape, dtype)], op);
    Tensor::from_primitive(TensorPrimitive::Float(outs.remove(0)))
}
