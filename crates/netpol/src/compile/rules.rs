//! One policy rule, in one family, as a rule of a table and the sets it matches.

use crate::model::{Cluster, ClusterPolicy, Direction, Pod, Policy, PolicyRule, PortSel};
use crate::naming::{
    cluster_rule_comment, cluster_rule_set_name, rule_comment, rule_set_name, End,
};
use crate::nft::{Element, Expr, Field, Ifname, Rule, Set, SetKind, Table, Verdict};
use crate::ranges::{AddrRange, Family};

use super::view::{addr_set, addrs, dev_service_set, port_boxes, ports_set, range_set, View};

/// Whose rule a rule of the tables is: a NetworkPolicy's or a ClusterNetworkPolicy's.
#[derive(Debug, Clone, Copy)]
pub(super) enum Owner<'a> {
    Np(&'a Policy),
    Cnp(&'a ClusterPolicy),
}

impl<'a> Owner<'a> {
    /// The namespace a peer without a namespace selector means (a ClusterNetworkPolicy's
    /// peers always name theirs).
    pub(super) fn home(self) -> &'a str {
        match self {
            Owner::Np(p) => &p.namespace,
            Owner::Cnp(_) => "",
        }
    }

    pub(super) fn selects(self, cluster: &Cluster, pod: &Pod) -> bool {
        match self {
            Owner::Np(p) => p.selects(pod),
            Owner::Cnp(p) => cluster.cluster_policy_selects(p, pod),
        }
    }

    fn set_name(self, dir: Direction, index: usize, end: End, family: Family) -> String {
        match self {
            Owner::Np(p) => rule_set_name(p, dir, index, end, family),
            Owner::Cnp(p) => cluster_rule_set_name(p, dir, index, end, family),
        }
    }

    fn comment(self, dir: Direction, index: usize) -> Option<String> {
        match self {
            Owner::Np(p) => rule_comment(p, dir, index),
            Owner::Cnp(p) => {
                let name = p
                    .rules(dir)
                    .iter()
                    .find(|r| r.rule.index == index)
                    .map_or("", |r| r.name.as_str());
                cluster_rule_comment(p, dir, index, name)
            }
        }
    }
}

impl Table {
    /// The sets and the rule of one policy rule in one family. Ingress: the destination
    /// set holds the selected local pods (with their resolved ports when the rule has
    /// ports) and the source set the peers. Egress: the source set holds the selected
    /// local pods and the destination set the peers (with the ports, resolved against each
    /// destination pod). `peers` are the rule's peers of `family` (`None`: every address).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn policy_rule(
        &mut self,
        view: &View<'_>,
        owner: Owner<'_>,
        dir: Direction,
        rule: &PolicyRule,
        matched: &[&Pod],
        peers: Option<Vec<AddrRange>>,
        family: Family,
    ) -> Rule {
        let name = |end| owner.set_name(dir, rule.index, end, family);
        let selected: Vec<&Pod> = view
            .local()
            .filter(|p| owner.selects(view.cluster, p))
            .collect();
        let mut exprs = Vec::new();
        let (src, dst) = match dir {
            Direction::Ingress => {
                let src = peers.map(|ps| range_set(ps, family));
                let dst = if rule.ports.is_empty() {
                    addr_set(selected.iter().copied(), family)
                } else {
                    let boxes = selected
                        .iter()
                        .flat_map(|p| {
                            port_boxes(rule, &addrs(p, family).collect::<Vec<_>>(), Some(p), false)
                        })
                        .collect();
                    ports_set(boxes, family)
                };
                (src, Some(dst))
            }
            Direction::Egress => {
                let src = addr_set(selected.iter().copied(), family);
                let dst = if rule.ports.is_empty() {
                    peers.map(|ps| range_set(ps, family))
                } else {
                    let everywhere = peers.unwrap_or_else(|| vec![AddrRange::all(family)]);
                    // Numeric entries hold for every peer address; named ones for the peer
                    // pods that have the name.
                    let mut boxes = port_boxes(rule, &everywhere, None, false);
                    if rule
                        .ports
                        .iter()
                        .any(|pp| matches!(pp.port, PortSel::Named(_)))
                    {
                        for p in view.peer_pods(rule, matched, family) {
                            let own: Vec<AddrRange> = addrs(p, family).collect();
                            boxes.extend(port_boxes(rule, &own, Some(p), true));
                        }
                    }
                    Some(ports_set(boxes, family))
                };
                (Some(src), dst)
            }
        };
        for (end, set) in [(End::Src, src), (End::Dst, dst)] {
            let Some(set) = set else { continue };
            let field = match (end, set.kind) {
                (End::Src, _) => Field::Saddr(family),
                (End::Dst, SetKind::Ports(_)) => Field::DaddrPort(family),
                (End::Dst, _) => Field::Daddr(family),
            };
            exprs.push(Expr::InSet {
                field,
                set: name(end),
            });
            self.sets.insert(name(end), set);
        }
        exprs.push(Expr::Counter);
        Rule {
            exprs,
            verdict: Some(match dir {
                // Back to `forward`, which goes on to the ingress check.
                Direction::Egress => Verdict::Return,
                Direction::Ingress => Verdict::Accept,
            }),
            comment: owner.comment(dir, rule.index),
        }
    }

    /// An ingress rule of a policy for the bridge table, in one family: the source set
    /// holds the rule's peers (as the inet table's does), the destination set the ports of
    /// the selected local pods on the bridge (with their resolved ports when the rule has
    /// ports). The destination address is not looked at: it is a group's, or not the
    /// pod's, which is why the frame is here.
    pub(super) fn group_rule(
        &mut self,
        view: &View<'_>,
        owner: Owner<'_>,
        rule: &PolicyRule,
        peers: Option<Vec<AddrRange>>,
        family: Family,
    ) -> Rule {
        let name = |end| owner.set_name(Direction::Ingress, rule.index, end, family);
        let selected: Vec<(&Pod, Ifname)> = view
            .local_ports()
            .filter(|(p, _)| owner.selects(view.cluster, p))
            .collect();
        let (dst, field) = if rule.ports.is_empty() {
            let devs = selected.iter().map(|(_, d)| Element::Dev(*d)).collect();
            (
                Set {
                    kind: SetKind::Devs,
                    elements: devs,
                },
                Field::Oif,
            )
        } else {
            let mut entries = Vec::new();
            for (p, dev) in &selected {
                for pp in &rule.ports {
                    for (lo, hi) in pp.port.resolve(pp.protocol, Some(p)) {
                        entries.push((*dev, pp.protocol, lo, hi));
                    }
                }
            }
            (dev_service_set(entries), Field::OifService)
        };
        let mut exprs = Vec::new();
        match peers {
            Some(ps) => {
                exprs.push(Expr::InSet {
                    field: Field::Saddr(family),
                    set: name(End::Src),
                });
                self.sets.insert(name(End::Src), range_set(ps, family));
            }
            // Nothing else in the rule says which family it is for.
            None => exprs.push(Expr::L3(Some(family))),
        }
        exprs.push(Expr::InSet {
            field,
            set: name(End::Dst),
        });
        self.sets.insert(name(End::Dst), dst);
        exprs.push(Expr::Counter);
        Rule {
            exprs,
            verdict: Some(Verdict::Accept),
            comment: owner.comment(Direction::Ingress, rule.index),
        }
    }
}
