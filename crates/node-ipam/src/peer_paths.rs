//! `<stateDir>/peers.json`: by which path this node reaches each remote node's pods, as
//! `ferry-overlayd` last programmed it. `ferry-ipam leases --state-dir` shows it beside the
//! leases (etcd knows the nodes, only the node knows its kernel's routes).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::IpamError;

pub const FILE_NAME: &str = "peers.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Routed unencapsulated via the node's underlay address (DirectRouting).
    Direct,
    /// Encapsulated in VXLAN.
    Vxlan,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Vxlan => "vxlan",
        })
    }
}

/// One remote node. The path is that of its pod subnet of the underlay's family; a
/// subnet of the other family (IPv6 pods over an IPv4 underlay) always goes over VXLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPath {
    pub node: String,
    pub public_ip: IpAddr,
    pub path: PathKind,
    /// The device a direct route leaves by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl PeerPath {
    /// `direct via <dev>` or `vxlan`.
    pub fn shown(&self) -> String {
        match &self.device {
            Some(d) if self.path == PathKind::Direct => format!("direct via {d}"),
            _ => self.path.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPaths {
    pub peers: Vec<PeerPath>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the paths; `Ok(None)` when the file is not there (no daemon, or an older one).
pub fn read(state_dir: &Path) -> Result<Option<PeerPaths>, IpamError> {
    crate::node_state::read_json(path(state_dir))
}

/// Replaces the paths atomically. Not synced: they are recomputed every round, a crash
/// loses nothing worth keeping.
pub fn write(state_dir: &Path, paths: &PeerPaths) -> std::io::Result<()> {
    let path = path(state_dir);
    crate::node_state::write_json(
        state_dir,
        &path,
        paths,
        crate::durable::Durability::Unsynced,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_with_the_documented_keys() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        let p = PeerPaths {
            peers: vec![
                PeerPath {
                    node: "a".into(),
                    public_ip: "192.0.2.11".parse().unwrap(),
                    path: PathKind::Direct,
                    device: Some("eth0".into()),
                },
                PeerPath {
                    node: "b".into(),
                    public_ip: "192.0.2.12".parse().unwrap(),
                    path: PathKind::Vxlan,
                    device: None,
                },
            ],
        };
        write(d.path(), &p).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(d.path())).unwrap()).unwrap();
        assert_eq!(v["peers"][0]["path"], "direct");
        assert_eq!(v["peers"][0]["publicIp"], "192.0.2.11");
        assert_eq!(v["peers"][1]["path"], "vxlan");
        assert_eq!(read(d.path()).unwrap(), Some(p.clone()));
        assert_eq!(p.peers[0].shown(), "direct via eth0");
        assert_eq!(p.peers[1].shown(), "vxlan");
        std::fs::write(path(d.path()), "{").unwrap();
        assert!(read(d.path())
            .unwrap_err()
            .to_string()
            .contains("peers.json"));
    }
}
