//! peers.json has two writers, the daemon (the paths, when they change) and the prober
//! (the health, every few seconds): both go through one `PeersFile`, which holds the last
//! of each and writes them together, so that neither undoes the other's last write.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_node_ipam::peer_paths::{self, PeerHealth, PeerPaths};

/// Each peer's health by (node, underlay address): its first family's, its second's.
pub type HealthMap = BTreeMap<(String, IpAddr), [Option<PeerHealth>; 2]>;

pub struct PeersFile {
    state_dir: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The paths as the daemon last gave them (no health).
    paths: Option<PeerPaths>,
    health: HealthMap,
    health_at: Option<u64>,
}

impl PeersFile {
    pub fn new(state_dir: &Path) -> PeersFile {
        PeersFile {
            state_dir: state_dir.to_path_buf(),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn path(&self) -> PathBuf {
        peer_paths::path(&self.state_dir)
    }

    /// The daemon's paths, written with the last health.
    pub fn set_paths(&self, paths: PeerPaths) -> std::io::Result<()> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        inner.paths = Some(paths);
        self.write(&inner)
    }

    /// The prober's health, written with the last paths (not before there are any: the
    /// file says the daemon programmed its peers).
    pub fn set_health(&self, health: HealthMap, at: u64) -> std::io::Result<()> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        inner.health = health;
        inner.health_at = Some(at);
        if inner.paths.is_none() {
            return Ok(());
        }
        self.write(&inner)
    }

    fn write(&self, inner: &Inner) -> std::io::Result<()> {
        let mut out = inner.paths.clone().unwrap_or_default();
        for p in &mut out.peers {
            if let Some([a, b]) = inner.health.get(&(p.node.clone(), p.public_ip)) {
                p.health = a.clone();
                p.health_v6 = b.clone();
            }
        }
        out.health_at = inner.health_at;
        peer_paths::write(&self.state_dir, &out)
    }
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("peers.json's writer panicked earlier")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_node_ipam::peer_paths::{PathKind, PeerPath};

    #[test]
    fn paths_and_health_are_written_together_by_either_writer() {
        let d = tempfile::tempdir().unwrap();
        let f = PeersFile::new(d.path());
        let ip: IpAddr = "192.0.2.12".parse().unwrap();
        let h = PeerHealth {
            family: "ipv4".into(),
            path: PathKind::Vxlan,
            reachable: true,
            lost: 0,
            sent: 4,
            rtt_seconds: Some(0.001),
            mtu_ok: None,
            mtu: Some(1450),
            unreachable_since: None,
        };
        let health = HealthMap::from([(("b".to_string(), ip), [Some(h.clone()), None])]);
        f.set_health(health, 7).unwrap();
        assert!(!f.path().exists(), "no health without the daemon's paths");
        let paths = PeerPaths {
            peers: vec![PeerPath {
                node: "b".into(),
                public_ip: ip,
                path: PathKind::Vxlan,
                device: None,
                health: None,
                health_v6: None,
            }],
            health_at: None,
        };
        f.set_paths(paths).unwrap();
        let read = peer_paths::read(d.path()).unwrap().unwrap();
        assert_eq!(read.peers[0].health.as_ref(), Some(&h));
        assert_eq!(read.health_at, Some(7));
    }
}
