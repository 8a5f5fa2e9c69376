use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use ferry_family::to_int;
use ferry_node_ipam::config::{host_bounds, parse_network, show_capacity};
use ferry_node_ipam::node_state;
use ipnetwork::IpNetwork;
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
    ip: IpAddr,
    container_id: String,
    ifname: String,
    network: String,
    netns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<ferry_cni::K8sPod>,
    since: String,
}

/// One address family's pool and its use.
#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct PoolUse {
    subnet: String,
    gateway: IpAddr,
    /// Saturates at 2^64 - 1: an IPv6 /64 holds that many.
    capacity: u64,
    used: u64,
    free: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    /// The first pool (IPv4 when the node has it), as before IPv6.
    subnet: Option<String>,
    gateway: Option<IpAddr>,
    capacity: u64,
    used: u64,
    free: u64,
    /// Every family's pool, IPv4 first.
    pools: Vec<PoolUse>,
    allocations: Vec<Row>,
}

/// (subnet, gateway, range start, range end) of one family.
type Bounds = (IpNetwork, IpAddr, IpAddr, IpAddr);

/// The pools to describe: the flag, the node state, the store's own record, in that order.
fn pools(args: &Args, data: &ferry_node_ipam::StoreData) -> anyhow::Result<Vec<Bounds>> {
    let bounds = |net: IpNetwork, gw: Option<IpAddr>| {
        let (first, last) = host_bounds(net);
        (net, gw.unwrap_or(first), first, last)
    };
    if let Some(s) = &args.node.subnet {
        return Ok(vec![bounds(parse_network("--subnet", s)?, None)]);
    }
    let from_state = |st: &node_state::NodeState| -> anyhow::Result<Vec<Bounds>> {
        let mut out = Vec::new();
        if let Some(c) = &st.pod_cidr {
            out.push(bounds(
                parse_network("podCIDR", c)?,
                st.gateway.map(IpAddr::V4),
            ));
        }
        if let Some(c) = &st.pod_cidr_v6 {
            out.push(bounds(
                parse_network("podCIDRv6", c)?,
                st.gateway_v6.map(IpAddr::V6),
            ));
        }
        Ok(out)
    };
    if let Some(dir) = &args.node.state_dir {
        return from_state(&node_state::require(dir)?);
    }
    let mut out = Vec::new();
    for p in [&data.pool, &data.pool_v6].into_iter().flatten() {
        let net = parse_network("the store's subnet", &p.subnet)?;
        out.push((net, p.gateway, p.range_start, p.range_end));
    }
    if !out.is_empty() {
        return Ok(out);
    }
    if let Ok(Some(st)) = node_state::read(std::path::Path::new(node_state::DEFAULT_STATE_DIR)) {
        return from_state(&st);
    }
    Ok(out)
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let store = args.node.data.store()?;
    let data = store
        .snapshot()
        .with_context(|| format!("reading {}", store.path().display()))?;
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
            since: since(a.since),
        })
        .collect();
    let pools: Vec<PoolUse> = pools(&args, &data)?
        .into_iter()
        .map(|(net, gw, start, end)| {
            // The pool may come from the store's own record, which is input like the
            // rest: a reversed range counts as empty rather than underflowing.
            let capacity = to_int(end)
                .checked_sub(to_int(start))
                .and_then(|n| n.checked_add(1))
                .map(|n| n.saturating_sub(u128::from(start <= gw && gw <= end)))
                .unwrap_or(0);
            let capacity = u64::try_from(capacity).unwrap_or(u64::MAX);
            let used = allocations
                .iter()
                .filter(|a| a.ip.is_ipv4() == net.is_ipv4())
                .count() as u64;
            PoolUse {
                subnet: net.to_string(),
                gateway: gw,
                capacity,
                used,
                free: capacity.saturating_sub(used),
            }
        })
        .collect();
    let first = pools.first().cloned();
    let report = Report {
        subnet: first.as_ref().map(|p| p.subnet.clone()),
        gateway: first.as_ref().map(|p| p.gateway),
        capacity: first.as_ref().map_or(0, |p| p.capacity),
        used: first.as_ref().map_or(allocations.len() as u64, |p| p.used),
        free: first.as_ref().map_or(0, |p| p.free),
        pools,
        allocations,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_table(&report),
    }
    Ok(0)
}

/// RFC 3339, or the raw number when it is past what a date can show.
fn since(secs: u64) -> String {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .filter(|t| *t < UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// The widest a table cell gets: a store is input, and one absurd value must not make
/// the table unreadable (`-o json` shows every value whole).
const MAX_CELL: usize = 64;

/// A cell: control characters escaped, at most `MAX_CELL` characters.
fn cell(s: &str) -> String {
    let escaped: String = s.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() <= MAX_CELL {
        return escaped;
    }
    let mut out: String = escaped.chars().take(MAX_CELL - 1).collect();
    out.push('…');
    out
}

fn pct(n: u64, of: u64) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

fn print_table(r: &Report) {
    if r.pools.is_empty() {
        println!("subnet unknown  gateway unknown");
        println!("capacity 0  used {} (-)  free 0 (-)", r.used);
    }
    for p in &r.pools {
        println!("subnet {}  gateway {}", p.subnet, p.gateway);
        println!(
            "capacity {}  used {} ({})  free {} ({})",
            show_capacity(u128::from(p.capacity)),
            p.used,
            pct(p.used, p.capacity),
            show_capacity(u128::from(p.free)),
            pct(p.free, p.capacity)
        );
    }
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
                .map(|p| cell(&format!("{}/{}", p.namespace, p.name)))
                .unwrap_or_else(|| "-".into()),
            cell(&a.container_id),
            cell(&a.ifname),
            cell(&a.network),
            a.netns.as_deref().map(cell).unwrap_or_else(|| "-".into()),
            a.since.clone(),
        ]);
    }
    println!();
    t.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_dates_are_bounded() {
        assert_eq!(cell("abc"), "abc");
        assert_eq!(cell(&"x".repeat(70_000)).chars().count(), MAX_CELL);
        assert_eq!(cell("a\nb"), "a\\nb");
        assert_eq!(since(u64::MAX), format!("@{}", u64::MAX));
        assert_eq!(since(0), "1970-01-01T00:00:00Z");
    }
}
