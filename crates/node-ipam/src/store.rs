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
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::durable::Durability;
use crate::error::IpamError;

pub const FILE_NAME: &str = "allocations.json";
pub const LOCK_NAME: &str = "lock";
/// Version 1: IPv4 only. Version 2: may hold IPv6 allocations (`lastReservedV6`,
/// `poolV6`). A document is written as version 1 while it holds no IPv6, so that a node
/// that never used IPv6 can still go back to an older ferry; an older ferry refuses a
/// version 2 document with a clear error instead of misreading it.
const FORMAT_VERSION: u32 = 2;
const FORMAT_VERSION_V4: u32 = 1;
/// How long a writer waits for the store's lock before it gives up with code 11.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// One address held by one attachment (an attachment holds one per address family).
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
    pub pod: Option<ferry_cni::K8sPod>,
    /// Unix seconds of the ADD.
    pub since: u64,
}

/// The pool last used to allocate, so that `ferry-ipam show` can describe the store
/// without being told the subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolRecord {
    pub subnet: String,
    pub gateway: IpAddr,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreData {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolRecord>,
    /// The IPv6 pool last used to allocate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_v6: Option<PoolRecord>,
    /// The IPv4 address last handed out (the key predates IPv6, hence no suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reserved: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reserved_v6: Option<Ipv6Addr>,
    #[serde(default)]
    pub allocations: BTreeMap<IpAddr, Allocation>,
}

impl Default for StoreData {
    fn default() -> Self {
        StoreData {
            version: FORMAT_VERSION_V4,
            pool: None,
            pool_v6: None,
            last_reserved: None,
            last_reserved_v6: None,
            allocations: BTreeMap::new(),
        }
    }
}

impl StoreData {
    /// The addresses held by (container ID, ifname), IPv4 first.
    pub fn find(&self, container_id: &str, ifname: &str) -> Vec<IpAddr> {
        self.allocations
            .iter()
            .filter(|(_, a)| a.container_id == container_id && a.ifname == ifname)
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// The last address handed out in `v6`'s family.
    pub fn last_reserved(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.last_reserved_v6.map(IpAddr::V6)
        } else {
            self.last_reserved
        }
    }

    pub fn set_last_reserved(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(_) => self.last_reserved = Some(ip),
            IpAddr::V6(a) => self.last_reserved_v6 = Some(a),
        }
    }

    fn holds_ipv6(&self) -> bool {
        self.pool_v6.is_some()
            || self.last_reserved_v6.is_some()
            || self.allocations.keys().any(IpAddr::is_ipv6)
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
            data.version = if data.holds_ipv6() {
                FORMAT_VERSION
            } else {
                FORMAT_VERSION_V4
            };
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
    if !(FORMAT_VERSION_V4..=FORMAT_VERSION).contains(&data.version) {
        return Err(IpamError::StoreCorrupt {
            path: path.to_path_buf(),
            detail: format!(
                "format version {} (this ferry-ipam reads {FORMAT_VERSION_V4} to {FORMAT_VERSION})",
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
            d.allocations
                .insert("10.0.0.2".parse().unwrap(), alloc("a"));
            Ok(((), true))
        })
        .unwrap();
        let d = s.snapshot().unwrap();
        assert_eq!(d.find("a", "eth0"), ["10.0.0.2".parse::<IpAddr>().unwrap()]);
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
            d.allocations
                .insert("10.0.0.2".parse().unwrap(), alloc("a"));
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

    #[test]
    fn reads_a_version_1_document_and_writes_2_only_with_ipv6() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        // Today's format, as an IPv4-only ferry wrote it.
        let v1 = r#"{"version": 1, "pool": {"subnet": "10.0.0.0/24", "gateway": "10.0.0.1",
            "rangeStart": "10.0.0.1", "rangeEnd": "10.0.0.254"}, "lastReserved": "10.0.0.2",
            "allocations": {"10.0.0.2": {"containerId": "a", "ifname": "eth0",
            "network": "n", "since": 1}}}"#;
        fs::write(s.path(), v1).unwrap();
        let d = s.snapshot().unwrap();
        assert_eq!(d.find("a", "eth0"), ["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(d.last_reserved(false), Some("10.0.0.2".parse().unwrap()));
        s.update(|_| Ok(((), true))).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(s.path()).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        s.update(|d| {
            let ip: IpAddr = "fd00::2".parse().unwrap();
            d.allocations.insert(ip, alloc("a"));
            d.set_last_reserved(ip);
            Ok(((), true))
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(s.path()).unwrap()).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["lastReservedV6"], "fd00::2");
        assert_eq!(s.snapshot().unwrap().find("a", "eth0").len(), 2);
        let e = parse(Path::new("/x"), br#"{"version": 3}"#).unwrap_err();
        assert!(e.to_string().contains("format version 3"), "{e}");
    }
}
