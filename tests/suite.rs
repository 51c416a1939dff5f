//! The integration tests, as one test binary: each file beside this one is a module of it.
//!
//! One binary rather than one per file: every file instantiates burn's generics for the same
//! backends, and linking two dozen binaries of them took most of CI's build time. Cargo's own
//! discovery of `tests/*.rs` is off (`autotests = false`): a new file is a new `mod` line here.
//! Run one file's tests by its module path, e.g. `cargo test --test suite parity_wgpu:: --
//! --ignored`.

mod common;
mod mixed_cases;
mod parity_cases;

mod alternating;
mod bad_inputs;
mod checkpoint;
mod cli;
mod cuda;
mod cuda_ddp;
mod damaged_runs;
mod data_parallel;
mod effects;
mod eval;
mod generate;
mod judge_http;
mod kill_resume;
mod mixed_precision;
mod module_graph;
mod parity;
mod parity_wgpu;
mod pipeline;
mod plant;
mod qwen3;
mod run_dir;
mod run_repeat;
mod serve;
mod sweep;
mod train;
