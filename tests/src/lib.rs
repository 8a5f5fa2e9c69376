//! The test harness: hosts are network namespaces the test makes and removes, plugins are
//! the built binaries run as a runtime runs them.
//!
//! Kernel-touching tests need root. Without root they fail, unless `FERRY_SKIP_ROOT_TESTS=1`
//! (never set in CI) says to skip them.

pub mod cluster;
pub mod cni;
pub mod cri;
pub mod inside;
pub mod interrupt;
pub mod kapi;
pub mod kind;
pub mod manifest;
pub mod netns;
pub mod netpol;
pub mod proc;
pub mod services;
pub mod stats;
pub mod traffic;
pub mod vxlan_probe;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test (or test process) uses: `<prefix><pid><n>`, at most 15 bytes so
/// it also fits an interface name.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    let name = format!("{prefix}{pid:x}{n:x}");
    assert!(name.len() <= 15, "name {name} too long");
    name
}

/// True when the test may touch the kernel; false (after saying so) when the caller
/// explicitly asked to skip; a panic otherwise.
pub fn root_or_skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("FERRY_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs root (FERRY_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!("{test} needs root (set FERRY_SKIP_ROOT_TESTS=1 to skip kernel tests explicitly)");
}

/// Where the built binaries are: `FERRY_BIN_DIR`, else beside the running program (the
/// demo and benchmarks in `target/release`) or one directory up (a test runs from
/// `<target>/debug/deps`, wherever `CARGO_TARGET_DIR` put `<target>`), else the
/// workspace's `target/debug`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let beside = exe
        .iter()
        .flat_map(|p| p.ancestors().skip(1).take(2))
        .map(PathBuf::from)
        .find(|d| d.join("ferry").is_file());
    let dir = std::env::var_os("FERRY_BIN_DIR")
        .map(PathBuf::from)
        .or(beside)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("debug")
        });
    for b in ["ferry", "ferry-ipam"] {
        assert!(
            dir.join(b).is_file(),
            "{} not built: run `cargo build --workspace` first (or set FERRY_BIN_DIR)",
            dir.join(b).display()
        );
    }
    // Absolute: some callers run the plugins from another mount namespace, whose working
    // directory is its root.
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The reference plugins from Debian's containernetworking-plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// Returns from the calling test unless it may touch the kernel (see `root_or_skip`).
#[macro_export]
macro_rules! needs_root {
    () => {
        if !$crate::root_or_skip(module_path!()) {
            return;
        }
    };
}
