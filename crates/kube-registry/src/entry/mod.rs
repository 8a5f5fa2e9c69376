//! A Node as ferry reads it, and the checks that make it a peer: the same ones an etcd
//! lease record passes (`ferry_registry::model::resolve`), after two of the API's own
//! (the published address must be the Node's, its annotations must read).

use std::net::IpAddr;

use ferry_registry::model::{resolve, ConfigFlags, LeaseView};
use ferry_registry::{ClusterConfig, LeaseRecord, Refused, StoredLease, Usage};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use k8s_openapi::api::core::v1::Node;

use crate::annotations::{PUBLIC_IP, USAGE, VTEP_MAC};

/// What a Node without pod CIDRs is told, and the operator with it.
pub const NO_POD_CIDR: &str = "has no spec.podCIDRs: the controller-manager allocates them \
with --allocate-node-cidrs=true and --cluster-cidr (kubeadm: --pod-network-cidr); or install \
ferry with its etcd datastore, which leases subnets itself";

/// What ferry keeps of a Node: the fields it reads and nothing else, since a Node's status
/// (images, conditions) is tens of kilobytes and a daemon holds every Node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: String,
    /// `metadata.creationTimestamp` in seconds: the older Node wins a conflict.
    pub created: i64,
    /// `spec.podCIDRs`, else `spec.podCIDR`, as written.
    pub pod_cidrs: Vec<String>,
    /// `status.addresses`, as written.
    pub addresses: Vec<String>,
    pub public_ip: Option<String>,
    pub vtep_mac: Option<String>,
    pub usage: Option<String>,
    /// The kubelet's Ready condition; shown, never routed on (a NotReady node's pods may
    /// still run).
    pub ready: Option<bool>,
}

impl NodeEntry {
    /// The entry of `node`; `None` for a Node without a name (the API never serves one).
    pub fn of(node: &Node) -> Option<NodeEntry> {
        NodeEntry::of_slim(&crate::slim::SlimNode::from(node))
    }

    /// The entry of a Node decoded slim (the watch's).
    pub fn of_slim(node: &crate::slim::SlimNode) -> Option<NodeEntry> {
        let meta = &node.metadata;
        let name = meta.name.clone().filter(|n| !n.is_empty())?;
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        let spec = node.spec.as_ref();
        let pod_cidrs = match spec.and_then(|s| s.pod_cidrs.clone()) {
            Some(v) if !v.is_empty() => v,
            _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
        };
        let status = node.status.as_ref();
        Some(NodeEntry {
            name,
            created: meta
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
            pod_cidrs,
            addresses: status
                .and_then(|s| s.addresses.as_ref())
                .map(|a| a.iter().map(|a| a.address.clone()).collect())
                .unwrap_or_default(),
            public_ip: annotation(PUBLIC_IP),
            vtep_mac: annotation(VTEP_MAC),
            usage: annotation(USAGE),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status == "True"),
        })
    }

    /// Whether `other` routes alike: everything but the usage figure and readiness,
    /// whose changes need no new view (they change far more often than peers do).
    pub fn routes_like(&self, other: &NodeEntry) -> bool {
        fn routed(e: &NodeEntry) -> impl PartialEq + '_ {
            (
                &e.name,
                e.created,
                &e.pod_cidrs,
                &e.addresses,
                &e.public_ip,
                &e.vtep_mac,
            )
        }
        routed(self) == routed(other)
    }

    /// The published usage, when it reads.
    pub fn usage(&self) -> Option<Usage> {
        serde_json::from_str(self.usage.as_deref()?).ok()
    }

    /// The key a refusal names.
    pub fn key(&self) -> String {
        format!("Node {}", self.name)
    }

    /// The node's subnets of the families `cfg` has: `Ok(None)` without any pod CIDR.
    fn subnets(&self, cfg: &ClusterConfig) -> Result<Option<Subnets>, String> {
        if self.pod_cidrs.is_empty() {
            return Ok(None);
        }
        let (mut v4, mut v6) = (None, None);
        for s in &self.pod_cidrs {
            let net: IpNetwork = s
                .parse()
                .map_err(|_| format!("spec.podCIDRs {s:?} is not a CIDR"))?;
            let twice = match net {
                IpNetwork::V4(n) => v4.replace(n).is_some(),
                IpNetwork::V6(n) => v6.replace(n).is_some(),
            };
            if twice {
                return Err(format!(
                    "spec.podCIDRs {:?} has two of one family",
                    self.pod_cidrs
                ));
            }
        }
        // A family the cluster config does not have is not ferry's to route (a dual-stack
        // kind cluster with ferry set up for one family).
        Ok(Some((
            v4.filter(|_| cfg.ipv4.is_some()),
            v6.filter(|_| cfg.ipv6.is_some()),
        )))
    }
}

/// A node's subnets, one per family.
type Subnets = (Option<Ipv4Network>, Option<Ipv6Network>);

/// Why a Node is not (yet) a peer, though nothing about it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// The controller-manager has not given it pod CIDRs (or never will: [`NO_POD_CIDR`]).
    NoPodCidr,
    /// Its daemon has not published its address and VTEP MAC yet.
    NotPublished,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pending::NoPodCidr => f.write_str(NO_POD_CIDR),
            Pending::NotPublished => write!(
                f,
                "has not published {PUBLIC_IP} and {VTEP_MAC} yet (is ferry-overlayd running there?)"
            ),
        }
    }
}

/// One Node judged on its own.
#[derive(Debug, Clone)]
pub enum Judged {
    /// A lease record to settle against the others, as etcd's are.
    Candidate(StoredLease),
    Pending(Pending),
    Refused(Refused),
}

/// Every Node's judgement: the peers (and refusals) as `resolve` makes them, and the Nodes
/// that are not peers yet.
#[derive(Debug, Clone, Default)]
pub struct NodesView {
    pub view: LeaseView,
    pub pending: Vec<(String, Pending)>,
}

/// `e` on its own: pending, refused, or a record for `resolve`.
pub fn judge(cfg: &ClusterConfig, e: &NodeEntry) -> Judged {
    let refuse = |reason: String| {
        Judged::Refused(Refused {
            key: e.key(),
            reason,
        })
    };
    let (subnet, subnet_v6) = match e.subnets(cfg) {
        Ok(Some(s)) => s,
        Ok(None) => return Judged::Pending(Pending::NoPodCidr),
        Err(reason) => return refuse(reason),
    };
    let (ip, mac) = match (&e.public_ip, &e.vtep_mac) {
        (Some(ip), Some(mac)) => (ip, mac),
        (None, None) => return Judged::Pending(Pending::NotPublished),
        (Some(_), None) => return refuse(format!("{PUBLIC_IP} without {VTEP_MAC}")),
        (None, Some(_)) => return refuse(format!("{VTEP_MAC} without {PUBLIC_IP}")),
    };
    let Ok(public_ip) = ip.parse::<IpAddr>() else {
        return refuse(format!("{PUBLIC_IP} {ip:?} is not an IP address"));
    };
    // The Node's addresses are the kubelet's (status, which no daemon's token may write):
    // a node cannot send another node's traffic to an address that is not its own.
    if !e
        .addresses
        .iter()
        .any(|a| a.parse::<IpAddr>().ok() == Some(public_ip))
    {
        return refuse(format!(
            "{PUBLIC_IP} {public_ip} is not one of the Node's status.addresses {:?}",
            e.addresses
        ));
    }
    let record = LeaseRecord {
        node: e.name.clone(),
        subnet,
        public_ip,
        vtep_mac: mac.clone(),
        subnet_v6,
    };
    Judged::Candidate(StoredLease {
        key: e.key(),
        key_subnet: record.primary(),
        record: Ok(record),
        create_revision: e.created,
        v6_owner: None,
    })
}

/// Every Node judged, conflicts settled by the rule every node applies alike (the older
/// Node, then the smaller name, wins).
pub fn judge_all<'a>(
    cfg: &ClusterConfig,
    underlay: &[IpNetwork],
    entries: impl IntoIterator<Item = &'a NodeEntry>,
) -> NodesView {
    let mut candidates = Vec::new();
    let mut refused = Vec::new();
    let mut pending = Vec::new();
    for e in entries {
        match judge(cfg, e) {
            Judged::Candidate(s) => candidates.push(s),
            Judged::Pending(p) => pending.push((e.name.clone(), p)),
            Judged::Refused(r) => refused.push(r),
        }
    }
    let mut view = resolve(cfg, underlay, &candidates);
    view.refused.extend(refused);
    NodesView { view, pending }
}

/// This node's record: its Node's subnets with the address and MAC it publishes. An
/// error says what is missing and who gives it.
pub fn own_record(
    cfg: &ClusterConfig,
    e: &NodeEntry,
    public_ip: IpAddr,
    vtep_mac: &str,
) -> Result<LeaseRecord, String> {
    let (subnet, subnet_v6) = e
        .subnets(cfg)?
        .ok_or_else(|| format!("Node {} {NO_POD_CIDR}", e.name))?;
    let missing = |fam: &str, flag: &str| {
        format!(
            "Node {} has no {fam} pod CIDR in spec.podCIDRs {:?}, but ferry's config has {flag}: the controller-manager gives one per family of its --cluster-cidr",
            e.name, e.pod_cidrs
        )
    };
    if cfg.ipv4.is_some() && subnet.is_none() {
        return Err(missing("IPv4", "cluster-cidr"));
    }
    if cfg.ipv6.is_some() && subnet_v6.is_none() {
        return Err(missing("IPv6", "cluster-cidr-v6"));
    }
    Ok(LeaseRecord {
        node: e.name.clone(),
        subnet,
        public_ip,
        vtep_mac: vtep_mac.to_string(),
        subnet_v6,
    })
}

/// The cluster config of a Kubernetes-datastore cluster: the flags' cluster CIDRs, VNI
/// and port, and node subnet lengths from this node's own pod CIDRs (the
/// controller-manager's `--node-cidr-mask-size*`, one per family for every Node).
pub fn cluster_config(flags: &ConfigFlags, own: &NodeEntry) -> Result<ClusterConfig, String> {
    let mut f = flags.clone();
    let mut found = (None, None);
    for s in &own.pod_cidrs {
        match s.parse::<IpNetwork>() {
            Ok(IpNetwork::V4(n)) => found.0 = Some(n.prefix()),
            Ok(IpNetwork::V6(n)) => found.1 = Some(n.prefix()),
            Err(_) => {
                return Err(format!(
                    "Node {}: spec.podCIDRs {s:?} is not a CIDR",
                    own.name
                ))
            }
        }
    }
    f.subnet_len = found.0.or(f.subnet_len);
    f.subnet_len_v6 = found.1.or(f.subnet_len_v6);
    let cfg = ClusterConfig::from_flags(&f).ok_or(
        "--datastore kubernetes needs the cluster's pod CIDR: --cluster-cidr, --cluster-cidr-v6 or both (the controller-manager's --cluster-cidr)",
    )?;
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests;
