//! `<stateDir>/node.json`: what `ferry-overlayd` tells the plugin about this node.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::Durability;
use crate::error::IpamError;

pub const FILE_NAME: &str = "node.json";
pub const DEFAULT_STATE_DIR: &str = "/run/ferry";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub node_name: String,
    /// The node's IPv4 pod subnet; absent in an IPv6-only cluster.
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[serde(
        rename = "clusterCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The node's IPv6 pod subnet; absent in an IPv4-only cluster.
    #[serde(rename = "podCIDRv6", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<String>,
    #[serde(
        rename = "clusterCIDRv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_cidr_v6: Option<String>,
    #[serde(rename = "gatewayV6", default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// The node enforces NetworkPolicy: ADD waits until `ferry-overlayd` covers the pod
    /// (its socket `policy.sock` beside this file exists before this file says so).
    #[serde(
        rename = "networkPolicy",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub network_policy: bool,
    /// BIG TCP: the GSO and GRO sizes the pods' links take, copied from the underlay by
    /// `ferry-overlayd`; absent when the underlay has the kernel's 64 KiB.
    #[serde(rename = "bigTcp", default, skip_serializing_if = "Option::is_none")]
    pub big_tcp: Option<BigTcp>,
}

/// Bytes, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigTcp {
    pub ipv4: u32,
    pub ipv6: u32,
}

impl NodeState {
    /// The node's IPv4 pod subnet and gateway, when the cluster has IPv4.
    pub fn ipv4(&self) -> Option<(&str, Option<Ipv4Addr>)> {
        self.pod_cidr.as_deref().map(|c| (c, self.gateway))
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the node state; `Ok(None)` when the file is not there (yet).
pub fn read(state_dir: &Path) -> Result<Option<NodeState>, IpamError> {
    read_json(path(state_dir))
}

/// Reads a JSON file of the state directory whole; `Ok(None)` when it is not there.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: PathBuf,
) -> Result<Option<T>, IpamError> {
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(IpamError::NodeStateInvalid {
                path,
                detail: e.to_string(),
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| IpamError::NodeStateInvalid {
            path,
            detail: e.to_string(),
        })
}

/// Reads the node state, which must be there.
pub fn require(state_dir: &Path) -> Result<NodeState, IpamError> {
    read(state_dir)?.ok_or_else(|| IpamError::NodeStateMissing {
        path: path(state_dir),
    })
}

/// node.json as one call sees it: read once, then asked by whoever needs it (the pools,
/// the MTU, the policy switch), so that they all see the same file.
#[derive(Debug, Clone)]
pub struct View {
    path: PathBuf,
    /// The file's state, or why it could not be read.
    read: Result<Option<NodeState>, String>,
}

impl View {
    pub fn read(state_dir: &Path) -> View {
        View {
            path: path(state_dir),
            read: read(state_dir).map_err(|e| match e {
                IpamError::NodeStateInvalid { detail, .. } => detail,
                e => e.to_string(),
            }),
        }
    }

    /// The node state, or None when it is absent or unreadable.
    pub fn state(&self) -> Option<&NodeState> {
        self.read.as_ref().ok()?.as_ref()
    }

    /// The node state, which must be there: as `require`, from this one reading.
    pub fn require(&self) -> Result<&NodeState, IpamError> {
        match &self.read {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(IpamError::NodeStateMissing {
                path: self.path.clone(),
            }),
            Err(detail) => Err(IpamError::NodeStateInvalid {
                path: self.path.clone(),
                detail: detail.clone(),
            }),
        }
    }
}

/// Replaces the node state atomically, in a private directory (see `durable`). The daemon
/// is the only writer, so a temporary left by a killed one is swept here.
pub fn write(state_dir: &Path, state: &NodeState) -> std::io::Result<()> {
    write_json(state_dir, &path(state_dir), state, Durability::Synced)
}

/// Replaces a JSON file of the state directory atomically.
pub(crate) fn write_json<T: Serialize>(
    state_dir: &Path,
    path: &Path,
    value: &T,
    durability: Durability,
) -> std::io::Result<()> {
    crate::durable::ensure_private_dir(state_dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("state directory {}: {e}", state_dir.display()),
        )
    })?;
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    crate::durable::remove_stale_temps(path);
    crate::durable::write_atomic(path, &bytes, durability)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_contracts() {
        let d = tempfile::tempdir().unwrap();
        let st = NodeState {
            node_name: "n".into(),
            pod_cidr: Some("10.1.2.0/24".into()),
            cluster_cidr: Some("10.1.0.0/16".into()),
            gateway: Some(Ipv4Addr::new(10, 1, 2, 1)),
            pod_cidr_v6: None,
            cluster_cidr_v6: None,
            gateway_v6: None,
            mtu: 1450,
            network_policy: false,
            big_tcp: None,
        };
        write(d.path(), &st).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(d.path())).unwrap()).unwrap();
        for k in ["nodeName", "podCIDR", "clusterCIDR", "gateway", "mtu"] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(read(d.path()).unwrap(), Some(st.clone()));
        assert!(v.get("bigTcp").is_none(), "{v}");
        let big = NodeState {
            big_tcp: Some(BigTcp {
                ipv4: 185_000,
                ipv6: 150_000,
            }),
            ..st
        };
        write(d.path(), &big).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(d.path())).unwrap()).unwrap();
        assert_eq!(
            v["bigTcp"],
            serde_json::json!({"ipv4": 185000, "ipv6": 150000})
        );
        assert_eq!(read(d.path()).unwrap(), Some(big));
    }
}
