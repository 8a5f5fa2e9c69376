//! The underlay: which interface and address carry the VXLAN traffic.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use netlink::{Link, Netlink};

#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: Link,
    pub ip: Ipv4Addr,
}

/// `--iface`, else the interface holding `--public-ip`, else the default route's.
pub async fn find(
    nl: &Netlink,
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
) -> Result<Underlay> {
    let link = match (iface, public_ip) {
        (Some(name), _) => nl
            .get_link(name)
            .await?
            .with_context(|| format!("underlay interface {name} does not exist"))?,
        (None, Some(ip)) => {
            let mut found = None;
            for l in nl.list_links().await? {
                if nl.addrs_v4(l.index).await?.iter().any(|(a, _)| *a == ip) {
                    found = Some(l);
                    break;
                }
            }
            found.with_context(|| format!("no interface holds --public-ip {ip}"))?
        }
        (None, None) => {
            let routes = nl.routes_v4().await?;
            let oif = routes
                .iter()
                .find(|r| r.prefix == 0)
                .and_then(|r| r.oif)
                .context("no default route to find the underlay by: pass --iface or --public-ip")?;
            nl.list_links()
                .await?
                .into_iter()
                .find(|l| l.index == oif)
                .context("the default route's interface vanished")?
        }
    };
    let ip = match public_ip {
        Some(ip) => ip,
        None => match nl.addrs_v4(link.index).await?.first() {
            Some((ip, _)) => *ip,
            None => bail!("underlay interface {} has no IPv4 address", link.name),
        },
    };
    if link.mtu < 68 + 50 {
        bail!(
            "underlay interface {} has MTU {}, too small for VXLAN",
            link.name,
            link.mtu
        );
    }
    Ok(Underlay { link, ip })
}
