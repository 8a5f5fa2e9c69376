//! The reference semantics of NetworkPolicy and ClusterNetworkPolicy: whether one
//! connection is allowed, and why.
//!
//! This is what the nftables rules must implement; an operator's "explain" command prints
//! a [`Verdict`], and tests use it as the oracle.
//!
//! - Each direction of a pod is decided tier by tier: the Admin tier's first matching
//!   ClusterNetworkPolicy rule (Accept and Deny decide, Pass skips the rest of the tier),
//!   then NetworkPolicy as below, then the Baseline tier's first matching rule (Pass
//!   decides nothing), then allowed.
//! - A pod is isolated for a direction iff some policy of its namespace selects it and
//!   covers that direction. Traffic of an isolated direction is allowed iff some rule of
//!   some selecting policy matches it (the union); a non-isolated direction allows all.
//! - A connection is allowed iff egress allows it at the source and ingress allows it at
//!   the destination. A source that is not a pod (an address outside the pods, or a
//!   host-network pod) has no egress side.
//! - A pod talking to itself is always allowed: that traffic never leaves the pod's
//!   network namespace (nor, through a Service, the node's bridge hairpin path), as upstream.
//! - ipBlocks match any address, pod addresses included; named ports resolve against the
//!   destination pod's container ports of the rule's protocol.
//! - A pod is a selector peer at its own addresses only. Its link-local address is one of
//!   them (on its node, where the caller's [`Cluster`] carries it); a multicast or
//!   broadcast destination is not: egress to a group is allowed by an ipBlock holding the
//!   group's address, never by a selector. Ingress of a pod that receives group traffic
//!   (or anything sent to an address that is not its own) is judged by its source and port
//!   as for any other traffic: ask with the receiving pod and the address it was sent to.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::model::{
    Action, Cluster, ClusterPolicy, Direction, Pod, PolicyPeer, PolicyRule, Protocol, Tier,
};

/// The other end of a connection.
#[derive(Debug, Clone, Copy)]
pub enum Peer<'a> {
    Pod(&'a Pod),
    /// An address that is not a pod's (a node, something outside the cluster).
    Ip(IpAddr),
}

/// One end of a connection: a pod (or not) and the address it uses.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub pod: Option<&'a Pod>,
    pub ip: Option<IpAddr>,
}

impl<'a> Endpoint<'a> {
    /// The end of a connection seen only by its address (a conntrack entry, a log line):
    /// the pod holding `ip` when there is one (a host-network pod shares its node's
    /// address, so it is never chosen), or the bare address.
    pub fn of_ip(cluster: &'a Cluster, ip: IpAddr) -> Endpoint<'a> {
        Endpoint {
            pod: cluster
                .pods
                .iter()
                .find(|p| !p.host_network && p.ips.contains(&ip)),
            ip: Some(ip),
        }
    }
}

/// A rule of a policy, as an explanation names it: `x/allow-web ingress[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// A ClusterNetworkPolicy rule, as an explanation names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierRule {
    pub tier: Tier,
    /// The ClusterNetworkPolicy's name.
    pub policy: String,
    pub priority: u32,
    pub direction: Direction,
    pub index: usize,
    /// The rule's `name` (empty when it has none).
    pub name: String,
    pub action: Action,
}

impl fmt::Display for TierRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClusterNetworkPolicy {} ({} tier, priority {}) {}[{}]",
            self.policy, self.tier, self.priority, self.direction, self.index
        )?;
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        write!(f, ": {}", self.action)
    }
}

/// The decision of one direction at one end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub direction: Direction,
    /// The pod this side is decided for (`ns/name`); `None` when that end is not a pod.
    pub pod: Option<String>,
    /// Whether some policy selects the pod for this direction.
    pub isolated: bool,
    /// The policies (`ns/name`) that select the pod for this direction.
    pub selected_by: Vec<String>,
    /// The rules that match the connection.
    pub allowed_by: Vec<RuleRef>,
    pub allowed: bool,
    /// The Admin-tier rule that decided (Accept, Deny) or passed the decision on (Pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<TierRule>,
    /// The Baseline-tier rule that decided, when neither the Admin tier nor a
    /// NetworkPolicy did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<TierRule>,
}

impl Side {
    /// The ClusterNetworkPolicy rule that decided this side, if one did.
    pub fn decided_by_tier(&self) -> Option<&TierRule> {
        match &self.admin {
            Some(r) if r.action != Action::Pass => Some(r),
            _ if self.isolated => None,
            _ => self.baseline.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// The pod talks to itself: allowed without looking at policies.
    pub to_self: bool,
    pub egress: Side,
    pub ingress: Side,
    /// The destination address, when it is a multicast or broadcast address or not the
    /// destination pod's own: the traffic reaches the pod through the bridge, at its port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_own: Option<IpAddr>,
}

/// Whether `ip` is a multicast address or IPv4's limited broadcast: a destination that is
/// never one pod's own, which every listening pod of the node's bridge receives.
pub fn is_group(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.allowed { "allowed" } else { "DENIED" };
        if let (Some(pod), Some(rule)) = (&self.pod, self.decided_by_tier()) {
            return write!(
                f,
                "{} of {pod}: {word} by the {} tier: {rule}",
                self.direction, rule.tier
            );
        }
        if let Some(pass) = &self.admin {
            write!(f, "(passed on by {pass}) ")?;
        }
        match &self.pod {
            None => write!(f, "{}: {word}: the endpoint is not a pod", self.direction),
            Some(pod) if !self.isolated && self.baseline.is_some() => {
                // A Baseline Pass: nothing decided.
                write!(
                    f,
                    "{} of {pod}: {word}: no policy isolates it (passed by {})",
                    self.direction,
                    self.baseline
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                )
            }
            Some(pod) if !self.isolated => {
                write!(
                    f,
                    "{} of {pod}: {word}: no policy isolates it",
                    self.direction
                )
            }
            Some(pod) => {
                write!(
                    f,
                    "{} of {pod}: {word}: isolated by {}; ",
                    self.direction,
                    self.selected_by.join(", ")
                )?;
                if self.allowed_by.is_empty() {
                    f.write_str("no rule matches")
                } else {
                    let rules: Vec<String> =
                        self.allowed_by.iter().map(ToString::to_string).collect();
                    write!(f, "matched by {}", rules.join(", "))
                }
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.allowed { "allowed" } else { "denied" };
        if self.to_self {
            return write!(f, "{word}: a pod talking to itself");
        }
        write!(f, "{word}\n  {}\n  {}", self.egress, self.ingress)?;
        if let Some(ip) = self.not_own {
            match &self.ingress.pod {
                Some(pod) => write!(
                    f,
                    "\n  {ip} is not an address of {pod}'s: it receives this over its node's bridge, where its ingress rules judge it by source and port"
                ),
                None => write!(
                    f,
                    "\n  {ip} is a multicast or broadcast address: each pod of the node's bridge that receives it is judged by its own ingress rules (ask for namespace/pod@{ip})"
                ),
            }?;
        }
        Ok(())
    }
}

/// The verdict for a connection from `from` to the pod `to` on `protocol`/`port`.
///
/// The destination address is `to`'s address of the source's family (for a pod source:
/// the first family both pods have, IPv4 first); use [`verdict_at`] to choose it.
pub fn verdict(
    cluster: &Cluster,
    from: Peer<'_>,
    to: &Pod,
    protocol: Protocol,
    port: u16,
) -> Verdict {
    let (src, dst) = match from {
        Peer::Ip(ip) => (
            Endpoint {
                pod: None,
                ip: Some(ip),
            },
            Endpoint {
                pod: Some(to),
                ip: to.ip_like(ip),
            },
        ),
        Peer::Pod(p) => {
            let common = to.ips.iter().copied().find(|t| p.ip_like(*t).is_some());
            let dst_ip = common.or_else(|| to.ips.first().copied());
            (
                Endpoint {
                    pod: Some(p),
                    ip: dst_ip.and_then(|d| p.ip_like(d)),
                },
                Endpoint {
                    pod: Some(to),
                    ip: dst_ip,
                },
            )
        }
    };
    verdict_at(cluster, src, dst, protocol, port)
}

/// The verdict between two explicit endpoints (either may be a pod or a bare address).
pub fn verdict_at(
    cluster: &Cluster,
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    protocol: Protocol,
    port: u16,
) -> Verdict {
    let egress = side(cluster, Direction::Egress, src, src, dst, protocol, port);
    let ingress = side(cluster, Direction::Ingress, dst, src, dst, protocol, port);
    let to_self = matches!((src.pod, dst.pod), (Some(a), Some(b)) if a.key() == b.key());
    let not_own = dst.ip.filter(|ip| match dst.pod {
        Some(p) => !p.ips.contains(ip),
        None => is_group(*ip),
    });
    Verdict {
        allowed: to_self || (egress.allowed && ingress.allowed),
        to_self,
        egress,
        ingress,
        not_own,
    }
}

fn side(
    cluster: &Cluster,
    direction: Direction,
    at: Endpoint<'_>,
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    protocol: Protocol,
    port: u16,
) -> Side {
    let Some(pod) = at.pod.filter(|p| !p.host_network) else {
        return Side {
            direction,
            pod: None,
            isolated: false,
            selected_by: Vec::new(),
            allowed_by: Vec::new(),
            allowed: true,
            admin: None,
            baseline: None,
        };
    };
    let peer = match direction {
        Direction::Ingress => src,
        Direction::Egress => dst,
    };
    let tier_rule = |tier| first_match(cluster, tier, pod, direction, peer, dst, protocol, port);
    let admin = tier_rule(Tier::Admin);
    if let Some(r) = admin.as_ref().filter(|r| r.action != Action::Pass) {
        return Side {
            direction,
            pod: Some(pod.key().to_string()),
            isolated: false,
            selected_by: Vec::new(),
            allowed_by: Vec::new(),
            allowed: r.action == Action::Accept,
            admin,
            baseline: None,
        };
    }
    let mut selected_by = Vec::new();
    let mut allowed_by = Vec::new();
    for policy in cluster.policies.iter().filter(|p| p.selects(pod)) {
        let Some(rules) = policy.rules(direction) else {
            continue;
        };
        selected_by.push(policy.id());
        for rule in rules {
            if rule_matches(cluster, &policy.namespace, rule, peer, dst, protocol, port) {
                allowed_by.push(RuleRef {
                    policy: policy.id(),
                    direction,
                    index: rule.index,
                });
            }
        }
    }
    let isolated = !selected_by.is_empty();
    let baseline = if isolated {
        None
    } else {
        tier_rule(Tier::Baseline)
    };
    Side {
        direction,
        pod: Some(pod.key().to_string()),
        isolated,
        allowed: if isolated {
            !allowed_by.is_empty()
        } else {
            baseline.as_ref().is_none_or(|r| r.action != Action::Deny)
        },
        selected_by,
        allowed_by,
        admin,
        baseline,
    }
}

/// The first rule of the ClusterNetworkPolicies of `tier` selecting `pod` that matches the
/// traffic (policies in their order, rules in written order).
#[allow(clippy::too_many_arguments)]
fn first_match(
    cluster: &Cluster,
    tier: Tier,
    pod: &Pod,
    direction: Direction,
    peer: Endpoint<'_>,
    dst: Endpoint<'_>,
    protocol: Protocol,
    port: u16,
) -> Option<TierRule> {
    let selecting = cluster
        .tier(tier)
        .into_iter()
        .filter(|p| cluster.cluster_policy_selects(p, pod));
    for policy in selecting {
        for r in policy.rules(direction) {
            if rule_matches(cluster, "", &r.rule, peer, dst, protocol, port) {
                return Some(tier_rule(policy, direction, r));
            }
        }
    }
    None
}

fn tier_rule(
    policy: &ClusterPolicy,
    direction: Direction,
    r: &crate::model::ClusterRule,
) -> TierRule {
    TierRule {
        tier: policy.tier,
        policy: policy.name.clone(),
        priority: policy.priority,
        direction,
        index: r.rule.index,
        name: r.name.clone(),
        action: r.action,
    }
}

/// Whether `rule` (of a policy of namespace `home`) matches traffic with `peer` at the
/// other end, towards `dst`.
pub(crate) fn rule_matches(
    cluster: &Cluster,
    home: &str,
    rule: &PolicyRule,
    peer: Endpoint<'_>,
    dst: Endpoint<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule.peers.iter().any(|p| match p {
            PolicyPeer::IpBlock { .. } => peer.ip.is_some_and(|ip| p.ip_block_contains(ip)),
            PolicyPeer::Nodes(sel) => peer
                .ip
                .is_some_and(|ip| cluster.node_ips(sel).any(|n| n == ip)),
            // A pod is a peer at its own addresses only: a packet to a group, or to an
            // address the pod does not hold, matches no selector (the rules match the
            // pods' addresses), wherever it is delivered.
            PolicyPeer::Pods { .. } => peer.pod.is_some_and(|pod| {
                peer.ip.is_none_or(|ip| pod.ips.contains(&ip))
                    && cluster.peer_matches_pod(home, p, pod)
            }),
        });
    let port_ok = rule.ports.is_empty()
        || rule.ports.iter().any(|pp| {
            pp.protocol == protocol
                && pp
                    .port
                    .resolve(protocol, dst.pod)
                    .iter()
                    .any(|(lo, hi)| (*lo..=*hi).contains(&port))
        });
    peer_ok && port_ok
}
