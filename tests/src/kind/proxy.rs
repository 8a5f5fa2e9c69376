//! kube-proxy's iptables mode for the Services a kind cluster runs before any pod network
//! exists: the API's `kubernetes` Service and ferry's etcd. DNAT of each ClusterIP to its
//! ready endpoints (host-network pods: the node's address), from pods (PREROUTING) and from
//! the host's own processes (OUTPUT), masqueraded when the client is not a pod (kube-proxy
//! with a cluster CIDR does this: a host process picked its source address for the
//! ClusterIP's route, which may not be the interface the endpoint is reached on); a Service
//! without a ready endpoint is rejected, as kube-proxy rejects it, so a client fails at once
//! instead of timing out. Written into the node's iptables backend (legacy or nft), as
//! kube-proxy follows kubelet's.

use crate::cluster::url_host;

/// One Service port of one family, and its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub cluster_ip: String,
    pub port: u16,
    pub endpoints: Vec<(String, u16)>,
}

/// `iptables-restore --noflush` input replacing kube-proxy's chains for `svcs` (all of
/// one family, whose pods are `cluster_cidr`): `KUBE-SERVICES` and `KUBE-POSTROUTING` in
/// nat, `KUBE-SERVICES` in filter.
pub fn restore_input(svcs: &[Svc], cluster_cidr: &str) -> String {
    let mut nat = vec![
        ":KUBE-SERVICES - [0:0]".to_string(),
        ":KUBE-POSTROUTING - [0:0]".to_string(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".to_string(),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".to_string(),
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully".to_string(),
    ];
    let mut filter = vec![":KUBE-SERVICES - [0:0]".to_string()];
    for s in svcs {
        let host = if s.cluster_ip.contains(':') { 128 } else { 32 };
        let dst = format!(
            "-d {}/{host} -p tcp -m tcp --dport {}",
            s.cluster_ip, s.port
        );
        if s.endpoints.is_empty() {
            filter.push(format!(
                "-A KUBE-SERVICES {dst} -m comment --comment \"has no endpoints\" -j REJECT"
            ));
            continue;
        }
        nat.push(format!(
            "-A KUBE-SERVICES ! -s {cluster_cidr} {dst} -j MARK --set-xmark 0x4000/0x4000"
        ));
        let n = s.endpoints.len();
        for (i, (ip, port)) in s.endpoints.iter().enumerate() {
            // Each of n endpoints with equal chance, as kube-proxy spreads them.
            let pick = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.5} ",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            nat.push(format!(
                "-A KUBE-SERVICES {dst} {pick}-j DNAT --to-destination {}:{port}",
                url_host(ip)
            ));
        }
    }
    format!(
        "*nat\n{}\nCOMMIT\n*filter\n{}\nCOMMIT\n",
        nat.join("\n"),
        filter.join("\n")
    )
}

/// The jumps into the chains, each added when missing (a shell script for the node).
pub fn jumps(tool: &str) -> String {
    [
        ("nat", "PREROUTING", "KUBE-SERVICES"),
        ("nat", "OUTPUT", "KUBE-SERVICES"),
        ("nat", "POSTROUTING", "KUBE-POSTROUTING"),
        ("filter", "OUTPUT", "KUBE-SERVICES"),
        ("filter", "FORWARD", "KUBE-SERVICES"),
    ]
    .iter()
    .map(|(t, c, to)| {
        format!("{tool} -w -t {t} -C {c} -j {to} 2>/dev/null || {tool} -w -t {t} -I {c} -j {to}")
    })
    .collect::<Vec<_>>()
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_without_endpoints_is_rejected_and_one_with_is_translated() {
        let t = restore_input(
            &[
                Svc {
                    cluster_ip: "10.96.0.66".into(),
                    port: 6666,
                    endpoints: vec![],
                },
                Svc {
                    cluster_ip: "fd00:10:96::1".into(),
                    port: 443,
                    endpoints: vec![("2001:db8::3".into(), 6443), ("2001:db8::4".into(), 6443)],
                },
            ],
            "fd00:10:244::/56",
        );
        assert!(t.contains("-A KUBE-SERVICES ! -s fd00:10:244::/56 -d fd00:10:96::1/128 -p tcp -m tcp --dport 443 -j MARK --set-xmark 0x4000/0x4000"));
        assert!(t.contains("-A KUBE-SERVICES -d 10.96.0.66/32 -p tcp -m tcp --dport 6666 -m comment --comment \"has no endpoints\" -j REJECT"));
        assert!(t.contains("--probability 0.50000 -j DNAT --to-destination [2001:db8::3]:6443"));
        assert!(t.contains("--dport 443 -j DNAT --to-destination [2001:db8::4]:6443"));
    }
}
