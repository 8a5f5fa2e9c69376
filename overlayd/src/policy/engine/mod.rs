//! Keeps `table inet ferry_policy` and `table bridge ferry_policy` equal to the state
//! computed from the API's objects and the plugin's notices, one diff transaction at a
//! time.
//!
//! Each round: the stores' objects become a `ferry_netpol::Cluster`; this node's pods are the
//! ones the API places here plus the ones the plugin announced (their addresses win, as
//! the plugin knows them before the API does), each with its link-local address and its
//! port on the node bridge; the desired tables are computed from what changed
//! (`ferry_netpol::Incremental`), diffed against what the kernel holds (read back in the
//! background every `READ_BACK_EVERY` resyncs, so a hand edit is mended within a minute)
//! and applied in one transaction: a netlink batch when only set elements change, else
//! `nft -f -`. Then the notices of that round are answered, and connections the new state
//! no longer allows are cut from conntrack.

mod denials;
mod local;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ferry_netpol::{
    plan, plan_elements, Cluster, Incremental, LocalPods, PodKey, Ruleset, Script, TableFamily,
    TABLE,
};
use ferry_policy_notice::{Notice, Reply};
use tokio::sync::{mpsc, oneshot};

use super::denylog::View;
use super::notices::Request;
use super::watch::Stores;
use crate::metrics::Metrics;
use local::{bridge_ports, Closed, Ports};

/// How often the kernel's table is read back and mended, and counters refreshed.
const RESYNC: Duration = Duration::from_secs(5);
/// Resyncs between read-backs of the whole table: `nft -j list table` of a large cluster's
/// table costs a fair share of a core, and only a hand edit makes it differ from what was
/// applied.
const READ_BACK_EVERY: u64 = 6;
/// Changes arriving this close together are applied in one round.
const COALESCE: Duration = Duration::from_millis(10);
/// New problems with the API's objects logged in one round; the rest are counted in one
/// line (and in `ferry_policy_invalid_objects`), so that a flood of broken objects cannot
/// flood the log.
const MAX_LOGGED: usize = 20;

/// A pod the plugin attached on this node.
#[derive(Debug, Clone)]
struct Attached {
    /// None when the runtime did not name the pod.
    key: Option<PodKey>,
    ips: Vec<IpAddr>,
    /// The API has shown the pod since it was attached.
    seen: bool,
}

struct Engine {
    node: String,
    metrics: Arc<Metrics>,
    attached: BTreeMap<(String, String), Attached>,
    /// What the kernel holds, as last read or applied; None: unknown (replace it).
    applied: Option<Ruleset>,
    waiting: Vec<oneshot::Sender<Reply>>,
    logged: BTreeSet<String>,
    /// The last round's view, for explanations and denial logs between rounds.
    view: View,
    resyncs: u64,
    /// The node bridge's ports as last listed.
    ports: Ports,
    /// The ClusterNetworkPolicies (by name) and Nodes the last round computed from.
    tiers: Tiers,
    /// Each policy's rules and sets as the last round made them: a round makes anew only
    /// those its changes touch.
    incremental: Incremental,
    /// `FERRY_POLICY_ENGINE=reference`: every round computed from nothing and applied by
    /// `nft -f`, as before issue 28: for benchmarks to measure beside, never for a node.
    reference: bool,
    /// Writes to the tables so far, and a read-back in progress with the count when it
    /// began.
    writes: u64,
    reader: Option<(u64, std::thread::JoinHandle<Option<Ruleset>>)>,
}

/// What the ClusterNetworkPolicy tiers decide by: their policies, and the Nodes their
/// `nodes` peers match.
type Tiers = (
    Vec<ferry_netpol::ClusterPolicy>,
    Vec<ferry_netpol::NodeInfo>,
);

pub async fn run(
    node: String,
    bridge: String,
    stores: Stores,
    mut notices: mpsc::Receiver<Request>,
    metrics: Arc<Metrics>,
    view: View,
) {
    let links = ferry_netlink::Netlink::open()
        .map_err(|e| {
            tracing::error!("NetworkPolicy: no netlink socket to find the pods' bridge ports: {e}; multicast and broadcast to pods are not filtered")
        })
        .ok();
    let mut engine = Engine {
        node,
        metrics,
        attached: BTreeMap::new(),
        applied: None,
        waiting: Vec::new(),
        logged: BTreeSet::new(),
        view,
        resyncs: 0,
        ports: Ports::new(),
        tiers: Tiers::default(),
        incremental: Incremental::default(),
        reference: std::env::var("FERRY_POLICY_ENGINE").is_ok_and(|v| v == "reference"),
        writes: 0,
        reader: None,
    };
    if engine.reference {
        tracing::warn!("NetworkPolicy: FERRY_POLICY_ENGINE=reference: every change computed from nothing and applied by nft (for benchmarks only)");
    }
    let mut listed_ports = true;
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        let mut resync = false;
        tokio::select! {
            _ = stores.changed.notified() => {}
            req = notices.recv() => match req {
                Some(req) => engine.take(req),
                None => return,
            },
            _ = tick.tick() => resync = true,
        }
        tokio::time::sleep(COALESCE).await;
        while let Ok(req) = notices.try_recv() {
            engine.take(req);
        }
        // After the notices: a pod announced now has its veth on the bridge already.
        if let Some(nl) = &links {
            match bridge_ports(nl, &bridge).await {
                Ok(p) => {
                    engine.ports = p;
                    listed_ports = true;
                }
                Err(e) if listed_ports => {
                    tracing::warn!(
                        "NetworkPolicy: the ports of {bridge}: {e:#}; keeping the last ones known"
                    );
                    listed_ports = false;
                }
                Err(_) => {}
            }
        }
        let stores = stores.clone();
        // nft and conntrack are processes: run the round off the async workers.
        engine = match tokio::task::spawn_blocking(move || {
            engine.round(&stores, resync);
            engine
        })
        .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("NetworkPolicy: the policy round panicked: {e}");
                return;
            }
        };
    }
}

impl Engine {
    fn take(&mut self, (notice, reply): Request) {
        match notice {
            Notice::Attach {
                namespace,
                pod,
                container_id,
                ifname,
                ips,
            } => {
                // An address moves to its new holder at once: whatever held it before
                // is gone, whether or not its DEL told us.
                self.attached
                    .retain(|_, a| !a.ips.iter().any(|ip| ips.contains(ip)));
                let key =
                    (!namespace.is_empty() && !pod.is_empty()).then(|| PodKey::new(namespace, pod));
                self.attached.insert(
                    (container_id, ifname),
                    Attached {
                        key,
                        ips,
                        seen: false,
                    },
                );
                self.waiting.push(reply);
            }
            Notice::Detach {
                container_id,
                ifname,
            } => {
                self.attached.remove(&(container_id, ifname));
                let _ = reply.send(Reply::ok());
            }
            Notice::Explain {
                from,
                to,
                protocol,
                port,
            } => {
                let answer = match self.view.lock().as_deref() {
                    Ok(Some((cluster, local))) => {
                        super::explain::explain(cluster, local, &from, &to, &protocol, port)
                    }
                    _ => Reply::refused("the policy state is not computed yet"),
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn round(&mut self, stores: &Stores, resync: bool) {
        let listed = stores.status.listed();
        if resync {
            self.resyncs += 1;
        }
        self.take_read_back();
        if self.applied.is_none() {
            self.applied = read_back();
        } else if resync && self.resyncs.is_multiple_of(READ_BACK_EVERY) && self.reader.is_none() {
            // Off the round: at 1,000 policies `nft -j list table` takes a second or more
            // (nft dumps each set's elements, and the kernel looks each set up by name),
            // and a change arriving meanwhile must not wait for it.
            let writes = self.writes;
            self.reader = Some((writes, std::thread::spawn(read_back)));
        }
        let (cluster, local, desired) = if listed {
            let (pods, mut errors, terminating) = stores.pods.with(|all| {
                let mut pods = Vec::new();
                let mut errors = Vec::new();
                let mut terminating = BTreeSet::new();
                for p in all {
                    errors.extend(p.errors.iter().cloned());
                    if let Some(pod) = &p.pod {
                        if p.terminating {
                            terminating.insert(pod.key());
                        }
                        pods.push(pod.clone());
                    }
                }
                (pods, errors, terminating)
            });
            // Borrowed from the stores, not copied.
            let (namespaces, policies) = (stores.namespaces.state(), stores.policies.state());
            let (mut cluster, more) = Cluster::assemble(
                namespaces.iter().map(|o| &**o),
                pods,
                policies.iter().map(|o| &**o),
            );
            drop((namespaces, policies));
            errors.extend(more);
            let cluster_policies = stores.cluster_policies.state();
            errors.extend(cluster.add_cluster_policies(cluster_policies.iter().map(|o| &**o)));
            drop(cluster_policies);
            stores.nodes.with(|all| {
                for n in all {
                    match n {
                        Ok(node) => cluster.nodes.push(node.clone()),
                        Err(e) => errors.push(e.clone()),
                    }
                }
            });
            self.metrics
                .policy
                .invalid_objects
                .store(errors.len() as u64, Relaxed);
            self.report(errors);
            self.settle_addresses(&mut cluster, &terminating);
            let (local, closed) = self.local_pods(&cluster);
            // The node's view of its pods (their link-local addresses above all) is the one
            // explanations, denial logs and conntrack judge by, as the tables do.
            let mut mine: BTreeMap<(&str, &str), &Vec<IpAddr>> = local
                .pods
                .iter()
                .filter(|(_, ips)| !ips.is_empty())
                .map(|(k, ips)| ((k.namespace.as_str(), k.name.as_str()), ips))
                .collect();
            for p in &mut cluster.pods {
                if mine.is_empty() {
                    break;
                }
                if let Some(ips) = mine.remove(&(p.namespace.as_str(), p.name.as_str())) {
                    p.ips.clone_from(ips);
                }
            }
            let mut desired = if self.reference {
                Ruleset::compute(&cluster, &local)
            } else {
                self.incremental.compute(&cluster, &local)
            };
            tracing::debug!(
                "NetworkPolicy: {} of {} policies' rules made anew",
                self.incremental.made(),
                cluster.policies.len() + cluster.cluster_policies.len()
            );
            desired.close(&closed.ips, &closed.devs);
            (cluster, local, desired)
        } else {
            // Until the API has been listed once (a daemon starting, the API away), the
            // table the kernel holds stays as it is, so a restart opens no window; pods
            // announced meanwhile are closed on top of it.
            let Some(applied) = &self.applied else {
                return;
            };
            let mut desired = if applied.inet.sets.is_empty() {
                Ruleset::compute(&Cluster::default(), &LocalPods::default())
            } else {
                applied.clone()
            };
            if desired.bridge.is_empty() {
                // Made by a daemon that had no bridge table: this one's, with no pod yet.
                desired.bridge =
                    Ruleset::compute(&Cluster::default(), &LocalPods::default()).bridge;
            }
            let mut closed = Closed::default();
            for a in self.attached.values() {
                self.close_pod(&a.ips, &mut closed);
            }
            desired.close(&closed.ips, &closed.devs);
            (Cluster::default(), LocalPods::default(), desired)
        };
        // A change of the tiers changes verdicts even where it changes no element of the
        // table (a policy of pods elsewhere, a rule the table cannot hold): established
        // connections are judged again all the same.
        let tiers_changed = listed && self.tiers_changed(&cluster);
        let (changed, outcome) = self.write(&desired);
        if changed {
            self.writes += 1;
        }
        match outcome {
            Ok(()) => {
                if changed {
                    self.metrics.policy.applies.fetch_add(1, Relaxed);
                }
                self.applied = Some(desired);
                for w in self.waiting.drain(..) {
                    let _ = w.send(Reply::ok());
                }
                if (changed || tiers_changed) && listed {
                    let cut = super::conntrack::cut(&cluster, &local, &self.node_ips(&local));
                    self.metrics.policy.conntrack_cut.fetch_add(cut, Relaxed);
                }
            }
            Err(e) => {
                tracing::error!("NetworkPolicy: the node's table could not be updated: {e:#}");
                self.metrics.policy.apply_errors.fetch_add(1, Relaxed);
                self.applied = None;
                for w in self.waiting.drain(..) {
                    let _ = w.send(Reply::refused(format!(
                        "the node's NetworkPolicy table: {e:#}"
                    )));
                }
            }
        }
        self.metrics.policy.ready.store(
            listed && stores.status.up() && self.applied.is_some(),
            Relaxed,
        );
        if !listed {
            return;
        }
        if resync {
            self.count_denials(&cluster, &local);
        }
        if let Ok(mut v) = self.view.lock() {
            *v = Some((cluster, local));
        }
    }

    /// Brings the kernel's tables to `desired`; whether anything changed. A change of set
    /// elements alone (pods coming, going, relabelled; a policy's peers or ports) is
    /// written over netlink as one batch: `nft` would first read every set's elements,
    /// which costs the kernel a name lookup per set for each of them (0.4 to 1.1 s at
    /// 4,000 sets, whatever the change). Anything else, or a batch the kernel refuses, is
    /// planned and applied by `nft -f`; a plan that fails replaces the tables whole.
    fn write(&self, desired: &Ruleset) -> (bool, anyhow::Result<()>) {
        if !self.reference {
            if let Some(changes) = self
                .applied
                .as_ref()
                .and_then(|a| plan_elements(a, desired))
            {
                if changes.is_empty() {
                    return (false, Ok(()));
                }
                match ferry_nft_elements::apply(&changes) {
                    Ok(()) => return (true, Ok(())),
                    Err(e) => tracing::warn!(
                        "NetworkPolicy: writing the set elements over netlink failed ({e}); applying the change with nft"
                    ),
                }
            }
        }
        let script = match &self.applied {
            Some(applied) => plan(applied, desired),
            None => Script::replace(desired),
        };
        if script.is_empty() {
            return (false, Ok(()));
        }
        let outcome = apply(&script).or_else(|e| {
            // A plan against a table someone changed under us: replace it whole.
            tracing::warn!(
                "NetworkPolicy: applying the change failed ({e:#}); replacing the table"
            );
            apply(&Script::replace(desired))
        });
        (true, outcome)
    }

    /// Takes the background read-back's result if it is done: what the kernel holds,
    /// unless this daemon wrote to the tables since the read began (then it is dropped;
    /// the next one will tell).
    fn take_read_back(&mut self) {
        if !self.reader.as_ref().is_some_and(|(_, h)| h.is_finished()) {
            return;
        }
        let Some((writes, handle)) = self.reader.take() else {
            return;
        };
        match handle.join() {
            Ok(read) if writes == self.writes => self.applied = read,
            Ok(_) => {}
            Err(_) => tracing::error!("NetworkPolicy: reading the tables back panicked"),
        }
    }

    /// One holder per address. An address the plugin announced belongs to the announced
    /// pod alone; of API pods claiming one address, a terminating one gives it up. So a
    /// deleted pod whose address went to a new pod before the API caught up passes none
    /// of its allowances to the new one.
    fn settle_addresses(&self, cluster: &mut Cluster, terminating: &BTreeSet<PodKey>) {
        let announced: BTreeMap<IpAddr, Option<&PodKey>> = self
            .attached
            .values()
            .flat_map(|a| a.ips.iter().map(move |ip| (*ip, a.key.as_ref())))
            .collect();
        // Counted only for the addresses of terminating pods (few, often none): the
        // count of every address of the cluster would cost each round a map of them all.
        let contested: BTreeSet<IpAddr> = cluster
            .pods
            .iter()
            .filter(|p| !terminating.is_empty() && terminating.contains(&p.key()))
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        if announced.is_empty() && contested.is_empty() {
            return;
        }
        let mut claims: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for p in &cluster.pods {
            for ip in p.ips.iter().filter(|ip| contested.contains(*ip)) {
                *claims.entry(*ip).or_default() += 1;
            }
        }
        for p in &mut cluster.pods {
            let dying = !contested.is_empty() && terminating.contains(&p.key());
            p.ips.retain(|ip| match announced.get(ip) {
                Some(holder) => {
                    holder.is_some_and(|k| k.namespace == p.namespace && k.name == p.name)
                }
                None => !(dying && claims.get(ip).copied().unwrap_or(0) > 1),
            });
        }
    }

    /// Whether the cluster's ClusterNetworkPolicies or Nodes differ from the last round's;
    /// remembers them.
    fn tiers_changed(&mut self, cluster: &Cluster) -> bool {
        let mut policies = cluster.cluster_policies.clone();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut nodes = cluster.nodes.clone();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let now = (policies, nodes);
        if now == self.tiers {
            return false;
        }
        self.tiers = now;
        true
    }

    /// Logs each problem with the API's objects once while it lasts (at most
    /// `MAX_LOGGED` new ones a round): one fixed and broken again is logged again, and
    /// only the problems of now are remembered.
    fn report(&mut self, errors: Vec<ferry_netpol::ModelError>) {
        let now: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
        let new: Vec<&String> = now.iter().filter(|t| !self.logged.contains(*t)).collect();
        for text in new.iter().take(MAX_LOGGED) {
            tracing::warn!("NetworkPolicy: {text}");
        }
        if new.len() > MAX_LOGGED {
            tracing::warn!(
                "NetworkPolicy: {} more problems with the API's objects (not logged one by one; ferry_policy_invalid_objects counts them all)",
                new.len() - MAX_LOGGED
            );
        }
        self.logged = now;
    }
}

/// The tables the kernel holds; None when one is unreadable or not ferry's (then both
/// are replaced).
fn read_back() -> Option<Ruleset> {
    let mut listings = Vec::new();
    for family in TableFamily::ALL {
        match crate::nft::list_table(family.name(), TABLE) {
            Ok(l) => listings.push(l),
            Err(e) => {
                tracing::warn!(
                    "NetworkPolicy: cannot read table {} {TABLE}: {e:#}",
                    family.name()
                );
                return None;
            }
        }
    }
    let [inet, bridge] = <[Option<String>; 2]>::try_from(listings).ok()?;
    match Ruleset::parse_json(inet.as_deref(), bridge.as_deref()) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("NetworkPolicy: the tables in the kernel are not ferry's as made ({e}); they will be replaced");
            None
        }
    }
}

fn apply(script: &Script) -> anyhow::Result<()> {
    crate::nft::apply(&script.render())
}

#[cfg(test)]
mod tests;
