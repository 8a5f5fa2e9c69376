//! An IPAM result as typed values: what ADD carries from the allocation to the kernel, so
//! an address is formatted once (into the CNI result at the end) and never parsed back.

use std::net::IpAddr;

use ferry_cni::{CniResult, Code, Dns, Error, IpConfig, Route};
use ipnetwork::IpNetwork;

use crate::config::Pools;

/// One address of a lease: the address with its subnet's prefix length, and the gateway
/// the IPAM named (a delegated plugin may name none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasedIp {
    pub net: IpNetwork,
    pub gateway: Option<IpAddr>,
}

/// A route of a lease; no gateway means the pod's own gateway of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasedRoute {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub ips: Vec<LeasedIp>,
    pub routes: Vec<LeasedRoute>,
    pub dns: Dns,
}

impl Lease {
    /// The lease of addresses `ips` taken from `pools` (an address of no pool is left out).
    pub fn of(ips: &[IpAddr], pools: &Pools) -> Lease {
        Lease {
            ips: ips
                .iter()
                .filter_map(|ip| {
                    let pool = pools.of(*ip)?;
                    let net = IpNetwork::new(*ip, pool.prefix()).ok()?;
                    Some(LeasedIp {
                        net,
                        gateway: Some(pool.gateway),
                    })
                })
                .collect(),
            routes: pools
                .routes
                .iter()
                .filter_map(|r| {
                    // Pools::resolve has checked every route's CIDR.
                    Some(LeasedRoute {
                        dst: r.dst.parse().ok()?,
                        gw: r.gw,
                    })
                })
                .collect(),
            dns: Dns::default(),
        }
    }

    /// Reads a delegated IPAM plugin's result; what cannot be used is an error naming it.
    pub fn from_result(r: &CniResult) -> Result<Lease, Error> {
        let ips = r
            .ips
            .iter()
            .map(|ip| {
                let net = ip.address.parse::<IpNetwork>().map_err(|e| {
                    Error::new(Code::InvalidConfig, format!("IPAM returned {}", ip.address))
                        .with_details(e.to_string())
                })?;
                Ok(LeasedIp {
                    net,
                    gateway: ip.gateway,
                })
            })
            .collect::<Result<_, Error>>()?;
        let routes = r
            .routes
            .iter()
            .map(|route| {
                let dst = route.dst.parse::<IpNetwork>().map_err(|e| {
                    Error::new(
                        Code::InvalidConfig,
                        format!("route dst {:?} is not a CIDR", route.dst),
                    )
                    .with_details(e.to_string())
                })?;
                Ok(LeasedRoute { dst, gw: route.gw })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Lease {
            ips,
            routes,
            dns: r.dns.clone(),
        })
    }

    /// The CNI result of this lease alone (no interfaces): what an IPAM plugin prints.
    pub fn to_result(&self) -> CniResult {
        CniResult {
            interfaces: Vec::new(),
            ips: self
                .ips
                .iter()
                .map(|ip| IpConfig {
                    address: ip.net.to_string(),
                    gateway: ip.gateway,
                    interface: None,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| Route {
                    dst: r.dst.to_string(),
                    gw: r.gw,
                })
                .collect(),
            dns: self.dns.clone(),
        }
    }

    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ips.iter().map(|ip| ip.net.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_reads_into_a_lease_and_back_unchanged() {
        let json = r#"{"ips":[{"address":"10.1.2.5/24","gateway":"10.1.2.1"},{"address":"fd00:1::5/64"}],"routes":[{"dst":"0.0.0.0/0"},{"dst":"10.9.0.0/16","gw":"10.1.2.254"}],"dns":{"nameservers":["10.96.0.10"]}}"#;
        let r = CniResult::from_value(serde_json::from_str(json).unwrap()).unwrap();
        let lease = Lease::from_result(&r).unwrap();
        assert_eq!(
            lease.ips[1].net,
            "fd00:1::5/64".parse::<IpNetwork>().unwrap()
        );
        assert_eq!(lease.to_result(), r);
    }

    #[test]
    fn what_cannot_be_used_is_named() {
        let mut r = CniResult::default();
        r.routes.push(Route {
            dst: "default".into(),
            gw: None,
        });
        let e = Lease::from_result(&r).unwrap_err();
        assert_eq!(e.msg, r#"route dst "default" is not a CIDR"#);
        assert_eq!(e.code, Code::InvalidConfig as u32);
    }
}
