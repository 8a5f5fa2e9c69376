//! The cluster as one node sees it while compiling, and the sets built from it.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};

use crate::model::{Cluster, Pod, PodKey, PolicyPeer, PolicyRule, PortSel, Protocol};
use crate::nft::{Element, Ifname, Set, SetKind};
use crate::ranges::{self, AddrRange, Family, PortBox};

use super::LocalPods;

/// Pods (indexes into [`View::pods`]) by one of their labels: `(key, value)`.
type ByLabel<'a> = HashMap<(&'a str, &'a str), Vec<usize>>;
/// The same within one namespace: `(namespace, key, value)`.
type ByNsLabel<'a> = HashMap<(&'a str, &'a str, &'a str), Vec<usize>>;

/// The cluster's pods with this node's view of local addresses, indexed by label so that
/// a selector with `matchLabels` looks at the pods carrying one of them only.
pub(super) struct View<'a> {
    pub(super) cluster: &'a Cluster,
    /// Each pod, and whether it is local; only a local pod whose addresses the caller
    /// knows better is copied, every other one borrowed from the cluster.
    pub(super) pods: Vec<(Cow<'a, Pod>, bool)>,
    /// Made on first use: a round that makes no policy's rules anew never needs them.
    by_label: OnceCell<ByLabel<'a>>,
    /// The same within one namespace, for peers without a namespace selector (most
    /// NetworkPolicy peers): a label common in every namespace is no filter by itself.
    by_ns_label: OnceCell<ByNsLabel<'a>>,
    pub(super) ports: &'a BTreeMap<PodKey, Ifname>,
}

impl<'a> View<'a> {
    pub(super) fn new(cluster: &'a Cluster, local: &'a LocalPods) -> View<'a> {
        // Looked up by borrowed names: most pods are not local, and a `PodKey` per pod
        // would be two allocations each, every round.
        let local_ips: HashMap<(&str, &str), &Vec<std::net::IpAddr>> = local
            .pods
            .iter()
            .map(|(k, ips)| ((k.namespace.as_str(), k.name.as_str()), ips))
            .collect();
        let pods = cluster
            .pods
            .iter()
            .map(
                |p| match local_ips.get(&(p.namespace.as_str(), p.name.as_str())) {
                    Some(ips) if !ips.is_empty() && **ips != p.ips => {
                        let mut p = p.clone();
                        p.ips = (*ips).clone();
                        (Cow::Owned(p), true)
                    }
                    Some(_) => (Cow::Borrowed(p), true),
                    None => (Cow::Borrowed(p), false),
                },
            )
            .collect();
        View {
            cluster,
            pods,
            by_label: OnceCell::new(),
            by_ns_label: OnceCell::new(),
            ports: &local.ports,
        }
    }

    fn by_label(&self) -> &ByLabel<'a> {
        self.by_label.get_or_init(|| {
            let mut by_label = ByLabel::new();
            for (i, p) in self.cluster.pods.iter().enumerate() {
                for (k, v) in &p.labels {
                    by_label.entry((k, v)).or_default().push(i);
                }
            }
            by_label
        })
    }

    fn by_ns_label(&self) -> &ByNsLabel<'a> {
        self.by_ns_label.get_or_init(|| {
            let mut by = ByNsLabel::new();
            for (i, p) in self.cluster.pods.iter().enumerate() {
                for (k, v) in &p.labels {
                    by.entry((&p.namespace, k, v)).or_default().push(i);
                }
            }
            by
        })
    }

    /// The local pods whose port on the bridge is known, with it.
    pub(super) fn local_ports(&self) -> impl Iterator<Item = (&Pod, Ifname)> {
        self.local()
            .filter_map(|p| self.ports.get(&p.key()).map(|d| (p, *d)))
    }

    /// The pods a selector peer of a policy of namespace `home` matches.
    fn selector_matches(&self, home: &str, peer: &PolicyPeer) -> Vec<&Pod> {
        let PolicyPeer::Pods { pods, namespaces } = peer else {
            return Vec::new();
        };
        let at = |is: Option<&'_ Vec<usize>>| -> Vec<&Pod> {
            is.into_iter()
                .flatten()
                .filter_map(|i| self.pods.get(*i).map(|(p, _)| &**p))
                .collect()
        };
        let candidates: Vec<&Pod> = match (
            pods.as_ref().and_then(|s| s.match_labels.iter().next()),
            namespaces,
        ) {
            (Some((k, v)), None) => at(self.by_ns_label().get(&(home, k.as_str(), v.as_str()))),
            (Some((k, v)), Some(_)) => at(self.by_label().get(&(k.as_str(), v.as_str()))),
            (None, _) => self.all().collect(),
        };
        candidates
            .into_iter()
            .filter(|p| self.cluster.peer_matches_pod(home, peer, p))
            .collect()
    }

    /// The pods every selector peer of a rule (of a policy of namespace `home`) matches,
    /// once for both families.
    pub(super) fn rule_matches(&self, home: &str, rule: &PolicyRule) -> Vec<&Pod> {
        let mut out: Vec<&Pod> = rule
            .peers
            .iter()
            .flat_map(|peer| self.selector_matches(home, peer))
            .collect();
        // Two peers may match one pod; its addresses count once.
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        out
    }

    pub(super) fn local(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|(_, l)| *l).map(|(p, _)| &**p)
    }

    pub(super) fn all(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().map(|(p, _)| &**p)
    }

    /// The address ranges of `family` a rule's peers cover (`None`: every address).
    pub(super) fn peer_ranges(
        &self,
        rule: &PolicyRule,
        matched: &[&Pod],
        family: Family,
    ) -> Option<Vec<AddrRange>> {
        if rule.peers.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for peer in &rule.peers {
            match peer {
                PolicyPeer::IpBlock { cidr, except } => {
                    let base = AddrRange::of_net(*cidr);
                    if base.family == family {
                        let ex: Vec<AddrRange> =
                            except.iter().map(|e| AddrRange::of_net(*e)).collect();
                        out.extend(ranges::subtract(base, &ex));
                    }
                }
                PolicyPeer::Nodes(sel) => out.extend(
                    self.cluster
                        .node_ips(sel)
                        .filter(|ip| Family::of(*ip) == family)
                        .map(AddrRange::single),
                ),
                PolicyPeer::Pods { .. } => {}
            }
        }
        out.extend(matched.iter().flat_map(|p| addrs(p, family)));
        Some(ranges::merge_overlapping(out))
    }

    /// The pods a rule's peers hold, by selector or by an ipBlock holding their address:
    /// the destinations a named port of an egress rule resolves against.
    pub(super) fn peer_pods<'v>(
        &'v self,
        rule: &PolicyRule,
        matched: &[&'v Pod],
        family: Family,
    ) -> Vec<&'v Pod> {
        if rule.peers.is_empty() {
            return self.all().collect();
        }
        let mut out = matched.to_vec();
        out.extend(self.all().filter(|p| {
            rule.peers.iter().any(|peer| {
                p.ips
                    .iter()
                    .any(|ip| Family::of(*ip) == family && peer.ip_block_contains(*ip))
            })
        }));
        out
    }
}

/// A set of single addresses: the `family` addresses of `pods`.
pub(super) fn addr_set<'p>(pods: impl IntoIterator<Item = &'p Pod>, family: Family) -> Set {
    Set {
        kind: SetKind::Addrs(family),
        elements: pods
            .into_iter()
            .flat_map(|p| addrs(p, family))
            .map(|a| Element::Addr(a.lo_ip()))
            .collect(),
    }
}

pub(super) fn addrs(pod: &Pod, family: Family) -> impl Iterator<Item = AddrRange> + '_ {
    pod.ips
        .iter()
        .filter(move |ip| Family::of(**ip) == family)
        .map(|ip| AddrRange::single(*ip))
}

/// The boxes of a rule's port entries over `addrs`, towards the destination pod `dst`.
/// With `dst` absent only numeric entries count (they hold for any destination); with
/// `named_only` only named entries, which resolve against `dst`.
pub(super) fn port_boxes(
    rule: &PolicyRule,
    addrs: &[AddrRange],
    dst: Option<&Pod>,
    named_only: bool,
) -> Vec<PortBox> {
    let mut out = Vec::new();
    for pp in &rule.ports {
        let named = matches!(pp.port, PortSel::Named(_));
        if (named && dst.is_none()) || (named_only && !named) {
            continue;
        }
        for (lo, hi) in pp.port.resolve(pp.protocol, dst) {
            out.extend(addrs.iter().map(|a| PortBox {
                addr: *a,
                protocol: pp.protocol,
                lo,
                hi,
            }));
        }
    }
    out
}

pub(super) fn range_set(rs: Vec<AddrRange>, family: Family) -> Set {
    Set {
        kind: SetKind::Ranges(family),
        elements: rs
            .into_iter()
            .map(|r| Element::Range {
                lo: r.lo_ip(),
                hi: r.hi_ip(),
            })
            .collect(),
    }
}

/// A concatenated interval set of the boxes, made disjoint first.
pub(super) fn ports_set(bs: Vec<PortBox>, family: Family) -> Set {
    Set {
        kind: SetKind::Ports(family),
        elements: ranges::disjoint_boxes(bs)
            .into_iter()
            .map(|b| Element::Ports {
                lo: b.addr.lo_ip(),
                hi: b.addr.hi_ip(),
                protocol: b.protocol,
                port_lo: b.lo,
                port_hi: b.hi,
            })
            .collect(),
    }
}

/// The `<port> . <protocol> . <ports>` elements of `entries`, overlapping or adjacent
/// port ranges of one port and protocol merged (an interval set refuses overlaps).
pub(super) fn dev_service_set(mut entries: Vec<(Ifname, Protocol, u16, u16)>) -> Set {
    entries.sort_unstable();
    let mut merged: Vec<(Ifname, Protocol, u16, u16)> = Vec::new();
    for e in entries {
        match merged.last_mut() {
            Some(m) if m.0 == e.0 && m.1 == e.1 && u32::from(e.2) <= u32::from(m.3) + 1 => {
                m.3 = m.3.max(e.3);
            }
            _ => merged.push(e),
        }
    }
    Set {
        kind: SetKind::DevServices,
        elements: merged
            .into_iter()
            .map(|(dev, protocol, port_lo, port_hi)| Element::DevService {
                dev,
                protocol,
                port_lo,
                port_hi,
            })
            .collect(),
    }
}
