//! Who this daemon is: a machine (the node's secret, the same across restarts) and a
//! process on it (the node's lock, one holder at a time).
//!
//! Together they let a restarted daemon take its node's liveness key over at once: a key
//! held by another instance of this machine, while this process holds the lock, can only
//! be a dead predecessor's (a live one would hold the lock). A key of another machine is
//! another node's daemon under the same name, waited for and then refused as before.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_registry::{LeaseError, Liveness, Registry};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::etcd_retry::EtcdRetry;
use crate::status::{Cause, Status};

/// Bytes of the node secret.
pub const SECRET_LEN: usize = 32;
/// The lock's name in the state directory.
pub const LOCK_FILE: &str = "overlayd.lock";
/// The liveness key's lifetime.
pub const ALIVE_TTL: Duration = Duration::from_secs(20);
/// How long a key held by another machine is waited for: a killed daemon's expires
/// within `ALIVE_TTL`.
const NAME_PATIENCE: Duration = Duration::from_secs(25);
const LOCK_RETRY: Duration = Duration::from_secs(1);

/// The machine ID published in the liveness key: the first 16 bytes of the secret's
/// SHA-256, in hex. The secret itself never leaves the node.
pub fn machine_id(secret: &[u8; SECRET_LEN]) -> String {
    Sha256::digest(secret)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node secret at `path`: read when it exists (32 bytes, mode 0600, a regular file),
/// else made from 32 random bytes, atomically (a second daemon starting at the same
/// instant reads the first one's rather than making its own).
pub fn node_secret(path: &Path) -> Result<[u8; SECRET_LEN]> {
    match read_secret(path) {
        Ok(s) => return Ok(s),
        Err(e)
            if e.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
                == Some(std::io::ErrorKind::NotFound) => {}
        Err(e) => return Err(e.context(format!("--node-secret {}", path.display()))),
    }
    let made = create_secret(path)
        .with_context(|| format!("--node-secret {}: create it", path.display()))?;
    if made {
        tracing::info!(path = %path.display(), "node secret made (this node's machine identity; keep it across restarts)");
    }
    read_secret(path).with_context(|| format!("--node-secret {}", path.display()))
}

fn read_secret(path: &Path) -> Result<[u8; SECRET_LEN]> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        bail!("is not a regular file");
    }
    if meta.mode() & 0o777 != 0o600 {
        bail!(
            "has mode {:04o}, not 0600: the secret must be readable by root only (chmod 600 it, or remove it to have a new one made)",
            meta.mode() & 0o777
        );
    }
    if meta.len() != SECRET_LEN as u64 {
        bail!(
            "holds {} bytes, not {SECRET_LEN}: not a node secret (remove it to have a new one made)",
            meta.len()
        );
    }
    let mut secret = [0u8; SECRET_LEN];
    f.read_exact(&mut secret)?;
    Ok(secret)
}

/// Writes a new secret beside `path` and links it into place, which fails when another
/// process made one first; false then.
fn create_secret(path: &Path) -> Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let secret: [u8; SECRET_LEN] = crate::datapath::random_bytes("the node secret")?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> Result<bool> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        // Whatever the umask was.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&secret)?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("link {}", path.display())),
        }
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The node's lock, held for the life of the process (the kernel lets it go however the
/// process ends).
pub struct NodeLock {
    _file: Flock<File>,
}

/// Takes `<state_dir>/overlayd.lock`, waiting (and saying so, once in the log and all
/// along in `/readyz`) while another process holds it.
pub async fn lock(state_dir: &Path, status: &Status) -> Result<NodeLock> {
    ferry_node_ipam::durable::ensure_private_dir(state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    let path = state_dir.join(LOCK_FILE);
    let mut file = ferry_node_ipam::durable::open_lock_file(&path)
        .with_context(|| format!("open the node's lock {}", path.display()))?;
    let mut said = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                held.set_len(0)
                    .and_then(|()| {
                        held.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
                    })
                    .with_context(|| format!("write this process's ID into {}", path.display()))?;
                if said {
                    tracing::info!(lock = %path.display(), "the other ferry-overlayd is gone; going on");
                }
                status.clear(Cause::Lock);
                return Ok(NodeLock { _file: held });
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                file = f;
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = text.trim();
                let pid = if pid.is_empty() { "unknown" } else { pid };
                let msg = format!(
                    "another ferry-overlayd runs on this node (pid {pid}): it holds {}; waiting for it to exit",
                    path.display()
                );
                if !said {
                    tracing::warn!("{msg}");
                    said = true;
                }
                status.set(Cause::Lock, msg);
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Err((_, e)) => bail!("lock {}: {e}", path.display()),
        }
    }
}

/// Takes the node's liveness key for this process: at once when it is free, ours, or a
/// dead predecessor's on this machine; a key of another machine is waited for up to
/// `NAME_PATIENCE` (it may be a killed daemon's, expiring), then refused.
pub async fn claim_name(
    reg: &mut Registry,
    node: &str,
    me: &Liveness,
    retry: &mut EtcdRetry,
    status: &Status,
) -> Result<i64> {
    let mut since: Option<Instant> = None;
    loop {
        match reg.set_alive(node, me, ALIVE_TTL, true).await {
            Ok(claimed) => {
                retry.answered();
                if let Some(old) = claimed.replaced {
                    tracing::info!(
                        previous = %old,
                        "this machine's previous ferry-overlayd is gone (it no longer holds the node's lock): took its liveness key over"
                    );
                }
                status.clear(Cause::Name);
                return Ok(claimed.lease);
            }
            Err(LeaseError::NameInUse {
                node,
                key,
                other,
                other_machine,
                ttl,
            }) => {
                retry.answered();
                let said = since.is_some();
                let first = *since.get_or_insert_with(Instant::now);
                if first.elapsed() >= NAME_PATIENCE {
                    return Err(LeaseError::NameInUse {
                        node,
                        key,
                        other,
                        other_machine,
                        ttl,
                    }
                    .into());
                }
                let text = format!(
                    "waiting for this node's name: another ferry-overlayd (instance {other} of machine {other_machine}, not this one) holds {key}; refusing to start in {}s unless that key expires",
                    NAME_PATIENCE.saturating_sub(first.elapsed()).as_secs()
                );
                if !said {
                    tracing::warn!(
                        key = %key, other = %other, machine = %other_machine,
                        "another instance of another machine holds this node's name; waiting up to {}s for its key to expire",
                        NAME_PATIENCE.as_secs()
                    );
                }
                status.set(Cause::Name, text);
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Err(e) => retry.failed(e).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own, removed however the test ends.
    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_secret_is_made_once_and_checked_after() {
        let d = TempDir(std::env::temp_dir().join(format!("ferry-secret-{}", std::process::id())));
        let path = d.0.join("sub/node-secret");
        let a = node_secret(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(node_secret(&path).unwrap(), a);
        assert_eq!(machine_id(&a).len(), 32);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", node_secret(&path).unwrap_err());
        assert!(e.contains("node-secret") && e.contains("0600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let e = format!("{:#}", node_secret(&path).unwrap_err());
        assert!(e.contains("5 bytes"), "{e}");
        // Only the secret is left: no temporary beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
