//! The terminal dashboard (ratatui): live loss, learning rate, progress and tokens/s, an
//! expert-activation heatmap with the trained experts and the current batch's mask marked, and a
//! collect view with the running safe-vs-unsafe activation difference.
//!
//! [`state`] is plain data (unit-tested), [`widgets`] draws it (tested on ratatui's
//! `TestBackend`), [`app`] runs the terminal loop on its own thread. Headless runs (stdout not a
//! terminal, or `--no-tui`) print progress lines instead; `metrics.jsonl` is written either way.

pub mod app;
pub mod state;
pub mod widgets;

pub use app::{DashboardHandle, Exit, UiEvent, spawn};
pub use state::{Dashboard, RunInfo, View};
