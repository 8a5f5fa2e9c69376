//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) in normalised form: the
//! cluster administrator's policies in two tiers around the namespaces' NetworkPolicies.
//!
//! Each direction of a pod is decided in order: the Admin tier (the policies whose subject
//! selects the pod, lowest `priority` first, then by name; rules in written order; the
//! first rule that matches decides: `Accept`, `Deny`, or `Pass` to skip the rest of the
//! tier), then NetworkPolicy (when one selects the pod for the direction it decides), then
//! the Baseline tier the same way (`Pass` decides nothing), then allowed.
//!
//! Conversion fails closed as the API asks of an implementation meeting a peer it does
//! not support or cannot read: an `Accept` rule becomes a rule that matches nothing (left
//! out), a `Deny` or `Pass` rule a rule that denies everything. A policy whose subject,
//! tier or priority cannot be read selects every pod and keeps only its rules that deny
//! (each made a deny-all): it cannot say which pods it protects, and dropping it would open
//! them. `domainNames` peers are not supported (the API allows them in `Accept` rules only,
//! so such a rule matches nothing); `nodes` peers are (the Node objects' addresses).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Direction, Labels, Pod, PolicyRule, Selector};

/// The two tiers a ClusterNetworkPolicy can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tier {
    /// Before NetworkPolicy: what a namespace's owner cannot override.
    Admin,
    /// After NetworkPolicy: defaults a namespace's own policy can override.
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    Accept,
    Deny,
    /// Skip the rest of the tier (the Admin tier hands over to NetworkPolicy; in the
    /// Baseline tier nothing is left to decide: allowed).
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The pods a ClusterNetworkPolicy applies to. Host-network pods never are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    /// Every pod of the namespaces the selector matches.
    Namespaces(Selector),
    /// The pods matching `pods` in the namespaces matching `namespaces`.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

/// One rule of a ClusterNetworkPolicy. `rule.peers` are its `from`/`to` (an empty list,
/// which the API never allows, is what a rule failed closed holds: every peer), and
/// `rule.ports` its `protocols` (empty: every port of every protocol; a
/// `destinationNamedPort` is one named entry per protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRule {
    /// The rule's `name` (may be empty: the API makes it optional).
    pub name: String,
    pub action: Action,
    pub rule: PolicyRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPolicy {
    pub name: String,
    pub tier: Tier,
    /// 0 to 1000; lower comes first within the tier.
    pub priority: u32,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    pub fn rules(&self, dir: Direction) -> &[ClusterRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the subject selects `pod`, whose namespace carries `ns_labels`.
    pub fn selects(&self, pod: &Pod, ns_labels: &Labels) -> bool {
        !pod.host_network
            && match &self.subject {
                Subject::Namespaces(ns) => ns.matches(ns_labels),
                Subject::Pods { namespaces, pods } => {
                    namespaces.matches(ns_labels) && pods.matches(&pod.labels)
                }
            }
    }

    /// The order policies of one tier are applied in: by priority, then by name (the API
    /// leaves equal priorities undefined; a fixed order keeps every node alike).
    pub fn order_key(&self) -> (u32, &str) {
        (self.priority, &self.name)
    }

    /// How chains and explanations tell this policy apart from a NetworkPolicy (whose id
    /// is `namespace/name`, and a namespace holds no `:`): `cnp:<tier>:<priority>:<name>`.
    pub fn id(&self) -> String {
        format!("cnp:{}:{}:{}", self.tier, self.priority, self.name)
    }
}

/// What ferry keeps of a Node for `nodes` peers: its labels and `status.addresses` that
/// are IP addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<std::net::IpAddr>,
}

mod convert;

pub use convert::node_from_k8s;
