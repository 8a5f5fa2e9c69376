//! Compiling the cluster's policies into the node's desired tables: [`Ruleset::compute`].

mod rules;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{Cluster, Direction, Pod, PodKey, Policy};
use crate::naming::{
    denied_set, own_set, pods_map, self_set, FORWARD_CHAIN, INPUT_CHAIN, PORTS_MAP,
};
use crate::nft::{
    Chain, ChainRef, Element, Expr, Field, Hook, Ifname, Rule, Ruleset, Set, SetKind, Table,
    Verdict,
};
use crate::ranges::Family;
use view::{addrs, View};

/// The NFLOG group denied connections are logged to (prefix `ferry-deny-ingress ` or
/// `ferry-deny-egress `); the daemon reads it to log one line per denial.
pub const DENY_LOG_GROUP: u16 = 1720;
/// The most denials logged per second and direction on a node; counting is not limited.
pub const DENY_LOG_RATE: u32 = 20;

impl Ruleset {
    /// Closes `ips` both ways, and `devs` (their bridge ports) to group traffic: each
    /// jumps to the `closed` chains, which allow nothing. For pods the plugin has
    /// announced but whose labels (or namespace's policies) are not known yet, so that no
    /// connection reaches them before their policies do.
    pub fn close(&mut self, ips: &[IpAddr], devs: &[Ifname]) {
        for ip in ips {
            for dir in [Direction::Ingress, Direction::Egress] {
                if let Some(map) = self.inet.sets.get_mut(&pods_map(dir, Family::of(*ip))) {
                    map.elements
                        .retain(|e| !matches!(e, Element::Jump { addr, .. } if addr == ip));
                    map.elements.insert(Element::Jump {
                        addr: *ip,
                        to: ChainRef::closed(dir),
                    });
                }
            }
        }
        if let Some(map) = self.bridge.sets.get_mut(PORTS_MAP) {
            for dev in devs {
                map.elements
                    .retain(|e| !matches!(e, Element::DevJump { dev: d, .. } if d == dev));
                map.elements.insert(Element::DevJump {
                    dev: *dev,
                    to: ChainRef::closed(Direction::Ingress),
                });
            }
        }
    }
}

/// The pods of this node with their addresses. The caller may know a local pod's addresses
/// before the API does; these win over the API's, and they hold its link-local address
/// beside the API's (the API never shows one). Its labels still come from the cluster
/// snapshot, so a local pod the snapshot does not hold is left out (nothing can select it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPods {
    pub pods: BTreeMap<PodKey, Vec<IpAddr>>,
    /// A local pod's port on the node's bridge (its host-side veth), when known: what
    /// reaches the pod at an address that is not its own (multicast, broadcast) is judged
    /// by the port it leaves the bridge on. A pod without one gets no bridge rules.
    pub ports: BTreeMap<PodKey, Ifname>,
}

impl LocalPods {
    /// The pods of `cluster` whose `node` is `node`, with the API's addresses (so without
    /// link-local ones) and no ports.
    pub fn on_node(cluster: &Cluster, node: &str) -> LocalPods {
        LocalPods {
            pods: cluster
                .pods
                .iter()
                .filter(|p| p.node.as_deref() == Some(node))
                .map(|p| (p.key(), p.ips.clone()))
                .collect(),
            ports: BTreeMap::new(),
        }
    }
}

/// The local pods some policy isolates for `dir`, each with the chain of exactly the
/// policies (by index) that select it.
fn isolated<'v>(
    view: &'v View<'_>,
    cluster: &Cluster,
    ids: &[String],
    dir: Direction,
) -> Vec<(&'v Pod, ChainRef, Vec<usize>)> {
    let mut out = Vec::new();
    for pod in view.local() {
        let mut selecting: Vec<usize> = cluster
            .policies
            .iter()
            .enumerate()
            .filter(|(_, pol)| pol.rules(dir).is_some() && pol.selects(pod))
            .map(|(i, _)| i)
            .collect();
        if selecting.is_empty() {
            continue;
        }
        selecting.sort_by_key(|i| ids.get(*i));
        let names: Vec<&str> = selecting
            .iter()
            .filter_map(|i| ids.get(*i).map(String::as_str))
            .collect();
        out.push((pod, ChainRef::of_policies(dir, &names), selecting));
    }
    out
}

/// The chains of `combos` (a chain and the policies whose rules it holds): each gets the
/// rules of its policies (`rules_of`, by policy index), then `tail`. The closed chain of
/// `dir` is always there, with the tail only.
fn combination_chains(
    table: &mut Table,
    dir: Direction,
    combos: BTreeMap<ChainRef, &[usize]>,
    rules_of: &[Vec<Rule>],
    tail: &[Rule],
) {
    table.chains.insert(
        ChainRef::closed(dir).name(),
        Chain {
            hook: None,
            rules: tail.to_vec(),
        },
    );
    for (to, policies) in combos {
        let mut rules: Vec<Rule> = policies
            .iter()
            .filter_map(|i| rules_of.get(*i))
            .flatten()
            .cloned()
            .collect();
        rules.extend(tail.iter().cloned());
        table.chains.insert(to.name(), Chain { hook: None, rules });
    }
}

impl Ruleset {
    /// The desired tables of the node whose pods are `local`.
    ///
    /// Every policy rule gets its rule and sets whether or not it selects a local pod, so
    /// that pods coming, going or being relabelled change set elements only; a policy
    /// change touches its own sets, and the direction chain only when a rule's shape
    /// (which sets it matches) changes or rules come and go.
    pub fn compute(cluster: &Cluster, local: &LocalPods) -> Ruleset {
        let view = View::new(cluster, local);
        let mut inet = Table::default();
        let mut bridge = Table::default();
        // Bridged between pods of the node (br_netfilter) and sent to the node's gateway
        // address, neighbour discovery passes both hooks; without it no IPv6 packet flows.
        let mut forward = vec![
            Rule::new(vec![Expr::CtEstablished], Verdict::Accept),
            Rule::new(vec![Expr::CtInvalid], Verdict::Drop),
            Rule::new(vec![Expr::NeighbourDiscovery], Verdict::Accept),
        ];
        // The bridge's own frames: neighbour discovery (a solicitation is multicast),
        // then unicast to the receiving pod's own address, which the inet table judges
        // (br_netfilter hands it the same frame); what is left towards an isolated pod
        // (multicast, broadcast, an address that is not the pod's) meets the pod's
        // ingress rules here, by the port it leaves on. ARP is not IP: it passes.
        let mut bridged = vec![Rule::new(vec![Expr::NeighbourDiscovery], Verdict::Accept)];
        for family in Family::ALL {
            let pairs = Set {
                kind: SetKind::Pairs(family),
                elements: view
                    .local()
                    .flat_map(|p| addrs(p, family))
                    .map(|a| Element::Pair(a.lo_ip(), a.lo_ip()))
                    .collect(),
            };
            forward.push(inet.accept_in(self_set(family), pairs, Field::SaddrDaddr(family)));
            let own = Set {
                kind: SetKind::DevAddrs(family),
                elements: view
                    .local_ports()
                    .flat_map(|(p, dev)| {
                        addrs(p, family).map(move |a| Element::DevAddr(dev, a.lo_ip()))
                    })
                    .collect(),
            };
            bridged.push(bridge.accept_in(own_set(family), own, Field::OifDaddr(family)));
        }
        bridged.push(Rule {
            exprs: vec![
                Expr::L3(None),
                Expr::VerdictMap {
                    field: Field::Oif,
                    map: PORTS_MAP.into(),
                },
            ],
            verdict: None,
            comment: None,
        });
        // Traffic from a local pod to this node's own addresses (a host-network endpoint,
        // a Service DNATed to one) takes the input hook, not forward: same egress check.
        let mut input = vec![
            Rule::new(vec![Expr::CtEstablished], Verdict::Accept),
            Rule::new(vec![Expr::NeighbourDiscovery], Verdict::Accept),
        ];
        let ids: Vec<String> = cluster.policies.iter().map(Policy::id).collect();
        for dir in [Direction::Egress, Direction::Ingress] {
            // Each policy's rules for `dir` in both families, with their sets whether or
            // not the policy selects a local pod; for ingress the same rules for the
            // bridge, by port.
            let mut rules_of: Vec<Vec<Rule>> = Vec::with_capacity(cluster.policies.len());
            let mut group_rules_of: Vec<Vec<Rule>> = Vec::new();
            for policy in &cluster.policies {
                let mut rules = Vec::new();
                let mut group_rules = Vec::new();
                for rule in policy.rules(dir).unwrap_or_default() {
                    let matched = view.rule_matches(policy, rule);
                    for family in Family::ALL {
                        let peers = view.peer_ranges(rule, &matched, family);
                        if dir == Direction::Ingress {
                            group_rules.push(bridge.group_rule(
                                &view,
                                policy,
                                rule,
                                peers.clone(),
                                family,
                            ));
                        }
                        rules.push(
                            inet.policy_rule(&view, policy, dir, rule, &matched, peers, family),
                        );
                    }
                }
                rules_of.push(rules);
                group_rules_of.push(group_rules);
            }
            let mut tail = Vec::new();
            for family in Family::ALL {
                let field = pod_field(dir, family);
                inet.sets.insert(
                    denied_set(dir, family),
                    Set {
                        kind: SetKind::Counters(family),
                        elements: BTreeSet::new(),
                    },
                );
                tail.push(Rule {
                    exprs: vec![
                        Expr::Count {
                            field,
                            set: denied_set(dir, family),
                        },
                        Expr::Limit(DENY_LOG_RATE),
                        Expr::Log {
                            prefix: format!("ferry-deny-{dir} "),
                            group: DENY_LOG_GROUP,
                        },
                    ],
                    verdict: None,
                    comment: None,
                });
            }
            // Its own rule: a limit that is over its rate ends the rule above, and the
            // packet must be dropped all the same.
            tail.push(Rule::new(vec![Expr::Counter], Verdict::Drop));
            // One chain per combination of policies that selects a local pod, so that a
            // new connection meets the rules of its own pod's policies only, whatever the
            // number of policies in the cluster.
            let isolated = isolated(&view, cluster, &ids, dir);
            let mut maps: BTreeMap<Family, BTreeSet<Element>> = BTreeMap::new();
            let mut combos: BTreeMap<ChainRef, &[usize]> = BTreeMap::new();
            for (pod, to, selecting) in &isolated {
                for ip in &pod.ips {
                    maps.entry(Family::of(*ip))
                        .or_default()
                        .insert(Element::Jump { addr: *ip, to: *to });
                }
                combos.entry(*to).or_insert(selecting);
            }
            combination_chains(&mut inet, dir, combos, &rules_of, &tail);
            for family in Family::ALL {
                let field = pod_field(dir, family);
                inet.sets.insert(
                    pods_map(dir, family),
                    Set {
                        kind: SetKind::Verdicts(family),
                        elements: maps.remove(&family).unwrap_or_default(),
                    },
                );
                let dispatch = Rule {
                    exprs: vec![Expr::VerdictMap {
                        field,
                        map: pods_map(dir, family),
                    }],
                    verdict: None,
                    comment: None,
                };
                if dir == Direction::Egress {
                    input.push(dispatch.clone());
                }
                forward.push(dispatch);
            }
            if dir == Direction::Ingress {
                // The same combinations for the bridge, for the pods whose port is known.
                // Group traffic is not tracked as a connection: every frame is judged,
                // and counted where it is dropped (not logged: its destination names no
                // pod).
                let mut jumps = BTreeSet::new();
                let mut combos: BTreeMap<ChainRef, &[usize]> = BTreeMap::new();
                for (pod, to, selecting) in &isolated {
                    if let Some(dev) = view.ports.get(&pod.key()) {
                        jumps.insert(Element::DevJump { dev: *dev, to: *to });
                        combos.entry(*to).or_insert(selecting);
                    }
                }
                let tail = [Rule::new(vec![Expr::Counter], Verdict::Drop)];
                combination_chains(&mut bridge, dir, combos, &group_rules_of, &tail);
                bridge.sets.insert(
                    PORTS_MAP.into(),
                    Set {
                        kind: SetKind::DevVerdicts,
                        elements: jumps,
                    },
                );
            }
        }
        inet.chains.insert(
            FORWARD_CHAIN.into(),
            Chain {
                hook: Some(Hook::Forward),
                rules: forward,
            },
        );
        inet.chains.insert(
            INPUT_CHAIN.into(),
            Chain {
                hook: Some(Hook::Input),
                rules: input,
            },
        );
        bridge.chains.insert(
            FORWARD_CHAIN.into(),
            Chain {
                hook: Some(Hook::Forward),
                rules: bridged,
            },
        );
        Ruleset { inet, bridge }
    }
}

/// The address a packet is dispatched and counted by for `dir`: that of the local pod the
/// policies are about, its destination for ingress and its source for egress.
fn pod_field(dir: Direction, family: Family) -> Field {
    match dir {
        Direction::Ingress => Field::Daddr(family),
        Direction::Egress => Field::Saddr(family),
    }
}

impl Table {
    /// Adds `set` as `name`, and returns the rule that accepts what `field` finds in it.
    fn accept_in(&mut self, name: String, set: Set, field: Field) -> Rule {
        let rule = Rule::new(
            vec![Expr::InSet {
                field,
                set: name.clone(),
            }],
            Verdict::Accept,
        );
        self.sets.insert(name, set);
        rule
    }
}
