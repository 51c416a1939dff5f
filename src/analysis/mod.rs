//! Analysis: risk difference per batch, unsafe experts and per-batch expert masks.

pub mod counts;
pub mod routing_file;

pub use counts::{count_top_k, top_k_indices};
