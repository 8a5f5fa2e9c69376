//! The daemon's counters and gauges, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    pub etcd_connected: AtomicBool,
    pub leases_known: AtomicU64,
    pub leases_refused: AtomicU64,
    pub neighs: AtomicU64,
    pub fdb: AtomicU64,
    pub routes: AtomicU64,
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub reconcile_micros_last: AtomicU64,
    pub reconcile_micros_sum: AtomicU64,
    pub etcd_errors: AtomicU64,
    pub repairs: AtomicU64,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |s: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            &mut s,
            "ferry_ready",
            "1 once the node's data path and node state are in place",
            "gauge",
            u8::from(self.ready.load(Relaxed)).to_string(),
        );
        g(
            &mut s,
            "ferry_etcd_connected",
            "1 while the etcd watch is up",
            "gauge",
            u8::from(self.etcd_connected.load(Relaxed)).to_string(),
        );
        g(
            &mut s,
            "ferry_leases_known",
            "Subnet leases known, this node's included",
            "gauge",
            self.leases_known.load(Relaxed).to_string(),
        );
        g(
            &mut s,
            "ferry_leases_refused",
            "Lease records refused: invalid, or the loser of a conflict (each logged once, naming its key)",
            "gauge",
            self.leases_refused.load(Relaxed).to_string(),
        );
        let _ = writeln!(
            s,
            "# HELP ferry_entries_programmed Overlay entries on the VXLAN device\n# TYPE ferry_entries_programmed gauge\n\
             ferry_entries_programmed{{kind=\"neigh\"}} {}\nferry_entries_programmed{{kind=\"fdb\"}} {}\nferry_entries_programmed{{kind=\"route\"}} {}",
            self.neighs.load(Relaxed),
            self.fdb.load(Relaxed),
            self.routes.load(Relaxed)
        );
        let count = self.reconciles.load(Relaxed);
        let _ = writeln!(
            s,
            "# HELP ferry_reconcile_duration_seconds Full reconciles of the data path\n# TYPE ferry_reconcile_duration_seconds summary\n\
             ferry_reconcile_duration_seconds_sum {:.6}\nferry_reconcile_duration_seconds_count {count}",
            self.reconcile_micros_sum.load(Relaxed) as f64 / 1e6
        );
        g(
            &mut s,
            "ferry_reconcile_last_duration_seconds",
            "Duration of the last full reconcile",
            "gauge",
            format!(
                "{:.6}",
                self.reconcile_micros_last.load(Relaxed) as f64 / 1e6
            ),
        );
        g(
            &mut s,
            "ferry_reconcile_errors_total",
            "Netlink operations that failed while reconciling",
            "counter",
            self.reconcile_errors.load(Relaxed).to_string(),
        );
        g(
            &mut s,
            "ferry_repairs_total",
            "Reconciles that found the kernel different from the leases",
            "counter",
            self.repairs.load(Relaxed).to_string(),
        );
        g(
            &mut s,
            "ferry_etcd_errors_total",
            "Failed etcd requests and broken watches",
            "counter",
            self.etcd_errors.load(Relaxed).to_string(),
        );
        s
    }
}
