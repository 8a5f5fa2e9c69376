//! GC: free the addresses and remove the host veths of this network's attachments that the
//! runtime no longer knows. Keeps going past failures and reports them all.

use std::collections::HashSet;

use ferry_cni::{Env, Error, NetConf};
use ferry_netlink::Netlink;

use crate::addressing::Addressing;
use crate::config::PluginConf;
use crate::del::combine;
use crate::kernel::{self, err};
use crate::reap;
use ferry_node_ipam::attachment;

pub fn run(conf: &NetConf, env: &Env) -> Result<(), Error> {
    conf.require_version("1.1.0", "GC")?;
    let pc = PluginConf::parse(conf)?;
    let valid = conf.valid_attachments()?;
    let keep: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();

    let mut errors = Vec::new();
    if let Err(e) = Addressing::new(&pc.ipam, conf, env).gc(&valid) {
        errors.push(e);
    }
    let swept = kernel::runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::open().map_err(err)?;
            let mut errs = Vec::new();
            for link in host.list_links().await.map_err(err)? {
                let Some((net, cid, ifname)) =
                    link.alias.as_deref().and_then(attachment::parse_alias)
                else {
                    continue;
                };
                // A tombstone is always garbage: its reaper died before deleting it.
                let tombstone = reap::is_tombstone(&link);
                if net == conf.name && (tombstone || !keep.contains(&(cid, ifname))) {
                    if let Err(e) = host
                        .detach_index(link.index, &link.name, None, reap::TOMBSTONE_GROUP)
                        .await
                    {
                        errs.push(err(e));
                    }
                }
            }
            // One batch for all of them, done before GC returns.
            if let Err(e) = reap::reap_now(&host).await {
                errs.push(err(e));
            }
            combine(errs)
        })
    });
    if let Err(e) = swept {
        errors.push(e);
    }
    combine(errors)
}
