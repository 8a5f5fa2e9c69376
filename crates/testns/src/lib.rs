//! The smallest part of ferry's test kit: network namespaces a test makes and removes
//! ([`netns::Netns`]), code run inside one ([`inside`]), processes ended by PID when
//! dropped ([`proc::Bg`]), small L2/L3 probes ([`l2`]), names unique per test process
//! ([`unique`]) and the one root check ([`needs_root!`]).
//!
//! `ferry-tests` re-exports all of it (`ferry_tests::netns::Netns` is this `Netns`); a
//! crate that needs namespaces but not the cluster kit (kube, etcd, the API stand-in)
//! dev-depends on this crate alone.
//!
//! Kernel-touching tests need root. Without root they FAIL, unless
//! `FERRY_SKIP_ROOT_TESTS=1` (never set in CI) says to skip them.

pub mod inside;
pub mod l2;
pub mod netns;
pub mod proc;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The variable that, set to `1`, makes a non-root run skip the kernel tests instead of
/// failing them.
pub const SKIP_VAR: &str = "FERRY_SKIP_ROOT_TESTS";

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

/// A number no earlier probe of this process used (never 0: an initiate tag must not be).
pub fn nonce() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed).max(1)
}

/// Whether this process runs as root (the benchmarks and the demo refuse to start
/// otherwise; tests use [`needs_root!`]).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when the test may touch the kernel; false (after saying so) when the caller
/// explicitly asked to skip with `FERRY_SKIP_ROOT_TESTS=1`; a panic otherwise, so a
/// non-root run never passes by silently skipping.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs root ({SKIP_VAR}=1)");
        return false;
    }
    panic!("{test} needs root (set {SKIP_VAR}=1 to skip kernel tests explicitly)");
}

/// The running test's name: libtest names each test's thread after it (`module::test`);
/// `fallback` where the thread has no such name (a single-threaded run's `main`).
pub fn test_name(fallback: &str) -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_string(),
        _ => fallback.to_string(),
    }
}

/// The first line of every kernel-touching test: returns from the calling test when
/// `FERRY_SKIP_ROOT_TESTS=1` and not root, fails it when not root otherwise (see
/// [`root_or_skip`]). `needs_root!("what")` names the test in the message; bare, the
/// running test (or the module path) does.
#[macro_export]
macro_rules! needs_root {
    () => {
        $crate::needs_root!(&$crate::test_name(module_path!()))
    };
    ($test:expr) => {
        if !$crate::root_or_skip($test) {
            return;
        }
    };
}
