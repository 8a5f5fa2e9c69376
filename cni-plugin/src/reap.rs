//! Deleting detached host veths in the background, in batches.
//!
//! Unregistering a network device waits for RCU grace periods: 15-20 ms per veth on the
//! kernels we measured, more than everything else DEL does together, and deleting veths
//! one by one serialises those waits. The kernel deletes a whole link group in one request
//! with the waits shared (60 veths: about 1.1 s one by one, 35-45 ms as one group).
//!
//! So DEL retires the veth itself, in one cheap request (down, which takes it off the
//! network, and into link group `TOMBSTONE_GROUP`), and makes sure that one reaper is
//! running in the host's network namespace (this binary, started with `FERRY_REAPER=1`).
//! The reaper deletes the group until it is empty, then stays a second for more: a DEL
//! that finds it wakes it with a datagram to its lock's socket instead of starting another
//! process. A retired veth keeps its name until reaped; an ADD of the same attachment in
//! that window renames it to a tombstone (`fz…`) to take the name. A tombstone whose
//! reaper died is finished by the next DEL of its attachment or swept by GC.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use netlink::{Link, Netlink};

pub use node_ipam::attachment::{TOMBSTONE_GROUP, TOMBSTONE_PREFIX};

/// The reaper's lock: an abstract socket name. Abstract names belong to a network
/// namespace (one reaper per host namespace, as the group is per namespace), and the
/// name is free again the instant its holder dies, so a killed reaper never blocks one.
const LOCK_NAME: &[u8] = b"ferry-reaper-65143";

/// How long a reaper stays for more wakes once the group is empty. DELs a few
/// milliseconds apart (a node draining, a runtime's GC) then wake one reaper with a
/// datagram instead of each paying for a process start.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Set in the environment of a reaper this binary starts.
const REAPER_ENV: &str = "FERRY_REAPER";

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

/// Whether `link` waits for the reaper: retired into the group, or renamed to a
/// tombstone by an ADD that needed its name.
pub fn is_tombstone(link: &Link) -> bool {
    link.group == TOMBSTONE_GROUP || link.name.starts_with(TOMBSTONE_PREFIX)
}

/// Whether `link` is a tombstone of the attachment whose alias is `alias`.
pub fn is_tombstone_of(link: &Link, alias: &str) -> bool {
    is_tombstone(link) && link.alias.as_deref() == Some(alias)
}

/// Takes the reaper's lock; `None` when a reaper holds it.
fn try_lock() -> Option<UnixDatagram> {
    let addr = SocketAddr::from_abstract_name(LOCK_NAME).ok()?;
    UnixDatagram::bind_addr(&addr).ok()
}

/// Makes sure a reaper will delete what is in the group now. Called after the caller's
/// tombstone is in the group: either a reaper is bound to the lock and this wakes it (it
/// deletes the group after every wake, and looks once more after letting go), or none is
/// and one is started.
pub fn ensure() {
    if wake() {
        return;
    }
    // The reaper takes the lock itself; of two started at once, one gives way.
    if !spawn_reaper() {
        // No reaper: do its work here, slower but complete.
        if let Some(lock) = try_lock() {
            if let Err(e) = reap(lock) {
                eprintln!("ferry: deleting link group {TOMBSTONE_GROUP}: {e}");
            }
        }
    }
}

/// Sends a wake to the reaper bound to the lock; false when there is none. A full queue
/// counts as woken: the reaper has wakes pending and looks at the group for each.
fn wake() -> bool {
    let Ok(addr) = SocketAddr::from_abstract_name(LOCK_NAME) else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    if sock.set_nonblocking(true).is_err() {
        return false;
    }
    match sock.send_to_addr(&[1], &addr) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// Starts this binary as a reaper with `posix_spawn`: in a session of its own (a signal
/// to the runtime's process group does not reach it), its stdio on /dev/null (a runtime
/// reads the plugin's stdout to its end and must not wait for the reaper). DEL waits
/// only for the spawn itself, not for the reaper to load or run.
fn spawn_reaper() -> bool {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let Some(exe) = std::env::current_exe()
        .ok()
        .and_then(|p| CString::new(p.as_os_str().as_bytes()).ok())
    else {
        return false;
    };
    let Ok(reaper_env) = CString::new(format!("{REAPER_ENV}=1")) else {
        return false;
    };
    let argv = [exe.as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [reaper_env.as_ptr().cast_mut(), std::ptr::null_mut()];
    // SAFETY: the attribute and file-action objects are initialised before use and
    // destroyed after; every pointer passed lives until posix_spawn returns.
    unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        if libc::posix_spawnattr_init(&mut attr) != 0 {
            return false;
        }
        if libc::posix_spawn_file_actions_init(&mut actions) != 0 {
            libc::posix_spawnattr_destroy(&mut attr);
            return false;
        }
        let ok = libc::posix_spawnattr_setflags(&mut attr, libc::POSIX_SPAWN_SETSID as _) == 0
            && libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDWR,
                0,
            ) == 0
            && libc::posix_spawn_file_actions_adddup2(&mut actions, 0, 1) == 0
            && libc::posix_spawn_file_actions_adddup2(&mut actions, 0, 2) == 0
            && {
                let mut pid = 0;
                libc::posix_spawn(
                    &mut pid,
                    exe.as_ptr(),
                    &actions,
                    &attr,
                    argv.as_ptr(),
                    envp.as_ptr(),
                ) == 0
            };
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        ok
    }
}

/// When this process was started as a reaper: takes the lock (or leaves the work to
/// the reaper that holds it) and reaps; returns the exit code.
pub fn run_if_reaper() -> Option<i32> {
    std::env::var_os(REAPER_ENV)?;
    let Some(lock) = try_lock() else {
        return Some(0);
    };
    Some(i32::from(reap(lock).is_err()))
}

/// Deletes the group until it is empty and again at every wake; after `LINGER` without
/// one, lets go of the lock and looks once more, so that a tombstone added by a DEL whose
/// wake came too late is never left behind.
fn reap(lock: UnixDatagram) -> Result<(), cni::Error> {
    let rt = crate::kernel::runtime()?;
    rt.block_on(async {
        let host = Netlink::open()?;
        let mut lock = Some(lock);
        loop {
            while host.del_group(TOMBSTONE_GROUP).await? {}
            if lock.as_ref().is_some_and(woken_within_linger) {
                continue;
            }
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

/// Waits up to `LINGER` for a wake on the lock's socket.
fn woken_within_linger(lock: &UnixDatagram) -> bool {
    if lock.set_read_timeout(Some(LINGER)).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    lock.recv(&mut byte).is_ok()
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
