//! Root test: rendered scripts load into a real nft (1.0.6 here) inside a network namespace
//! this test makes, and a plan brings the kernel's table to exactly the state a full load
//! of the new desired ruleset gives. The root namespace's nftables are never touched.

mod support;

use std::collections::BTreeMap;

use ferry_netpol::model::Protocol::{Sctp, Tcp, Udp};
use ferry_netpol::{plan, Ifname, LocalPods, Ruleset, Script, TableFamily};
use ferry_testns::needs_root;
use ferry_testns::netns::Netns;
use serde_json::json;
use support::{labels, local_on, policy, world};

fn list(ns: &Netns) -> String {
    ns.sh("nft list table inet ferry_policy; nft list table bridge ferry_policy")
}

fn list_one(ns: &Netns, family: TableFamily) -> String {
    ns.sh(&format!("nft -j list table {} ferry_policy", family.name()))
}

/// Both tables' listings as one: the items of the inet table, then the bridge table's.
fn list_json(ns: &Netns) -> serde_json::Value {
    let mut all = Vec::new();
    for f in TableFamily::ALL {
        let v: serde_json::Value = serde_json::from_str(&list_one(ns, f)).unwrap();
        all.extend(v["nftables"].as_array().unwrap().iter().cloned());
    }
    json!({ "nftables": all })
}

/// What a restarted daemon reads back.
fn read_back(ns: &Netns) -> Ruleset {
    let (inet, bridge) = (
        list_one(ns, TableFamily::Inet),
        list_one(ns, TableFamily::Bridge),
    );
    Ruleset::parse_json(Some(&inet), Some(&bridge)).unwrap()
}

/// The table's content independent of creation order and handles: sets by name with
/// sorted elements, chains by name with their rules in order.
fn normalised(listing: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for item in listing["nftables"].as_array().unwrap() {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("handle");
        }
        // The inet table's objects by name alone; the bridge table's with its family.
        let family = match body["family"].as_str() {
            Some("bridge") => "bridge ",
            _ => "",
        };
        match kind.as_str() {
            "set" | "map" => {
                if let Some(elems) = body.get_mut("elem").and_then(|e| e.as_array_mut()) {
                    elems.sort_by_key(|e| e.to_string());
                }
                out.insert(format!("{family}set {}", body["name"]), body);
            }
            "chain" => {
                out.insert(format!("{family}chain {}", body["name"]), body);
            }
            "rule" => {
                let key = format!("{family}rules of {}", body["chain"]);
                let rules = out.entry(key).or_insert_with(|| serde_json::json!([]));
                rules.as_array_mut().unwrap().push(body);
            }
            _ => {}
        }
    }
    out
}

/// Applies the plan from `from` to `to` on the table holding `from`, then checks that the
/// kernel holds exactly what a full load of `to` gives and what `to` reads back as.
/// Returns the normalised table after the plan.
fn plan_then_compare(
    ns: &Netns,
    from: &Ruleset,
    to: &Ruleset,
) -> BTreeMap<String, serde_json::Value> {
    let text = plan(from, to).render();
    assert!(
        !text.contains("table"),
        "a plan never touches the table:\n{text}"
    );
    ns.nft_apply(&text);
    let after_plan = list_json(ns);
    let read = read_back(ns);
    assert!(
        &read == to,
        "the plan did not reach the desired ruleset:\n{text}"
    );
    ns.nft_apply(&Script::replace(to).render());
    assert_eq!(
        normalised(&after_plan),
        normalised(&list_json(ns)),
        "plan and full load differ; plan:\n{text}"
    );
    normalised(&after_plan)
}

fn cluster_v1() -> ferry_netpol::Cluster {
    let mut c = world(
        &["x/a", "x/b", "x/c", "y/a", "y/b", "z/a"],
        &[80, 81],
        &[Tcp, Udp, Sctp],
    );
    c.policies.push(policy(
        "x",
        "web",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                          {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.2.0.0/16", "10.3.0.1/32"]}},
                          {"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::2:0/112"]}}],
                 "ports": [{"port": "serve-80-tcp"}, {"port": 8000, "endPort": 8100, "protocol": "UDP"},
                           {"protocol": "SCTP"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]},
            ],
            "egress": [
                {"to": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                    {"key": "pod", "operator": "In", "values": ["a", "c"]}]}}],
                 "ports": [{"port": "serve-81-udp", "protocol": "UDP"}, {"port": 53, "protocol": "UDP"}]},
                {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]},
                {"ports": [{"port": 443}]},
            ],
        }),
    ));
    // Names at the limits: the longest the API allows, and one that is no DNS name at all
    // (a lying source) and must reach nft only as a hash.
    c.policies.push(policy(
        "x",
        &"n".repeat(253),
        json!({"podSelector": {}, "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 1}]}]}),
    ));
    c.policies.push(policy(
        "x",
        "evil\" } ; flush ruleset ; #",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
    ));
    c.policies.push(policy(
        "y",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    ));
    c
}

#[test]
fn full_load_then_plan_reach_the_desired_table() {
    needs_root!();
    let ns = Netns::new("npnft");
    let c1 = cluster_v1();
    let local = local_on(&c1, "n0");
    let d1 = Ruleset::compute(&c1, &local);

    // First start: nothing applied yet, so a plan from the empty ruleset.
    let first = plan(&Ruleset::default(), &d1);
    ns.nft_apply(&first.render());
    let listed = list(&ns);
    for want in [
        "chain forward",
        "type filter hook forward priority filter; policy accept;",
        "ip saddr vmap @egress_pods4",
        "ip6 daddr vmap @ingress_pods6",
        "map ingress_pods4",
        "type ipv4_addr : verdict",
        "10.1.0.1 : jump ingress_",
        "chain ingress_closed",
        "set in_x_web_0_dst4",
        "type ipv4_addr . inet_proto . inet_service",
        "set denied_ingress4",
        "flags dynamic,timeout",
        "log prefix \"ferry-deny-ingress \" group 1720",
        "comment \"x/web ingress[0]\"",
    ] {
        assert!(listed.contains(want), "missing {want:?} in\n{listed}");
    }
    // x/a (10.1.0.1, node n0): its named port 80/tcp, UDP 8000-8100, every SCTP port.
    let dst = ns.sh("nft list set inet ferry_policy in_x_web_0_dst4");
    for want in [
        "10.1.0.1 . tcp . 80",
        "10.1.0.1 . udp . 8000-8100",
        "10.1.0.1 . sctp . 0-65535",
    ] {
        assert!(dst.contains(want), "missing {want:?} in\n{dst}");
    }
    // The peers: x/b, and 10/8 minus 10.2/16 and 10.3.0.1, overlaps merged.
    let src = ns.sh("nft list set inet ferry_policy in_x_web_0_src4");
    for want in ["10.0.0.0/15", "10.3.0.0", "10.3.0.2-10.255.255.255"] {
        assert!(src.contains(want), "missing {want:?} in\n{src}");
    }
    let src6 = ns.sh("nft list set inet ferry_policy in_x_web_0_src6");
    assert!(
        src6.contains("fd00::/111") && src6.contains("fd00::3:0-fd00::ffff:ffff:ffff:ffff"),
        "{src6}"
    );

    // The bridge table: each local pod's port and own addresses (the link-local one
    // included), the ingress-isolated ones' ports to their chains, x/web's ingress rules
    // by port.
    let bridge = ns.sh("nft list table bridge ferry_policy");
    for want in [
        "type filter hook forward priority filter; policy accept;",
        "oifname . ip daddr @own4 accept",
        "oifname . ip6 daddr @own6 accept",
        "meta protocol { ip, ip6 } oifname vmap @ingress_ports",
        "\"fyxa\" . 10.1.0.1",
        "\"fyxa\" . fe80::1:1",
        "\"fyxa\" : jump ingress_",
        "\"fyya\" : jump ingress_",
        "oifname . meta l4proto . th dport @in_x_web_0_dst4",
        "ip6 saddr @in_x_web_1_src6 oifname @in_x_web_1_dst6",
        "\"fyxa\" . tcp . 80",
        "\"fyxa\" . udp . 8000-8100",
    ] {
        assert!(bridge.contains(want), "missing {want:?} in\n{bridge}");
    }

    // A restart reads the tables back as exactly what was applied.
    let read = read_back(&ns);
    assert_eq!(read, d1, "parse_json gives back the applied ruleset");

    // A restart that cannot trust the table replaces it in one go.
    ns.nft_apply(&Script::replace(&d1).render());
    assert_eq!(list(&ns), listed, "replace gives what the first plan gave");

    // Churn: x/c relabelled so the egress selector drops it, a new pod y/c on this
    // node, z/a gone; and a policy change: x/web loses an egress rule, y/deny-all goes,
    // z/new comes.
    let mut c2 = c1.clone();
    c2.pods.retain(|p| !(p.namespace == "z" && p.name == "a"));
    let xc = c2
        .pods
        .iter_mut()
        .find(|p| p.namespace == "x" && p.name == "c")
        .unwrap();
    xc.labels = labels(&[("pod", "cc")]);
    let mut yc = c2.pods[0].clone();
    (yc.namespace, yc.name) = ("y".into(), "c".into());
    yc.labels = labels(&[("pod", "c")]);
    yc.ips = vec!["10.2.0.3".parse().unwrap(), "fd00::2:3".parse().unwrap()];
    c2.pods.push(yc);
    if let Some(eg) = c2.policies[0].egress.as_mut() {
        eg.remove(1);
    }
    c2.policies.retain(|p| p.name != "deny-all");
    c2.policies.push(policy(
        "z",
        "new",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 5432}]}]}),
    ));
    let d2 = Ruleset::compute(&c2, &local_on(&c2, "n0"));
    let after_plan = plan_then_compare(&ns, &d1, &d2);
    let elems = after_plan["set \"eg_x_web_0_dst4\""]["elem"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(elems, 6, "x/a, y/a, y/c on 53 and 81/udp");
    assert!(
        !after_plan.contains_key("set \"eg_x_web_1_src4\""),
        "egress rule 1 went"
    );
    assert!(after_plan.contains_key("set \"in_z_new_0_dst4\""));

    // Peer ranges that grow over single pod addresses and shrink again: interval
    // elements replaced by overlapping ones inside one transaction.
    let mut c3 = c2.clone();
    if let Some(rules) = c3.policies[0].ingress.as_mut() {
        rules[1]
            .peers
            .push(ferry_netpol::model::PolicyPeer::IpBlock {
                cidr: "10.2.0.0/24".parse().unwrap(),
                except: vec![],
            });
    }
    let d3 = Ruleset::compute(&c3, &local_on(&c3, "n0"));
    let grown = plan_then_compare(&ns, &d2, &d3);
    assert_eq!(
        grown["set \"in_x_web_1_src4\""]["elem"],
        json!([{"prefix": {"addr": "10.2.0.0", "len": 24}}])
    );
    plan_then_compare(&ns, &d3, &d2);

    // Nothing to do when nothing changed.
    assert!(plan(&d2, &d2).is_empty());
}

/// Prints the prefix of every packet logged to NFLOG group argv[1], after `ready` once
/// bound: the stand-in for the daemon's reader of denials (Python from the base system).
const NFLOG_READER: &str = "import socket, struct, sys
group = int(sys.argv[1])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.bind((0, 0))
body = struct.pack('BBH', 0, 0, socket.htons(group)) + struct.pack('HHB3x', 5, 1, 1)
s.send(struct.pack('IHHII', 16 + len(body), (4 << 8) | 1, 5, 1, 0) + body)
print('ready', flush=True)
while True:
    data = s.recv(65535)
    off = 0
    while off + 16 <= len(data):
        ln, ty = struct.unpack_from('IH', data, off)
        a = off + 20
        while ty == 4 << 8 and a + 4 <= off + ln:
            alen, atype = struct.unpack_from('HH', data, a)
            if alen < 4:
                break
            if atype & 0x7fff == 10:
                print(data[a + 4:a + alen].rstrip(bytes(1)).decode(), flush=True)
            a += (alen + 3) & ~3
        off += (ln + 3) & ~3
";

/// Server x/a and client y/b on node n0 at the given addresses; x/a takes TCP 80 (by its
/// port name) from y/b only, y/b may send to TCP 80-81 only.
fn two_pods_on_n0(a: [&str; 2], b: [&str; 2]) -> ferry_netpol::Cluster {
    let mut c = world(&["x/a", "y/b"], &[80], &[Tcp]);
    for (p, ips) in c.pods.iter_mut().zip([a, b]) {
        p.ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        p.node = Some("n0".into());
    }
    c.policies.push(policy(
        "x",
        "a-from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
            "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}],
            "ports": [{"port": "serve-80-tcp"}]}]}),
    ));
    c.policies.push(policy(
        "y",
        "b-out",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 80, "endPort": 81}]}]}),
    ));
    c
}

/// Real packets through a node namespace routing between a client and a server pod
/// namespace: the forward hook accepts what the policies allow, drops the rest at the
/// right end, counts denials per local pod address, and a plan applied to the live table
/// changes the verdict.
#[test]
fn forwarded_connections_get_the_policy_verdict() {
    needs_root!();
    use ferry_netpol::DENY_LOG_GROUP;
    use ferry_testns::netns::link;
    use ferry_testns::proc::{connect, echo_peer_server_on, wait_until, Bg};
    use std::time::Duration;

    let node = Netns::new("npnd");
    let cli = Netns::new("npcl");
    let srv = Netns::new("npsv");
    link(
        &node,
        "to-cli",
        "10.2.0.254/24",
        &cli,
        "eth0",
        "10.2.0.1/24",
    );
    link(
        &node,
        "to-srv",
        "10.1.0.254/24",
        &srv,
        "eth0",
        "10.1.0.1/24",
    );
    node.sh(
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
         ip addr add fd00::2:fffe/112 dev to-cli nodad && ip addr add fd00::1:fffe/112 dev to-srv nodad",
    );
    cli.sh("ip addr add fd00::2:1/112 dev eth0 nodad && ip route add default via 10.2.0.254 && ip -6 route add default via fd00::2:fffe");
    srv.sh("ip addr add fd00::1:1/112 dev eth0 nodad && ip route add default via 10.1.0.254 && ip -6 route add default via fd00::1:fffe");
    let _servers: Vec<_> = [80, 81, 82]
        .iter()
        .map(|p| echo_peer_server_on(&srv, "::", *p))
        .collect();

    let c = two_pods_on_n0(["10.1.0.1", "fd00::1:1"], ["10.2.0.1", "fd00::2:1"]);
    let d1 = Ruleset::compute(&c, &LocalPods::on_node(&c, "n0"));
    node.nft_apply(&plan(&Ruleset::default(), &d1).render());
    let log = tempfile::NamedTempFile::new().unwrap();
    let _reader = Bg::spawn_logged(
        &node,
        &format!("python3 -c \"{NFLOG_READER}\" {DENY_LOG_GROUP}"),
        log.path(),
    );
    let logged = || std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || logged().contains("ready")),
        "NFLOG reader: {}",
        logged()
    );

    for dst in ["10.1.0.1", "fd00::1:1"] {
        assert!(
            connect(&cli, dst, 80).is_some(),
            "{dst}:80 is allowed both ways"
        );
        assert!(
            connect(&cli, dst, 81).is_none(),
            "{dst}:81: x/a's ingress denies"
        );
        assert!(
            connect(&cli, dst, 82).is_none(),
            "{dst}:82: y/b's egress denies"
        );
    }
    // Denials are logged to the NFLOG group with their direction.
    for prefix in ["ferry-deny-ingress ", "ferry-deny-egress "] {
        assert!(
            wait_until(Duration::from_secs(5), || logged().contains(prefix)),
            "no {prefix:?} on NFLOG group {DENY_LOG_GROUP}: {}",
            logged()
        );
    }
    // Denials are counted per local pod address and direction.
    for (set, addr) in [
        ("denied_ingress4", "10.1.0.1"),
        ("denied_ingress6", "fd00::1:1"),
        ("denied_egress4", "10.2.0.1"),
        ("denied_egress6", "fd00::2:1"),
    ] {
        let listed = node.sh(&format!("nft list set inet ferry_policy {set}"));
        let counted = listed
            .split(&format!("{addr} counter packets "))
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        assert!(
            counted.is_some_and(|n| n >= 1),
            "{set} has no count for {addr}:\n{listed}"
        );
    }

    // Read back with the kernel's denial elements in it: they are runtime state, not part
    // of the ruleset.
    let read = read_back(&node);
    assert_eq!(read, d1);

    // y/b relabelled: a plan on the live table, and port 80 is denied from then on.
    let mut c2 = c.clone();
    c2.pods[1].labels = labels(&[("pod", "other")]);
    let d2 = Ruleset::compute(&c2, &LocalPods::on_node(&c2, "n0"));
    let step = plan(&d1, &d2);
    assert!(
        step.commands.iter().all(|c| c.contains("element")),
        "{}",
        step.render()
    );
    node.nft_apply(&step.render());
    assert!(connect(&cli, "10.1.0.1", 80).is_none());
    assert!(connect(&cli, "fd00::1:1", 80).is_none());
}

/// Two pods of one node on a bridge, as ferry wires them, with br_netfilter handing bridged
/// packets to the inet hooks: same-node traffic gets the policy verdict, over the pods'
/// link-local addresses too, IPv6 neighbour discovery between the pods and with the
/// gateway still works for isolated pods, group traffic to an isolated pod meets its
/// rules at its port, and a pod's egress to the node's own address is decided by the
/// `input` chain.
#[test]
fn bridged_pods_of_one_node_and_the_node_itself() {
    needs_root!();
    use ferry_testns::proc::{connect, echo_peer_server_on};

    let node = Netns::new("npbn");
    let pa = Netns::new("npba");
    let pb = Netns::new("npbb");
    node.sh(
        "sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 && \
         ip link add br0 type bridge && ip link set br0 up && \
         ip addr add 10.1.0.254/24 dev br0 && ip addr add fd00::1:fffe/112 dev br0 nodad",
    );
    // Each pod's only link-local address is the one its node knows (as ferry's plugin
    // makes it: the kernel's own generation off).
    for (pod, host_if, v4, v6, ll) in [
        (&pa, "va", "10.1.0.1", "fd00::1:1", "fe80::1:1"),
        (&pb, "vb", "10.1.0.2", "fd00::1:2", "fe80::1:2"),
    ] {
        node.sh(&format!(
            "ip link add {host_if} type veth peer name eth0 netns {} && ip link set {host_if} master br0 up",
            pod.name
        ));
        pod.sh(&format!(
            "ip link set eth0 addrgenmode none && ip addr add {ll}/64 dev eth0 nodad && \
             ip addr add {v4}/24 dev eth0 && ip addr add {v6}/112 dev eth0 nodad && ip link set eth0 up && \
             ip route add default via 10.1.0.254 && ip -6 route add default via fd00::1:fffe"
        ));
    }
    let _servers: Vec<_> = [80, 81]
        .iter()
        .map(|p| echo_peer_server_on(&pa, "::", *p))
        .chain(
            [81, 82]
                .iter()
                .map(|p| echo_peer_server_on(&node, "::", *p)),
        )
        .collect();

    let c = two_pods_on_n0(["10.1.0.1", "fd00::1:1"], ["10.1.0.2", "fd00::1:2"]);
    let mut local = LocalPods::on_node(&c, "n0");
    for (pod, port, ll) in [("a", "va", "fe80::1:1"), ("b", "vb", "fe80::1:2")] {
        let (k, ips) = local.pods.iter_mut().find(|(k, _)| k.name == pod).unwrap();
        ips.push(ll.parse().unwrap());
        local.ports.insert(k.clone(), Ifname::new(port).unwrap());
    }
    let d = Ruleset::compute(&c, &local);
    node.nft_apply(&plan(&Ruleset::default(), &d).render());

    for (a, gw) in [
        ("10.1.0.1", "10.1.0.254"),
        ("fd00::1:1", "fd00::1:fffe"),
        ("fe80::1:1%eth0", "fd00::1:fffe"),
    ] {
        assert!(
            connect(&pb, a, 80).is_some(),
            "b -> a {a}:80 over the bridge"
        );
        assert!(
            connect(&pb, a, 81).is_none(),
            "b -> a {a}:81: a's ingress denies"
        );
        assert!(
            connect(&pb, gw, 81).is_some(),
            "b -> node {gw}:81: b's egress allows"
        );
        assert!(
            connect(&pb, gw, 82).is_none(),
            "b -> node {gw}:82: b's egress denies (input hook)"
        );
    }
    // Group traffic from b, which a admits for TCP 80 only: none reaches a, at any group
    // or broadcast address; a counted drop at a's port in the bridge table.
    let inbox = ferry_testns::l2::Inbox::open(&pa, 9000).unwrap();
    for dst in ["ff02::1", "224.0.0.1", "255.255.255.255", "10.1.0.255"] {
        let dst: std::net::IpAddr = dst.parse().unwrap();
        assert!(
            !ferry_testns::l2::udp_reaches(&pb, dst, &inbox, std::time::Duration::from_millis(500)),
            "b's UDP to {dst} reached a"
        );
    }
    let dropped = node.sh(
        "nft list chain bridge ferry_policy ingress_closed; nft list table bridge ferry_policy",
    );
    assert!(
        dropped.lines().any(|l| l.contains("counter packets")
            && l.contains("drop")
            && !l.contains("packets 0 ")),
        "{dropped}"
    );
}

fn cnp(name: &str, spec: serde_json::Value) -> ferry_netpol::ClusterPolicy {
    let obj = ferry_netpol::ClusterNetworkPolicy::new(name, spec);
    let (p, errors) = ferry_netpol::ClusterPolicy::from_api(&obj);
    assert!(errors.is_empty(), "{errors:?}");
    p.unwrap()
}

/// Both tiers around cluster_v1's NetworkPolicies: Admin Accept/Deny/Pass (goto the chain
/// of the next tier), Baseline, a name that must reach nft only as a hash.
fn cluster_tiers() -> ferry_netpol::Cluster {
    let mut c = cluster_v1();
    let x = json!({"matchLabels": {"kubernetes.io/metadata.name": "x"}});
    c.cluster_policies.push(cnp(
        "tenant-x",
        json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": x},
               "ingress": [
                 {"name": "pass-y", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]},
                 {"name": "deny-others", "action": "Deny", "from": [{"namespaces": {}}],
                  "protocols": [{"tcp": {"destinationPort": {"range": {"start": 1, "end": 1024}}}},
                                {"destinationNamedPort": "serve-81-udp"}]}],
               "egress": [
                 {"name": "accept-dns", "action": "Accept", "to": [{"networks": ["192.0.2.53/32", "2001:db8::53/128"]}],
                  "protocols": [{"udp": {"destinationPort": {"number": 53}}}]}]}),
    ));
    c.cluster_policies.push(cnp(
        "default-deny",
        json!({"tier": "Baseline", "priority": 0, "subject": {"pods": {"podSelector": {}}},
               "ingress": [{"name": "deny", "action": "Deny", "from": [{"pods": {"podSelector": {}}}]}]}),
    ));
    let mut evil = cnp(
        "ok",
        json!({"tier": "Baseline", "priority": 1, "subject": {"namespaces": x},
               "egress": [{"action": "Pass", "to": [{"nodes": {}}]}]}),
    );
    evil.name = "evil\" } ; flush ruleset ; #".into();
    c.cluster_policies.push(evil);
    c.nodes = vec![ferry_netpol::NodeInfo {
        name: "n0".into(),
        labels: Default::default(),
        ips: vec!["192.0.2.1".parse().unwrap()],
    }];
    c
}

#[test]
fn cluster_policies_load_read_back_and_plan_in_place() {
    needs_root!();
    let ns = Netns::new("npcnp");
    let c1 = cluster_tiers();
    let local = local_on(&c1, "n0");
    let d1 = Ruleset::compute(&c1, &local);
    ns.nft_apply(&plan(&Ruleset::default(), &d1).render());
    let listed = list(&ns);
    for want in [
        "set cin_tenant-x_0_src4",
        "set cin_tenant-x_1_dst4",
        "set ceg_tenant-x_0_dst6",
        "comment \"cnp tenant-x ingress[1] deny-others\"",
        "goto ingress_",
        "goto ingress_closed",
        // The tier's pre-filter: a peer that no rule's peers hold skips the rules.
        "_peers4 goto ingress_",
        "ip saddr != @ingress_",
    ] {
        assert!(listed.contains(want), "missing {want:?} in\n{listed}");
    }
    assert!(!listed.contains("flush ruleset"), "{listed}");
    assert_eq!(
        read_back(&ns),
        d1,
        "parse_json gives back the applied ruleset"
    );
    // Priority, tier and rule changes, a policy gone: planned in place.
    let mut c2 = c1.clone();
    c2.cluster_policies[0].priority = 900;
    c2.cluster_policies[1].tier = ferry_netpol::Tier::Admin;
    c2.cluster_policies.pop();
    let d2 = Ruleset::compute(&c2, &local_on(&c2, "n0"));
    plan_then_compare(&ns, &d1, &d2);
    // Back, and then every ClusterNetworkPolicy gone: only NetworkPolicy's chains remain.
    plan_then_compare(&ns, &d2, &d1);
    let d0 = Ruleset::compute(&cluster_v1(), &local);
    plan_then_compare(&ns, &d1, &d0);
    assert!(!list(&ns).contains("goto"));
}
