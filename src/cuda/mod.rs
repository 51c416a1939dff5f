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

/// Bytes `device` can still allocate, when it is a CUDA device (`None` otherwise, or when the
/// driver does not answer): the driver's free memory (other processes' allocations left out)
/// plus what cubecl's pools of this process hold unused.
pub fn free_memory<D: std::any::Any>(device: &D) -> Option<u64> {
    use cudarc::driver::result;
    let cuda =
        (device as &dyn std::any::Any).downcast_ref::<burn_cubecl::cubecl::cuda::CudaDevice>()?;
    let (used, reserved) = memory_usage(device)?;
    result::init().ok()?;
    let ordinal = result::device::get(cuda.index as std::ffi::c_int).ok()?;
    // SAFETY: `ordinal` is a device the driver just returned; its primary context is the one
    // cubecl's server uses, retained (kept alive) here and made current on this thread only to
    // read the memory figures, then released.
    let free = unsafe {
        let ctx = result::primary_ctx::retain(ordinal).ok()?;
        let info = result::ctx::set_current(ctx)
            .ok()
            .and_then(|_| result::mem_get_info().ok());
        let _ = result::primary_ctx::release(ordinal);
        info?.0 as u64
    };
    Some(free + reserved.saturating_sub(used))
}
