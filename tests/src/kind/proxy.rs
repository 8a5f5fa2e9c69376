//! kube-proxy's iptables mode for the Services a kind cluster runs: the API's `kubernetes`
//! Service, ferry's etcd, and a test's own. DNAT of each ClusterIP to its ready endpoints
//! (host-network pods: the node's address), from pods (PREROUTING) and from the host's own
//! processes (OUTPUT), masqueraded when the client is not a pod (kube-proxy with a cluster
//! CIDR does this: a host process picked its source address for the ClusterIP's route,
//! which may not be the interface the endpoint is reached on), and when an endpoint reached
//! itself through its Service (hairpin: the reply must come back through the node); a
//! NodePort on every local address, masqueraded (externalTrafficPolicy Cluster); a Service
//! without a ready endpoint is rejected at its ClusterIP, as kube-proxy rejects it, so a
//! client fails at once instead of timing out. Written into the node's iptables backend
//! (legacy or nft), as kube-proxy follows kubelet's.

use crate::cluster::url_host;

/// One Service port of one family, and its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub cluster_ip: String,
    pub port: u16,
    /// A NodePort (or LoadBalancer) Service's `nodePort`.
    pub node_port: Option<u16>,
    pub endpoints: Vec<(String, u16)>,
}

/// `iptables-restore --noflush` input replacing kube-proxy's chains for `svcs` (all of
/// one family, whose pods are `cluster_cidr`): `KUBE-SERVICES`, `KUBE-NODEPORTS` and
/// `KUBE-POSTROUTING` in nat, `KUBE-SERVICES` in filter.
pub fn restore_input(svcs: &[Svc], cluster_cidr: &str) -> String {
    let mut nat = vec![
        ":KUBE-SERVICES - [0:0]".to_string(),
        ":KUBE-NODEPORTS - [0:0]".to_string(),
        ":KUBE-POSTROUTING - [0:0]".to_string(),
    ];
    let mut nodeports = Vec::new();
    let mut hairpin = Vec::new();
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
        nat.extend(dnat("KUBE-SERVICES", &dst, &s.endpoints));
        if let Some(np) = s.node_port {
            let dst = format!("-p tcp -m tcp --dport {np}");
            nodeports.push(format!(
                "-A KUBE-NODEPORTS {dst} -j MARK --set-xmark 0x4000/0x4000"
            ));
            nodeports.extend(dnat("KUBE-NODEPORTS", &dst, &s.endpoints));
        }
        for (ip, _) in &s.endpoints {
            // kube-proxy marks an endpoint's packet to its own Service in the endpoint's
            // chain; after the DNAT that is a packet from the endpoint to itself.
            let host_ip = format!("{ip}/{host}");
            let rule = format!(
                "-A KUBE-POSTROUTING -s {host_ip} -d {host_ip} -m conntrack --ctstate DNAT \
                 -j MARK --set-xmark 0x4000/0x4000"
            );
            if !hairpin.contains(&rule) {
                hairpin.push(rule);
            }
        }
    }
    // Last in KUBE-SERVICES, as kube-proxy puts it: a ClusterIP rule matches first.
    nat.push("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".to_string());
    nat.extend(nodeports);
    nat.extend(hairpin);
    nat.extend([
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".to_string(),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".to_string(),
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully".to_string(),
    ]);
    format!(
        "*nat\n{}\nCOMMIT\n*filter\n{}\nCOMMIT\n",
        nat.join("\n"),
        filter.join("\n")
    )
}

/// The DNAT rules of chain `chain` for traffic matching `dst`: each of the endpoints with
/// equal chance, as kube-proxy spreads them.
fn dnat(chain: &str, dst: &str, endpoints: &[(String, u16)]) -> Vec<String> {
    let n = endpoints.len();
    endpoints
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| {
            let pick = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.5} ",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            format!(
                "-A {chain} {dst} {pick}-j DNAT --to-destination {}:{port}",
                url_host(ip)
            )
        })
        .collect()
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
                    node_port: None,
                    endpoints: vec![],
                },
                Svc {
                    cluster_ip: "fd00:10:96::1".into(),
                    port: 443,
                    node_port: Some(30443),
                    endpoints: vec![("2001:db8::3".into(), 6443), ("2001:db8::4".into(), 6443)],
                },
            ],
            "fd00:10:244::/56",
        );
        assert!(t.contains("-A KUBE-SERVICES ! -s fd00:10:244::/56 -d fd00:10:96::1/128 -p tcp -m tcp --dport 443 -j MARK --set-xmark 0x4000/0x4000"));
        assert!(t.contains("-A KUBE-SERVICES -d 10.96.0.66/32 -p tcp -m tcp --dport 6666 -m comment --comment \"has no endpoints\" -j REJECT"));
        assert!(t.contains("--probability 0.50000 -j DNAT --to-destination [2001:db8::3]:6443"));
        assert!(t.contains("--dport 443 -j DNAT --to-destination [2001:db8::4]:6443"));
        assert!(t.contains(
            "-A KUBE-NODEPORTS -p tcp -m tcp --dport 30443 -j MARK --set-xmark 0x4000/0x4000"
        ));
        assert!(t.contains("-A KUBE-NODEPORTS -p tcp -m tcp --dport 30443 -j DNAT --to-destination [2001:db8::4]:6443"));
        assert!(t.contains(
            "-A KUBE-POSTROUTING -s 2001:db8::3/128 -d 2001:db8::3/128 -m conntrack --ctstate DNAT"
        ));
        // Hairpin marks come before the masquerade's test of the mark.
        let mark = t
            .find("-s 2001:db8::4/128 -d 2001:db8::4/128")
            .expect("hairpin");
        assert!(mark < t.find("! --mark 0x4000/0x4000 -j RETURN").expect("return"));
    }
}
