//! SIGINT and SIGTERM for the harness's programs (the demo, the conformance runner): the
//! signal only sets a flag; the program looks at it between steps and unwinds, so the
//! Drop guards remove every namespace and process made so far.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Catches SIGINT and SIGTERM from now on.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether SIGINT or SIGTERM came.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Unwinds (a panic) once SIGINT or SIGTERM came.
pub fn stop_if_interrupted() {
    if interrupted() {
        panic!("interrupted");
    }
}
