//! The grouped expert GEMM on CUDA: one MoE projection for every expert of a layer, its tokens
//! sorted by expert, as one operation of burn's fusion stream that runs one cuBLAS GEMM per
//! expert — forward, and backward (input gradients through every expert on the path, weight
//! gradients only for the experts that train).
//!
//! The model stays generic over `B: Backend`: [`try_grouped_linear`] recognises burn's CUDA
//! backend (with or without autodiff) by type and returns `None` on any other, which then runs
//! burn's own matmuls. What each expert computes is exactly `x_e · W_e`, as on every backend.

use burn::backend::{Autodiff, Cuda};
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::server::Binding;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::FusionRuntime;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use super::cublas::{Cublas, CublasError, Mat, Order};
use super::device_thread;
use crate::cube::{as_backend, back};

type Cube = CubeBackend<CudaRuntime, f32, i32, u8>;
type Fused = <Cuda as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;
type Ad = Autodiff<Cuda>;
type AdTensor = <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// Which products one [`GroupedGemm`] computes; rows `s_e..s_e + counts[e]` belong to expert `e`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Inputs `[x, W_0 … W_E-1]` → `y [n, out]`, `y_e = x_e · W_e`.
    Forward,
    /// Inputs `[dy, W_0 … W_E-1]` → `dx [n, in]`, `dx_e = dy_e · W_eᵀ`.
    InputGrad,
    /// Inputs `[x, dy]` → `dW [slots, in, out]`, `dW_t = x_eᵀ · dy_e` for `e = slots[t]`.
    WeightGrad,
}

#[derive(Debug, Clone)]
struct GroupedGemm {
    desc: CustomOpIr,
    kind: Kind,
    counts: Vec<usize>,
    slots: Vec<usize>,
}

impl Operation<FusionCubeRuntime<CudaRuntime>> for GroupedGemm {
    fn execute(
        &self,
        handles: &mut HandleContainer<
            <FusionCubeRuntime<CudaRuntime> as FusionRuntime>::FusionHandle,
        >,
    ) {
        let inputs: Vec<CubeTensor<CudaRuntime>> = self
            .desc
            .inputs
            .iter()
            .map(|ir| handles.get_float_tensor::<Cube>(ir))
            .collect();
        let out = &self.desc.outputs[0];
        let result = run(
            self.kind,
            inputs,
            &self.counts,
            &self.slots,
            out.shape.clone(),
        )
        .unwrap_or_else(|e| panic!("grouped expert GEMM ({:?}): {e}", self.kind));
        handles.register_float_tensor::<Cube>(&out.id, result);
    }
}

/// A 2-d tensor of this shape and strides as a GEMM operand at `ptr`.
fn mat(shape: &Shape, strides: &[usize], ptr: u64) -> Mat {
    Mat {
        ptr,
        rows: shape[0],
        cols: shape[1],
        row_stride: strides[0],
        col_stride: strides[1],
    }
}

/// Whether cuBLAS can read `t` (2-d) in place ([`Mat::readable`]).
fn readable(t: &CubeTensor<CudaRuntime>) -> bool {
    mat(t.meta.shape(), t.meta.strides(), 0).readable()
}

fn run(
    kind: Kind,
    inputs: Vec<CubeTensor<CudaRuntime>>,
    counts: &[usize],
    slots: &[usize],
    out_shape: Shape,
) -> Result<CubeTensor<CudaRuntime>, CublasError> {
    let dtype = inputs[0].dtype;
    if let Some(other) = inputs.iter().find(|t| t.dtype != dtype) {
        return Err(CublasError::Dtype(other.dtype));
    }
    let elem = dtype.size();
    let client = inputs[0].client.clone();
    let device = inputs[0].device.clone();
    let inputs: Vec<_> = inputs
        .into_iter()
        .map(|t| {
            if readable(&t) {
                t
            } else {
                burn_cubecl::kernel::into_contiguous(t)
            }
        })
        .collect();
    let out = CubeTensor::new_contiguous(
        client.clone(),
        device.clone(),
        out_shape.clone(),
        client.empty(out_shape.num_elements() * elem),
        dtype,
    );
    // Looked up and issued on cubecl's device thread, in order with burn's kernels, not waited for.
    let views: Vec<(Shape, Vec<usize>)> = inputs
        .iter()
        .map(|t| (t.meta.shape().clone(), t.meta.strides().to_vec()))
        .collect();
    let mut operands: Vec<Binding> = inputs.into_iter().map(|t| t.handle.binding()).collect();
    operands.push(out.handle.clone().binding());
    let (counts, slots) = (counts.to_vec(), slots.to_vec());
    let index = device.index;
    device_thread::submit(
        &device,
        "grouped expert GEMM (cuBLAS)",
        operands,
        move |ptrs, order| {
            let (out_ptr, inputs) = ptrs.split_last().expect("the output's address");
            let mats: Vec<Mat> = views
                .iter()
                .zip(inputs)
                .map(|((shape, strides), &ptr)| mat(shape, strides, ptr))
                .collect();
            gemms(
                kind, dtype, &mats, *out_ptr, &out_shape, &counts, &slots, index, order,
            )
        },
    );
    Ok(out)
}

/// Issue one [`GroupedGemm`]'s cuBLAS calls: `mats` are the inputs' views, the output is
/// contiguous at `out_ptr`. One grouped cuBLAS call for all the experts, or one GEMM per expert
/// with `STEERMOE_GROUPED_GEMM=loop`.
#[allow(clippy::too_many_arguments)]
fn gemms(
    kind: Kind,
    dtype: burn::tensor::DType,
    mats: &[Mat],
    out_ptr: u64,
    out_shape: &Shape,
    counts: &[usize],
    slots: &[usize],
    device: usize,
    order: Order,
) -> Result<(), CublasError> {
    let elem = dtype.size();
    let starts: Vec<usize> = counts
        .iter()
        .scan(0, |s, &c| Some(std::mem::replace(s, *s + c)))
        .collect();
    // (a, b, c) with c = a · b, for every expert with rows; `zeros`: weight gradients of trained
    // experts without rows.
    let mut problems = Vec::with_capacity(counts.len());
    let mut zeros = Vec::new();
    match kind {
        Kind::Forward | Kind::InputGrad => {
            let [n, width] = [out_shape[0], out_shape[1]];
            let y = Mat::contiguous(out_ptr, n, width);
            for (e, (&s, &c)) in starts
                .iter()
                .zip(counts)
                .enumerate()
                .filter(|(_, (_, c))| **c > 0)
            {
                let w = match kind {
                    Kind::Forward => mats[1 + e],
                    _ => mats[1 + e].t(),
                };
                problems.push((mats[0].rows(s, c, elem), w, y.rows(s, c, elem)));
            }
        }
        Kind::WeightGrad => {
            let [_, rows, cols] = [out_shape[0], out_shape[1], out_shape[2]];
            let (x, dy) = (mats[0], mats[1]);
            for (t, &e) in slots.iter().enumerate() {
                let dw = Mat::contiguous(out_ptr + (t * rows * cols * elem) as u64, rows, cols);
                match counts[e] {
                    0 => zeros.push(dw),
                    c => problems.push((
                        x.rows(starts[e], c, elem).t(),
                        dy.rows(starts[e], c, elem),
                        dw,
                    )),
                }
            }
        }
    }
    Cublas::run(device, order, |blas| {
        for dw in &zeros {
            blas.zero(dw.ptr, dw.rows * dw.cols * elem)?;
        }
        // SAFETY: every view lies in memory that the caller's resources hold; the outputs are
        // disjoint rows (or slots) of a fresh tensor.
        unsafe {
            match grouped_calls() && problems.len() > 1 {
                true => blas.gemm_grouped(dtype, &problems)?,
                false => {
                    for &(a, b, c) in &problems {
                        blas.gemm(dtype, a, b, c)?;
                    }
                }
            }
        }
        Ok(())
    })
}

/// Whether the experts' GEMMs (two or more) run as one grouped cuBLAS call (the default) rather
/// than one call per expert (`STEERMOE_GROUPED_GEMM=loop`, or a cuBLAS older than 12.5).
fn grouped_calls() -> bool {
    static GROUPED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GROUPED.get_or_init(|| {
        if std::env::var("STEERMOE_GROUPED_GEMM").is_ok_and(|v| v == "loop") {
            return false;
        }
        let present = super::cublas::has_grouped_gemm();
        if !present {
            tracing::warn!("this cuBLAS has no cublasGemmGroupedBatchedEx (it needs 12.5 or later): one GEMM per expert");
        }
        present
    })
}

/// Register one grouped GEMM on the fusion stream of its inputs.
fn fused(
    kind: Kind,
    inputs: Vec<Fused>,
    counts: Vec<usize>,
    slots: Vec<usize>,
    out_shape: Shape,
) -> Fused {
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype;
    let streams = OperationStreams::with_inputs(inputs.iter());
    let out = TensorIr::uninit(client.create_empty_handle(), out_shape, dtype);
    let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new("steermoe_grouped_gemm", &irs, &[out]);
    client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            GroupedGemm {
                desc,
                kind,
                counts,
                slots,
            },
        )
        .output()
}

fn forward_inner(x: Fused, weights: Vec<Fused>, counts: &[usize]) -> Fused {
    let shape = Shape::new([x.shape[0], weights[0].shape[1]]);
    fused(
        Kind::Forward,
        std::iter::once(x).chain(weights).collect(),
        counts.to_vec(),
        Vec::new(),
        shape,
    )
}

/// What the backward pass needs: every expert's weight (compute dtype), the input when weight
/// gradients are wanted, the rows per expert and the trained experts in slot order.
#[derive(Debug, Clone)]
struct State {
    weights: Vec<Fused>,
    x: Option<Fused>,
    counts: Vec<usize>,
    slots: Vec<usize>,
}

/// Parent 0 is the input; parent 1, when present, the trained experts' weights stacked.
#[derive(Debug)]
struct GroupedBackward<const N: usize>;

impl<const N: usize> Backward<Cuda, N> for GroupedBackward<N> {
    type State = State;

    fn backward(self, ops: Ops<State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Cuda>(&ops.node);
        let State {
            weights,
            x,
            counts,
            slots,
        } = ops.state;
        let [n, in_dim, out_dim] = [grad.shape[0], weights[0].shape[0], weights[0].shape[1]];
        if let Some(Some(node)) = ops.parents.get(1)
            && let Some(x) = x
        {
            let dw = fused(
                Kind::WeightGrad,
                vec![x, grad.clone()],
                counts.clone(),
                slots.clone(),
                Shape::new([slots.len(), in_dim, out_dim]),
            );
            grads.register::<Cuda>(node.id, dw);
        }
        if let Some(node) = &ops.parents[0] {
            let dx = fused(
                Kind::InputGrad,
                std::iter::once(grad).chain(weights).collect(),
                counts,
                Vec::new(),
                Shape::new([n, in_dim]),
            );
            grads.register::<Cuda>(node.id, dx);
        }
    }
}

fn forward_autodiff(
    x: Tensor<Ad, 2>,
    weights: Vec<Tensor<Ad, 2>>,
    counts: &[usize],
) -> Tensor<Ad, 2> {
    let primitive = |t: Tensor<Ad, 2>| -> AdTensor { t.into_primitive().tensor() };
    let weights: Vec<AdTensor> = weights.into_iter().map(primitive).collect();
    // Experts that train and have tokens: an expert without tokens gets no gradient at all, as
    // with burn's matmuls (a zero gradient would still move it through AdamW's weight decay).
    let slots: Vec<usize> = (0..weights.len())
        .filter(|&e| weights[e].is_tracked() && counts[e] > 0)
        .collect();
    let stacked: Option<AdTensor> = (!slots.is_empty()).then(|| {
        let trained = slots
            .iter()
            .map(|&e| Tensor::<Ad, 2>::from_primitive(TensorPrimitive::Float(weights[e].clone())))
            .collect();
        primitive3(Tensor::stack::<3>(trained, 0))
    });
    let x = primitive(x);
    let inner: Vec<Fused> = weights.into_iter().map(|w| w.primitive).collect();
    let output = forward_inner(x.primitive.clone(), inner.clone(), counts);
    let state = |with_x: bool| State {
        weights: inner.clone(),
        x: with_x.then(|| x.primitive.clone()),
        counts: counts.to_vec(),
        slots: slots.clone(),
    };
    let out: AdTensor = match stacked {
        Some(stacked) => match GroupedBackward::<2>
            .prepare::<NoCheckpointing>([x.node.clone(), stacked.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(true), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        },
        None => match GroupedBackward::<1>
            .prepare::<NoCheckpointing>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(false), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        },
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn primitive3(t: Tensor<Ad, 3>) -> AdTensor {
    t.into_primitive().tensor()
}

/// The gradient of a row permutation: the gather by the inverse permutation (state).
#[derive(Debug)]
struct PermuteBackward;

impl Backward<Cuda, 1> for PermuteBackward {
    type State = <Cuda as burn::tensor::backend::BackendTypes>::IntTensorPrimitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Cuda>(&ops.node);
        if let Some(node) = &ops.parents[0] {
            grads.register::<Cuda>(
                node.id,
                <Cuda as burn::tensor::ops::FloatTensorOps<Cuda>>::float_select(grad, 0, ops.state),
            );
        }
    }
}

/// `x.select(0, perm)` on burn's CUDA autodiff backend with the gradient gathered by `inverse`
/// instead of scattered (see [`crate::model::experts::permute_rows`]); `None` on other backends.
pub fn try_permute_rows<B: Backend>(
    x: &Tensor<B, 2>,
    perm: &Tensor<B, 1, burn::tensor::Int>,
    inverse: &Tensor<B, 1, burn::tensor::Int>,
) -> Option<Tensor<B, 2>> {
    type Index = Tensor<Ad, 1, burn::tensor::Int>;
    let x: AdTensor = as_backend::<Tensor<Ad, 2>>(x)?.into_primitive().tensor();
    let perm = as_backend::<Index>(perm)?.into_primitive();
    let inverse = as_backend::<Index>(inverse)?.into_primitive();
    let output = <Cuda as burn::tensor::ops::FloatTensorOps<Cuda>>::float_select(
        x.primitive.clone(),
        0,
        perm,
    );
    let out: AdTensor = match PermuteBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(inverse, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    back(Tensor::<Ad, 2>::from_primitive(TensorPrimitive::Float(out)))
}

/// Whether cuBLAS loads on `device` (tried once; a warning and burn's matmuls when it does not),
/// and is not turned off with `STEERMOE_CUBLAS=0`.
pub fn available(device: usize) -> bool {
    static STATE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STATE.get_or_init(|| {
        if std::env::var("STEERMOE_CUBLAS").is_ok_and(|v| v == "0") {
            return false;
        }
        match Cublas::run(device, Order::Synchronised, |_| Ok(())) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{e}; expert and dense GEMMs use burn's matmul instead");
                false
            }
        }
    })
}

/// `y_e = x_e · W_e` for every expert `e`, `x`'s rows grouped by expert (`counts[e]` rows each,
/// in expert order; `W_e` `[in, out]` in `x`'s dtype) through cuBLAS, when `B` is burn's CUDA
/// backend (with or without autodiff) and cuBLAS loads; `None` otherwise.
pub fn try_grouped_linear<B: Backend>(
    x: &Tensor<B, 2>,
    weights: &[Tensor<B, 2>],
    counts: &[usize],
) -> Option<Tensor<B, 2>> {
    if !matches!(
        x.dtype(),
        burn::tensor::DType::F32 | burn::tensor::DType::BF16 | burn::tensor::DType::F16
    ) {
        return None;
    }
    if let Some(x) = as_backend::<Tensor<Ad, 2>>(x) {
        if !available(x.device().index) {
            return None;
        }
        let weights = weights
            .iter()
            .map(|w| as_backend::<Tensor<Ad, 2>>(w))
            .collect::<Option<Vec<_>>>()?;
        return back(forward_autodiff(x, weights, counts));
    }
    if let Some(x) = as_backend::<Tensor<Cuda, 2>>(x) {
        if !available(x.device().index) {
            return None;
        }
        let weights = weights
            .iter()
            .map(|w| as_backend::<Tensor<Cuda, 2>>(w).map(|w| w.into_primitive().tensor()))
            .collect::<Option<Vec<Fused>>>()?;
        let y = forward_inner(x.into_primitive().tensor(), weights, counts);
        return back(Tensor::<Cuda, 2>::from_primitive(TensorPrimitive::Float(y)));
    }
    None
}
