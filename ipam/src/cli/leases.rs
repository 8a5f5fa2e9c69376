//! `ferry-ipam leases`: every node's subnet lease, whether the node is alive, how many
//! addresses it uses, and how full the cluster CIDR is.

use std::net::IpAddr;

use anyhow::{Context, Result};
use ferry_node_ipam::peer_paths::PeerHealth;
use ferry_registry::ClusterConfig;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Serialize;

use super::etcd::{block_on, EtcdArgs};
use super::table::Table;
use super::Output;

/// Where the leases are read.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Datastore {
    Etcd,
    Kubernetes,
}

#[derive(clap::Args)]
pub struct Args {
    /// The cluster's datastore, as ferry-overlayd's `--datastore` (`--kubeconfig` implies
    /// `kubernetes`).
    #[arg(long, env = "FERRY_DATASTORE", value_enum, default_value = "etcd")]
    pub(super) datastore: Datastore,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The Kubernetes datastore's API (default: in-cluster, $KUBECONFIG, ~/.kube/config).
    #[arg(long, env = "FERRY_KUBECONFIG", value_name = "FILE")]
    pub(super) kubeconfig: Option<std::path::PathBuf>,
    /// With the Kubernetes datastore: the cluster's IPv4 pod CIDR (ferry's ConfigMap
    /// `cluster-cidr`), to check each Node as the daemons do; without it, Nodes are
    /// listed unchecked.
    #[arg(long, env = "FERRY_CLUSTER_CIDR")]
    pub(super) cluster_cidr: Option<ipnetwork::Ipv4Network>,
    /// The IPv6 pod CIDR, as --cluster-cidr.
    #[arg(long, env = "FERRY_CLUSTER_CIDR_V6")]
    pub(super) cluster_cidr_v6: Option<ipnetwork::Ipv6Network>,
    /// This node's state directory: adds, per remote node, the path its pods are reached
    /// by (`direct via <dev>` or `vxlan`), from the daemon's peers.json there.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Row {
    pub(super) node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) subnet: Option<Ipv4Network>,
    #[serde(rename = "subnetV6", skip_serializing_if = "Option::is_none")]
    pub(super) subnet_v6: Option<Ipv6Network>,
    pub(super) public_ip: IpAddr,
    pub(super) vtep_mac: String,
    pub(super) alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) used: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) capacity: Option<u32>,
    /// When the node's daemon published `used` (RFC 3339): it publishes a figure when it
    /// changes, checking every few seconds.
    #[serde(with = "used_at", skip_serializing_if = "Option::is_none")]
    pub(super) used_at: Option<u64>,
    /// Seconds until a silent node's subnet can be leased again; absent when it never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) expires_in: Option<i64>,
    /// With `--state-dir`: `direct`, `vxlan`, or `local` for the node itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) path: Option<String>,
    /// The device a direct path leaves by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) device: Option<String>,
    /// With `--state-dir`: what this node's probes of that node saw (its first family),
    /// as in peers.json.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) health: Option<PeerHealth>,
    /// The same for a dual-stack node's IPv6 subnet.
    #[serde(rename = "healthV6", skip_serializing_if = "Option::is_none")]
    pub(super) health_v6: Option<PeerHealth>,
    /// Seconds since the daemon last wrote the health, when that is long enough to mean
    /// it no longer probes (stopped, or stuck).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) health_stale_seconds: Option<u64>,
    /// Why a node that is not alive keeps its routes, when not for a lease's grace.
    #[serde(skip)]
    pub(super) kept_because: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Report {
    #[serde(rename = "clusterCIDR", skip_serializing_if = "Option::is_none")]
    pub(super) cluster_cidr: Option<Ipv4Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) subnet_len: Option<u8>,
    /// Node subnets the cluster CIDR holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) subnets: Option<u32>,
    #[serde(rename = "clusterCIDRv6", skip_serializing_if = "Option::is_none")]
    pub(super) cluster_cidr_v6: Option<Ipv6Network>,
    #[serde(rename = "subnetLenV6", skip_serializing_if = "Option::is_none")]
    pub(super) subnet_len_v6: Option<u8>,
    /// IPv6 node subnets the IPv6 cluster CIDR holds.
    #[serde(rename = "subnetsV6", skip_serializing_if = "Option::is_none")]
    pub(super) subnets_v6: Option<u32>,
    pub(super) leased: usize,
    pub(super) leases: Vec<Row>,
    /// Nodes that are not leases: refused, or not ready to be (Kubernetes datastore).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) problems: Vec<Problem>,
}

impl Report {
    /// The report of `leases` (sorted here) in a cluster of config `cfg`.
    pub(super) fn new(
        cfg: Option<&ClusterConfig>,
        mut leases: Vec<Row>,
        problems: Vec<Problem>,
    ) -> Report {
        leases.sort_by_key(|r| (r.subnet, r.subnet_v6));
        let v4 = cfg.and_then(|c| c.ipv4);
        let v6 = cfg.and_then(|c| c.ipv6);
        Report {
            cluster_cidr: v4.map(|v| v.cluster_cidr),
            subnet_len: v4.map(|v| v.subnet_len),
            subnets: v4.map(|v| v.subnet_count()),
            cluster_cidr_v6: v6.map(|v| v.cluster_cidr),
            subnet_len_v6: v6.map(|v| v.subnet_len),
            subnets_v6: v6.map(|v| v.subnet_count()),
            leased: leases.len(),
            leases,
            problems,
        }
    }
}

#[derive(Serialize)]
pub(super) struct Problem {
    pub(super) node: String,
    pub(super) detail: String,
}

pub fn run(args: Args) -> Result<i32> {
    // Read before etcd is asked anything: a bad directory is named at once.
    let local = match &args.state_dir {
        Some(dir) => Some(Local {
            me: ferry_node_ipam::node_state::read(dir)?.map(|s| s.node_name),
            paths: ferry_node_ipam::peer_paths::read(dir)?.with_context(|| {
                format!(
                    "{} is not there: is ferry-overlayd (with this --state-dir) running?",
                    ferry_node_ipam::peer_paths::path(dir).display()
                )
            })?,
        }),
        None => None,
    };
    let kube = args.kubeconfig.is_some() || args.datastore == Datastore::Kubernetes;
    let mut report = block_on(async {
        if kube {
            return super::kube_leases::report(&args).await;
        }
        let mut reg = args.etcd.connect().await?;
        let cfg = reg.read_config().await?;
        let entries = reg
            .entries(cfg.as_ref().is_some_and(|c| c.v6_only()))
            .await?;
        let alive = reg.alive_nodes().await?;
        let usage = reg.usage().await?;
        let mut leases = Vec::new();
        for e in entries {
            let Ok(rec) = e.record else { continue };
            let is_alive = alive.contains(&rec.node);
            let expires_in = if e.lease_id == 0 {
                None
            } else {
                reg.ttl(e.lease_id).await?
            };
            let u = usage.get(&rec.node);
            leases.push(Row {
                alive: is_alive,
                used: u.map(|u| u.used),
                capacity: u.map(|u| u.capacity),
                used_at: u.and_then(|u| u.at),
                expires_in,
                path: None,
                device: None,
                health: None,
                health_v6: None,
                health_stale_seconds: None,
                kept_because: None,
                node: rec.node,
                subnet: rec.subnet,
                subnet_v6: rec.subnet_v6,
                public_ip: rec.public_ip,
                vtep_mac: rec.vtep_mac,
            });
        }
        Ok(Report::new(cfg.as_ref(), leases, Vec::new()))
    })?;
    if let Some(local) = &local {
        let now = unix_now();
        for row in &mut report.leases {
            local.mark(row, now);
        }
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_table(&report),
    }
    Ok(0)
}

/// What one node's state directory says about its paths.
struct Local {
    me: Option<String>,
    paths: ferry_node_ipam::peer_paths::PeerPaths,
}

impl Local {
    /// Sets `row`'s path and health: the node's own, or the ones peers.json gives for that
    /// node at that address (a record peers.json does not know, e.g. refused, gets none).
    fn mark(&self, row: &mut Row, now: u64) {
        if self.me.as_deref() == Some(row.node.as_str()) {
            row.path = Some("local".into());
            return;
        }
        if let Some(p) = self
            .paths
            .peers
            .iter()
            .find(|p| p.node == row.node && p.public_ip == row.public_ip)
        {
            row.path = Some(p.path.to_string());
            row.device = p.device.clone();
            row.health = p.health.clone();
            row.health_v6 = p.health_v6.clone();
            row.health_stale_seconds = self
                .paths
                .health_at
                .map(|at| now.saturating_sub(at))
                .filter(|age| *age > HEALTH_STALE);
        }
    }
}

/// How old the health may be before it is said to be stale: the daemon writes it every
/// 5 s while its prober runs.
const HEALTH_STALE: u64 = 30;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A row's health as the table shows it: `ok`, `lost 3/10`, `mtu fails`, `unreachable
/// since 12:01:05 (20s)`; a dual-stack node's two families once when they agree, else
/// each named; `probing` before the first verdict, `-` for this node, a refused record
/// or a daemon without a prober.
pub(super) fn health_cell(l: &Row, now: u64) -> String {
    if l.path.is_none() || l.path.as_deref() == Some("local") {
        return "-".to_string();
    }
    let cell = match (&l.health, &l.health_v6) {
        (None, None) => "probing".to_string(),
        (Some(a), None) | (None, Some(a)) => a.shown(now),
        (Some(a), Some(b)) => {
            let (a, b) = (a.shown(now), b.shown(now));
            if a == b {
                a
            } else {
                format!("ipv4 {a}, ipv6 {b}")
            }
        }
    };
    match l.health_stale_seconds {
        Some(age) => format!("stale {age}s: {cell}"),
        None => cell,
    }
}

/// A row's path as the table shows it.
fn path_cell(l: &Row) -> String {
    match (&l.path, &l.device) {
        (Some(p), Some(d)) => format!("{p} via {d}"),
        (Some(p), None) => p.clone(),
        (None, _) => "-".to_string(),
    }
}

fn print_table(r: &Report) {
    match (r.cluster_cidr, r.subnet_len, r.subnets) {
        (Some(c), Some(len), Some(n)) => println!(
            "cluster {c}: {} of {n} /{len} node subnets leased ({:.1}%)",
            r.leased,
            r.leased as f64 * 100.0 / f64::from(n)
        ),
        _ if r.cluster_cidr_v6.is_some() => {}
        _ => println!("no cluster config in etcd; {} leases", r.leased),
    }
    if let (Some(c), Some(len), Some(n)) = (r.cluster_cidr_v6, r.subnet_len_v6, r.subnets_v6) {
        let leased = r.leases.iter().filter(|l| l.subnet_v6.is_some()).count();
        println!(
            "cluster {c}: {leased} of {n} /{len} IPv6 node subnets leased ({:.1}%)",
            leased as f64 * 100.0 / f64::from(n)
        );
    }
    if r.leases.is_empty() {
        println!("\nno leases");
    } else {
        print_leases(r);
    }
    if !r.problems.is_empty() {
        println!();
        for p in &r.problems {
            println!("{}: {}", p.node, p.detail);
        }
    }
}

fn print_leases(r: &Report) {
    // The PATH column only with --state-dir, the IPv6 one only where there is IPv6: an
    // IPv4 cluster's table is as it was.
    let with_paths = r.leases.iter().any(|l| l.path.is_some());
    let now = unix_now();
    let v6 = r.cluster_cidr_v6.is_some();
    let base = ["NODE", "SUBNET", "PUBLIC IP", "VTEP MAC", "ALIVE", "USED"];
    let rows = r.leases.iter().map(|l| (cells(l), l));
    let subnet_v6 = |l: &Row| l.subnet_v6.map_or("-".to_string(), |s| s.to_string());
    match (v6, with_paths) {
        (false, false) => print_rows(base, rows.map(|(c, _)| c)),
        (false, true) => {
            let [a, b, c, d, e, f] = base;
            print_rows(
                [a, b, c, d, e, f, "PATH", "HEALTH"],
                rows.map(|([a, b, c, d, e, f], l)| {
                    [a, b, c, d, e, f, path_cell(l), health_cell(l, now)]
                }),
            )
        }
        (true, false) => {
            let [a, b, c, d, e, f] = base;
            print_rows(
                [a, b, "SUBNET V6", c, d, e, f],
                rows.map(|([a, b, c, d, e, f], l)| [a, b, subnet_v6(l), c, d, e, f]),
            )
        }
        (true, true) => {
            let [a, b, c, d, e, f] = base;
            print_rows(
                [a, b, "SUBNET V6", c, d, e, f, "PATH", "HEALTH"],
                rows.map(|([a, b, c, d, e, f], l)| {
                    [
                        a,
                        b,
                        subnet_v6(l),
                        c,
                        d,
                        e,
                        f,
                        path_cell(l),
                        health_cell(l, now),
                    ]
                }),
            )
        }
    }
}

fn print_rows<const N: usize>(header: [&str; N], rows: impl Iterator<Item = [String; N]>) {
    let mut t = Table::new(header);
    for row in rows {
        t.row(row);
    }
    println!();
    t.print();
}

/// A lease's cells but its IPv6 subnet.
fn cells(l: &Row) -> [String; 6] {
    let alive = match (l.alive, l.expires_in) {
        (true, _) => "yes".to_string(),
        (false, _) if l.kept_because.is_some() => {
            format!("no ({})", l.kept_because.unwrap_or_default())
        }
        (false, Some(s)) => format!(
            "no (kept {})",
            humantime::format_duration(std::time::Duration::from_secs(s as u64))
        ),
        (false, None) => "no (never expires)".to_string(),
    };
    let used = used_cell(l.used, l.capacity, l.used_at, unix_now());
    [
        l.node.clone(),
        l.subnet.map_or("-".to_string(), |s| s.to_string()),
        l.public_ip.to_string(),
        l.vtep_mac.clone(),
        alive,
        used,
    ]
}

/// `2/253 (1%, 4s ago)`: the figure and how old it is (an older daemon's has no age).
fn used_cell(used: Option<u32>, capacity: Option<u32>, at: Option<u64>, now: u64) -> String {
    let (Some(u), Some(c)) = (used, capacity) else {
        return "-".to_string();
    };
    if c == 0 {
        return "-".to_string();
    }
    let pct = format!("{:.0}%", f64::from(u) * 100.0 / f64::from(c));
    match at {
        // A clock behind the daemon's reads as just now, not as the future.
        Some(at) => format!("{u}/{c} ({pct}, {} ago)", age(now.saturating_sub(at))),
        None => format!("{u}/{c} ({pct})"),
    }
}

/// An age in its largest unit: `4s`, `3m`, `2h`, `5d`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `usedAt` as RFC 3339; a time past what a date can show as the raw number.
mod used_at {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(at: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        let Some(at) = at else {
            return s.serialize_none();
        };
        let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(*at));
        match t.filter(|t| {
            *t < std::time::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799)
        }) {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_seconds(t).to_string()),
            None => s.serialize_u64(*at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_node_ipam::peer_paths::PathKind;

    fn row(health: Option<PeerHealth>, health_v6: Option<PeerHealth>) -> Row {
        Row {
            node: "node1".into(),
            subnet: None,
            subnet_v6: None,
            public_ip: "192.0.2.12".parse().unwrap(),
            vtep_mac: String::new(),
            alive: true,
            used: None,
            used_at: None,
            capacity: None,
            expires_in: None,
            path: Some("vxlan".into()),
            device: None,
            health,
            health_v6,
            health_stale_seconds: None,
            kept_because: None,
        }
    }

    fn h(family: &str, reachable: bool, lost: u32) -> PeerHealth {
        PeerHealth {
            family: family.into(),
            path: PathKind::Vxlan,
            reachable,
            lost,
            sent: 10,
            rtt_seconds: Some(0.0002),
            mtu_ok: Some(true),
            mtu: Some(1450),
            unreachable_since: (!reachable).then_some(3600),
        }
    }

    #[test]
    fn the_health_cell_says_the_worst_of_each_family_and_staleness() {
        assert_eq!(health_cell(&row(None, None), 0), "probing");
        assert_eq!(health_cell(&row(Some(h("ipv4", true, 0)), None), 0), "ok");
        let both = row(Some(h("ipv4", true, 0)), Some(h("ipv6", true, 0)));
        assert_eq!(health_cell(&both, 0), "ok", "agreeing families said once");
        let mixed = row(Some(h("ipv4", true, 0)), Some(h("ipv6", false, 10)));
        assert_eq!(
            health_cell(&mixed, 3620),
            "ipv4 ok, ipv6 unreachable since 01:00:00 (20s)"
        );
        let mut stale = row(Some(h("ipv4", true, 3)), None);
        stale.health_stale_seconds = Some(45);
        assert_eq!(health_cell(&stale, 0), "stale 45s: lost 3/10");
        let mut local = row(None, None);
        local.path = Some("local".into());
        assert_eq!(health_cell(&local, 0), "-");
        let v = serde_json::to_value(row(Some(h("ipv4", true, 3)), None)).unwrap();
        for key in ["path", "reachable", "lost", "sent", "rttSeconds", "mtuOk"] {
            assert!(v["health"].get(key).is_some(), "{key} missing: {v}");
        }
    }

    #[test]
    fn the_used_figure_says_its_age() {
        assert_eq!(
            used_cell(Some(2), Some(253), Some(96), 100),
            "2/253 (1%, 4s ago)"
        );
        assert_eq!(used_cell(Some(2), Some(253), None, 100), "2/253 (1%)");
        assert_eq!(
            used_cell(Some(0), Some(253), Some(200), 100),
            "0/253 (0%, 0s ago)"
        );
        assert_eq!(used_cell(Some(1), Some(0), Some(1), 100), "-");
        assert_eq!(used_cell(None, Some(253), Some(1), 100), "-");
        assert_eq!(age(3 * 3600 + 5), "3h");
        assert_eq!(age(61), "1m");
        assert_eq!(age(2 * 86400), "2d");
    }
}
