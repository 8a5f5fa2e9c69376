use std::net::Ipv4Addr;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use ipnetwork::Ipv4Network;
use node_ipam::config::parse_subnet;
use node_ipam::node_state;
use serde::Serialize;

use super::table::Table;
use super::{NodeArgs, Output};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Only this CNI network's allocations.
    #[arg(long)]
    network: Option<String>,
    /// Only the allocations of this Kubernetes pod (NAMESPACE/NAME), as the runtime named
    /// it in CNI_ARGS.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pod: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    ip: Ipv4Addr,
    container_id: String,
    ifname: String,
    network: String,
    netns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<cni::K8sPod>,
    since: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    subnet: Option<String>,
    gateway: Option<Ipv4Addr>,
    capacity: u32,
    used: u32,
    free: u32,
    allocations: Vec<Row>,
}

/// The pool to describe: the flag, the node state, the store's own record, in that order.
fn pool(
    args: &Args,
    data: &node_ipam::StoreData,
) -> anyhow::Result<Option<(Ipv4Network, Ipv4Addr, Ipv4Addr, Ipv4Addr)>> {
    let bounds = |net: Ipv4Network, gw: Ipv4Addr| {
        let first = Ipv4Addr::from(u32::from(net.network()) + 1);
        let last = Ipv4Addr::from(u32::from(net.broadcast()) - 1);
        (net, gw, first, last)
    };
    if let Some(s) = &args.node.subnet {
        let net = parse_subnet("--subnet", s)?;
        return Ok(Some(bounds(
            net,
            Ipv4Addr::from(u32::from(net.network()) + 1),
        )));
    }
    let state_dir = args.node.state_dir.clone();
    if let Some(dir) = &state_dir {
        let st = node_state::require(dir)?;
        let net = parse_subnet("podCIDR", &st.pod_cidr)?;
        return Ok(Some(bounds(net, st.gateway)));
    }
    if let Some(p) = &data.pool {
        let net = parse_subnet("the store's subnet", &p.subnet)?;
        return Ok(Some((net, p.gateway, p.range_start, p.range_end)));
    }
    if let Ok(Some(st)) = node_state::read(std::path::Path::new(node_state::DEFAULT_STATE_DIR)) {
        let net = parse_subnet("podCIDR", &st.pod_cidr)?;
        return Ok(Some(bounds(net, st.gateway)));
    }
    Ok(None)
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let store = args.node.data.store()?;
    let data = store
        .snapshot()
        .with_context(|| format!("reading {}", store.path().display()))?;
    let pool = pool(&args, &data)?;
    let capacity = pool
        .map(|(_, gw, start, end)| {
            let n = u32::from(end) - u32::from(start) + 1;
            n - u32::from(start <= gw && gw <= end)
        })
        .unwrap_or(0);
    let allocations: Vec<Row> = data
        .allocations
        .iter()
        .filter(|(_, a)| args.network.as_ref().is_none_or(|n| *n == a.network))
        .filter(|(_, a)| {
            args.pod.as_ref().is_none_or(|want| {
                a.pod
                    .as_ref()
                    .is_some_and(|p| *want == format!("{}/{}", p.namespace, p.name))
            })
        })
        .map(|(ip, a)| Row {
            ip: *ip,
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            network: a.network.clone(),
            netns: a.netns.clone(),
            pod: a.pod.clone(),
            since: humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(a.since))
                .to_string(),
        })
        .collect();
    let used = allocations.len() as u32;
    let report = Report {
        subnet: pool.map(|p| p.0.to_string()),
        gateway: pool.map(|p| p.1),
        capacity,
        used,
        free: capacity.saturating_sub(used),
        allocations,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_table(&report),
    }
    Ok(0)
}

fn pct(n: u32, of: u32) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.1}%", f64::from(n) * 100.0 / f64::from(of))
    }
}

fn print_table(r: &Report) {
    println!(
        "subnet {}  gateway {}",
        r.subnet.as_deref().unwrap_or("unknown"),
        r.gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    println!(
        "capacity {}  used {} ({})  free {} ({})",
        r.capacity,
        r.used,
        pct(r.used, r.capacity),
        r.free,
        pct(r.free, r.capacity)
    );
    if r.allocations.is_empty() {
        println!("\nno allocations");
        return;
    }
    let mut t = Table::new([
        "IP",
        "POD",
        "CONTAINER",
        "IFNAME",
        "NETWORK",
        "NETNS",
        "SINCE",
    ]);
    for a in &r.allocations {
        t.row([
            a.ip.to_string(),
            a.pod
                .as_ref()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .unwrap_or_else(|| "-".into()),
            a.container_id.clone(),
            a.ifname.clone(),
            a.network.clone(),
            a.netns.clone().unwrap_or_else(|| "-".into()),
            a.since.clone(),
        ]);
    }
    println!();
    t.print();
}
