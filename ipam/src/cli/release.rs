use std::net::Ipv4Addr;

use serde::Serialize;

use super::{DataDir, Output};

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["ip", "container"]))]
pub struct Args {
    /// The address to free.
    ip: Option<Ipv4Addr>,
    /// Free the addresses of this container ID.
    #[arg(long, value_name = "ID")]
    container: Option<String>,
    /// With --container: only this interface's address.
    #[arg(long, value_name = "IF", requires = "container")]
    ifname: Option<String>,
    #[command(flatten)]
    data: DataDir,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Freed {
    ip: Ipv4Addr,
    container_id: String,
    ifname: String,
    network: String,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let store = args.data.store()?;
    let freed = store.update(|data| {
        let hit: Vec<Ipv4Addr> = data
            .allocations
            .iter()
            .filter(|(ip, a)| match (&args.ip, &args.container) {
                (Some(want), _) => *ip == want,
                (None, Some(cid)) => {
                    a.container_id == *cid && args.ifname.as_ref().is_none_or(|i| *i == a.ifname)
                }
                (None, None) => false,
            })
            .map(|(ip, _)| *ip)
            .collect();
        let freed: Vec<_> = hit
            .iter()
            .filter_map(|ip| data.allocations.remove(ip).map(|a| (*ip, a)))
            .collect();
        let changed = !freed.is_empty();
        Ok((freed, changed))
    })?;
    if freed.is_empty() {
        let what = match (&args.ip, &args.container, &args.ifname) {
            (Some(ip), _, _) => format!("address {ip}"),
            (None, Some(c), Some(i)) => format!("container {c} interface {i}"),
            (None, Some(c), None) => format!("container {c}"),
            _ => String::new(),
        };
        anyhow::bail!("no allocation for {what} in {}", store.path().display());
    }
    match args.output {
        Output::Table => {
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
