//! steermoe's patch (see STEERMOE-PATCH.md): an allocation the device cannot serve ends the
//! process with a message that names it.
//!
//! cubecl runs these calls on its device thread, where a panic is caught and logged as a warning
//! ("Task failed"); the buffer stays unallocated, later kernels that use it fail the same way, and
//! the tensors they should have filled read back as whatever the memory held: plausible wrong
//! numbers, silently (a benign NLL of 5e-41 under memory pressure). Exiting is the one answer no
//! later read can turn into a number: a run directory resumes from its last finished stage.

use core::fmt::Debug;

/// The exit status of a process stopped for want of device memory.
pub const EXIT_OUT_OF_MEMORY: i32 = 75;

/// Reserving `size` bytes for `what` failed with `err`: say so and exit.
pub(crate) fn out_of_memory(what: &str, size: u64, err: &dyn Debug) -> ! {
    eprintln!(
        "error: CUDA out of device memory: reserving {what} of {size} bytes ({:.1} MiB) failed ({err:?}). \
         Exiting (status {EXIT_OUT_OF_MEMORY}) rather than computing on memory that was never allocated; \
         free the device (fewer processes or jobs, a smaller batch) and run again: finished stages are kept.",
        size as f64 / (1024.0 * 1024.0)
    );
    std::process::exit(EXIT_OUT_OF_MEMORY)
}

/// A buffer used with no memory behind it (an allocation failed before): say so and exit.
pub(crate) fn unbound(err: &dyn Debug) -> ! {
    eprintln!(
        "error: CUDA buffer used with no device memory behind it ({err:?}): an earlier allocation \
         failed. Exiting (status {EXIT_OUT_OF_MEMORY}) rather than reading memory that was never written."
    );
    std::process::exit(EXIT_OUT_OF_MEMORY)
}
