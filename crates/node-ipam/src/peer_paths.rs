//! `<stateDir>/peers.json`: by which path this node reaches each remote node's pods, as
//! `ferry-overlayd` last programmed it. `ferry-ipam leases --state-dir` shows it beside the
//! leases (etcd knows the nodes, only the node knows its kernel's routes), and, per path,
//! whether the probes of its health prober cross it (`health`).

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPath {
    pub node: String,
    pub public_ip: IpAddr,
    pub path: PathKind,
    /// The device a direct route leaves by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What the probes to its first family's gateway (IPv4 when it has an IPv4 subnet)
    /// saw; absent from an older daemon's file, or before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<PeerHealth>,
    /// The same for its IPv6 subnet when it also has an IPv4 one (dual-stack).
    #[serde(default, rename = "healthV6", skip_serializing_if = "Option::is_none")]
    pub health_v6: Option<PeerHealth>,
}

/// How one family of a peer answers this node's probes: ICMP echo from this node's
/// gateway address to the peer's, over the path its pods take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerHealth {
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// The path the probes took (the pods' path to that subnet).
    pub path: PathKind,
    /// False once probes go unanswered several times in a row; true once one is
    /// answered.
    pub reachable: bool,
    /// Unanswered probes among the last `sent` (at most 10).
    pub lost: u32,
    pub sent: u32,
    /// The last answered probe's round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_seconds: Option<f64>,
    /// Whether a probe of the pod MTU with DF set crosses; absent until one was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_ok: Option<bool>,
    /// The probe size that is the pod MTU (bytes, IP header included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Unix seconds of the first unanswered probe of the current outage, while
    /// unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<u64>,
}

impl PeerHealth {
    /// What a person reads first: `ok`, `lost 3/10`, `mtu fails`, `unreachable since
    /// 12:01:05 (20s)` (UTC; `now` in Unix seconds gives the duration).
    pub fn shown(&self, now: u64) -> String {
        if !self.reachable {
            return match self.unreachable_since {
                Some(t) => format!(
                    "unreachable since {} ({}s)",
                    utc_time_of_day(t),
                    now.saturating_sub(t)
                ),
                None => "unreachable".to_string(),
            };
        }
        if self.mtu_ok == Some(false) {
            return "mtu fails".to_string();
        }
        if self.lost > 0 {
            return format!("lost {}/{}", self.lost, self.sent);
        }
        "ok".to_string()
    }
}

/// `HH:MM:SS` of a Unix time, in UTC (no time zone database on a node image).
pub fn utc_time_of_day(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPaths {
    pub peers: Vec<PeerPath>,
    /// Unix seconds when the health was last written (every few seconds while the
    /// prober runs): older means the daemon stopped, and the health is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_at: Option<u64>,
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

    fn health(reachable: bool, lost: u32, mtu_ok: Option<bool>) -> PeerHealth {
        PeerHealth {
            family: "ipv4".into(),
            path: PathKind::Vxlan,
            reachable,
            lost,
            sent: 10,
            rtt_seconds: None,
            mtu_ok,
            mtu: None,
            unreachable_since: (!reachable).then_some(43_265),
        }
    }

    #[test]
    fn health_reads_worst_first() {
        assert_eq!(health(true, 0, Some(true)).shown(0), "ok");
        assert_eq!(health(true, 0, None).shown(0), "ok");
        assert_eq!(health(true, 3, Some(true)).shown(0), "lost 3/10");
        // A failing MTU says more than a few lost probes.
        assert_eq!(health(true, 3, Some(false)).shown(0), "mtu fails");
        assert_eq!(
            health(false, 10, Some(false)).shown(43_285),
            "unreachable since 12:01:05 (20s)"
        );
    }

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
                    health: None,
                    health_v6: None,
                },
                PeerPath {
                    node: "b".into(),
                    public_ip: "192.0.2.12".parse().unwrap(),
                    path: PathKind::Vxlan,
                    device: None,
                    health: Some(PeerHealth {
                        family: "ipv4".into(),
                        path: PathKind::Vxlan,
                        reachable: true,
                        lost: 3,
                        sent: 10,
                        rtt_seconds: Some(0.0004),
                        mtu_ok: Some(true),
                        mtu: Some(1450),
                        unreachable_since: None,
                    }),
                    health_v6: None,
                },
            ],
            health_at: Some(1_700_000_000),
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
        let h = &v["peers"][1]["health"];
        assert_eq!(
            (&h["path"], &h["reachable"], &h["lost"], &h["sent"]),
            (
                &"vxlan".into(),
                &true.into(),
                &3.into(),
                &serde_json::Value::from(10)
            )
        );
        assert_eq!(h["rttSeconds"], 0.0004);
        assert_eq!(h["mtuOk"], true);
        assert!(v["peers"][0].get("health").is_none());
        assert_eq!(v["healthAt"], 1_700_000_000u64);
        // An older daemon's file, without health, still reads.
        std::fs::write(
            path(d.path()),
            r#"{"peers": [{"node": "a", "publicIp": "192.0.2.11", "path": "vxlan"}]}"#,
        )
        .unwrap();
        let old = read(d.path()).unwrap().unwrap();
        assert_eq!((old.peers[0].health.as_ref(), old.health_at), (None, None));
        std::fs::write(path(d.path()), "{").unwrap();
        assert!(read(d.path())
            .unwrap_err()
            .to_string()
            .contains("peers.json"));
    }
}
