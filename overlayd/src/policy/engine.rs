//! Keeps `table inet ferry_policy` equal to the state computed from the API's objects and
//! the plugin's notices, one diff transaction at a time.
//!
//! Each round: the stores' objects become a `netpol::Cluster`; this node's pods are the
//! ones the API places here plus the ones the plugin announced (their addresses win, as
//! the plugin knows them before the API does); the desired table is computed, planned
//! against what the kernel holds (read back every resync, so a hand edit is mended) and
//! applied as one `nft -f -` transaction. Then the notices of that round are answered,
//! and connections the new state no longer allows are cut from conntrack.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use netpol::desired::{denied_set, isolated_set, Element};
use netpol::model::Direction;
use netpol::ranges::Family;
use netpol::{plan, Cluster, LocalPods, PodKey, Ruleset, Script, TABLE};
use policy_notice::{Notice, Reply};
use tokio::sync::{mpsc, oneshot};

use super::denylog::View;
use super::notices::Request;
use super::watch::Stores;
use crate::metrics::Metrics;

/// How often the kernel's table is read back and mended, and counters refreshed.
const RESYNC: Duration = Duration::from_secs(5);
/// Changes arriving this close together are applied in one round.
const COALESCE: Duration = Duration::from_millis(10);

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
}

pub async fn run(
    node: String,
    stores: Stores,
    mut notices: mpsc::Receiver<Request>,
    metrics: Arc<Metrics>,
    view: View,
) {
    let mut engine = Engine {
        node,
        metrics,
        attached: BTreeMap::new(),
        applied: None,
        waiting: Vec::new(),
        logged: BTreeSet::new(),
        view,
    };
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
        // Borrowed from the stores, not copied: the pods alone are tens of megabytes.
        let (namespaces, pods, policies) = (
            stores.namespaces.state(),
            stores.pods.state(),
            stores.policies.state(),
        );
        let (cluster, errors) = Cluster::from_k8s(
            namespaces.iter().map(|o| &**o),
            pods.iter().map(|o| &**o),
            policies.iter().map(|o| &**o),
        );
        drop((namespaces, pods, policies));
        self.metrics
            .policy
            .invalid_objects
            .store(errors.len() as u64, Relaxed);
        for e in errors {
            let text = e.to_string();
            if self.logged.insert(text.clone()) {
                tracing::warn!("NetworkPolicy: {text}");
            }
        }
        let listed = stores.status.listed();
        let (local, closed) = self.local_pods(&cluster, listed);
        let mut desired = Ruleset::compute(&cluster, &local);
        close(&mut desired, &closed);

        let mut listing = None;
        if resync || self.applied.is_none() {
            // One listing serves the read-back and the denial counters below: at 1,000
            // policies `nft -j list table` and its parsing take about a second of CPU.
            let (applied, text) = read_back();
            self.applied = applied;
            listing = text;
        }
        let script = match &self.applied {
            Some(applied) => plan(applied, &desired),
            None => Script::replace(&desired),
        };
        let changed = !script.is_empty();
        let outcome = if changed {
            apply(&script).or_else(|e| {
                // A plan against a table someone changed under us: replace it whole.
                tracing::warn!(
                    "NetworkPolicy: applying the change failed ({e:#}); replacing the table"
                );
                apply(&Script::replace(&desired))
            })
        } else {
            Ok(())
        };
        match outcome {
            Ok(()) => {
                if changed {
                    self.metrics.policy.applies.fetch_add(1, Relaxed);
                }
                self.applied = Some(desired);
                for w in self.waiting.drain(..) {
                    let _ = w.send(Reply::ok());
                }
                if changed {
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
        if resync {
            self.count_denials(&cluster, &local, listing.as_deref());
        }
        if let Ok(mut v) = self.view.lock() {
            *v = Some((cluster, local));
        }
    }

    /// This node's pods with their addresses, and the addresses of announced pods that
    /// must stay closed: unnamed, or not shown by the API while their namespace has
    /// policies (or before the first list, when that is not known).
    fn local_pods(&mut self, cluster: &Cluster, listed: bool) -> (LocalPods, Vec<IpAddr>) {
        let mut local = LocalPods::on_node(cluster, &self.node);
        let mut closed = Vec::new();
        self.attached.retain(|_, a| {
            let known = a
                .key
                .as_ref()
                .is_some_and(|k| cluster.pod(&k.namespace, &k.name).is_some());
            // Shown once and gone from a complete list: the pod was deleted.
            if listed && a.seen && !known {
                return false;
            }
            a.seen |= known;
            true
        });
        for a in self.attached.values() {
            match &a.key {
                Some(k) if a.seen => {
                    local.pods.insert(k.clone(), a.ips.clone());
                }
                Some(k)
                    if listed && !cluster.policies.iter().any(|p| p.namespace == k.namespace) => {}
                _ => closed.extend(a.ips.iter().copied()),
            }
        }
        (local, closed)
    }

    fn node_ips(&self, local: &LocalPods) -> BTreeMap<IpAddr, PodKey> {
        local
            .pods
            .iter()
            .flat_map(|(k, ips)| ips.iter().map(move |ip| (*ip, k.clone())))
            .collect()
    }

    /// Reads the per-pod denial counters into the metrics, from `listing` (this round's
    /// `nft -j` listing of the table) or a new listing when there is none.
    fn count_denials(&self, cluster: &Cluster, local: &LocalPods, listing: Option<&str>) {
        let listed;
        let listing = match listing {
            Some(l) => l,
            None => match crate::nft::list_table("inet", TABLE) {
                Ok(Some(l)) => {
                    listed = l;
                    &listed
                }
                _ => return,
            },
        };
        let Ok(listing) = serde_json::from_str::<serde_json::Value>(listing) else {
            return;
        };
        let by_ip = self.node_ips(local);
        let mut lines = Vec::new();
        for (dir, name) in [
            (Direction::Ingress, "ingress"),
            (Direction::Egress, "egress"),
        ] {
            for fam in [Family::V4, Family::V6] {
                for (ip, packets) in denied_counts(&listing, &denied_set(dir, fam)) {
                    let who = by_ip
                        .get(&ip)
                        .map(|k| (k.namespace.clone(), k.name.clone()))
                        .or_else(|| {
                            cluster
                                .pods
                                .iter()
                                .find(|p| p.ips.contains(&ip))
                                .map(|p| (p.namespace.clone(), p.name.clone()))
                        })
                        .unwrap_or_default();
                    lines.push((who.0, who.1, ip, name, packets));
                }
            }
        }
        if let Ok(mut d) = self.metrics.policy.denied.lock() {
            *d = lines
                .into_iter()
                .map(|(ns, pod, ip, dir, n)| super::super::metrics::Denied {
                    namespace: ns,
                    pod,
                    ip,
                    direction: dir,
                    packets: n,
                })
                .collect();
        }
    }
}

/// Puts `closed` in both isolated sets with no rule selecting them: nothing reaches or
/// leaves them but replies and the node itself.
fn close(desired: &mut Ruleset, closed: &[IpAddr]) {
    for ip in closed {
        let fam = if ip.is_ipv4() { Family::V4 } else { Family::V6 };
        for dir in [Direction::Ingress, Direction::Egress] {
            if let Some(set) = desired.sets.get_mut(&isolated_set(dir, fam)) {
                set.elements.insert(Element::Addr(*ip));
            }
        }
    }
}

/// The table the kernel holds (None when unreadable or not ferry's: then replaced), and
/// the listing it was read from.
fn read_back() -> (Option<Ruleset>, Option<String>) {
    match crate::nft::list_table("inet", TABLE) {
        Ok(None) => (Some(Ruleset::default()), None),
        Ok(Some(listing)) => match Ruleset::parse_json(&listing) {
            Ok(r) => (Some(r), Some(listing)),
            Err(e) => {
                tracing::warn!("NetworkPolicy: the table in the kernel is not ferry's as made ({e}); it will be replaced");
                (None, None)
            }
        },
        Err(e) => {
            tracing::warn!("NetworkPolicy: cannot read the table: {e:#}");
            (None, None)
        }
    }
}

fn apply(script: &Script) -> anyhow::Result<()> {
    crate::nft::apply(&script.render())
}

/// `(address, packets)` of each element of the counter set `set` in a parsed `nft -j`
/// listing (parsed once for the four sets).
fn denied_counts(v: &serde_json::Value, set: &str) -> Vec<(IpAddr, u64)> {
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let s = &item["set"];
        if s["name"].as_str() != Some(set) {
            continue;
        }
        for e in s["elem"].as_array().into_iter().flatten() {
            let el = &e["elem"];
            let ip = el["val"].as_str().and_then(|t| t.parse::<IpAddr>().ok());
            let packets = el["counter"]["packets"].as_u64().unwrap_or(0);
            if let Some(ip) = ip {
                out.push((ip, packets));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_counts_from_a_listing() {
        let listing = r#"{"nftables":[{"metainfo":{}},{"set":{"family":"inet","name":"denied_ingress4","table":"ferry_policy","type":"ipv4_addr","handle":3,"flags":["dynamic","timeout"],"elem":[{"elem":{"val":"10.1.0.5","expires":3500,"counter":{"packets":7,"bytes":420}}}]}}]}"#;
        let listing: serde_json::Value = serde_json::from_str(listing).unwrap();
        assert_eq!(
            denied_counts(&listing, "denied_ingress4"),
            [("10.1.0.5".parse().unwrap(), 7)]
        );
        assert!(denied_counts(&listing, "denied_egress4").is_empty());
        let garbage = serde_json::json!({"nftables": "garbage"});
        assert!(denied_counts(&garbage, "denied_egress4").is_empty());
    }
}
