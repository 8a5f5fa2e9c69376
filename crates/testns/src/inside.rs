//! Running code from a test inside one of its namespaces: a thread enters the namespace,
//! and what it makes there (sockets, a runtime with its worker threads) stays there.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::netns::Netns;

/// Moves the calling thread into `ns` (for good: use a thread of its own).
pub fn enter(ns: &Netns) -> std::io::Result<()> {
    enter_path(&ns.path())
}

pub fn enter_path(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: setns on this thread only; the fd is valid for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside `ns` and returns what it returns. Sockets it makes belong
/// to `ns` wherever they are used afterwards.
pub fn run<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        enter_path(&path).unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
        f()
    })
    .join()
    .expect("thread in namespace")
}

pub fn block_on<F, T>(ns: &Netns, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    run(ns, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}
