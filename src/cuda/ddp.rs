//! burn's data-parallel training strategy on CUDA devices (feature `ddp`): gradients all-reduced
//! (mean) with NCCL during backward, one model replica and optimizer per device.
//!
//! The train stage is generic over `B`; the strategy needs `B: DistributedBackend`, which only
//! the concrete CUDA backend gives. [`strategy`] recognises burn's CUDA autodiff backend by type.

use std::any::Any;

use burn::backend::{Autodiff, Cuda};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::distributed::{DistributedConfig, ReduceOperation};
use burn::train::ExecutionStrategy;
use cudarc::driver::result as driver;

type Ad = Autodiff<Cuda>;

/// Data-parallel training on the CUDA devices `indices` (the first is the main one: validation,
/// checkpoints, metrics) when `B` is burn's CUDA autodiff backend; why not otherwise, or when a
/// device does not exist.
pub fn strategy<B: AutodiffBackend>(indices: &[usize]) -> Result<ExecutionStrategy<B>, String> {
    let count = driver::init()
        .and_then(|()| driver::device::get_count())
        .map_err(|e| format!("cannot count the CUDA devices: {e:?}"))?;
    if let Some(i) = indices.iter().find(|&&i| i >= count as usize) {
        return Err(format!(
            "there is no CUDA device {i}: this machine has {count}"
        ));
    }
    let devices: Vec<burn::backend::cuda::CudaDevice> = indices
        .iter()
        .map(|&index| burn::backend::cuda::CudaDevice { index })
        .collect();
    let strategy = ExecutionStrategy::<Ad>::ddp(
        devices,
        DistributedConfig {
            all_reduce_op: ReduceOperation::Mean,
        },
    );
    (Box::new(strategy) as Box<dyn Any>)
        .downcast::<ExecutionStrategy<B>>()
        .map(|s| *s)
        .map_err(|_| "data-parallel training runs on CUDA only".to_string())
}
