//! Deleting a detached host veth in the background.
//!
//! Unregistering a network device waits for RCU grace periods: 15-20 ms per veth on the
//! kernels we measured, more than everything else DEL does together. DEL therefore takes
//! the veth off the network itself (down, off the bridge, renamed to a tombstone so the
//! attachment's name is free again) and leaves the unregistration to a detached copy of
//! this binary. A tombstone whose reaper died is swept by GC.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use netlink::Netlink;

/// Names of detached veths: `fz` + 13 hex digits, never a live attachment's `fy` name.
pub const TOMBSTONE_PREFIX: &str = "fz";
const ENV: &str = "FERRY_REAP_LINK";

/// A tombstone name for `host_veth`, unique enough that a quick re-ADD and re-DEL of the
/// same attachment does not collide with a tombstone still being reaped.
pub fn tombstone(host_veth: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = u64::from(nanos) ^ (u64::from(std::process::id()) << 32);
    let mut h = node_ipam::attachment::fnv1a(host_veth.as_bytes()) ^ salt;
    h = h.wrapping_mul(0x0000_0100_0000_01b3);
    format!("{TOMBSTONE_PREFIX}{:013x}", h >> 12)
}

/// Starts a detached reaper for `name`; false when it could not be started.
pub fn spawn(name: &str) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env(ENV, name)
        // Closed stdio: a runtime reads the plugin's stdout to EOF and must not wait
        // for the reaper.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the reaper from the runtime's
    // process group so that a signal to the plugin's group does not stop it.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn().is_ok()
}

/// When this process is a reaper, deletes its tombstone and returns the exit code.
pub fn run_if_reaper() -> Option<i32> {
    let name = std::env::var(ENV).ok()?;
    if !name.starts_with(TOMBSTONE_PREFIX) {
        return Some(2);
    }
    let deleted = crate::kernel::runtime()
        .ok()?
        .block_on(async { Netlink::open()?.del_link(&name).await });
    Some(i32::from(deleted.is_err()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_differ_from_live_names() {
        let t = tombstone("fy0123456789abc");
        assert_eq!(t.len(), 15);
        assert!(t.starts_with("fz"));
    }
}
