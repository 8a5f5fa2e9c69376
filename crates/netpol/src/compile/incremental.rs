//! The node's tables computed again after a change from what the change touched only:
//! each policy's rules and sets (a [`Piece`] per direction) are kept between rounds and
//! made anew only when the policy, a pod they read or might now match, the namespaces'
//! labels (for selectors of namespaces) or the Nodes (for `nodes` peers) changed. The
//! tables are then put together from the pieces as [`Ruleset::compute`] does from
//! nothing; a test holds the two equal over random sequences of changes.
//!
//! What a change costs: a fingerprint of every pod (to find the ones that changed), for
//! each changed pod one selector check per policy rule, the pieces it touched, and the
//! assembly of the tables from the pieces (a copy of their sets), instead of matching every
//! rule of every policy against the cluster's pods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::model::{
    Action, Cluster, ClusterPolicy, Direction, Labels, NodeInfo, Pod, Policy, PolicyPeer,
    PolicyRule, PortSel,
};
use crate::nft::{Rule, Ruleset, Set, Table};
use crate::ranges::Family;

use super::rules::Owner;
use super::view::View;
use super::{CnpRule, LocalPods};

/// The index of a direction in [`Entry::pieces`].
pub(super) fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

/// What one policy contributes to the tables for one direction.
#[derive(Debug, Clone, Default)]
pub(super) struct Piece {
    inet_sets: Vec<(String, Set)>,
    bridge_sets: Vec<(String, Set)>,
    /// A NetworkPolicy's rules, both families, in order (inet, then bridge).
    pub(super) rules: Vec<Rule>,
    pub(super) group_rules: Vec<Rule>,
    /// A ClusterNetworkPolicy's, each with its action.
    pub(super) cnp_rules: Vec<CnpRule>,
    pub(super) cnp_group_rules: Vec<CnpRule>,
}

/// What a policy without pieces (none: every policy has its entry) contributes.
pub(super) static EMPTY_PIECE: Piece = Piece {
    inet_sets: Vec::new(),
    bridge_sets: Vec::new(),
    rules: Vec::new(),
    group_rules: Vec::new(),
    cnp_rules: Vec::new(),
    cnp_group_rules: Vec::new(),
};

impl Piece {
    pub(super) fn add_sets(&self, inet: &mut Table, bridge: &mut Table) {
        for (name, set) in &self.inet_sets {
            inet.sets.insert(name.clone(), set.clone());
        }
        for (name, set) in &self.bridge_sets {
            bridge.sets.insert(name.clone(), set.clone());
        }
    }
}

/// A policy as its pieces were made from it.
#[derive(Debug, Clone)]
enum Source {
    Np(Policy),
    Cnp(ClusterPolicy),
}

impl Source {
    fn owner(&self) -> Owner<'_> {
        match self {
            Source::Np(p) => Owner::Np(p),
            Source::Cnp(p) => Owner::Cnp(p),
        }
    }

    /// Its rules for `dir`, each with its action (a NetworkPolicy's allow).
    fn rules(&self, dir: Direction) -> Vec<(&PolicyRule, Action)> {
        match self {
            Source::Np(p) => p
                .rules(dir)
                .unwrap_or_default()
                .iter()
                .map(|r| (r, Action::Accept))
                .collect(),
            Source::Cnp(p) => p.rules(dir).iter().map(|r| (&r.rule, r.action)).collect(),
        }
    }

    fn all_rules(&self) -> impl Iterator<Item = &PolicyRule> {
        [Direction::Egress, Direction::Ingress]
            .into_iter()
            .flat_map(|d| self.rules(d).into_iter().map(|(r, _)| r))
    }

    /// Whether namespaces' labels can change what it selects or matches.
    fn reads_namespaces(&self) -> bool {
        match self {
            // A subject or peer of a ClusterNetworkPolicy may select namespaces.
            Source::Cnp(_) => true,
            Source::Np(_) => self.all_rules().any(|r| {
                r.peers.iter().any(|p| {
                    matches!(
                        p,
                        PolicyPeer::Pods {
                            namespaces: Some(_),
                            ..
                        }
                    )
                })
            }),
        }
    }

    fn reads_nodes(&self) -> bool {
        self.all_rules()
            .any(|r| r.peers.iter().any(|p| matches!(p, PolicyPeer::Nodes(_))))
    }

    /// Whether its rules may read any pod of the cluster, not only those their selectors
    /// match: a named port towards every destination, or towards an ipBlock's pods.
    fn reads_every_pod(&self) -> bool {
        self.all_rules().any(|r| {
            r.ports.iter().any(|p| matches!(p.port, PortSel::Named(_)))
                && (r.peers.is_empty()
                    || r.peers
                        .iter()
                        .any(|p| matches!(p, PolicyPeer::IpBlock { .. })))
        })
    }

    /// Whether a pod, as it is now, is one its pieces would read: a peer it matches by
    /// selector, or a local pod it selects.
    fn might_read(&self, cluster: &Cluster, pod: &Pod, local: bool) -> bool {
        let owner = self.owner();
        (local && owner.selects(cluster, pod))
            || self.all_rules().any(|r| {
                r.peers
                    .iter()
                    .any(|p| cluster.peer_matches_pod(owner.home(), p, pod))
            })
    }
}

/// One policy's pieces and what they were made from.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    source: Source,
    pub(super) pieces: [Piece; 2],
    /// The pods (by [`key_hash`]) its pieces read: peers matched by selector and the
    /// local pods it selects. A change of one of them makes the pieces anew.
    read: HashSet<u64>,
    reads_namespaces: bool,
    reads_nodes: bool,
    reads_every_pod: bool,
}

/// Keeps the node's policy state between rounds and computes the tables after a change
/// from what it touched ([`Incremental::compute`]); equal, always, to
/// [`Ruleset::compute`] of the same inputs.
#[derive(Debug, Default)]
pub struct Incremental {
    /// Each pod's fingerprint as the last round saw it (labels, addresses as this node
    /// knows them, ports, whether local, its bridge port), by [`key_hash`].
    pods: HashMap<u64, u64>,
    namespaces: BTreeMap<String, Labels>,
    nodes: Vec<NodeInfo>,
    /// By policy id (a ClusterNetworkPolicy's holds its tier and priority).
    entries: HashMap<String, Entry>,
    /// Pieces made in the last round (for tests and metrics).
    made: usize,
}

/// What changed since the last round.
struct Changes<'v> {
    /// Pods new or changed (as they are now) and whether each is local.
    pods: Vec<(&'v Pod, bool)>,
    /// Keys (by [`key_hash`]) of the pods changed or gone.
    keys: HashSet<u64>,
    namespaces: bool,
    nodes: bool,
}

impl Incremental {
    /// The node's tables for `cluster` and its pods `local`, making anew only the pieces
    /// of the policies that what changed since the last call touches.
    pub fn compute(&mut self, cluster: &Cluster, local: &LocalPods) -> Ruleset {
        let view = View::new(cluster, local);
        let changes = self.observe(cluster, &view);
        let mut entries = std::mem::take(&mut self.entries);
        let mut next: HashMap<String, Entry> = HashMap::with_capacity(entries.len());
        self.made = 0;
        let mut keep = |id: String, same: &dyn Fn(&Source) -> bool, source: &dyn Fn() -> Source| {
            if next.contains_key(&id) {
                return;
            }
            let entry = match entries.remove(&id) {
                Some(e) if same(&e.source) && !stale(&e, &changes, cluster) => e,
                _ => {
                    self.made += 1;
                    make(&view, source())
                }
            };
            next.insert(id, entry);
        };
        for p in &cluster.policies {
            keep(p.id(), &|s| matches!(s, Source::Np(a) if a == p), &|| {
                Source::Np(p.clone())
            });
        }
        for p in &cluster.cluster_policies {
            keep(p.id(), &|s| matches!(s, Source::Cnp(a) if a == p), &|| {
                Source::Cnp(p.clone())
            });
        }
        self.entries = next;
        Ruleset::assemble(cluster, &view, &self.entries)
    }

    /// How many policies' pieces the last [`Incremental::compute`] made anew.
    pub fn made(&self) -> usize {
        self.made
    }

    /// Notes what changed since the last round, and remembers the inputs of this one.
    fn observe<'v>(&mut self, cluster: &Cluster, view: &'v View<'_>) -> Changes<'v> {
        let mut changes = Changes {
            pods: Vec::new(),
            keys: HashSet::new(),
            namespaces: self.namespaces != cluster.namespaces,
            nodes: self.nodes != cluster.nodes,
        };
        if changes.namespaces {
            self.namespaces.clone_from(&cluster.namespaces);
        }
        if changes.nodes {
            self.nodes.clone_from(&cluster.nodes);
        }
        let mut now = HashMap::with_capacity(view.pods.len());
        for (pod, local) in &view.pods {
            let key = key_hash(&pod.namespace, &pod.name);
            let port = if *local {
                view.ports.get(&pod.key())
            } else {
                None
            };
            let print = fingerprint(pod, *local, port);
            if self.pods.get(&key) != Some(&print) {
                changes.pods.push((&**pod, *local));
                changes.keys.insert(key);
            }
            now.insert(key, print);
        }
        changes
            .keys
            .extend(self.pods.keys().filter(|k| !now.contains_key(*k)));
        self.pods = now;
        changes
    }
}

/// Whether the pieces of a policy that has not changed must be made anew.
fn stale(entry: &Entry, changes: &Changes<'_>, cluster: &Cluster) -> bool {
    if (changes.namespaces && entry.reads_namespaces) || (changes.nodes && entry.reads_nodes) {
        return true;
    }
    if changes.keys.is_empty() {
        return false;
    }
    entry.reads_every_pod
        || changes.keys.iter().any(|k| entry.read.contains(k))
        || changes
            .pods
            .iter()
            .any(|(p, local)| entry.source.might_read(cluster, p, *local))
}

/// A policy's pieces, made from nothing.
fn make(view: &View<'_>, source: Source) -> Entry {
    let owner = source.owner();
    let mut read: HashSet<u64> = view
        .local()
        .filter(|p| owner.selects(view.cluster, p))
        .map(|p| key_hash(&p.namespace, &p.name))
        .collect();
    let mut pieces: [Piece; 2] = Default::default();
    for dir in [Direction::Egress, Direction::Ingress] {
        let mut inet = Table::default();
        let mut bridge = Table::default();
        let piece = &mut pieces[dir_index(dir)];
        for (rule, action) in source.rules(dir) {
            let matched = view.rule_matches(owner.home(), rule);
            read.extend(matched.iter().map(|p| key_hash(&p.namespace, &p.name)));
            for family in Family::ALL {
                let peers = view.peer_ranges(rule, &matched, family);
                let group = (dir == Direction::Ingress)
                    .then(|| bridge.group_rule(view, owner, rule, peers.clone(), family));
                let inet_rule =
                    inet.policy_rule(view, owner, dir, rule, &matched, peers.clone(), family);
                match source {
                    Source::Np(_) => {
                        piece.rules.push(inet_rule);
                        piece.group_rules.extend(group);
                    }
                    Source::Cnp(_) => {
                        let tier_rule = |rule| CnpRule {
                            rule,
                            action,
                            family,
                            peers: peers.clone(),
                        };
                        piece.cnp_group_rules.extend(group.map(tier_rule));
                        piece.cnp_rules.push(tier_rule(inet_rule));
                    }
                }
            }
        }
        piece.inet_sets = inet.sets.into_iter().collect();
        piece.bridge_sets = bridge.sets.into_iter().collect();
    }
    Entry {
        reads_namespaces: source.reads_namespaces(),
        reads_nodes: source.reads_nodes(),
        reads_every_pod: source.reads_every_pod(),
        source,
        pieces,
        read,
    }
}

/// A pod's namespace and name as one number (no `PodKey` made: this runs for every pod
/// of the cluster every round).
fn key_hash(namespace: &str, name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (namespace, name).hash(&mut h);
    h.finish()
}

/// What of a pod the pieces can read, as one number.
fn fingerprint(pod: &Pod, local: bool, port: Option<&crate::nft::Ifname>) -> u64 {
    let mut h = DefaultHasher::new();
    pod.labels.hash(&mut h);
    pod.ips.hash(&mut h);
    for p in &pod.ports {
        (&p.name, p.port, p.protocol).hash(&mut h);
    }
    pod.host_network.hash(&mut h);
    local.hash(&mut h);
    port.hash(&mut h);
    h.finish()
}
