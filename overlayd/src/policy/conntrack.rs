//! Cutting connections a policy change no longer allows. Established flows pass the
//! table's first rule (`ct state established`), so a narrower policy would otherwise spare
//! every connection already open; after each change the node's conntrack entries that
//! involve one of its pods are judged again with the reference evaluator, and the denied
//! ones deleted (their next packet is new to conntrack and meets the rules).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use ferry_netpol::eval::{verdict_at, Endpoint};
use ferry_netpol::{Cluster, LocalPods, Pod, PodKey, Protocol};

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
    let denied = denied_groups(&flows, |f| {
        if !local_ips.contains_key(&f.src) && !local_ips.contains_key(&f.server) {
            return false;
        }
        let src = Endpoint {
            pod: pods.get(&f.src).copied(),
            ip: Some(f.src),
        };
        let dst = Endpoint {
            pod: pods.get(&f.server).copied(),
            ip: Some(f.server),
        };
        !verdict_at(cluster, src, dst, f.protocol, f.server_port).allowed
    });
    let mut cut = 0;
    for (f, count) in denied {
        // Every source port of the group at once: one process per group, not per flow
        // (a conntrack run costs ~20 ms, and a busy pod has thousands of flows, each of
        // which would hold this round and every plugin waiting on it).
        let out = Command::new("conntrack")
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
                "--dport",
                &f.dport.to_string(),
                "--reply-src",
                &f.server.to_string(),
                "--reply-port-src",
                &f.server_port.to_string(),
            ])
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let deleted = deleted_count(&String::from_utf8_lossy(&out.stderr)).unwrap_or(count);
            tracing::info!(
                src = %f.src, dst = %f.server, port = f.server_port, protocol = f.protocol.nft(),
                connections = deleted,
                "NetworkPolicy: cut connections the policies no longer allow"
            );
            cut += deleted;
        }
    }
    cut
}

/// The flows `denied` judges so, grouped by everything but the client's port: what
/// decides the verdict (client, server, protocol, server port) and what `conntrack -D`
/// filters on (the original destination and port, the reply's source and port). One
/// flow stands for its group, with the group's size.
pub fn denied_groups(flows: &[Flow], mut denied: impl FnMut(&Flow) -> bool) -> Vec<(Flow, u64)> {
    type Key = (&'static str, &'static str, IpAddr, IpAddr, u16, IpAddr, u16);
    // None: the group is allowed (judged once all the same).
    let mut groups: BTreeMap<Key, Option<(Flow, u64)>> = BTreeMap::new();
    for f in flows {
        let key = (
            f.family,
            f.protocol.nft(),
            f.src,
            f.dst,
            f.dport,
            f.server,
            f.server_port,
        );
        match groups.get_mut(&key) {
            Some(Some((_, n))) => *n += 1,
            Some(None) => {}
            None => {
                let judged = denied(f).then(|| (f.clone(), 1));
                groups.insert(key, judged);
            }
        }
    }
    groups.into_values().flatten().collect()
}

/// `N` of conntrack's "N flow entries have been deleted."
fn deleted_count(stderr: &str) -> Option<u64> {
    let (before, _) = stderr.split_once(" flow entries have been deleted")?;
    before.split_whitespace().last()?.parse().ok()
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

/// One line of `conntrack -L -o extended`; None for a protocol policy does not cover, and
/// for a TCP connection already closed (`TIME_WAIT`, `CLOSE`): it carries no more traffic,
/// and a SYN reusing its ports makes conntrack start a new entry that meets the rules. Such
/// entries are most of a busy node's table; cutting them would only hold the engine up.
pub fn parse(line: &str) -> Option<Flow> {
    if line
        .split_whitespace()
        .take(6)
        .any(|w| w == "TIME_WAIT" || w == "CLOSE")
    {
        return None;
    }
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
        let closed = "ipv4     2 tcp      6 117 TIME_WAIT src=10.1.0.2 dst=10.1.1.3 sport=41234 dport=80 src=10.1.1.3 dst=10.1.0.2 sport=80 dport=41234 [ASSURED] mark=0 use=1";
        assert!(
            parse(closed).is_none(),
            "a closed connection has nothing to cut"
        );
        assert!(parse(&closed.replace("TIME_WAIT", "CLOSE")).is_none());
        assert!(parse(&closed.replace("TIME_WAIT", "FIN_WAIT")).is_some());
        assert!(parse("ipv4 2 tcp 6 1 src=nonsense").is_none());
    }

    #[test]
    fn denied_flows_are_cut_once_per_group_of_client_ports() {
        let flow = |sport: u16, dst: &str, server: &str| Flow {
            family: "ipv4",
            protocol: Protocol::Tcp,
            src: "10.1.0.2".parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport: 80,
            server: server.parse().unwrap(),
            server_port: 80,
        };
        let flows = [
            flow(40000, "10.96.0.10", "10.1.1.3"),
            flow(40001, "10.96.0.10", "10.1.1.3"),
            // The same Service, another endpoint: a verdict of its own.
            flow(40002, "10.96.0.10", "10.1.1.4"),
            flow(40003, "10.1.1.3", "10.1.1.3"),
            flow(40004, "10.1.1.3", "10.1.1.3"),
            flow(40005, "10.96.0.10", "10.1.1.4"),
        ];
        let mut judged = 0;
        let groups = denied_groups(&flows, |f| {
            judged += 1;
            f.server != "10.1.1.4".parse::<IpAddr>().unwrap()
        });
        assert_eq!(judged, 3, "one verdict per group");
        let sizes: Vec<(IpAddr, IpAddr, u64)> =
            groups.iter().map(|(f, n)| (f.dst, f.server, *n)).collect();
        assert_eq!(
            sizes,
            [
                ("10.1.1.3".parse().unwrap(), "10.1.1.3".parse().unwrap(), 2),
                (
                    "10.96.0.10".parse().unwrap(),
                    "10.1.1.3".parse().unwrap(),
                    2
                ),
            ]
        );
        assert_eq!(
            deleted_count(
                "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n"
            ),
            Some(3)
        );
        assert_eq!(deleted_count("garbage"), None);
    }
}
