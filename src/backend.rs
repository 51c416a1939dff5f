//! The concrete backends, named in this one place; everything else is generic over
//! `B: Backend` (or `B: AutodiffBackend` for training).
//!
//! The CLI picks a [`BackendKind`] at run time and hands a [`Task`] to [`run`], which
//! instantiates it for that backend: `Autodiff<NdArray>` on the CPU, `Autodiff<Wgpu>` and
//! `Autodiff<Cuda>` on GPUs (cargo features `wgpu` and `cuda`). Inference code runs on
//! `B::InnerBackend`, so it pays nothing for autodiff.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;

/// Which backend to run on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ndarray on the CPU.
    Cpu,
    /// wgpu (Vulkan, Metal, DX12).
    Wgpu,
    /// CUDA.
    Cuda,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        })
    }
}

/// The CPU backend.
pub type Cpu = Autodiff<NdArray<f32>>;
/// The wgpu backend.
#[cfg(feature = "wgpu")]
pub type Wgpu = Autodiff<burn::backend::Wgpu>;
/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = Autodiff<burn::backend::Cuda>;

/// Work that can run on any backend.
pub trait Task {
    /// What the work returns.
    type Output;
    /// Run on backend `B` and its default device.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// The backend was not compiled in.
#[derive(Debug, thiserror::Error)]
#[error("backend {kind} is not compiled into this binary ({})", rebuild(*kind))]
pub struct NotCompiled {
    /// The backend asked for.
    pub kind: BackendKind,
}

fn rebuild(kind: BackendKind) -> String {
    match kind {
        BackendKind::Cpu => {
            "a build with the `ddp` feature trains on CUDA only: build without it to run on the CPU"
                .into()
        }
        other => format!("rebuild with `--features {other}`"),
    }
}

/// Whether `kind` is compiled into this binary (checked before anything is written): [`run`]
/// itself, with a task that does nothing.
pub fn compiled(kind: BackendKind) -> Result<(), NotCompiled> {
    struct Nothing;
    impl Task for Nothing {
        type Output = ();
        fn run<B: AutodiffBackend>(self, _: B::Device) {}
    }
    run(kind, Nothing)
}

/// Run `task` on the backend `kind`.
pub fn run<T: Task>(kind: BackendKind, task: T) -> Result<T::Output, NotCompiled> {
    match kind {
        // With burn's `distributed` on (feature `ddp`), `Autodiff<NdArray>` cannot train.
        #[cfg(not(feature = "ddp"))]
        BackendKind::Cpu => Ok(task.run::<Cpu>(Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(task.run::<Wgpu>(Default::default())),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(task.run::<Cuda>(Default::default())),
        #[allow(unreachable_patterns)]
        kind => Err(NotCompiled { kind }),
    }
}
