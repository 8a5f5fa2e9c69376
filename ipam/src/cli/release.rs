//! `ferry-ipam release`: free addresses, under the same lock ADD takes. Refuses (and then
//! frees nothing) when an address's attachment is still there, unless `--force`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ferry_node_ipam::attachment;
use serde::Serialize;

use super::check::{Report, LEAKED};
use super::{DataDir, Output};

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["ip", "container", "from_report"]))]
pub struct Args {
    /// The address to free (IPv4 or IPv6).
    ip: Option<IpAddr>,
    /// Free the addresses of this container ID.
    #[arg(long, value_name = "ID")]
    container: Option<String>,
    /// With --container: only this interface's address.
    #[arg(long, value_name = "IF", requires = "container")]
    ifname: Option<String>,
    /// Free every leaked allocation of a `check -o json` report (a file, or - for stdin).
    #[arg(long, value_name = "FILE")]
    from_report: Option<PathBuf>,
    /// Free even addresses whose pod namespace or host veth still exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    data: DataDir,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Freed {
    ip: IpAddr,
    container_id: String,
    ifname: String,
    network: String,
}

fn report_ips(path: &PathBuf) -> Result<Vec<(IpAddr, String, String)>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("read the report from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("read report {}", path.display()))?
    };
    let report: Report = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a `ferry-ipam check -o json` report",
            path.display()
        )
    })?;
    Ok(report
        .problems
        .into_iter()
        .filter(|p| p.kind == LEAKED)
        .filter_map(|p| Some((p.ip?, p.container_id?, p.ifname?)))
        .collect())
}

pub fn run(args: Args) -> Result<i32> {
    let store = args.data.store()?;
    let from_report = match &args.from_report {
        Some(p) => Some(report_ips(p)?),
        None => None,
    };
    let freed = store.update(|data| {
        let hit: Vec<IpAddr> = data
            .allocations
            .iter()
            .filter(|(ip, a)| match (&args.ip, &args.container, &from_report) {
                (Some(want), _, _) => *ip == want,
                (None, Some(cid), _) => {
                    a.container_id == *cid && args.ifname.as_ref().is_none_or(|i| *i == a.ifname)
                }
                // Only while the address still belongs to the attachment the report named.
                (None, None, Some(list)) => list
                    .iter()
                    .any(|(rip, cid, ifn)| rip == *ip && *cid == a.container_id && *ifn == a.ifname),
                (None, None, None) => false,
            })
            .map(|(ip, _)| *ip)
            .collect();
        if !args.force {
            let refused: Vec<String> = hit
                .iter()
                .filter_map(|ip| {
                    let a = &data.allocations[ip];
                    attachment::alive(a).map(|why| format!("{ip} (container {}, {}): {why}", a.container_id, a.ifname))
                })
                .collect();
            if !refused.is_empty() {
                return Err(ferry_node_ipam::IpamError::Config(format!(
                    "refusing to free addresses still in use (nothing was freed; pass --force to free them anyway): {}",
                    refused.join("; ")
                )));
            }
        }
        let freed: Vec<_> = hit
            .iter()
            .filter_map(|ip| data.allocations.remove(ip).map(|a| (*ip, a)))
            .collect();
        let changed = !freed.is_empty();
        Ok((freed, changed))
    });
    let freed = match freed {
        Ok(f) => f,
        Err(ferry_node_ipam::IpamError::Config(msg)) => bail!(msg),
        Err(e) => return Err(e.into()),
    };
    if freed.is_empty() && from_report.is_none() {
        let what = match (&args.ip, &args.container, &args.ifname) {
            (Some(ip), _, _) => format!("address {ip}"),
            (None, Some(c), Some(i)) => format!("container {c} interface {i}"),
            (None, Some(c), None) => format!("container {c}"),
            _ => String::new(),
        };
        bail!("no allocation for {what} in {}", store.path().display());
    }
    match args.output {
        Output::Table => {
            if freed.is_empty() {
                println!("nothing to free: the report's leaked addresses are no longer allocated");
            }
            for (ip, a) in freed {
                println!(
                    "released {ip} (container {} interface {})",
                    a.container_id, a.ifname
                );
            }
        }
        Output::Json => {
            let released: Vec<Freed> = freed
                .into_iter()
                .map(|(ip, a)| Freed {
                    ip,
                    container_id: a.container_id,
                    ifname: a.ifname,
                    network: a.network,
                })
                .collect();
            println!("{}", serde_json::json!({ "released": released }));
        }
    }
    Ok(0)
}
