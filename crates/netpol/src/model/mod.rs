//! The normalised form of the objects NetworkPolicy enforcement needs, converted from the
//! Kubernetes API types with the API's defaulting and validated.
//!
//! A policy that fails validation never breaks the others: [`Cluster::from_k8s`] returns the
//! valid policies and the list of errors. What an invalid policy still does is chosen to
//! fail closed:
//! - a broken rule (bad port, protocol, peer, ipBlock, selector inside a peer) is dropped
//!   from its policy, while the policy still selects its pods and keeps its policy types, so
//!   the pods stay isolated and that rule allows nothing;
//! - a broken `podSelector` or `policyTypes` value makes the pods it would isolate (or the
//!   directions) unknowable: the policy then isolates every pod of its namespace (for both
//!   directions when `policyTypes` is broken) and allows nothing, rules left out. The API
//!   server rejects such objects, so this is only defence against a lying or broken
//!   source; fail closed all the same, since dropping the policy would open the pods it
//!   was written to isolate.

mod cluster_policy;
mod convert;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub use cluster_policy::{
    node_from_k8s, Action, ClusterPolicy, ClusterRule, NodeInfo, Subject, Tier,
};
pub use convert::namespace_from_k8s;

/// The label the API server puts on every namespace (since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

/// A problem in one object, naming the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {reason}")]
pub struct ModelError {
    /// `NetworkPolicy`, `Pod` or `Namespace`.
    pub kind: &'static str,
    /// `namespace/name` (or `name` for a namespace).
    pub object: String,
    /// The JSON path inside the object, e.g. `spec.ingress[0].ports[1].endPort`.
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the API's spelling; absent means TCP, as the API defaults it.
    pub fn parse(s: Option<&str>) -> Result<Protocol, String> {
        match s {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => Err(format!("protocol {other:?} is not one of TCP, UDP, SCTP")),
        }
    }

    /// The name nft uses for the protocol in an `inet_proto` field.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> PodKey {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// IPv4 and/or IPv6; empty for a pod without an address yet or in a terminal phase
    /// (its address may already belong to another pod).
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub ports: Vec<ContainerPort>,
    /// Host-network pods carry the node's address: policies neither select them nor match
    /// them by selector (as upstream); only ipBlocks can match their address.
    pub host_network: bool,
}

impl Pod {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }

    /// The pod's address of the same family as `like`.
    pub fn ip_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == like.is_ipv4())
    }
}

/// A label selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

/// A validated label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub match_labels: Labels,
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator {
                    Operator::In => got.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => !got.is_some_and(|v| r.values.contains(v)),
                    Operator::Exists => got.is_some(),
                    Operator::DoesNotExist => got.is_none(),
                }
            })
    }
}

/// Which ports of a protocol a policy port entry allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortSel {
    /// `port` omitted: every port of the protocol.
    All,
    /// A number, or `port`..=`endPort`.
    Range(u16, u16),
    /// A container port name, resolved against the destination pod.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: PortSel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyPeer {
    /// `pods` only: pods of the policy's namespace; `namespaces` only: every pod of the
    /// matching namespaces; both: pods matching `pods` in namespaces matching `namespaces`.
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    /// Addresses inside `cidr` and outside every `except`.
    IpBlock {
        cidr: IpNetwork,
        except: Vec<IpNetwork>,
    },
    /// The addresses of the Nodes the selector matches (a ClusterNetworkPolicy's egress
    /// `nodes` peer; NetworkPolicy has none).
    Nodes(Selector),
}

/// One ingress or egress rule. An empty `peers` means every peer; an empty `ports` means
/// every port of every protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// The rule's position in the object's `ingress` or `egress` list (a broken rule is
    /// left out, so positions may have gaps); names and explanations use it.
    pub index: usize,
    pub peers: Vec<PolicyPeer>,
    pub ports: Vec<PolicyPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `None`: the policy does not cover ingress. `Some(rules)`: it isolates the pods it
    /// selects for ingress and allows what the rules match (nothing when empty).
    pub ingress: Option<Vec<PolicyRule>>,
    /// Like `ingress`, for egress.
    pub egress: Option<Vec<PolicyRule>>,
}

/// A traffic direction as seen from the pod a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

impl Policy {
    /// `namespace/name`, as errors and explanations print it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, dir: Direction) -> Option<&[PolicyRule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether the policy selects `pod` (same namespace, selector matches).
    pub fn selects(&self, pod: &Pod) -> bool {
        !pod.host_network
            && pod.namespace == self.namespace
            && self.pod_selector.matches(&pod.labels)
    }
}

/// Everything the evaluator and the desired state need, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
    /// ClusterNetworkPolicies of both tiers, in any order.
    #[serde(default)]
    pub cluster_policies: Vec<ClusterPolicy>,
    /// The Nodes, for `nodes` peers.
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
}

impl Cluster {
    /// The labels of a namespace; one the snapshot does not hold yet is taken to carry only
    /// the name label the API server would give it.
    pub fn namespace_labels(&self, ns: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(ns) {
            Some(l) => Cow::Borrowed(l),
            None => Cow::Owned(Labels::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                ns.to_string(),
            )])),
        }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Whether `peer` (of a rule of a policy of namespace `home`: a ClusterNetworkPolicy's
    /// peers always name their namespaces) matches the pod `pod`, ignoring addresses.
    pub(crate) fn peer_matches_pod(&self, home: &str, peer: &PolicyPeer, pod: &Pod) -> bool {
        match peer {
            PolicyPeer::Pods { pods, namespaces } => {
                if pod.host_network {
                    return false;
                }
                let ns_ok = match namespaces {
                    None => pod.namespace == home,
                    Some(sel) => sel.matches(&self.namespace_labels(&pod.namespace)),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
            PolicyPeer::IpBlock { .. } | PolicyPeer::Nodes(_) => false,
        }
    }

    /// Whether the ClusterNetworkPolicy selects `pod`.
    pub fn cluster_policy_selects(&self, policy: &ClusterPolicy, pod: &Pod) -> bool {
        policy.selects(pod, &self.namespace_labels(&pod.namespace))
    }

    /// The ClusterNetworkPolicies of `tier` in the order they apply.
    pub fn tier(&self, tier: Tier) -> Vec<&ClusterPolicy> {
        let mut out: Vec<&ClusterPolicy> = self
            .cluster_policies
            .iter()
            .filter(|p| p.tier == tier)
            .collect();
        out.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        out
    }

    /// The addresses of the Nodes `sel` matches.
    pub fn node_ips<'s>(&'s self, sel: &'s Selector) -> impl Iterator<Item = IpAddr> + 's {
        self.nodes
            .iter()
            .filter(move |n| sel.matches(&n.labels))
            .flat_map(|n| n.ips.iter().copied())
    }

    /// Adds ClusterNetworkPolicies (a second object of one name is reported and left out)
    /// and returns their problems.
    pub fn add_cluster_policies<'a>(
        &mut self,
        objects: impl IntoIterator<Item = &'a crate::api::ClusterNetworkPolicy>,
    ) -> Vec<ModelError> {
        let mut errors = Vec::new();
        let mut seen: BTreeSet<String> = self
            .cluster_policies
            .iter()
            .map(|p| p.name.clone())
            .collect();
        for obj in objects {
            let (p, errs) = ClusterPolicy::from_api(obj);
            errors.extend(errs);
            if let Some(p) = p {
                if seen.insert(p.name.clone()) {
                    self.cluster_policies.push(p);
                } else {
                    errors.push(ModelError {
                        kind: "ClusterNetworkPolicy",
                        object: p.name,
                        field: "metadata.name".into(),
                        reason: "a second object of this name; the first one is used".into(),
                    });
                }
            }
        }
        errors
    }
}

impl PolicyPeer {
    /// Whether an ipBlock peer holds `ip`; always false for a selector peer.
    pub fn ip_block_contains(&self, ip: IpAddr) -> bool {
        match self {
            PolicyPeer::IpBlock { cidr, except } => {
                cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
            }
            PolicyPeer::Pods { .. } | PolicyPeer::Nodes(_) => false,
        }
    }
}

impl PortSel {
    /// The port range this entry allows towards `dst` for `protocol`; a named port
    /// resolves against the destination's container ports of that protocol.
    pub fn resolve(&self, protocol: Protocol, dst: Option<&Pod>) -> Vec<(u16, u16)> {
        match self {
            PortSel::All => vec![(0, u16::MAX)],
            PortSel::Range(lo, hi) => vec![(*lo, *hi)],
            PortSel::Named(name) => dst
                .into_iter()
                .flat_map(|p| &p.ports)
                .filter(|c| c.protocol == protocol && c.name.as_deref() == Some(name.as_str()))
                .map(|c| (c.port, c.port))
                .collect(),
        }
    }
}
