//! Records the git commit the binary is built from (`STEERMOE_GIT_REVISION`), so that a run
//! directory says which code made it: the variable itself when the build environment sets it (a
//! copy of the tree without `.git`, as CI builds), else `git rev-parse HEAD`, else "unknown".
//!
//! Only git files that exist are watched: cargo reruns a build script whose watched path is
//! missing on every build, and each rerun recompiles the crate and every test binary (in a copy
//! without `.git` that was minutes per cargo call).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-env-changed=STEERMOE_GIT_REVISION");
    if let Ok(revision) = std::env::var("STEERMOE_GIT_REVISION").map(|r| r.trim().to_string())
        && !revision.is_empty()
    {
        println!("cargo:rustc-env=STEERMOE_GIT_REVISION={revision}");
        return;
    }
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=STEERMOE_GIT_REVISION={revision}");
}
