//! The test harness: hosts are network namespaces the test makes and removes, plugins are
//! the built binaries run as a runtime runs them.
//!
//! Kernel-touching tests need root. Without root they fail, unless `FERRY_SKIP_ROOT_TESTS=1`
//! (never set in CI) says to skip them.

pub mod cluster;
pub mod cni;
pub mod cri;
pub mod interrupt;
pub mod kapi;
pub mod kind;
pub mod manifest;
pub mod netpol;
pub mod services;
pub mod stats;
pub mod traffic;
pub mod vxlan_probe;

// The namespace part of the kit lives in `ferry-testns` (crates/testns), which crates
// that need only namespaces dev-depend on; here it keeps its old paths.
pub use ferry_testns::{
    inside, is_root, needs_root, netns, nonce, proc, root_or_skip, unique, SKIP_VAR,
};

use std::path::PathBuf;

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

/// setsockopt(2) of the `SOL_SOCKET` option `name` on `sock`, to `value` (the C type the
/// option takes).
pub(crate) fn set_socket_option<T>(
    sock: &impl std::os::fd::AsRawFd,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: a valid socket, and a value of exactly the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `cmd` to its end and returns its output; panics, with its stderr, when it cannot
/// be run or fails. `what` names it in the panic (`run {what}`, `{what}: {stderr}`).
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The reference plugins from Debian's containernetworking-plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
