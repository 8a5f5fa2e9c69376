//! Deleting detached host veths in the background, in batches.
//!
//! Unregistering a network device waits for RCU grace periods: 15-20 ms per veth on the
//! kernels we measured, more than everything else DEL does together, and deleting veths
//! one by one serialises those waits. The kernel deletes a whole link group in one request
//! with the waits shared (60 veths: about 1.1 s one by one, 35-45 ms as one group).
//!
//! So DEL takes the veth off the network itself, in one request (down, off the bridge,
//! renamed to a tombstone so the attachment's name is free again, moved into link group
//! `TOMBSTONE_GROUP`), and makes sure that one reaper is running in the host's network
//! namespace. The reaper deletes the group until it is empty; DELs that come meanwhile
//! only add their veths to the group. A tombstone whose reaper died is finished by the
//! next DEL of its attachment (found by its alias) or swept by GC.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use netlink::{Link, Netlink};

/// Names of detached veths: `fz` + 13 hex digits, never a live attachment's `fy` name.
pub const TOMBSTONE_PREFIX: &str = "fz";

/// The link group detached veths wait in for their deletion (0xfe77). ferry deletes
/// every link of this group in the host's network namespace: nothing else may use it.
pub const TOMBSTONE_GROUP: u32 = 65143;

/// The reaper's lock: an abstract socket name. Abstract names belong to a network
/// namespace (one reaper per host namespace, as the group is per namespace), and the
/// name is free again the instant its holder dies, so a killed reaper never blocks one.
const LOCK_NAME: &[u8] = b"ferry-reaper-65143";

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

/// Whether `link` is a tombstone of the attachment whose alias is `alias`.
pub fn is_tombstone_of(link: &Link, alias: &str) -> bool {
    link.name.starts_with(TOMBSTONE_PREFIX) && link.alias.as_deref() == Some(alias)
}

/// Takes the reaper's lock; `None` when a reaper holds it.
fn try_lock() -> Option<UnixDatagram> {
    let addr = SocketAddr::from_abstract_name(LOCK_NAME).ok()?;
    UnixDatagram::bind_addr(&addr).ok()
}

/// Makes sure a reaper will delete what is in the group now. Called after the caller's
/// tombstone is in the group: either this call takes the lock and starts a reaper, or a
/// reaper holds it and, since it looks at the group again after letting go, finds it.
///
/// The reaper is this process forked (no exec: a fork of this small single-threaded
/// process costs a fraction of a millisecond, an exec a millisecond or more). Call it
/// with no lock of the store held and no runtime alive, as the child inherits the fds.
pub fn ensure() {
    let Some(lock) = try_lock() else {
        return;
    };
    // SAFETY: the plugin is single-threaded here (the current-thread runtime is gone),
    // so the child may run any code; it leaves by `_exit`, never returning into main.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            detach_from_runtime();
            let code = i32::from(reap(lock).is_err());
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => drop(lock),
        // No reaper: do its work here, slower but complete.
        Err(_) => {
            if let Err(e) = reap(lock) {
                eprintln!("ferry: deleting link group {TOMBSTONE_GROUP}: {e}");
            }
        }
    }
}

/// The runtime reads the plugin's stdout to its end and may signal its process group:
/// the reaper keeps neither.
fn detach_from_runtime() {
    let _ = nix::unistd::setsid();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Deletes the group until it is empty, lets go of the lock, and looks once more so that
/// a tombstone added by a DEL that saw the lock held is never left behind.
fn reap(lock: UnixDatagram) -> Result<(), cni::Error> {
    let rt = crate::kernel::runtime()?;
    rt.block_on(async {
        let host = Netlink::open()?;
        let mut lock = Some(lock);
        loop {
            while host.del_group(TOMBSTONE_GROUP).await? {}
            drop(lock.take());
            if !host.del_group(TOMBSTONE_GROUP).await? {
                return Ok(());
            }
            lock = try_lock();
            if lock.is_none() {
                return Ok(()); // another reaper took over
            }
        }
    })
    .map_err(crate::kernel::err)
}

/// Deletes the group now, in this process (GC: it reports what it removed).
pub async fn reap_now(host: &Netlink) -> netlink::Result<()> {
    while host.del_group(TOMBSTONE_GROUP).await? {}
    Ok(())
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
