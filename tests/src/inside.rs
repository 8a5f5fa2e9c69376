//! Running async code from a test inside one of its namespaces: a thread enters the
//! namespace, and the runtime it builds (with its worker threads) stays there.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;

use crate::netns::Netns;

pub fn block_on<F, T>(ns: &Netns, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    let file = File::open(ns.path()).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the thread's fd is valid for the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .join()
    .expect("thread in namespace")
}
