//! Training: the SFT loss and (later) expert-only fine-tuning.

pub mod loss;
