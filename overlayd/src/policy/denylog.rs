//! One log line per denied connection: the table's final drops send the first packet of a
//! denied connection to NFLOG group `ferry_netpol::DENY_LOG_GROUP` (at most
//! `ferry_netpol::DENY_LOG_RATE` a second per direction, limited in the kernel); this reads the
//! group and names the pods, the port and what denied: the ClusterNetworkPolicy rule (its
//! tier, name and index) when a tier decided, else the NetworkPolicies that isolate the pod.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use ferry_netpol::eval::{verdict_at, Endpoint, Side, TierRule};
use ferry_netpol::{Action, Cluster, LocalPods, Pod, Protocol};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, PacketNla, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{constants::NETLINK_NETFILTER, Socket};

/// The engine's last view of the cluster, shared with the log reader and explanations.
pub type View = Arc<Mutex<Option<(Cluster, LocalPods)>>>;

/// Headers are all a log line needs.
const COPY_BYTES: u32 = 128;

/// Reads the group on a thread of its own (a blocking socket) for the daemon's life.
pub fn spawn(view: View) {
    std::thread::spawn(move || {
        if let Err(e) = listen(&view) {
            tracing::warn!("NetworkPolicy: denied connections will not be logged: {e:#}");
        }
    });
}

fn listen(view: &View) -> Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("open a netfilter netlink socket")?;
    socket
        .bind_auto()
        .context("bind the netfilter netlink socket")?;
    let bind = config_request(
        NetfilterProtoFamily::Unspec,
        ferry_netpol::DENY_LOG_GROUP,
        vec![
            ConfigCmd::Bind.into(),
            ConfigMode::new_packet(COPY_BYTES).into(),
        ],
    );
    let mut buf = vec![0; bind.header.length as usize];
    bind.serialize(&mut buf[..]);
    socket.send(&buf, 0).context("bind NFLOG group")?;
    let mut rx = vec![0u8; 65536];
    let n = socket
        .recv(&mut &mut rx[..], 0)
        .context("NFLOG bind answer")?;
    if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&rx[..n]) {
        if let NetlinkPayload::Error(e) = m.payload {
            if e.code.is_some() {
                bail!(
                    "NFLOG group {} is taken or refused: {e:?}",
                    ferry_netpol::DENY_LOG_GROUP
                );
            }
        }
    }
    loop {
        let n = socket.recv(&mut &mut rx[..], 0).context("read NFLOG")?;
        let mut off = 0;
        while off < n {
            let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&rx[off..n]) else {
                break;
            };
            let len = m.header.length as usize;
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = &m.payload
            {
                log_one(view, nlas);
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn log_one(view: &View, nlas: &[PacketNla]) {
    let mut prefix = String::new();
    let mut payload: &[u8] = &[];
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => prefix = p.to_string_lossy().into_owned(),
            PacketNla::Payload(p) => payload = p,
            _ => {}
        }
    }
    let Some(h) = Headers::parse(payload) else {
        return;
    };
    let ingress = prefix.contains("ingress");
    let direction = if ingress { "ingress" } else { "egress" };
    let Ok(guard) = view.lock() else {
        return;
    };
    let (from, to, decider) = match guard.as_ref() {
        Some((cluster, local)) => {
            let src = pod_of(cluster, local, h.src);
            let dst = pod_of(cluster, local, h.dst);
            let decider = h
                .protocol
                .map(|p| {
                    let v = verdict_at(
                        cluster,
                        Endpoint {
                            pod: src,
                            ip: Some(h.src),
                        },
                        Endpoint {
                            pod: dst,
                            ip: Some(h.dst),
                        },
                        p,
                        h.port,
                    );
                    Decider::of(if ingress { &v.ingress } else { &v.egress })
                })
                .unwrap_or_else(|| Decider::Policies(String::new()));
            (name(src), name(dst), decider)
        }
        None => (
            String::new(),
            String::new(),
            Decider::Policies(String::new()),
        ),
    };
    let protocol = h.protocol.map_or("other", Protocol::nft);
    match decider {
        Decider::Tier(r) => tracing::info!(
            target: "ferry::policy::denied",
            direction,
            from = %from,
            to = %to,
            src = %h.src,
            dst = %h.dst,
            protocol,
            port = h.port,
            policy = %format_args!("ClusterNetworkPolicy {}", r.policy),
            rule = ?r.name,
            index = %format_args!("{}[{}]", r.direction, r.index),
            tier = %r.tier,
            "connection denied by ClusterNetworkPolicy"
        ),
        Decider::Policies(policies) => tracing::info!(
            target: "ferry::policy::denied",
            direction,
            from = %from,
            to = %to,
            src = %h.src,
            dst = %h.dst,
            protocol,
            port = h.port,
            policies = %policies,
            "connection denied by NetworkPolicy"
        ),
    }
}

/// What a log line names as the cause of a denial.
#[derive(Debug, PartialEq, Eq)]
enum Decider {
    /// A ClusterNetworkPolicy rule that denies (Admin or Baseline tier).
    Tier(TierRule),
    /// The NetworkPolicies isolating the pod (`ns/name`, comma-separated), none of whose
    /// rules allow the connection.
    Policies(String),
}

impl Decider {
    fn of(side: &Side) -> Decider {
        // Only a Deny rule explains a denial: with a view older than the kernel's table
        // the evaluator may find an Accept where the table dropped; the NetworkPolicies
        // are then the better guess, as before tiers existed.
        match side.decided_by_tier() {
            Some(r) if r.action == Action::Deny => Decider::Tier(r.clone()),
            _ => Decider::Policies(side.selected_by.join(",")),
        }
    }
}

fn name(p: Option<&Pod>) -> String {
    p.map(|p| format!("{}/{}", p.namespace, p.name))
        .unwrap_or_else(|| "-".into())
}

fn pod_of<'a>(cluster: &'a Cluster, local: &LocalPods, ip: IpAddr) -> Option<&'a Pod> {
    local
        .pods
        .iter()
        .find(|(_, ips)| ips.contains(&ip))
        .and_then(|(k, _)| cluster.pod(&k.namespace, &k.name))
        .or_else(|| cluster.pods.iter().find(|p| p.ips.contains(&ip)))
}

/// What a log line needs from a packet's headers.
#[derive(Debug, PartialEq, Eq)]
struct Headers {
    src: IpAddr,
    dst: IpAddr,
    protocol: Option<Protocol>,
    port: u16,
}

impl Headers {
    fn parse(p: &[u8]) -> Option<Headers> {
        let (src, dst, proto, l4) = match p.first()? >> 4 {
            4 => {
                let ihl = usize::from(p.first()? & 0x0f) * 4;
                let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
                (
                    IpAddr::V4(Ipv4Addr::from(src)),
                    IpAddr::V4(Ipv4Addr::from(dst)),
                    *p.get(9)?,
                    p.get(ihl..),
                )
            }
            6 => {
                let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
                (
                    IpAddr::V6(Ipv6Addr::from(src)),
                    IpAddr::V6(Ipv6Addr::from(dst)),
                    *p.get(6)?,
                    p.get(40..),
                )
            }
            _ => return None,
        };
        let protocol = match proto {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        };
        // TCP, UDP and SCTP all begin with the source and destination ports.
        let port = match (protocol, l4.and_then(|l| l.get(2..4))) {
            (Some(_), Some(b)) => u16::from_be_bytes([b[0], b[1]]),
            _ => 0,
        };
        Some(Headers {
            src,
            dst,
            protocol,
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tenants a and b (namespaces labelled `tenant`), one pod each, an Admin Deny between
    /// them, and `policies` in namespace b.
    fn tenants(policies: &[serde_json::Value], admin: bool) -> Cluster {
        use k8s_openapi::api::core::v1::{Namespace, Pod as K8sPod};
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let ns = |n: &str| -> Namespace {
            serde_json::from_value(serde_json::json!({"metadata": {"name": n,
                "labels": {"tenant": n}}}))
            .unwrap()
        };
        let pod = |n: &str, ip: &str| -> K8sPod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": n, "name": "p", "labels": {"app": "p"}},
                "status": {"podIPs": [{"ip": ip}]}}))
            .unwrap()
        };
        let nps: Vec<NetworkPolicy> = policies
            .iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .collect();
        let (mut c, errors) = Cluster::from_k8s(
            &[ns("a"), ns("b")],
            &[pod("a", "10.1.0.2"), pod("b", "10.1.1.2")],
            &nps,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let tier = if admin { "Admin" } else { "Baseline" };
        let cnp = ferry_netpol::ClusterNetworkPolicy::new(
            "tenants",
            serde_json::json!({"tier": tier, "priority": 10,
                "subject": {"namespaces": {"matchLabels": {"tenant": "b"}}},
                "ingress": [
                    {"name": "from-own", "action": "Accept",
                     "from": [{"namespaces": {"matchLabels": {"tenant": "b"}}}]},
                    {"name": "deny-other-tenants", "action": "Deny",
                     "from": [{"namespaces": {"matchExpressions": [
                        {"key": "tenant", "operator": "Exists"}]}}]}]}),
        );
        let errors = c.add_cluster_policies([&cnp]);
        assert!(errors.is_empty(), "{errors:?}");
        c
    }

    fn ingress_of_b(c: &Cluster) -> Side {
        let from = c.pod("a", "p").unwrap();
        let to = c.pod("b", "p").unwrap();
        ferry_netpol::verdict(c, ferry_netpol::Peer::Pod(from), to, Protocol::Tcp, 80).ingress
    }

    #[test]
    fn a_denial_names_the_tier_rule_that_decided_it() {
        let c = tenants(&[], true);
        let side = ingress_of_b(&c);
        assert!(!side.allowed);
        let Decider::Tier(r) = Decider::of(&side) else {
            panic!("no tier rule in {side:?}");
        };
        assert_eq!(
            (r.policy.as_str(), r.name.as_str(), r.index, r.tier),
            (
                "tenants",
                "deny-other-tenants",
                1,
                ferry_netpol::Tier::Admin
            )
        );
        // A namespace policy that allows everything does not change who denied.
        let allow_all = serde_json::json!({"metadata": {"namespace": "b", "name": "all"},
            "spec": {"podSelector": {}, "ingress": [{}]}});
        let side = ingress_of_b(&tenants(std::slice::from_ref(&allow_all), true));
        assert!(matches!(Decider::of(&side), Decider::Tier(_)), "{side:?}");
        // In the Baseline tier, that policy decides: nothing to log as a tier denial.
        let side = ingress_of_b(&tenants(&[allow_all], false));
        assert!(side.allowed);
        assert_eq!(Decider::of(&side), Decider::Policies("b/all".into()));
        // Baseline with no NetworkPolicy: the tier decides.
        let side = ingress_of_b(&tenants(&[], false));
        assert!(
            matches!(Decider::of(&side), Decider::Tier(r) if r.tier == ferry_netpol::Tier::Baseline)
        );
    }

    #[test]
    fn a_networkpolicy_denial_names_the_isolating_policies() {
        let deny = serde_json::json!({"metadata": {"namespace": "a", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
        let mut c2 = tenants(&[], true);
        c2.cluster_policies.clear();
        let (np, _) = ferry_netpol::Policy::from_k8s(&serde_json::from_value(deny).unwrap());
        c2.policies.push(np.unwrap());
        let from = c2.pod("b", "p").unwrap();
        let to = c2.pod("a", "p").unwrap();
        let side = ferry_netpol::verdict(&c2, ferry_netpol::Peer::Pod(from), to, Protocol::Tcp, 80)
            .ingress;
        assert_eq!(Decider::of(&side), Decider::Policies("a/deny".into()));
    }

    #[test]
    fn headers_of_both_families_and_garbage() {
        let mut v4 = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 1, 0, 2, 10, 1, 1, 3,
        ];
        v4.extend([0x9c, 0x40, 0, 80, 0, 0, 0, 0]);
        let h = Headers::parse(&v4).unwrap();
        assert_eq!(h.dst, "10.1.1.3".parse::<IpAddr>().unwrap());
        assert_eq!((h.protocol, h.port), (Some(Protocol::Tcp), 80));
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend("fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend("fd00::3".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend([0x13, 0x88, 0, 53, 0, 8, 0, 0]);
        let h = Headers::parse(&v6).unwrap();
        assert_eq!((h.protocol, h.port), (Some(Protocol::Udp), 53));
        assert!(Headers::parse(&[]).is_none());
        assert!(Headers::parse(&[0x45, 0, 0]).is_none());
        assert!(Headers::parse(&[0x75; 60]).is_none());
        // A header that claims more than was copied: no port, no panic.
        let short = &v4[..22];
        assert_eq!(Headers::parse(short).unwrap().port, 0);
    }
}
