//! CUDA-only kernels behind the `cuda` feature: the MoE experts' and the large dense GEMMs through
//! cuBLAS ([`grouped`]), on the device memory burn's CUDA backend owns ([`cublas`]); with the
//! `ddp` feature, burn's data-parallel training strategy on several devices ([`ddp`]).
//!
//! A leaf: it depends on burn, its CUDA crates and cudarc, nothing else of this crate.

pub mod cublas;
#[cfg(feature = "ddp")]
pub mod ddp;
pub mod grouped;

pub use grouped::{available, try_grouped_linear};
