//! The daemon's counters and gauges, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::node_filter::Check;

#[derive(Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    pub etcd_connected: AtomicBool,
    /// The Node watch is up (`--datastore kubernetes`).
    pub api_connected: AtomicBool,
    /// Failed Node requests and broken Node watches (`--datastore kubernetes`).
    pub api_errors: AtomicU64,
    pub leases_known: AtomicU64,
    pub leases_refused: AtomicU64,
    pub neighs: AtomicU64,
    pub fdb: AtomicU64,
    pub routes: AtomicU64,
    /// Remote nodes reached by DirectRouting.
    pub direct_peers: AtomicU64,
    /// Destinations a lease wants a route to where the host has one ferry did not make.
    pub routes_spared: AtomicU64,
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub reconcile_micros_last: AtomicU64,
    pub reconcile_micros_sum: AtomicU64,
    pub etcd_errors: AtomicU64,
    pub repairs: AtomicU64,
    pub policy: PolicyMetrics,
    /// What table inet ferry dropped, per check, as its counters were at the last resync.
    pub dropped: std::sync::Mutex<BTreeMap<Check, u64>>,
    /// What holds readiness back, in words (`/readyz`'s body).
    pub status: crate::status::Status,
    /// Each peer path's health, as the prober last saw it.
    pub peer_health: std::sync::Mutex<Vec<PeerSeries>>,
}

/// One peer path's health (`ferry_peer_*{peer,path,family}`).
pub struct PeerSeries {
    pub peer: String,
    pub path: String,
    pub family: &'static str,
    /// `None` before the first verdict.
    pub reachable: Option<bool>,
    pub rtt: Option<std::time::Duration>,
    pub sent: u64,
    pub lost: u64,
    pub mtu_ok: Option<bool>,
}

/// NetworkPolicy's side (`--network-policy`), rendered only when it is on.
#[derive(Default)]
pub struct PolicyMetrics {
    pub enabled: AtomicBool,
    /// Every watch listed and up, and the table applied.
    pub ready: AtomicBool,
    pub api_errors: AtomicU64,
    pub applies: AtomicU64,
    pub apply_errors: AtomicU64,
    pub invalid_objects: AtomicU64,
    pub conntrack_cut: AtomicU64,
    pub denied: std::sync::Mutex<Vec<Denied>>,
}

/// Packets a local pod's isolation dropped, from the table's per-address counters.
pub struct Denied {
    pub namespace: String,
    pub pod: String,
    pub ip: std::net::IpAddr,
    pub direction: &'static str,
    pub packets: u64,
}

impl Metrics {
    /// The data path and node.json are in place, and the policy state when enforced: what
    /// the CNI config waits for before it is installed.
    pub fn data_ready(&self) -> bool {
        self.ready.load(Relaxed)
            && (!self.policy.enabled.load(Relaxed) || self.policy.ready.load(Relaxed))
    }

    /// Ready for `/readyz`: `data_ready`, and nothing waited for or failing.
    pub fn is_ready(&self) -> bool {
        self.data_ready() && self.status.is_clear()
    }

    /// `/readyz`'s body when not ready: what the daemon waits for now.
    pub fn not_ready_because(&self) -> String {
        let mut why = self.status.render();
        if self.ready.load(Relaxed)
            && self.policy.enabled.load(Relaxed)
            && !self.policy.ready.load(Relaxed)
        {
            why += "NetworkPolicy: the Kubernetes API watches are not up or the node's table is not applied yet\n";
        }
        if why.is_empty() {
            why = "the data path or node state is not in place yet\n".into();
        }
        why
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut s = String::new();
        single(
            &mut s,
            "ferry_ready",
            "1 once the node's data path and node state are in place",
            "gauge",
            u8::from(self.ready.load(Relaxed)),
        );
        single(
            &mut s,
            "ferry_etcd_connected",
            "1 while the etcd watch is up",
            "gauge",
            u8::from(self.etcd_connected.load(Relaxed)),
        );
        single(
            &mut s,
            "ferry_api_connected",
            "1 while the Node watch is up (the Kubernetes datastore; 0 with etcd)",
            "gauge",
            u8::from(self.api_connected.load(Relaxed)),
        );
        single(
            &mut s,
            "ferry_api_errors_total",
            "Failed Node requests and broken Node watches (the Kubernetes datastore)",
            "counter",
            self.api_errors.load(Relaxed),
        );
        single(
            &mut s,
            "ferry_leases_known",
            "Subnet leases known, this node's included",
            "gauge",
            self.leases_known.load(Relaxed),
        );
        single(
            &mut s,
            "ferry_leases_refused",
            "Lease records refused: invalid, or the loser of a conflict (the first ones of each minute logged once by key, the rest summed up)",
            "gauge",
            self.leases_refused.load(Relaxed),
        );
        header(
            &mut s,
            "ferry_entries_programmed",
            "Overlay entries on the VXLAN device",
            "gauge",
        );
        let _ = writeln!(
            s,
            "ferry_entries_programmed{{kind=\"neigh\"}} {}\nferry_entries_programmed{{kind=\"fdb\"}} {}\nferry_entries_programmed{{kind=\"route\"}} {}",
            self.neighs.load(Relaxed),
            self.fdb.load(Relaxed),
            self.routes.load(Relaxed)
        );
        single(
            &mut s,
            "ferry_direct_peers",
            "Remote nodes whose pods are reached unencapsulated (DirectRouting); the rest go over VXLAN",
            "gauge",
            self.direct_peers.load(Relaxed),
        );
        single(
            &mut s,
            "ferry_routes_spared",
            "Routes a lease wants where this host has a route ferry did not make, of either family: left alone (each logged once)",
            "gauge",
            self.routes_spared.load(Relaxed),
        );
        let count = self.reconciles.load(Relaxed);
        header(
            &mut s,
            "ferry_reconcile_duration_seconds",
            "Full reconciles of the data path",
            "summary",
        );
        let _ = writeln!(
            s,
            "ferry_reconcile_duration_seconds_sum {:.6}\nferry_reconcile_duration_seconds_count {count}",
            self.reconcile_micros_sum.load(Relaxed) as f64 / 1e6
        );
        single(
            &mut s,
            "ferry_reconcile_last_duration_seconds",
            "Duration of the last full reconcile",
            "gauge",
            format!(
                "{:.6}",
                self.reconcile_micros_last.load(Relaxed) as f64 / 1e6
            ),
        );
        single(
            &mut s,
            "ferry_reconcile_errors_total",
            "Netlink operations that failed while reconciling",
            "counter",
            self.reconcile_errors.load(Relaxed),
        );
        single(
            &mut s,
            "ferry_repairs_total",
            "Reconciles that found the kernel different from the leases",
            "counter",
            self.repairs.load(Relaxed),
        );
        single(
            &mut s,
            "ferry_etcd_errors_total",
            "Failed etcd requests and broken watches",
            "counter",
            self.etcd_errors.load(Relaxed),
        );
        self.render_dropped(&mut s);
        self.render_peers(&mut s);
        if self.policy.enabled.load(Relaxed) {
            self.policy.render(&mut s);
        }
        s
    }

    /// The drop counters of table inet ferry, one family per metric, each check labelled.
    /// Read from the kernel's counters: they start again when the table is written anew
    /// (as a counter does when its process restarts).
    fn render_dropped(&self, s: &mut String) {
        let Ok(dropped) = self.dropped.lock() else {
            return;
        };
        for (metric, help) in [
            (
                Check::VXLAN_METRIC,
                "VXLAN packets to this node dropped by table inet ferry, per check: to another address than its underlay address, from a host that is no node, an inner frame neither IPv4 nor IPv6, an inner source outside the sending node's pod subnets",
            ),
            (
                Check::POD_METRIC,
                "Packets from this node's pods to a node-only service (a node's VXLAN port, etcd) dropped before the masquerade, per service and path (forward: to another host; input: to this node)",
            ),
        ] {
            header(s, metric, help, "counter");
            for (check, n) in dropped.iter().filter(|(c, _)| c.metric() == metric) {
                let _ = writeln!(s, "{metric}{{{}}} {n}", check.labels());
            }
        }
    }
}

impl Metrics {
    /// The peer health series; a gauge whose value is not known yet is left out rather
    /// than shown as 0 (which would read as "unreachable").
    fn render_peers(&self, s: &mut String) {
        let Ok(peers) = self.peer_health.lock() else {
            return;
        };
        let labels = |p: &PeerSeries| {
            format!(
                "peer=\"{}\",path=\"{}\",family=\"{}\"",
                p.peer, p.path, p.family
            )
        };
        type Value = fn(&PeerSeries) -> Option<String>;
        let metrics: [(&str, &str, &str, Value); 5] = [
            (
                "ferry_peer_reachable",
                "1 while the peer's gateway answers this node's probes over the pods' path, 0 once 3 in a row went unanswered",
                "gauge",
                |p| p.reachable.map(|r| u8::from(r).to_string()),
            ),
            (
                "ferry_peer_rtt_seconds",
                "Round trip of the last answered probe",
                "gauge",
                |p| p.rtt.map(|d| format!("{:.6}", d.as_secs_f64())),
            ),
            (
                "ferry_peer_probes_sent_total",
                "Echo probes sent to the peer's gateway",
                "counter",
                |p| Some(p.sent.to_string()),
            ),
            (
                "ferry_peer_probes_lost_total",
                "Echo probes to the peer's gateway not answered within 1 s",
                "counter",
                |p| Some(p.lost.to_string()),
            ),
            (
                "ferry_peer_mtu_ok",
                "1 while a probe of the pod MTU with DF set crosses to the peer, 0 once it does not while small ones do",
                "gauge",
                |p| p.mtu_ok.map(|ok| u8::from(ok).to_string()),
            ),
        ];
        for (name, help, kind, value) in metrics {
            header(s, name, help, kind);
            for p in peers.iter() {
                if let Some(v) = value(p) {
                    let _ = writeln!(s, "{name}{{{}}} {v}", labels(p));
                }
            }
        }
    }
}

impl PolicyMetrics {
    fn render(&self, s: &mut String) {
        single(
            s,
            "ferry_policy_ready",
            "1 while the API's NetworkPolicy, Namespace and Pod watches are up and the node's table is applied",
            "gauge",
            u64::from(self.ready.load(Relaxed)),
        );
        single(
            s,
            "ferry_policy_api_errors_total",
            "Failed or broken watches of the Kubernetes API",
            "counter",
            self.api_errors.load(Relaxed),
        );
        single(
            s,
            "ferry_policy_applies_total",
            "Changes applied to the node's NetworkPolicy table",
            "counter",
            self.applies.load(Relaxed),
        );
        single(
            s,
            "ferry_policy_apply_errors_total",
            "Changes to the node's NetworkPolicy table that failed",
            "counter",
            self.apply_errors.load(Relaxed),
        );
        single(
            s,
            "ferry_policy_invalid_objects",
            "API objects left out as invalid (each logged once)",
            "gauge",
            self.invalid_objects.load(Relaxed),
        );
        single(
            s,
            "ferry_policy_connections_cut_total",
            "Connections deleted from conntrack because a policy change denies them",
            "counter",
            self.conntrack_cut.load(Relaxed),
        );
        header(
            s,
            "ferry_policy_denied_packets",
            "Packets dropped by NetworkPolicy, per local pod and direction (the first packets of denied connections)",
            "gauge",
        );
        if let Ok(d) = self.denied.lock() {
            for x in d.iter() {
                let _ = writeln!(
                    s,
                    "ferry_policy_denied_packets{{namespace=\"{}\",pod=\"{}\",ip=\"{}\",direction=\"{}\"}} {}",
                    x.namespace, x.pod, x.ip, x.direction, x.packets
                );
            }
        }
    }
}

/// A metric's HELP and TYPE lines.
fn header(s: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric of one unlabelled value, with its HELP and TYPE lines.
fn single(s: &mut String, name: &str, help: &str, kind: &str, v: impl std::fmt::Display) {
    header(s, name, help, kind);
    let _ = writeln!(s, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_rendered_per_check_under_their_metric() {
        let m = Metrics::default();
        *m.dropped.lock().unwrap() = BTreeMap::from([
            (Check::NotFromNode, 3),
            (
                Check::Pod {
                    service: "vxlan",
                    path: "forward",
                },
                7,
            ),
        ]);
        let text = m.render();
        assert!(text.contains("# TYPE ferry_vxlan_dropped_packets_total counter\nferry_vxlan_dropped_packets_total{check=\"not-from-a-node\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE ferry_pod_to_node_dropped_packets_total counter\nferry_pod_to_node_dropped_packets_total{service=\"vxlan\",path=\"forward\"} 7\n"), "{text}");
    }

    #[test]
    fn peer_health_is_rendered_per_peer_path_and_family() {
        let m = Metrics::default();
        *m.peer_health.lock().unwrap() = vec![
            PeerSeries {
                peer: "node1".into(),
                path: "vxlan".into(),
                family: "ipv4",
                reachable: Some(false),
                rtt: Some(std::time::Duration::from_micros(250)),
                sent: 12,
                lost: 3,
                mtu_ok: None,
            },
            PeerSeries {
                peer: "node2".into(),
                path: "direct".into(),
                family: "ipv4",
                reachable: None,
                rtt: None,
                sent: 0,
                lost: 0,
                mtu_ok: Some(true),
            },
        ];
        let text = m.render();
        let l1 = "{peer=\"node1\",path=\"vxlan\",family=\"ipv4\"}";
        let l2 = "{peer=\"node2\",path=\"direct\",family=\"ipv4\"}";
        for line in [
            format!("ferry_peer_reachable{l1} 0\n"),
            format!("ferry_peer_rtt_seconds{l1} 0.000250\n"),
            format!("ferry_peer_probes_sent_total{l1} 12\n"),
            format!("ferry_peer_probes_lost_total{l1} 3\n"),
            format!("ferry_peer_mtu_ok{l2} 1\n"),
        ] {
            assert!(text.contains(&line), "{line} not in:\n{text}");
        }
        // Not known yet: absent, not 0.
        assert!(
            !text.contains(&format!("ferry_peer_reachable{l2}")),
            "{text}"
        );
        assert!(!text.contains(&format!("ferry_peer_mtu_ok{l1}")), "{text}");
    }
}
