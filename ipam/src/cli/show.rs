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
    let from_state = |st: &node_state::NodeState| -> anyhow::Result<Option<_>> {
        let Some((cidr, gw)) = st.ipv4() else {
            return Ok(None);
        };
        let net = parse_subnet("podCIDR", cidr)?;
        let gw = gw.unwrap_or_else(|| Ipv4Addr::from(u32::from(net.network()) + 1));
        Ok(Some(bounds(net, gw)))
    };
    if let Some(dir) = &state_dir {
        return from_state(&node_state::require(dir)?);
    }
    if let Some(p) = &data.pool {
        let net = parse_subnet("the store's subnet", &p.subnet)?;
        return Ok(Some((net, p.gateway, p.range_start, p.range_end)));
    }
    if let Ok(Some(st)) = node_state::read(std::path::Path::new(node_state::DEFAULT_STATE_DIR)) {
        return from_state(&st);
    }
    Ok(None)
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let store = args.node.data.store()?;
    let data = store
        .snapshot()
        .with_context(|| format!("reading {}", store.path().display()))?;
    let pool = pool(&args, &data)?;
    // The pool may come from the store's own record, which is input like the rest: a
    // reversed range counts as empty rather than underflowing.
    let capacity = pool
        .and_then(|(_, gw, start, end)| {
            let n = u32::from(end)
                .checked_sub(u32::from(start))?
                .checked_add(1)?;
            Some(n.saturating_sub(u32::from(start <= gw && gw <= end)))
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
            since: since(a.since),
        })
        .collect();
    let used = u32::try_from(allocations.len()).unwrap_or(u32::MAX);
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
