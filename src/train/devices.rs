//! Which devices training runs on: one, or several through burn's data-parallel strategy (CUDA,
//! the `ddp` feature), asked before any stage runs.

use burn::tensor::backend::AutodiffBackend;

use super::TrainError;

/// Whether this binary can train on `devices` (every device present, the `ddp` feature built in
/// when there are several): for the pipeline to ask before any stage runs.
pub fn check_devices(devices: &[usize]) -> Result<(), TrainError> {
    if devices.len() <= 1 {
        return Ok(());
    }
    #[cfg(feature = "ddp")]
    {
        parallel_strategy::<crate::backend::Cuda>(devices).map(drop)
    }
    #[cfg(not(feature = "ddp"))]
    {
        parallel_strategy::<crate::backend::Cpu>(devices).map(drop)
    }
}

/// burn's data-parallel strategy on `devices` (CUDA, feature `ddp`).
pub fn parallel_strategy<B: AutodiffBackend>(
    devices: &[usize],
) -> Result<burn::train::ExecutionStrategy<B>, TrainError> {
    let fail = |reason: &str| TrainError::Parallel {
        devices: devices.to_vec(),
        reason: reason.into(),
    };
    #[cfg(feature = "ddp")]
    {
        crate::cuda::ddp::strategy::<B>(devices).map_err(|reason| fail(&reason))
    }
    #[cfg(not(feature = "ddp"))]
    Err(fail(
        "this binary was built without data-parallel training (cargo build --release --no-default-features --features cuda,ddp)",
    ))
}
