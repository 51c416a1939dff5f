//! CUDA-only kernels behind the `cuda` feature: the MoE experts' and the large dense GEMMs through
//! cuBLAS ([`grouped`]), attention's batched products too ([`batched`]), on the device memory
//! burn's CUDA backend owns ([`cublas`]), queued on its device thread ([`device_thread`]); with the
//! `ddp` feature, burn's data-parallel training strategy on several devices ([`ddp`]).
//!
//! It depends on burn, its CUDA crates, cudarc and [`crate::cube`]'s backend downcasts, nothing
//! else of this crate.

pub mod batched;
pub mod cublas;
#[cfg(feature = "ddp")]
pub mod ddp;
pub mod device_thread;
pub mod grouped;

pub use batched::try_batched_matmul;
pub use grouped::{available, try_grouped_linear};

/// Bytes in use and bytes reserved by cubecl's memory pools of `device`'s current stream, after
/// the work queued so far has run, when `device` is a CUDA device (`None` otherwise): what a
/// process holds beside its CUDA context, for the benchmarks' memory figures.
pub fn memory_usage<D: std::any::Any>(device: &D) -> Option<(u64, u64)> {
    use burn_cubecl::cubecl::Runtime;
    let device =
        (device as &dyn std::any::Any).downcast_ref::<burn_cubecl::cubecl::cuda::CudaDevice>()?;
    let client = <burn_cubecl::cubecl::cuda::CudaRuntime as Runtime>::client(device);
    let usage = client.memory_usage().ok()?;
    Some((usage.bytes_in_use, usage.bytes_reserved))
}
