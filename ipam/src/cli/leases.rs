//! `ferry-ipam leases`: every node's subnet lease, whether the node is alive, how many
//! addresses it uses, and how full the cluster CIDR is.

use std::net::IpAddr;

use anyhow::Result;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Serialize;

use super::etcd::{block_on, EtcdArgs};
use super::table::Table;
use super::Output;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet: Option<Ipv4Network>,
    #[serde(rename = "subnetV6", skip_serializing_if = "Option::is_none")]
    subnet_v6: Option<Ipv6Network>,
    public_ip: IpAddr,
    vtep_mac: String,
    alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    used: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<u32>,
    /// Seconds until a silent node's subnet can be leased again; absent when it never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    #[serde(rename = "clusterCIDR", skip_serializing_if = "Option::is_none")]
    cluster_cidr: Option<Ipv4Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet_len: Option<u8>,
    /// Node subnets the cluster CIDR holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    subnets: Option<u32>,
    #[serde(rename = "clusterCIDRv6", skip_serializing_if = "Option::is_none")]
    cluster_cidr_v6: Option<Ipv6Network>,
    #[serde(rename = "subnetLenV6", skip_serializing_if = "Option::is_none")]
    subnet_len_v6: Option<u8>,
    /// IPv6 node subnets the IPv6 cluster CIDR holds.
    #[serde(rename = "subnetsV6", skip_serializing_if = "Option::is_none")]
    subnets_v6: Option<u32>,
    leased: usize,
    leases: Vec<Row>,
}

pub fn run(args: Args) -> Result<i32> {
    let report = block_on(async {
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
                expires_in,
                node: rec.node,
                subnet: rec.subnet,
                subnet_v6: rec.subnet_v6,
                public_ip: rec.public_ip,
                vtep_mac: rec.vtep_mac,
            });
        }
        leases.sort_by_key(|r| (r.subnet, r.subnet_v6));
        let v4 = cfg.as_ref().and_then(|c| c.ipv4);
        let v6 = cfg.as_ref().and_then(|c| c.ipv6);
        Ok(Report {
            cluster_cidr: v4.map(|v| v.cluster_cidr),
            subnet_len: v4.map(|v| v.subnet_len),
            subnets: v4.map(|v| v.subnet_count()),
            cluster_cidr_v6: v6.map(|v| v.cluster_cidr),
            subnet_len_v6: v6.map(|v| v.subnet_len),
            subnets_v6: v6.map(|v| v.subnet_count()),
            leased: leases.len(),
            leases,
        })
    })?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_table(&report),
    }
    Ok(0)
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
        return;
    }
    if r.cluster_cidr_v6.is_some() {
        // The IPv6 column only where there is IPv6: an IPv4 cluster's table is as it was.
        let mut t = Table::new([
            "NODE",
            "SUBNET",
            "SUBNET V6",
            "PUBLIC IP",
            "VTEP MAC",
            "ALIVE",
            "USED",
        ]);
        for l in &r.leases {
            let [node, subnet, ip, mac, alive, used] = cells(l);
            let v6 = l.subnet_v6.map_or("-".to_string(), |s| s.to_string());
            t.row([node, subnet, v6, ip, mac, alive, used]);
        }
        println!();
        t.print();
        return;
    }
    let mut t = Table::new(["NODE", "SUBNET", "PUBLIC IP", "VTEP MAC", "ALIVE", "USED"]);
    for l in &r.leases {
        t.row(cells(l));
    }
    println!();
    t.print();
}

/// A lease's cells but its IPv6 subnet.
fn cells(l: &Row) -> [String; 6] {
    let alive = match (l.alive, l.expires_in) {
        (true, _) => "yes".to_string(),
        (false, Some(s)) => format!(
            "no (kept {})",
            humantime::format_duration(std::time::Duration::from_secs(s as u64))
        ),
        (false, None) => "no (never expires)".to_string(),
    };
    let used = match (l.used, l.capacity) {
        (Some(u), Some(c)) if c > 0 => {
            format!("{u}/{c} ({:.0}%)", f64::from(u) * 100.0 / f64::from(c))
        }
        _ => "-".to_string(),
    };
    [
        l.node.clone(),
        l.subnet.map_or("-".to_string(), |s| s.to_string()),
        l.public_ip.to_string(),
        l.vtep_mac.clone(),
        alive,
        used,
    ]
}
