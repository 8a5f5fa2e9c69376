//! Cutting connections a policy change no longer allows. Established flows pass the
//! table's first rule (`ct state established`), so a narrower policy would otherwise spare
//! every connection already open; after each change the node's conntrack entries that
//! involve one of its pods are judged again with the reference evaluator, and the denied
//! ones deleted (their next packet is new to conntrack and meets the rules).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use netpol::eval::{verdict_at, Endpoint};
use netpol::{Cluster, LocalPods, Pod, PodKey, Protocol};

/// One conntrack entry: the original direction's tuple and the real server (the reply
/// direction's source: after a Service's DNAT, the pod behind it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub family: &'static str,
    pub protocol: Protocol,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub server: IpAddr,
    pub server_port: u16,
}

/// Deletes the node's flows the cluster's policies deny now; how many.
pub fn cut(cluster: &Cluster, local: &LocalPods, local_ips: &BTreeMap<IpAddr, PodKey>) -> u64 {
    if local_ips.is_empty() {
        return 0;
    }
    let mut flows = Vec::new();
    for family in ["ipv4", "ipv6"] {
        match Command::new("conntrack")
            .args(["-L", "-f", family, "-o", "extended"])
            .output()
        {
            Ok(out) if out.status.success() => {
                flows.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter_map(parse),
                );
            }
            Ok(out) => tracing::warn!(
                "NetworkPolicy: conntrack -L: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => {
                tracing::warn!("NetworkPolicy: cannot run conntrack (is it installed?): {e}");
                return 0;
            }
        }
    }
    let pods = pods_by_ip(cluster, local);
    let mut cut = 0;
    for f in flows {
        if !local_ips.contains_key(&f.src) && !local_ips.contains_key(&f.server) {
            continue;
        }
        let src = Endpoint {
            pod: pods.get(&f.src).copied(),
            ip: Some(f.src),
        };
        let dst = Endpoint {
            pod: pods.get(&f.server).copied(),
            ip: Some(f.server),
        };
        if verdict_at(cluster, src, dst, f.protocol, f.server_port).allowed {
            continue;
        }
        let deleted = Command::new("conntrack")
            .args([
                "-D",
                "-f",
                f.family,
                "-p",
                f.protocol.nft(),
                "-s",
                &f.src.to_string(),
                "-d",
                &f.dst.to_string(),
                "--sport",
                &f.sport.to_string(),
                "--dport",
                &f.dport.to_string(),
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if deleted {
            tracing::info!(
                src = %f.src, dst = %f.server, port = f.server_port, protocol = f.protocol.nft(),
                "NetworkPolicy: cut a connection the policies no longer allow"
            );
            cut += 1;
        }
    }
    cut
}

/// Pods by address; this node's announced addresses win over the API's.
fn pods_by_ip<'a>(cluster: &'a Cluster, local: &LocalPods) -> BTreeMap<IpAddr, &'a Pod> {
    let mut m: BTreeMap<IpAddr, &Pod> = BTreeMap::new();
    for p in &cluster.pods {
        for ip in &p.ips {
            m.insert(*ip, p);
        }
    }
    for (k, ips) in &local.pods {
        if let Some(p) = cluster.pod(&k.namespace, &k.name) {
            for ip in ips {
                m.insert(*ip, p);
            }
        }
    }
    m
}

/// One line of `conntrack -L -o extended`; None for a protocol policy does not cover.
pub fn parse(line: &str) -> Option<Flow> {
    let mut words = line.split_whitespace();
    let family = match words.next()? {
        "ipv4" => "ipv4",
        "ipv6" => "ipv6",
        _ => return None,
    };
    let protocol = match words.nth(1)? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    let mut srcs = Vec::new();
    let mut dsts = Vec::new();
    let mut sports = Vec::new();
    let mut dports = Vec::new();
    for w in line.split_whitespace() {
        if let Some(v) = w.strip_prefix("src=") {
            srcs.push(v.parse::<IpAddr>().ok()?);
        } else if let Some(v) = w.strip_prefix("dst=") {
            dsts.push(v.parse::<IpAddr>().ok()?);
        } else if let Some(v) = w.strip_prefix("sport=") {
            sports.push(v.parse::<u16>().ok()?);
        } else if let Some(v) = w.strip_prefix("dport=") {
            dports.push(v.parse::<u16>().ok()?);
        }
    }
    Some(Flow {
        family,
        protocol,
        src: *srcs.first()?,
        dst: *dsts.first()?,
        sport: *sports.first()?,
        dport: *dports.first()?,
        server: *srcs.get(1)?,
        server_port: *sports.get(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dnat_flow_and_skips_the_rest() {
        let l = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.0.2 dst=10.96.0.10 sport=41234 dport=80 src=10.1.1.3 dst=10.1.0.2 sport=8080 dport=41234 [ASSURED] mark=0 use=1";
        let f = parse(l).unwrap();
        assert_eq!(f.protocol, Protocol::Tcp);
        assert_eq!(f.dst, "10.96.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(f.server, "10.1.1.3".parse::<IpAddr>().unwrap());
        assert_eq!(f.server_port, 8080);
        let u = "ipv6     10 udp      17 29 src=fd00::2 dst=fd00::3 sport=5000 dport=81 src=fd00::3 dst=fd00::2 sport=81 dport=5000 mark=0 use=1";
        assert_eq!(parse(u).unwrap().family, "ipv6");
        assert!(parse("ipv4 2 icmp 1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=1 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=1 mark=0 use=1").is_none());
        assert!(parse("garbage").is_none());
        assert!(parse("ipv4 2 tcp 6 1 src=nonsense").is_none());
    }
}
