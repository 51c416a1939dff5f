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
