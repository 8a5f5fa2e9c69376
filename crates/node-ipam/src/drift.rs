//! `<stateDir>/drift.json`: what `ferry-overlayd`'s last whole check of the data path
//! found wrong and could not mend, what it mended, and the devices it wants. Written by
//! the daemon after each full reconcile when it changed; read by `ferry-ipam doctor`, so
//! that the doctor judges the kernel by the daemon's own diff rather than a second one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::IpamError;

pub const FILE_NAME: &str = "drift.json";

/// The most entries a list holds: a lease store can hold thousands of bad records, and the
/// file is for a person; `*Total` counts them all.
pub const MAX_LISTED: usize = 20;

/// A device as the daemon wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    pub mtu: u32,
}

/// A destination where a lease wants a route but the host has one ferry did not make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spared {
    pub subnet: String,
    /// The node whose subnet it is, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A kernel operation that failed (retried at the next full check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub op: String,
    pub error: String,
}

/// A lease record (etcd) or Node (Kubernetes) the daemon refused to route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// The underlay device and its MTU when the daemon started (the pods' MTU is made
    /// from it), with the VXLAN overhead of its family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<Device>,
    #[serde(default)]
    pub overhead: u32,
    /// The VXLAN device and the MTU the daemon keeps on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Why the last full check stopped short, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spared: Vec<Spared>,
    /// Routes whose family's routes could not be listed: made at the next round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postponed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Failed>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_total: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused_total: usize,
    /// What the last full check found different and mended (a few, `mendedTotal` all):
    /// something on the node changing ferry's entries, when it comes back every check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mended: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mended_total: usize,
    /// When it mended them (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mended_at: Option<u64>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Drift {
    /// Whether the daemon found something it could not mend.
    pub fn unmended(&self) -> bool {
        self.error.is_some()
            || !self.spared.is_empty()
            || !self.postponed.is_empty()
            || self.failed_total > 0
            || self.refused_total > 0
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the drift; `Ok(None)` when the file is not there (no daemon, or an older one).
pub fn read(state_dir: &Path) -> Result<Option<Drift>, IpamError> {
    crate::node_state::read_json(path(state_dir))
}

/// Replaces the drift atomically. Not synced: every full check makes it anew.
pub fn write(state_dir: &Path, drift: &Drift) -> std::io::Result<()> {
    crate::node_state::write_json(
        state_dir,
        &path(state_dir),
        drift,
        crate::durable::Durability::Unsynced,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_round_trips_and_an_empty_one_is_small() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        let clean = Drift {
            vxlan: Some(Device {
                name: "ferry.1".into(),
                mtu: 1450,
            }),
            ..Drift::default()
        };
        assert!(!clean.unmended());
        write(d.path(), &clean).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(d.path())).unwrap()).unwrap();
        assert!(v.get("spared").is_none(), "{v}");
        assert_eq!(read(d.path()).unwrap(), Some(clean.clone()));
        let spared = Drift {
            spared: vec![Spared {
                subnet: "10.1.2.0/24".into(),
                node: Some("b".into()),
            }],
            ..clean
        };
        assert!(spared.unmended());
        write(d.path(), &spared).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(spared));
    }
}
