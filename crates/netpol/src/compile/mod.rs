//! Compiling the cluster's policies into the node's desired tables: [`Ruleset::compute`].

mod incremental;
mod rules;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::model::{Action, Cluster, ClusterPolicy, Direction, Pod, PodKey, Policy, Tier};
use crate::naming::{
    denied_set, own_set, pods_map, prefilter_set, self_set, FORWARD_CHAIN, INPUT_CHAIN, PORTS_MAP,
};
use crate::nft::{
    Chain, ChainRef, Element, Expr, Field, Hook, Ifname, Rule, Ruleset, Set, SetKind, Table,
    Verdict,
};
use crate::ranges::{merge_overlapping, AddrRange, Family};
pub use incremental::Incremental;
use incremental::{dir_index, Entry, EMPTY_PIECE};
use view::{addrs, range_set, View};

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

/// What decides one direction of a local pod, tier by tier: the ClusterNetworkPolicies
/// of the Admin tier that select it (indexes into the ordered CNPs, in their order), the
/// NetworkPolicies that isolate it (indexes into `cluster.policies`, by id), and those of
/// the Baseline tier. Pods with equal layers share their chains.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Layers {
    admin: Vec<usize>,
    nps: Vec<usize>,
    baseline: Vec<usize>,
}

impl Layers {
    fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.nps.is_empty() && self.baseline.is_empty()
    }
}

/// One ClusterNetworkPolicy rule in one family, as a tier's chain takes it.
#[derive(Debug, Clone)]
struct CnpRule {
    /// Its verdict is set by the chain that holds it.
    rule: Rule,
    action: Action,
    family: Family,
    /// The addresses of `family` its peers cover; `None`: every address.
    peers: Option<Vec<AddrRange>>,
}

/// The policies and their rules for one direction, as the chains are built from them.
struct Tiers<'r> {
    dir: Direction,
    /// Policy ids (chain names hash them): `cluster.policies`' ids, then the CNPs'.
    np_ids: &'r [String],
    cnp_ids: &'r [String],
    /// Each NetworkPolicy's rules (verdict: allowed).
    np_rules: &'r [&'r [Rule]],
    /// Each CNP's rules with their actions (verdict to be set by the chain holding them).
    cnp_rules: &'r [&'r [CnpRule]],
    /// What ends a chain that denies: count, log, drop (the closed chain holds only this).
    tail: &'r [Rule],
    /// What "allowed for this direction" is: `return` to the hook's chain for egress (the
    /// ingress check comes next), `accept` for ingress.
    allow: Verdict,
}

impl Tiers<'_> {
    /// The chain of one combination, made (with the chains it hands over to) in `table`
    /// if not there yet; `None` when nothing decides this direction.
    ///
    /// - NetworkPolicies: their rules, then the tail (a NetworkPolicy always decides); the
    ///   same chain, by name and content, as a node without ClusterNetworkPolicies has.
    /// - else the Baseline tier: its rules in order (Accept and Pass allow, Deny goes to
    ///   the closed chain), then allowed;
    /// - the Admin tier in front of either: its rules in order (Accept allows, Deny goes
    ///   to the closed chain, Pass goes to the chain above), then that chain (or allowed).
    fn chain(&self, table: &mut Table, layers: &Layers) -> Option<ChainRef> {
        let closed = ChainRef::closed(self.dir).name();
        let ids = |nps: &[usize], cnps: &[usize]| -> Vec<&str> {
            nps.iter()
                .filter_map(|i| self.np_ids.get(*i))
                .chain(cnps.iter().filter_map(|i| self.cnp_ids.get(*i)))
                .map(String::as_str)
                .collect()
        };
        // A tier's rules in order, each with its action's verdict (`pass` for Pass), after
        // one rule per family that sends a packet whose peer no rule's peers hold straight
        // to `next` (what follows the tier): a new connection then meets one set lookup
        // per family instead of every rule of the tier.
        let cnp_rules = |table: &mut Table,
                         chain: ChainRef,
                         policies: &[usize],
                         pass: &Verdict,
                         next: &Verdict|
         -> Vec<Rule> {
            let rules: Vec<&CnpRule> = policies
                .iter()
                .filter_map(|i| self.cnp_rules.get(*i))
                .flat_map(|r| r.iter())
                .collect();
            let mut out = Vec::new();
            if rules.iter().all(|r| r.peers.is_some()) {
                for family in Family::ALL {
                    let held: Vec<AddrRange> = rules
                        .iter()
                        .filter(|r| r.family == family)
                        .flat_map(|r| r.peers.iter().flatten().copied())
                        .collect();
                    let name = prefilter_set(chain, family);
                    table
                        .sets
                        .insert(name.clone(), range_set(merge_overlapping(held), family));
                    let field = match self.dir {
                        Direction::Ingress => Field::Saddr(family),
                        Direction::Egress => Field::Daddr(family),
                    };
                    out.push(Rule::new(
                        vec![Expr::NotInSet { field, set: name }],
                        next.clone(),
                    ));
                }
            }
            out.extend(rules.into_iter().map(|r| {
                let mut rule = r.rule.clone();
                rule.verdict = Some(match r.action {
                    Action::Accept => self.allow.clone(),
                    Action::Deny => Verdict::Goto(closed.clone()),
                    Action::Pass => pass.clone(),
                });
                rule
            }));
            out
        };
        let (rest, rest_ids) = if !layers.nps.is_empty() {
            let to = ChainRef::of_policies(self.dir, &ids(&layers.nps, &[]));
            table.chains.entry(to.name()).or_insert_with(|| {
                let mut rules: Vec<Rule> = layers
                    .nps
                    .iter()
                    .filter_map(|i| self.np_rules.get(*i))
                    .flat_map(|r| r.iter())
                    .cloned()
                    .collect();
                rules.extend(self.tail.iter().cloned());
                Chain { hook: None, rules }
            });
            (Some(to), ids(&layers.nps, &[]))
        } else if !layers.baseline.is_empty() {
            let to = ChainRef::of_policies(self.dir, &ids(&[], &layers.baseline));
            if !table.chains.contains_key(&to.name()) {
                let allow = self.allow.clone();
                let mut rules = cnp_rules(table, to, &layers.baseline, &allow, &allow);
                rules.push(Rule::new(Vec::new(), allow));
                table.chains.insert(to.name(), Chain { hook: None, rules });
            }
            (Some(to), ids(&[], &layers.baseline))
        } else {
            (None, Vec::new())
        };
        if layers.admin.is_empty() {
            return rest;
        }
        let mut all = ids(&[], &layers.admin);
        all.extend(rest_ids);
        let to = ChainRef::of_policies(self.dir, &all);
        if !table.chains.contains_key(&to.name()) {
            let next = rest.map_or(self.allow.clone(), |r| Verdict::Goto(r.name()));
            let mut rules = cnp_rules(table, to, &layers.admin, &next, &next);
            rules.push(Rule::new(Vec::new(), next));
            table.chains.insert(to.name(), Chain { hook: None, rules });
        }
        Some(to)
    }
}

/// The layers of each local pod for `dir` (pods that nothing decides left out). `cnps`
/// are the ClusterNetworkPolicies in the order they apply, Admin tier first.
fn layers_of<'v>(
    view: &'v View<'_>,
    cluster: &Cluster,
    np_ids: &[String],
    cnps: &[&ClusterPolicy],
    dir: Direction,
) -> Vec<(&'v Pod, Layers)> {
    let mut out = Vec::new();
    for pod in view.local() {
        let mut layers = Layers::default();
        for (i, p) in cnps.iter().enumerate() {
            if !p.rules(dir).is_empty() && cluster.cluster_policy_selects(p, pod) {
                match p.tier {
                    Tier::Admin => layers.admin.push(i),
                    Tier::Baseline => layers.baseline.push(i),
                }
            }
        }
        layers.nps = cluster
            .policies
            .iter()
            .enumerate()
            .filter(|(_, pol)| pol.rules(dir).is_some() && pol.selects(pod))
            .map(|(i, _)| i)
            .collect();
        layers.nps.sort_by_key(|i| np_ids.get(*i));
        if !layers.is_empty() {
            out.push((pod, layers));
        }
    }
    out
}

impl Ruleset {
    /// The desired tables of the node whose pods are `local`, computed from nothing: the
    /// reference [`Incremental::compute`] must always equal.
    ///
    /// Every policy rule gets its rule and sets whether or not it selects a local pod, so
    /// that pods coming, going or being relabelled change set elements only; a policy
    /// change touches its own sets, and the direction chain only when a rule's shape
    /// (which sets it matches) changes or rules come and go.
    pub fn compute(cluster: &Cluster, local: &LocalPods) -> Ruleset {
        Incremental::default().compute(cluster, local)
    }

    /// The tables, from each policy's [`Piece`]s (one per policy id, made by the caller
    /// for every policy of `cluster`).
    fn assemble(cluster: &Cluster, view: &View<'_>, pieces: &HashMap<String, Entry>) -> Ruleset {
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
        let mut cnps = cluster.tier(Tier::Admin);
        cnps.extend(cluster.tier(Tier::Baseline));
        let cnp_ids: Vec<String> = cnps.iter().map(|p| p.id()).collect();
        for dir in [Direction::Egress, Direction::Ingress] {
            // Each policy's rules for `dir` in both families, with their sets whether or
            // not the policy selects a local pod (for ingress the same rules for the
            // bridge, by port): made anew only for policies the change touched.
            let d = dir_index(dir);
            let piece = |id: &String| pieces.get(id).map_or(&EMPTY_PIECE, |e| &e.pieces[d]);
            for id in ids.iter().chain(&cnp_ids) {
                piece(id).add_sets(&mut inet, &mut bridge);
            }
            let np_rules: Vec<&[Rule]> = ids.iter().map(|id| &piece(id).rules[..]).collect();
            let np_group_rules: Vec<&[Rule]> =
                ids.iter().map(|id| &piece(id).group_rules[..]).collect();
            // The same for the ClusterNetworkPolicies, each rule with its action.
            let cnp_rules_of: Vec<&[CnpRule]> =
                cnp_ids.iter().map(|id| &piece(id).cnp_rules[..]).collect();
            let cnp_group_rules_of: Vec<&[CnpRule]> = cnp_ids
                .iter()
                .map(|id| &piece(id).cnp_group_rules[..])
                .collect();
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
            // One chain per combination of policies that decides a local pod, so that a
            // new connection meets the rules of its own pod's policies only, whatever the
            // number of policies in the cluster.
            let layers = layers_of(view, cluster, &ids, &cnps, dir);
            let allow = match dir {
                Direction::Egress => Verdict::Return,
                Direction::Ingress => Verdict::Accept,
            };
            let tiers = Tiers {
                dir,
                np_ids: &ids,
                cnp_ids: &cnp_ids,
                np_rules: &np_rules,
                cnp_rules: &cnp_rules_of,
                tail: &tail,
                allow,
            };
            inet.chains.insert(
                ChainRef::closed(dir).name(),
                Chain {
                    hook: None,
                    rules: tail.clone(),
                },
            );
            let mut maps: BTreeMap<Family, BTreeSet<Element>> = BTreeMap::new();
            for (pod, l) in &layers {
                // Pods of equal layers share their chain: made by the first, named again
                // (a hash of the ids) for the others.
                let Some(to) = tiers.chain(&mut inet, l) else {
                    continue;
                };
                for ip in &pod.ips {
                    maps.entry(Family::of(*ip))
                        .or_default()
                        .insert(Element::Jump { addr: *ip, to });
                }
            }
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
                let tail = [Rule::new(vec![Expr::Counter], Verdict::Drop)];
                let tiers = Tiers {
                    np_rules: &np_group_rules,
                    cnp_rules: &cnp_group_rules_of,
                    tail: &tail,
                    ..tiers
                };
                bridge.chains.insert(
                    ChainRef::closed(dir).name(),
                    Chain {
                        hook: None,
                        rules: tail.to_vec(),
                    },
                );
                let mut jumps = BTreeSet::new();
                for (pod, l) in &layers {
                    let Some(dev) = view.ports.get(&pod.key()) else {
                        continue;
                    };
                    if let Some(to) = tiers.chain(&mut bridge, l) {
                        jumps.insert(Element::DevJump { dev: *dev, to });
                    }
                }
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
