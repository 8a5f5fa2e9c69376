//! The allocation store: one JSON document, `<dataDir>/allocations.json`.
//!
//! Writers (ADD, DEL, GC, `release`) hold an exclusive `flock` on `<dataDir>/lock` for the
//! read-modify-write and replace the document atomically (`durable::write_atomic`).
//! Readers (`show`, `check`) read the document without the lock: a rename is atomic, so
//! they always see one whole version and never slow an ADD down.
//!
//! The directory is 0700 and the files 0600 whatever the umask, none is opened through a
//! symbolic link, and a writer waits at most `LOCK_WAIT` for the lock: a holder that
//! never lets go (a stuck process) costs one clear error, never a stalled runtime.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::durable::Durability;
use crate::error::IpamError;

pub const FILE_NAME: &str = "allocations.json";
pub const LOCK_NAME: &str = "lock";
const FORMAT_VERSION: u32 = 1;
/// How long a writer waits for the store's lock before it gives up with code 11.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// One address held by one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
    /// The CNI network name (GC works per network).
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The Kubernetes pod the runtime named in `CNI_ARGS`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<cni::K8sPod>,
    /// Unix seconds of the ADD.
    pub since: u64,
}

/// The pool last used to allocate, so that `ferry-ipam show` can describe the store
/// without being told the subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolRecord {
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreData {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reserved: Option<Ipv4Addr>,
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, Allocation>,
}

impl Default for StoreData {
    fn default() -> Self {
        StoreData {
            version: FORMAT_VERSION,
            pool: None,
            last_reserved: None,
            allocations: BTreeMap::new(),
        }
    }
}

impl StoreData {
    /// The address held by (container ID, ifname), if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<Ipv4Addr> {
        self.allocations
            .iter()
            .find(|(_, a)| a.container_id == container_id && a.ifname == ifname)
            .map(|(ip, _)| *ip)
    }
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> IpamError {
        move |source| IpamError::StoreIo { path, source }
    }

    /// The current document, read without the lock. A store never written is empty.
    pub fn snapshot(&self) -> Result<StoreData, IpamError> {
        let path = self.path();
        let mut bytes = Vec::new();
        match crate::durable::open_nofollow(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => parse(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreData::default()),
            Err(e) => Err(self.io(path)(e)),
        }
    }

    /// Takes the exclusive lock, polling so that the wait is bounded.
    fn lock(&self) -> Result<Flock<File>, IpamError> {
        let lock_path = self.dir.join(LOCK_NAME);
        let mut file =
            crate::durable::open_lock_file(&lock_path).map_err(self.io(lock_path.clone()))?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, Errno::EWOULDBLOCK)) if start.elapsed() < LOCK_WAIT => {
                    file = f;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(IpamError::LockTimeout {
                        path: lock_path,
                        waited: LOCK_WAIT,
                    })
                }
                Err((_, errno)) => return Err(self.io(lock_path)(errno.into())),
            }
        }
    }

    /// Runs `f` on the document under the exclusive lock; when `f` reports a change,
    /// the new document is written durably before the lock is released.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut StoreData) -> Result<(T, bool), IpamError>,
    ) -> Result<T, IpamError> {
        self.update_with(Durability::Synced, f)
    }

    /// `update`, with the new document synced to disk or not (see `Durability`).
    pub fn update_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut StoreData) -> Result<(T, bool), IpamError>,
    ) -> Result<T, IpamError> {
        crate::durable::ensure_private_dir(&self.dir).map_err(self.io(self.dir.clone()))?;
        let _lock = self.lock()?;
        let path = self.path();
        // Under the lock no other writer exists: any temporary is a dead writer's.
        crate::durable::remove_stale_temps(&path);
        let mut data = self.snapshot()?;
        let (out, changed) = f(&mut data)?;
        if changed {
            let bytes = serde_json::to_vec_pretty(&data).map_err(std::io::Error::other);
            bytes
                .and_then(|b| crate::durable::write_atomic(&path, &b, durability))
                .map_err(self.io(path))?;
        }
        Ok(out)
    }
}

/// Reads a store document; anything but a well-formed one of this format is `StoreCorrupt`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<StoreData, IpamError> {
    // What a power loss right after an unsynced write can leave (see `Durability`); no
    // pod of the node outlives the power loss, so no allocation is the right reading.
    if bytes.iter().all(|b| *b == 0) {
        return Ok(StoreData::default());
    }
    let data: StoreData = serde_json::from_slice(bytes).map_err(|e| IpamError::StoreCorrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if data.version != FORMAT_VERSION {
        return Err(IpamError::StoreCorrupt {
            path: path.to_path_buf(),
            detail: format!(
                "format version {} (this ferry-ipam reads {FORMAT_VERSION})",
                data.version
            ),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn alloc(cid: &str) -> Allocation {
        Allocation {
            container_id: cid.into(),
            ifname: "eth0".into(),
            network: "n".into(),
            netns: None,
            pod: None,
            since: 0,
        }
    }

    #[test]
    fn update_persists_and_snapshot_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("sub"));
        assert!(s.snapshot().unwrap().allocations.is_empty());
        s.update(|d| {
            d.allocations.insert(Ipv4Addr::new(10, 0, 0, 2), alloc("a"));
            Ok(((), true))
        })
        .unwrap();
        let d = s.snapshot().unwrap();
        assert_eq!(d.find("a", "eth0"), Some(Ipv4Addr::new(10, 0, 0, 2)));
        // Nothing left behind but the document and the lock.
        let mut names: Vec<_> = fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["allocations.json", "lock"]);
    }

    #[test]
    fn failed_update_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let r: Result<(), _> = s.update(|d| {
            d.allocations.insert(Ipv4Addr::new(10, 0, 0, 2), alloc("a"));
            Err(IpamError::Config("boom".into()))
        });
        assert!(r.is_err());
        assert!(s.snapshot().unwrap().allocations.is_empty());
    }

    #[test]
    fn a_file_a_power_loss_emptied_is_an_empty_store() {
        let p = Path::new("/x");
        assert!(parse(p, b"").unwrap().allocations.is_empty());
        assert!(parse(p, &[0; 300]).unwrap().allocations.is_empty());
        assert!(parse(p, b"\0{").is_err());
    }

    #[test]
    fn corrupt_document_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        fs::write(s.path(), b"{half").unwrap();
        let e = s.update(|_| Ok(((), true))).unwrap_err();
        assert!(matches!(e, IpamError::StoreCorrupt { .. }), "{e}");
        assert_eq!(fs::read(s.path()).unwrap(), b"{half");
    }
}
