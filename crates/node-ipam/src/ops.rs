//! The IPAM operations behind the CNI verbs, used in-process by `ferry` and by the
//! `ferry-ipam` plugin binary alike.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_cni::{CniResult, NetConf};

use crate::allocator;
use crate::config::{IpamConf, Pool, Pools};
use crate::durable::Durability;
use crate::error::IpamError;
use crate::lease::Lease;
use crate::node_state::DEFAULT_STATE_DIR;
use crate::store::{Allocation, PoolRecord, Store};

/// What the IPAM operations read from a network configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub ipam: IpamConf,
    /// The plugin-level `stateDir`, where the node state is.
    pub state_dir: PathBuf,
}

impl Config {
    /// The `ipam` section with a `stateDir` the caller has already read.
    pub fn with_state_dir(conf: &NetConf, state_dir: PathBuf) -> Result<Self, ferry_cni::Error> {
        let ipam: IpamConf = conf.parse_key("ipam")?;
        // A relative directory would be resolved against whatever directory the runtime
        // happened to start the plugin in: a different store on each call.
        for (key, dir) in [("ipam.dataDir", ipam.data_dir()), ("stateDir", &state_dir)] {
            if !dir.is_absolute() {
                return Err(IpamError::Config(format!(
                    "{key} {} must be an absolute path",
                    dir.display()
                ))
                .into());
            }
        }
        Ok(Config { ipam, state_dir })
    }

    pub fn from_netconf(conf: &NetConf) -> Result<Self, ferry_cni::Error> {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Top {
            state_dir: Option<PathBuf>,
        }
        let top: Top = conf.parse_as()?;
        let state_dir = top
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        Self::with_state_dir(conf, state_dir)
    }

    pub fn store(&self) -> Store {
        Store::new(self.ipam.data_dir())
    }

    pub fn pools(&self) -> Result<Pools, IpamError> {
        Pools::resolve(&self.ipam, &self.state_dir)
    }

    /// `pools` from node state the caller has read (see `Pools::resolve_in`).
    pub fn pools_in(&self, node: Option<&crate::node_state::View>) -> Result<Pools, IpamError> {
        Pools::resolve_in(&self.ipam, &self.state_dir, node)
    }
}

/// Who asks for an address.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: Option<&'a Path>,
    pub pod: Option<&'a ferry_cni::K8sPod>,
}

impl<'a> Attachment<'a> {
    /// The attachment a runtime's call is about.
    pub fn of(conf: &'a NetConf, env: &'a ferry_cni::Env) -> Self {
        Attachment {
            network: &conf.name,
            container_id: &env.container_id,
            ifname: &env.ifname,
            netns: env.netns.as_deref(),
            pod: env.k8s_pod.as_ref(),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn record(pool: &Pool) -> PoolRecord {
    PoolRecord {
        subnet: pool.subnet.to_string(),
        gateway: pool.gateway,
        range_start: pool.start,
        range_end: pool.end,
    }
}

/// Allocates one address per pool (IPv4 first) for `att`, all or none; an attachment
/// that already holds one is an error. Not synced to disk, as a release is not: an
/// allocation a power loss undoes belongs to a pod the power loss ended, and the sync
/// (a journal commit, 4-8 ms on a busy disk) would be taken under the store's lock,
/// where it serialises every ADD of a burst.
pub fn allocate(cfg: &Config, att: Attachment<'_>) -> Result<(Vec<IpAddr>, Pools), IpamError> {
    allocate_in(cfg, att, None)
}

/// `allocate` with the node state the caller has read (`None`: read it here if needed).
pub fn allocate_in(
    cfg: &Config,
    att: Attachment<'_>,
    node: Option<&crate::node_state::View>,
) -> Result<(Vec<IpAddr>, Pools), IpamError> {
    let pools = cfg.pools_in(node)?;
    let ips = cfg.store().update_with(Durability::Unsynced, |data| {
        if let Some(ip) = data.find(att.container_id, att.ifname).first() {
            return Err(IpamError::AlreadyAllocated {
                container_id: att.container_id.into(),
                ifname: att.ifname.into(),
                ip: *ip,
            });
        }
        let mut ips = Vec::new();
        for pool in pools.iter() {
            let v6 = pool.subnet.is_ipv6();
            let used = data.allocations.len();
            let ip = allocator::next_free(pool, data.last_reserved(v6), used, |ip| {
                data.allocations.contains_key(&ip)
            })
            .ok_or_else(|| IpamError::Exhausted {
                range: pool.range(),
                capacity: pool.capacity(),
            })?;
            data.allocations.insert(
                ip,
                Allocation {
                    container_id: att.container_id.into(),
                    ifname: att.ifname.into(),
                    network: att.network.into(),
                    netns: att.netns.map(|p| p.display().to_string()),
                    pod: att.pod.cloned(),
                    since: now(),
                },
            );
            data.set_last_reserved(ip);
            if v6 {
                data.pool_v6 = Some(record(pool));
            } else {
                data.pool = Some(record(pool));
            }
            ips.push(ip);
        }
        Ok((ips, true))
    })?;
    Ok((ips, pools))
}

/// The IPAM result for allocated addresses.
pub fn result(ips: &[IpAddr], pools: &Pools) -> CniResult {
    Lease::of(ips, pools).to_result()
}

/// Frees what (container ID, ifname) holds; freeing nothing is not an error. Not synced
/// to disk: a release a power loss undoes belongs to a pod the power loss ended anyway,
/// and GC frees it (see `durable::Durability`); DEL saves a journal commit.
pub fn release(cfg: &Config, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
    cfg.store().update_with(Durability::Unsynced, |data| {
        let ips = data.find(container_id, ifname);
        for ip in &ips {
            data.allocations.remove(ip);
        }
        let changed = !ips.is_empty();
        Ok((ips, changed))
    })
}

/// Succeeds when (container ID, ifname) holds an address, and every one of `expect`.
pub fn check(
    cfg: &Config,
    container_id: &str,
    ifname: &str,
    expect: &[IpAddr],
) -> Result<Vec<IpAddr>, IpamError> {
    let data = cfg.store().snapshot()?;
    let held = data.find(container_id, ifname);
    if held.is_empty() || expect.iter().any(|e| !held.contains(e)) {
        return Err(IpamError::NotFound {
            container_id: container_id.into(),
            ifname: ifname.into(),
        });
    }
    Ok(held)
}

/// Frees every allocation of `network` whose attachment is not in `valid`; returns them.
pub fn gc(
    cfg: &Config,
    network: &str,
    valid: &HashSet<(String, String)>,
) -> Result<Vec<(IpAddr, Allocation)>, IpamError> {
    cfg.store().update(|data| {
        let stale: Vec<IpAddr> = data
            .allocations
            .iter()
            .filter(|(_, a)| {
                a.network == network && !valid.contains(&(a.container_id.clone(), a.ifname.clone()))
            })
            .map(|(ip, _)| *ip)
            .collect();
        let freed: Vec<_> = stale
            .iter()
            .filter_map(|ip| data.allocations.remove(ip).map(|a| (*ip, a)))
            .collect();
        let changed = !freed.is_empty();
        Ok((freed, changed))
    })
}

/// Succeeds when an ADD could get an address now (in every family).
pub fn status(cfg: &Config) -> Result<(), IpamError> {
    let pools = cfg.pools()?;
    let data = cfg.store().snapshot()?;
    for pool in pools.iter() {
        let used = data
            .allocations
            .keys()
            .filter(|ip| pool.contains(**ip) && **ip != pool.gateway)
            .count() as u128;
        if used >= pool.capacity() {
            return Err(IpamError::Exhausted {
                range: pool.range(),
                capacity: pool.capacity(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, subnet: &str) -> Config {
        Config {
            ipam: IpamConf {
                data_dir: Some(dir.to_path_buf()),
                subnet: Some(subnet.into()),
                ..Default::default()
            },
            state_dir: dir.join("state"),
        }
    }

    fn att<'a>(cid: &'a str) -> Attachment<'a> {
        Attachment {
            network: "net",
            container_id: cid,
            ifname: "eth0",
            netns: None,
            pod: None,
        }
    }

    #[test]
    fn allocate_release_and_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), "10.9.0.0/29");
        let (a, _) = allocate(&c, att("c1")).unwrap();
        assert_eq!(a, [ip("10.9.0.2")]);
        let e = allocate(&c, att("c1")).unwrap_err();
        assert_eq!(e.code(), ferry_cni::Code::AlreadyAllocated);
        assert_eq!(release(&c, "c1", "eth0").unwrap(), a);
        assert!(release(&c, "c1", "eth0").unwrap().is_empty());
        // Round-robin: the freed .2 is not handed out next.
        assert_eq!(allocate(&c, att("c2")).unwrap().0, [ip("10.9.0.3")]);
    }

    #[test]
    fn exhaustion_and_status() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), "10.9.0.0/29");
        for i in 0..5 {
            allocate(&c, att(&format!("c{i}"))).unwrap();
        }
        assert_eq!(
            status(&c).unwrap_err().code(),
            ferry_cni::Code::PoolExhausted
        );
        let e = allocate(&c, att("c9")).unwrap_err();
        assert_eq!(e.code(), ferry_cni::Code::PoolExhausted);
    }

    #[test]
    fn gc_keeps_valid_and_other_networks() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), "10.9.0.0/24");
        allocate(&c, att("keep")).unwrap();
        allocate(&c, att("drop")).unwrap();
        allocate(
            &c,
            Attachment {
                network: "other",
                ..att("elsewhere")
            },
        )
        .unwrap();
        let valid: HashSet<_> = [("keep".to_string(), "eth0".to_string())].into();
        let freed = gc(&c, "net", &valid).unwrap();
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].1.container_id, "drop");
        let data = c.store().snapshot().unwrap();
        assert_eq!(data.allocations.len(), 2);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn dual(dir: &Path, v6: &str) -> Config {
        let ipam: IpamConf = serde_json::from_value(serde_json::json!({
            "dataDir": dir,
            "ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": v6}]],
        }))
        .unwrap();
        Config {
            ipam,
            state_dir: dir.join("state"),
        }
    }

    #[test]
    fn one_address_per_family_all_or_none() {
        let d = tempfile::tempdir().unwrap();
        let c = dual(d.path(), "fd00:9::/126");
        let (a, pools) = allocate(&c, att("c1")).unwrap();
        assert_eq!(a, [ip("10.9.0.2"), ip("fd00:9::2")]);
        let r = result(&a, &pools);
        assert_eq!(r.ips[1].address, "fd00:9::2/126");
        assert_eq!(r.ips[1].gateway, Some(ip("fd00:9::1")));
        assert_eq!(check(&c, "c1", "eth0", &a).unwrap(), a);
        assert!(check(&c, "c1", "eth0", &[ip("fd00:9::3")]).is_err());
        allocate(&c, att("c2")).unwrap();
        // The IPv6 range is full: the IPv4 address is not taken either.
        let before = c.store().snapshot().unwrap();
        let e = allocate(&c, att("c3")).unwrap_err();
        assert_eq!(e.code(), ferry_cni::Code::PoolExhausted);
        assert_eq!(c.store().snapshot().unwrap(), before);
        assert!(status(&c).is_err());
        assert_eq!(release(&c, "c1", "eth0").unwrap(), a);
        let freed = gc(&c, "net", &HashSet::new()).unwrap();
        assert_eq!(freed.len(), 2);
        assert!(c.store().snapshot().unwrap().allocations.is_empty());
    }
}
