//! Entering a network namespace on the current thread, for as long as it takes to open
//! a socket there (sockets stay bound to the namespace they were made in).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// Opens a network namespace file (`/run/netns/x`, `/proc/<pid>/ns/net`).
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| Error::Netns {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs `f` with the current thread inside `ns`, then returns the thread to where it was.
pub fn run_in<T>(ns: &File, ns_path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net").map_err(|source| Error::Io {
        what: "open this thread's network namespace".into(),
        source,
    })?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
        path: ns_path.to_path_buf(),
        source: e.into(),
    })?;
    let out = f();
    // Failing to return would leave every later host-side operation in the pod's
    // namespace: abort rather than carry on in the wrong place.
    if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
        eprintln!("ferry: cannot return to the host network namespace: {e}");
        std::process::abort();
    }
    Ok(out)
}
