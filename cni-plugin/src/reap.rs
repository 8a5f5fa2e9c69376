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
//! that finds it wakes it by connecting to its socket instead of starting another
//! process. A retired veth keeps its name until reaped; an ADD of the same attachment in
//! that window renames it to a tombstone (`fz…`) to take the name. A tombstone whose
//! reaper died is finished by the next DEL of its attachment or swept by GC.
//!
//! The reaper's socket has an abstract name: abstract names belong to a network namespace
//! (one reaper per host namespace, as the group is per namespace), and a name is free
//! again the instant its holder dies, so a killed reaper never blocks one. But any process
//! of the host's network namespace may bind one, a hostNetwork pod's as well. So a DEL
//! trusts the holder of the name only when the kernel vouches (`SO_PEERCRED`: the
//! credentials of whoever made the socket listen) that root, or the plugin's own user,
//! holds it. Held by anyone else, or by a holder that takes no wakes, the DEL deletes the
//! group itself before it returns and says so on stderr: a squatter costs DELs their
//! batching, never a veth left on the bridge.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use ferry_netlink::{Link, Netlink};

pub use ferry_node_ipam::attachment::{REAPER_SOCKET, TOMBSTONE_GROUP, TOMBSTONE_PREFIX};

/// How long a reaper stays for more wakes once the group is empty. DELs a few
/// milliseconds apart (a node draining, a runtime's GC) then wake one reaper instead of
/// each paying for a process start.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Set in the environment of a reaper this binary starts.
const REAPER_ENV: &str = "FERRY_REAPER";

/// Where a reaper started by DEL finds its socket, bound and listening: the DEL takes the
/// name before it starts the reaper, so that no other process can take it in between.
const LOCK_FD: RawFd = 3;

/// How often a DEL that finds the name bound but not listening looks again before it
/// takes the holder for a squatter, and how long it waits between looks. A reaper binds
/// and listens in one call: a real one is in that state for microseconds.
const BOUND_LOOKS: u32 = 5;
const BOUND_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// A tombstone name for `host_veth`, unique enough that a quick re-ADD and re-DEL of the
/// same attachment does not collide with a tombstone still being reaped.
pub fn tombstone(host_veth: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = u64::from(nanos) ^ (u64::from(std::process::id()) << 32);
    let mut h = ferry_node_ipam::attachment::fnv1a(host_veth.as_bytes()) ^ salt;
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

/// Takes the reaper's lock: its socket, bound to the name and listening.
fn try_lock() -> std::io::Result<UnixListener> {
    UnixListener::bind_addr(&SocketAddr::from_abstract_name(REAPER_SOCKET)?)
}

/// Who holds the reaper's name, as a DEL finds it.
enum Holder {
    /// A reaper this DEL may trust, now woken.
    Reaper,
    /// Nobody did; now this process does.
    Nobody(UnixListener),
    /// A holder not to be trusted with the group, or none that can be reached: why.
    Untrusted(String),
}

/// Makes sure the group is deleted. Called after the caller's tombstone is in the group:
/// either a trusted reaper holds the name and this wakes it (it deletes the group after
/// every wake, and looks once more after letting go), or nobody does and a reaper is
/// started with the name taken for it, or someone else holds it and this DEL deletes the
/// group itself.
pub fn ensure() -> Result<(), ferry_cni::Error> {
    match find_holder() {
        Holder::Reaper => Ok(()),
        Holder::Nobody(lock) => {
            if spawn_reaper(&lock) {
                return Ok(());
            }
            // No reaper: do its work here, slower but complete.
            reap(lock)
        }
        Holder::Untrusted(why) => {
            eprintln!(
                "ferry: the reaper's socket @{} {why}; this DEL deleted link group \
                 {TOMBSTONE_GROUP} (its retired veths) itself",
                String::from_utf8_lossy(REAPER_SOCKET)
            );
            crate::kernel::runtime()?
                .block_on(async { reap_now(&Netlink::open()?).await })
                .map_err(crate::kernel::err)
        }
    }
}

/// Connects to the name (the connection is the wake) and judges its holder.
fn find_holder() -> Holder {
    for _ in 0..BOUND_LOOKS {
        match connect() {
            Ok(peer) if trusted(peer.uid) => return Holder::Reaper,
            Ok(peer) => {
                return Holder::Untrusted(format!(
                    "is held by pid {} (uid {}), which is not root: not trusted",
                    peer.pid, peer.uid
                ))
            }
            // The backlog is full: whoever listens does not drain it, as a reaper does
            // before each look at the group.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Holder::Untrusted(format!("is held by {}, which takes no wakes", holders()))
            }
            // Refused: the name is free, or bound by a socket that does not listen.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => match try_lock() {
                Ok(lock) => return Holder::Nobody(lock),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    std::thread::sleep(BOUND_WAIT)
                }
                Err(e) => return Holder::Untrusted(format!("cannot be taken: {e}")),
            },
            Err(e) => return Holder::Untrusted(format!("cannot be reached: {e}")),
        }
    }
    Holder::Untrusted(format!(
        "is bound by {}, which does not listen: not trusted",
        holders()
    ))
}

/// Root, or the plugin's own user (who may as well ptrace the plugin).
fn trusted(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// Connects to the name without waiting; the listener's credentials, from when it
/// started listening. std cannot connect without blocking (a full backlog would hang the
/// DEL) nor read `SO_PEERCRED` on stable Rust: libc does both.
fn connect() -> std::io::Result<libc::ucred> {
    // SAFETY: socket takes no pointers; the descriptor it returns is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data, valid as all zeroes.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // An abstract name: a NUL, then the name's bytes, with no terminator.
    for (d, s) in addr.sun_path[1..].iter_mut().zip(REAPER_SOCKET) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + REAPER_SOCKET.len();
    // SAFETY: `addr` is a sockaddr_un whose first `len` bytes are the address.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut cred_len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred and `cred_len` its size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut cred_len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

/// The processes holding the name's stream socket, from /proc (`pid 12 (uid 65534)`): what
/// can be said of a holder that gave no credentials because it does not take connections.
fn holders() -> String {
    use std::os::unix::fs::MetadataExt;
    let name = format!("@{}", String::from_utf8_lossy(REAPER_SOCKET));
    // /proc/net/unix, of this network namespace: Num RefCount Protocol Flags Type St Inode
    // Path; type 0001 is a stream socket.
    let sockets: Vec<String> = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 8 && f[4] == "0001" && f[7] == name).then(|| format!("socket:[{}]", f[6]))
        })
        .collect();
    let mut found = Vec::new();
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let fds = std::fs::read_dir(proc.path().join("fd"));
        for fd in fds.into_iter().flatten().flatten() {
            let holds = std::fs::read_link(fd.path())
                .is_ok_and(|t| sockets.iter().any(|s| t.as_os_str() == s.as_str()));
            if holds {
                // The socket's owner, who made it (the link leads to the socket's inode).
                let uid = std::fs::metadata(fd.path())
                    .map(|m| m.uid().to_string())
                    .unwrap_or_else(|_| "?".into());
                found.push(format!("pid {pid} (uid {uid})"));
                break;
            }
        }
    }
    if found.is_empty() {
        "a process ferry cannot name".into()
    } else {
        found.join(", ")
    }
}

/// Starts this binary as a reaper with `posix_spawn`: in a session of its own (a signal
/// to the runtime's process group does not reach it), its stdio on /dev/null (a runtime
/// reads the plugin's stdout to its end and must not wait for the reaper), `lock` on
/// `LOCK_FD`. DEL waits only for the spawn itself, not for the reaper to load or run.
fn spawn_reaper(lock: &UnixListener) -> bool {
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
    // A copy above LOCK_FD, so that the dup2 onto LOCK_FD always makes a new descriptor
    // (one without close-on-exec); a dup2 onto itself would keep the flag.
    // SAFETY: fcntl on a descriptor `lock` keeps open; the copy is owned below.
    let copy = unsafe { libc::fcntl(lock.as_raw_fd(), libc::F_DUPFD_CLOEXEC, LOCK_FD + 1) };
    if copy < 0 {
        return false;
    }
    // SAFETY: a new descriptor nothing else owns.
    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
    let argv = [exe.as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [reaper_env.as_ptr().cast_mut(), std::ptr::null_mut()];
    // SAFETY: the attribute and file-action objects are initialised before use and
    // destroyed after; every pointer and descriptor passed lives until posix_spawn returns.
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
            && libc::posix_spawn_file_actions_adddup2(&mut actions, copy.as_raw_fd(), LOCK_FD) == 0
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

/// When this process was started as a reaper: takes the lock its DEL handed it (or, run
/// otherwise, the name, leaving the work to the reaper that holds it) and reaps; returns
/// the exit code.
pub fn run_if_reaper() -> Option<i32> {
    std::env::var_os(REAPER_ENV)?;
    let lock = match handed_lock() {
        Some(lock) => lock,
        None => match try_lock() {
            Ok(lock) => lock,
            Err(_) => return Some(0),
        },
    };
    Some(i32::from(reap(lock).is_err()))
}

/// The socket on `LOCK_FD`, when it is one bound to the reaper's name.
fn handed_lock() -> Option<UnixListener> {
    // SAFETY: F_GETFD only asks whether the number is an open descriptor.
    if unsafe { libc::fcntl(LOCK_FD, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: LOCK_FD is open, and nothing else in this process, just started, uses it.
    let lock = unsafe { UnixListener::from_raw_fd(LOCK_FD) };
    let ours = lock
        .local_addr()
        .is_ok_and(|a| a.as_abstract_name() == Some(REAPER_SOCKET));
    ours.then_some(lock)
}

/// Deletes the group until it is empty and again at every wake; after `LINGER` without
/// one, lets go of the lock and looks once more, so that a tombstone added by a DEL whose
/// wake came too late is never left behind.
fn reap(lock: UnixListener) -> Result<(), ferry_cni::Error> {
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
            lock = try_lock().ok();
            if lock.is_none() {
                // Another reaper took over, or a squatter did, and then DELs delete the
                // group themselves.
                return Ok(());
            }
        }
    })
    .map_err(crate::kernel::err)
}

/// Waits up to `LINGER` for a wake, then takes every wake waiting: the one look at the
/// group that follows answers them all.
fn woken_within_linger(lock: &UnixListener) -> bool {
    if lock.set_nonblocking(true).is_err() {
        return false;
    }
    let mut ready = libc::pollfd {
        fd: lock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    if unsafe { libc::poll(&mut ready, 1, LINGER.as_millis() as libc::c_int) } <= 0 {
        return false;
    }
    let mut woken = false;
    while lock.accept().is_ok() {
        woken = true;
    }
    woken
}

/// Deletes the group now, in this process (GC: it reports what it removed).
pub async fn reap_now(host: &Netlink) -> ferry_netlink::Result<()> {
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
