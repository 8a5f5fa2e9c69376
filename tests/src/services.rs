//! kube-proxy's iptables mode in miniature: a Service (ClusterIP and NodePort) with one
//! endpoint, as the rules kube-proxy would put on each node. ferry does not make these;
//! the tests and the demo make them to prove ferry's data path lets them work (bridged
//! traffic seen by iptables, hairpin, NodePort replies coming back through the node).

use crate::cluster::Node;
use crate::netns::Netns;
use crate::proc::connect;

/// One Service and its one endpoint.
#[derive(Clone, Debug)]
pub struct Service {
    pub cluster_ip: String,
    pub port: u16,
    pub node_port: u16,
    /// The endpoint pod's address and the port its server listens on.
    pub endpoint_ip: String,
    pub endpoint_port: u16,
}

impl Service {
    /// The tests' Service: `cluster_ip` port 80 and NodePort 30080 to `endpoint_ip`:7000.
    pub fn new(cluster_ip: &str, endpoint_ip: &str) -> Service {
        Service {
            cluster_ip: cluster_ip.to_string(),
            port: 80,
            node_port: 30080,
            endpoint_ip: endpoint_ip.to_string(),
            endpoint_port: 7000,
        }
    }

    /// Puts the rules on every one of `nodes`.
    pub fn install_on(&self, nodes: &[Node]) {
        for n in nodes {
            self.install(n);
        }
    }

    /// The shell commands kube-proxy's rules amount to on a node: DNAT of the ClusterIP and
    /// of the NodePort to the endpoint, and kube-proxy's masquerade mark (0x4000) for
    /// NodePort traffic and for an endpoint reaching itself (hairpin), so those replies come
    /// back through the node that translated them. An IPv6 Service gets the same rules in
    /// ip6tables, as kube-proxy makes them for an IPv6 (or dual-stack) cluster.
    pub fn rules(&self) -> String {
        let Service {
            cluster_ip,
            port,
            node_port,
            endpoint_ip,
            endpoint_port,
        } = self;
        let (ipt, host) = if cluster_ip.contains(':') {
            ("ip6tables", 128)
        } else {
            ("iptables", 32)
        };
        let to = crate::cluster::url_host(endpoint_ip);
        format!(
            "set -e
{ipt} -t nat -N KUBE-SERVICES
{ipt} -t nat -N KUBE-NODEPORTS
{ipt} -t nat -N KUBE-SEP
{ipt} -t nat -N KUBE-POSTROUTING
{ipt} -t nat -A PREROUTING -j KUBE-SERVICES
{ipt} -t nat -A OUTPUT -j KUBE-SERVICES
{ipt} -t nat -A POSTROUTING -j KUBE-POSTROUTING
{ipt} -t nat -A KUBE-SERVICES -d {cluster_ip}/{host} -p tcp --dport {port} -j KUBE-SEP
{ipt} -t nat -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
{ipt} -t nat -A KUBE-NODEPORTS -p tcp --dport {node_port} -j MARK --set-xmark 0x4000/0x4000
{ipt} -t nat -A KUBE-NODEPORTS -p tcp --dport {node_port} -j KUBE-SEP
{ipt} -t nat -A KUBE-SEP -s {endpoint_ip}/{host} -j MARK --set-xmark 0x4000/0x4000
{ipt} -t nat -A KUBE-SEP -p tcp -j DNAT --to-destination {to}:{endpoint_port}
{ipt} -t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
{ipt} -t nat -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
{ipt} -t nat -A KUBE-POSTROUTING -j MASQUERADE --random-fully
"
        )
    }

    /// Puts the rules on `node` (once per node: the chains must not exist yet).
    pub fn install(&self, node: &Node) {
        node.host.sh(&self.rules());
    }

    /// Installs the rules on every node of `c` and `check`s them from `far` and `near` to
    /// `endpoint`, the NodePort from `c`'s outside host to every node's underlay address.
    pub fn install_and_check(
        &self,
        c: &crate::cluster::Cluster,
        far: (&Netns, &str),
        near: (&Netns, &str),
        endpoint: &Netns,
    ) {
        self.install_on(&c.nodes);
        self.check(far, near, endpoint, &c.outside, &c.node_ips());
    }

    /// What the rules must give, as every Service test checks it (the endpoint's server
    /// answers with the address it saw): the ClusterIP from a pod on another node (`far`,
    /// its namespace and address) and from one on the endpoint's node (`near`), each seen
    /// with its own address (no source NAT between pods; from the same node only
    /// bridge-nf-call-ip(6)tables lets conntrack undo the DNAT of the reply); the endpoint
    /// reaching itself through its Service (hairpin, masqueraded by kube-proxy); the
    /// NodePort from `outside` on each of `node_ips`.
    pub fn check(
        &self,
        far: (&Netns, &str),
        near: (&Netns, &str),
        endpoint: &Netns,
        outside: &Netns,
        node_ips: &[&str],
    ) {
        for (ns, ip) in [far, near] {
            assert_eq!(
                connect(ns, &self.cluster_ip, self.port).as_deref(),
                Some(ip),
                "ClusterIP {} from {ip}",
                self.cluster_ip
            );
        }
        assert!(
            connect(endpoint, &self.cluster_ip, self.port).is_some(),
            "hairpin through the Service {} failed",
            self.cluster_ip
        );
        for ip in node_ips {
            assert!(
                connect(outside, ip, self.node_port).is_some(),
                "NodePort {} on {ip} failed",
                self.node_port
            );
        }
    }
}

/// Many ClusterIP Services, each with one endpoint pod serving on the Service's own ports
/// (`targetPort` = `port`), as kube-proxy's rules on a node: a chain per Service that DNATs
/// its ClusterIP to the endpoint for each protocol, every port passed through unchanged (as
/// per-port rules would, for a Service listing every port its pod serves), and the hairpin
/// masquerade of `Service::rules`. One `iptables-restore --noflush`, so the node's other nat
/// rules stay.
#[derive(Clone, Debug, Default)]
pub struct ClusterIps {
    /// `(cluster_ip, endpoint_ip)` of each Service.
    pub services: Vec<(String, String)>,
    /// `tcp`, `udp`, `sctp`.
    pub protocols: Vec<String>,
}

impl ClusterIps {
    /// The `iptables-restore` input.
    pub fn restore_input(&self) -> String {
        let mut chains = String::from(":KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
        let mut rules = String::from(
            "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n\
             -A POSTROUTING -j KUBE-POSTROUTING\n",
        );
        for (i, (cluster_ip, endpoint)) in self.services.iter().enumerate() {
            chains += &format!(":KUBE-SEP-{i} - [0:0]\n");
            rules +=
                &format!("-A KUBE-SEP-{i} -s {endpoint}/32 -j MARK --set-xmark 0x4000/0x4000\n");
            for p in &self.protocols {
                rules += &format!("-A KUBE-SERVICES -d {cluster_ip}/32 -p {p} -j KUBE-SEP-{i}\n");
                rules += &format!("-A KUBE-SEP-{i} -p {p} -j DNAT --to-destination {endpoint}\n");
            }
        }
        rules += "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
                  -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
                  -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n";
        format!("*nat\n{chains}{rules}COMMIT\n")
    }

    /// Puts the rules on `node` (once per node: the chains must not exist yet).
    pub fn install(&self, node: &Node) {
        node.host.sh(&format!(
            "iptables-restore --noflush <<'EOF'\n{}EOF",
            self.restore_input()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_translate_both_ports_to_the_endpoint() {
        let s = Service {
            cluster_ip: "10.96.0.10".into(),
            port: 80,
            node_port: 30080,
            endpoint_ip: "10.244.1.2".into(),
            endpoint_port: 7000,
        };
        let r = s.rules();
        assert!(r.contains("-d 10.96.0.10/32 -p tcp --dport 80 -j KUBE-SEP"));
        assert!(r.contains("--dport 30080 -j KUBE-SEP"));
        assert!(r.contains("-s 10.244.1.2/32 -j MARK"));
        assert!(r.contains("DNAT --to-destination 10.244.1.2:7000"));
        assert!(!r.contains("ip6tables"));
    }

    #[test]
    fn an_ipv6_service_is_the_same_rules_in_ip6tables() {
        let s = Service {
            cluster_ip: "fd00:96::10".into(),
            port: 80,
            node_port: 30080,
            endpoint_ip: "fd00:10:0:1::2".into(),
            endpoint_port: 7000,
        };
        let r = s.rules();
        assert!(
            r.lines().skip(1).all(|l| l.starts_with("ip6tables ")),
            "{r}"
        );
        assert!(r.contains("-d fd00:96::10/128 -p tcp --dport 80 -j KUBE-SEP"));
        assert!(r.contains("-s fd00:10:0:1::2/128 -j MARK"));
        assert!(r.contains("DNAT --to-destination [fd00:10:0:1::2]:7000"));
    }

    #[test]
    fn cluster_ips_dnat_each_protocol_to_its_endpoint() {
        let s = ClusterIps {
            services: vec![("10.96.0.1".into(), "10.244.1.2".into())],
            protocols: vec!["tcp".into(), "sctp".into()],
        };
        let r = s.restore_input();
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
        assert!(r.contains("-A KUBE-SERVICES -d 10.96.0.1/32 -p sctp -j KUBE-SEP-0\n"));
        assert!(r.contains("-A KUBE-SEP-0 -p tcp -j DNAT --to-destination 10.244.1.2\n"));
        assert!(r.contains("-A KUBE-SEP-0 -s 10.244.1.2/32 -j MARK"));
    }
}
