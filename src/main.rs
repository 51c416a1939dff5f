//! The `steermoe` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    keep_freed_memory();
    stop_on_device_task_panic();
    let args = cli::Cli::parse();
    cli::init_logging();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The cause chain, less the causes an error already quotes in its own message.
            let mut msg = err.to_string();
            for cause in err.chain().skip(1) {
                let cause = cause.to_string();
                if !msg.contains(&cause) {
                    msg.push_str(": ");
                    msg.push_str(&cause);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Keep freed memory in the process instead of handing it back to the kernel.
///
/// By default glibc serves every allocation over a threshold that adapts up to 32 MiB with its own
/// `mmap` and `munmap`s it on free, and trims the heap's free top: the CPU backend allocates a
/// fresh tensor for each operation, so every operation on attention scores page-faulted its
/// output in anew (a third of exact ablation's time in a profile, `clear_page` and page faults).
/// Blocks under 32 MiB now come from the heap, which keeps up to 1 GiB free at its top and grows
/// 64 MiB at a time. Larger tensors still map their own pages. Results are unchanged: this only
/// moves where the bytes live (benches/method/effects/organism-cpu/allocator-2026-12-07.txt).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Exit status of a process stopped by [`stop_on_device_task_panic`] (BSD's `EX_SOFTWARE`; the
/// vendored cubecl-cuda exits 75 when a device allocation fails).
const DEVICE_TASK_PANIC: i32 = 70;

/// Stop the process when a task on one of cubecl's device threads panics.
///
/// cubecl runs each device's work on a thread of its own (named `DSU-…` or `DSD-…`) and catches a
/// task's panic there, logging only "Task failed" at warn level: a kernel that fails to compile or
/// launch then leaves its output buffer as it was, and the work queued after it reads those stale
/// values without an error (seen on wgpu with a kernel that panicked while cubecl expanded it).
/// A measurement must fail or be right, so the panic's own message is printed (the hook before
/// this one) and the process exits with status 70.
fn stop_on_device_task_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        if name.starts_with("DSU-") || name.starts_with("DSD-") {
            eprintln!(
                "error: a task on the device thread {name} panicked (above); the results it was \
                 computing would be stale, so steermoe stops (exit status {DEVICE_TASK_PANIC})"
            );
            std::process::exit(DEVICE_TASK_PANIC);
        }
    }));
}
