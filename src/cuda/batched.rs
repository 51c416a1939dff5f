//! Batched matmuls on CUDA through cuBLAS: `c_i = a_i · b_i` over a leading batch axis
//! (attention's scores and its weighted sum of values, one item per sequence and head), as one
//! operation of burn's fusion stream running one `cublasGemmStridedBatchedEx` call — forward, and
//! backward (`da_i = dc_i · b_iᵀ`, `db_i = a_iᵀ · dc_i`, the same operation on transposed views).
//!
//! The model stays generic over `B: Backend`: [`try_batched_matmul`] recognises burn's CUDA
//! backend (with or without autodiff) by type and returns `None` on any other, which then runs
//! burn's own matmul.

use burn::backend::{Autodiff, Cuda};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::FusionRuntime;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use super::cublas::{Cublas, CublasError, Mat};
use super::device_thread;
use super::grouped::available;
use crate::cube::{as_backend, back};

type Cube = CubeBackend<CudaRuntime, f32, i32, u8>;
type Fused = <Cuda as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;
type Ad = Autodiff<Cuda>;
type AdTensor = <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

#[derive(Debug, Clone)]
struct BatchedGemm {
    desc: CustomOpIr,
}

impl Operation<FusionCubeRuntime<CudaRuntime>> for BatchedGemm {
    fn execute(
        &self,
        handles: &mut HandleContainer<
            <FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle,
        >,
    ) {
        let [a, b] = [0, 1].map(|i| handles.get_float_tensor::<Cube>(&self.desc.inputs[i]));
        let out = &self.desc.outputs[0];
        let result = run(a, b, out.shape.clone()).unwrap_or_else(|e| panic!("batched matmul: {e}"));
        handles.register_float_tensor::<Cube>(&out.id, result);
    }
}

/// `t` (copied contiguous where cuBLAS cannot read it in place, [`Mat::readable`]) with its batch
/// item 0 as a GEMM operand (address filled in later) and its batch stride (elements).
fn operand(t: CubeTensor<CudaRuntime>) -> (CubeTensor<CudaRuntime>, Mat, usize) {
    let view = |t: &CubeTensor<CudaRuntime>| {
        let (shape, strides) = (t.meta.shape(), t.meta.strides());
        (
            Mat {
                ptr: 0,
                rows: shape[1],
                cols: shape[2],
                row_stride: strides[1],
                col_stride: strides[2],
            },
            strides[0],
        )
    };
    let t = match view(&t).0.readable() {
        true => t,
        false => burn_cubecl::kernel::into_contiguous(t),
    };
    let (m, stride) = view(&t);
    (t, m, stride)
}

fn run(
    a: CubeTensor<CudaRuntime>,
    b: CubeTensor<CudaRuntime>,
    out_shape: Shape,
) -> Result<CubeTensor<CudaRuntime>, CublasError> {
    let dtype = a.dtype;
    if b.dtype != dtype {
        return Err(CublasError::Dtype(b.dtype));
    }
    let ((a, ma, sa), (b, mb, sb)) = (operand(a), operand(b));
    let [batch, rows, cols] = [out_shape[0], out_shape[1], out_shape[2]];
    let client = a.client.clone();
    let device = a.device.clone();
    let out = CubeTensor::new_contiguous(
        client.clone(),
        device.clone(),
        out_shape.clone(),
        client.empty(out_shape.num_elements() * dtype.size()),
        dtype,
    );
    let operands = vec![
        a.handle.binding(),
        b.handle.binding(),
        out.handle.clone().binding(),
    ];
    let index = device.index;
    device_thread::submit(
        &device,
        "batched matmul (cuBLAS)",
        operands,
        move |ptrs, order| {
            let [pa, pb, pc] = [ptrs[0], ptrs[1], ptrs[2]];
            Cublas::run(index, order, |blas| {
                // SAFETY: the views lie in memory the task's bindings hold; the output is fresh.
                unsafe {
                    blas.gemm_strided_batched(
                        dtype,
                        Mat { ptr: pa, ..ma },
                        Mat { ptr: pb, ..mb },
                        Mat::contiguous(pc, rows, cols),
                        batch,
                        [sa, sb, rows * cols],
                    )
                }
            })
        },
    );
    Ok(out)
}

/// Register one batched GEMM on the fusion stream of its inputs.
fn fused(a: Fused, b: Fused) -> Fused {
    let client = a.client.clone();
    let dtype = a.dtype;
    let shape = Shape::new([a.shape[0], a.shape[1], b.shape[2]]);
    let streams = OperationStreams::with_inputs([&a, &b]);
    let out = TensorIr::uninit(client.create_empty_handle(), shape, dtype);
    let irs = [a.into_ir(), b.into_ir()];
    let desc = CustomOpIr::new("steermoe_batched_gemm", &irs, &[out]);
    client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            BatchedGemm { desc },
        )
        .output()
}

/// `t` with its last two axes swapped (a view).
fn t(x: Fused) -> Fused {
    <Cuda as FloatTensorOps<Cuda>>::float_swap_dims(x, 1, 2)
}

#[derive(Debug)]
struct BatchedBackward;

impl Backward<Cuda, 2> for BatchedBackward {
    /// The inputs `a` (for `b`'s gradient) and `b` (for `a`'s), kept where the other is tracked.
    type State = (Option<Fused>, Option<Fused>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Cuda>(&ops.node);
        let (a, b) = ops.state;
        let [node_a, node_b] = ops.parents;
        if let (Some(node), Some(b)) = (node_a, b) {
            grads.register::<Cuda>(node.id, fused(grad.clone(), t(b)));
        }
        if let (Some(node), Some(a)) = (node_b, a) {
            grads.register::<Cuda>(node.id, fused(t(a), grad));
        }
    }
}

fn forward_autodiff(a: Tensor<Ad, 3>, b: Tensor<Ad, 3>) -> Tensor<Ad, 3> {
    let a: AdTensor = a.into_primitive().tensor();
    let b: AdTensor = b.into_primitive().tensor();
    let output = fused(a.primitive.clone(), b.primitive.clone());
    let out = match BatchedBackward
        .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // a's gradient needs b, b's needs a.
            let state = (
                b.is_tracked().then(|| a.primitive.clone()),
                a.is_tracked().then(|| b.primitive.clone()),
            );
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `c_i = a_i · b_i` (`a` `[n, m, k]`, `b` `[n, k, p]` → `[n, m, p]`) through cuBLAS, when `B`
/// is burn's CUDA backend (with or without autodiff), the dtype is f32, bf16 or f16, and cuBLAS
/// loads; `None` otherwise.
pub fn try_batched_matmul<B: Backend>(a: &Tensor<B, 3>, b: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if !matches!(
        a.dtype(),
        burn::tensor::DType::F32 | burn::tensor::DType::BF16 | burn::tensor::DType::F16
    ) || a.dtype() != b.dtype()
    {
        return None;
    }
    if let Some(x) = as_backend::<Tensor<Ad, 3>>(a) {
        if !available(x.device().index) {
            return None;
        }
        let y = as_backend::<Tensor<Ad, 3>>(b)?;
        return back(forward_autodiff(x, y));
    }
    if let Some(x) = as_backend::<Tensor<Cuda, 3>>(a) {
        if !available(x.device().index) {
            return None;
        }
        let y = as_backend::<Tensor<Cuda, 3>>(b)?;
        let out = fused(x.into_primitive().tensor(), y.into_primitive().tensor());
        return back(Tensor::<Cuda, 3>::from_primitive(TensorPrimitive::Float(
            out,
        )));
    }
    None
}
