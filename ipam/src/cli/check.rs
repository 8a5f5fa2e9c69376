//! `ferry-ipam check`: every problem with the node's addresses and the cluster's leases,
//! each with a kind and a detail; exit 1 when there is any. `-o json` is a report that
//! `release --from-report` acts on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use ferry_node_ipam::attachment;
use ferry_node_ipam::config::parse_network;
use ferry_node_ipam::node_state;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::etcd::{block_on, EtcdArgs};
use super::table::Table;
use super::{NodeArgs, Output};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// With etcd: also check the cluster's leases and this node's lease.
    #[command(flatten)]
    etcd: EtcdArgs,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

/// One problem; the address fields are set for problems about an allocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub kind: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

/// The kind `release --from-report` frees.
pub const LEAKED: &str = "leaked-allocation";

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub problems: Vec<Problem>,
}

fn problem(kind: &str, detail: String) -> Problem {
    Problem {
        kind: kind.into(),
        detail,
        ip: None,
        container_id: None,
        ifname: None,
    }
}

pub fn run(args: Args) -> Result<i32> {
    let mut problems = Vec::new();
    let state_dir = args.node.state_dir.clone().or_else(|| {
        let d = PathBuf::from(node_state::DEFAULT_STATE_DIR);
        node_state::path(&d).exists().then_some(d)
    });
    let state = match &state_dir {
        Some(d) => match node_state::read(d) {
            Ok(s) => s,
            Err(e) => {
                problems.push(problem("node-state-unreadable", e.to_string()));
                None
            }
        },
        None => None,
    };
    check_store(&args, state.as_ref(), &mut problems)?;
    if args.etcd.given() {
        let mut found = block_on(check_cluster(&args.etcd, state.as_ref()))?;
        problems.append(&mut found);
    }
    let any = !problems.is_empty();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&Report { problems })?),
        Output::Table => {
            if any {
                let mut t = Table::new(["KIND", "DETAIL"]);
                for p in &problems {
                    t.row([p.kind.clone(), p.detail.clone()]);
                }
                t.print();
                println!(
                    "\n{} problem{}",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                );
            } else {
                println!("no problems found");
            }
        }
    }
    Ok(i32::from(any))
}

fn check_store(
    args: &Args,
    state: Option<&node_state::NodeState>,
    out: &mut Vec<Problem>,
) -> Result<()> {
    let store = args.node.data.store()?;
    let data = match store.snapshot() {
        Ok(d) => d,
        Err(e) => {
            out.push(problem("store-unreadable", e.to_string()));
            return Ok(());
        }
    };
    // The node's subnets, one per family it has.
    let subnets: Vec<IpNetwork> = match (&args.node.subnet, state) {
        (Some(s), _) => vec![parse_network("--subnet", s)?],
        (None, Some(st)) => [&st.pod_cidr, &st.pod_cidr_v6]
            .into_iter()
            .flatten()
            .filter_map(|c| c.parse().ok())
            .collect(),
        (None, None) => [&data.pool, &data.pool_v6]
            .into_iter()
            .flatten()
            .filter_map(|p| p.subnet.parse().ok())
            .collect(),
    };
    for (ip, a) in &data.allocations {
        let with_ip = |kind: &str, detail: String| Problem {
            kind: kind.into(),
            detail,
            ip: Some(*ip),
            container_id: Some(a.container_id.clone()),
            ifname: Some(a.ifname.clone()),
        };
        let same_family = subnets.iter().find(|s| s.is_ipv4() == ip.is_ipv4());
        if let Some(s) = same_family.filter(|s| !s.contains(*ip)) {
            out.push(with_ip(
                "outside-subnet",
                format!(
                    "{ip} (container {}, {}) is outside the node's subnet {s}",
                    a.container_id, a.ifname
                ),
            ));
        }
        if attachment::alive(a).is_none() {
            let ns = a.netns.as_deref().unwrap_or("(none recorded)");
            out.push(with_ip(
                LEAKED,
                format!(
                    "{ip} held by container {} ({}): its network namespace {ns} and host veth {} are gone (a runtime lost a DEL); free it with release",
                    a.container_id,
                    a.ifname,
                    attachment::host_veth(&a.container_id, &a.ifname)
                ),
            ));
        }
    }
    Ok(())
}

async fn check_cluster(
    etcd: &EtcdArgs,
    state: Option<&node_state::NodeState>,
) -> Result<Vec<Problem>> {
    let mut out = Vec::new();
    let mut reg = etcd.connect().await?;
    let cfg = reg.read_config().await?;
    if cfg.is_none() {
        out.push(problem(
            "no-cluster-config",
            format!("no cluster config at {}", reg.layout().config()),
        ));
    }
    let alive = reg.alive_nodes().await?;
    let mut leases = Vec::new();
    let v6_only = cfg.as_ref().is_some_and(|c| c.v6_only());
    for e in reg.entries(v6_only).await? {
        match e.record {
            Err(why) => out.push(problem("lease-unreadable", format!("{}: {why}", e.key))),
            Ok(rec) => match rec.primary() {
                Some(net) => leases.push((rec, e.lease_id, net)),
                None => out.push(problem(
                    "lease-unreadable",
                    format!("{}: a record without a subnet", e.key),
                )),
            },
        }
    }
    leases.sort_by_key(|(_, _, n)| (n.network(), n.prefix()));
    // Sorted by start: a lease overlaps a later one exactly when the later one starts
    // inside it (IPv4 before IPv6: no address of one family is inside the other's).
    for (i, (a, _, an)) in leases.iter().enumerate() {
        for (b, _, bn) in leases.iter().skip(i + 1) {
            if !an.contains(bn.network()) {
                break;
            }
            out.push(problem(
                "overlapping-leases",
                format!("{an} ({}) overlaps {bn} ({})", a.node, b.node),
            ));
        }
    }
    let mut by_node: HashMap<&str, Vec<IpNetwork>> = HashMap::new();
    for (r, _, n) in &leases {
        by_node.entry(r.node.as_str()).or_default().push(*n);
    }
    for (node, subnets) in &by_node {
        if subnets.len() > 1 {
            out.push(problem(
                "duplicate-node",
                format!("node {node} holds {} leases: {subnets:?}", subnets.len()),
            ));
        }
    }
    for (r, lease_id, net) in &leases {
        if let Some(c) = cfg.as_ref().filter(|c| !c.holds_any(*net)) {
            let (len, cidr) = match net {
                IpNetwork::V4(_) => (
                    c.ipv4.map(|v| v.subnet_len),
                    c.ipv4.map(|v| v.cluster_cidr.to_string()),
                ),
                IpNetwork::V6(_) => (
                    c.ipv6.map(|v| v.subnet_len),
                    c.ipv6.map(|v| v.cluster_cidr.to_string()),
                ),
            };
            let detail = match (len, cidr) {
                (Some(len), Some(cidr)) => {
                    format!(
                        "{net} ({}) is not a /{len} of the cluster CIDR {cidr}",
                        r.node
                    )
                }
                _ => format!(
                    "{net} ({}) is of a family the cluster does not have",
                    r.node
                ),
            };
            out.push(problem("lease-outside-cluster", detail));
        }
        if !alive.contains(&r.node) {
            let kept = if *lease_id == 0 {
                "its lease never expires (no etcd lease): delete it with etcdctl if the node is gone".to_string()
            } else {
                match reg.ttl(*lease_id).await? {
                    Some(s) => format!(
                        "its subnet is kept for another {}",
                        humantime::format_duration(std::time::Duration::from_secs(s as u64))
                    ),
                    None => "its lease has just expired".to_string(),
                }
            };
            out.push(problem(
                "node-not-alive",
                format!(
                    "node {} ({net}, {}) is not heart-beating; {kept}",
                    r.node, r.public_ip
                ),
            ));
        }
    }
    // The subnet the node's lease is keyed by: its IPv4 one, else (IPv6-only) its IPv6 one.
    let own = |st: &node_state::NodeState| st.pod_cidr.clone().or(st.pod_cidr_v6.clone());
    if let Some((st, pod_cidr)) = state.and_then(|st| Some((st, own(st)?))) {
        match leases.iter().find(|(r, _, _)| r.node == st.node_name) {
            None => out.push(problem(
                "node-state-without-lease",
                format!(
                    "node.json says node {} has {}, but etcd has no lease for it",
                    st.node_name, pod_cidr
                ),
            )),
            Some((_, _, n)) if n.to_string() != pod_cidr => out.push(problem(
                "node-state-mismatch",
                format!(
                    "node.json says node {} has {}, its etcd lease says {n}",
                    st.node_name, pod_cidr
                ),
            )),
            Some(_) => {}
        }
    }
    Ok(out)
}
