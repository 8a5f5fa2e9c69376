//! NetworkPolicy for what a pod can send besides unicast to another pod's API address:
//! its neighbours' link-local addresses, and multicast and broadcast, which the node's
//! bridge hands every pod on it. Three dual-stack pods of one node: `a` (isolated for
//! egress in the cases that say so), `b` (isolated for ingress) and `c` (never isolated).
//! The API is the tests' stand-in; nodes, nftables, the bridge and traffic are real.

use std::net::IpAddr;
use std::time::Duration;

use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::netpol::cases::{PodRef, Protocol};
use ferry_tests::netpol::l2::{self, Inbox, TcpServer};
use ferry_tests::netpol::world::World;
use ferry_tests::proc::wait_until;
use serde_json::json;

const TCP_PORT: u16 = 8081;
/// The inboxes' ports: IPv4 here, IPv6 one above.
const UDP_PORT: u16 = 9100;

fn p(s: &str) -> PodRef {
    s.parse().expect("a pod of the model")
}

/// A dual-stack world, and the three roles on one node: the world puts x/a, y/c and z/b
/// on node 0.
fn world() -> (World, [PodRef; 3]) {
    let w = World::dual_stack();
    let roles = [p("x/a"), p("z/b"), p("y/c")];
    for r in &roles {
        assert_eq!(w.pod(r).node, 0, "{r} is not on node 0");
    }
    (w, roles)
}

fn ns<'w>(w: &'w World, r: &PodRef) -> &'w Netns {
    &w.pod(r).pod.ns
}

/// `ferry-ipam explain FROM TO` on node 0: its exit code and what it printed.
fn explain(w: &World, from: &str, to: &str, port: u16, protocol: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(ferry_tests::bin("ferry-ipam"))
        .args([
            "explain",
            from,
            to,
            "--port",
            &port.to_string(),
            "--protocol",
            protocol,
        ])
        .arg("--state-dir")
        .arg(w.cluster.nodes[0].state_dir())
        .output()
        .expect("run ferry-ipam explain");
    ferry_tests::netns::code_and_text(&out)
}

/// Node 0's policy tables, for a failure's report.
fn tables(w: &World) -> String {
    w.cluster.nodes[0]
        .host
        .sh("nft list table inet ferry_policy; nft list table bridge ferry_policy 2>&1 || true")
}

/// A pod's IPv6 address from its ADD's result.
fn ipv6(w: &World, r: &PodRef) -> IpAddr {
    w.pod(r).pod.result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        .find(IpAddr::is_ipv6)
        .unwrap_or_else(|| panic!("{r} has no IPv6 address"))
}

/// A pod's IPv4 address with its prefix, from its ADD's result.
fn ipv4_cidr(w: &World, r: &PodRef) -> String {
    w.pod(r).pod.result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .find(|a| !a.contains(':'))
        .unwrap_or_else(|| panic!("{r} has no IPv4 address"))
        .to_string()
}

/// Whether TCP from `from` to `ip` comes to `want` within 10 s.
fn tcp_becomes(w: &World, from: &PodRef, ip: IpAddr, want: bool) -> bool {
    wait_until(Duration::from_secs(10), || {
        l2::tcp(ns(w, from), ip, TCP_PORT, Duration::from_millis(300)) == want
    })
}

/// Several attempts, each one refused: what a denial must look like.
fn tcp_refused(w: &World, from: &PodRef, ip: IpAddr) -> bool {
    (0..3).all(|_| !l2::tcp(ns(w, from), ip, TCP_PORT, Duration::from_millis(300)))
}

/// `ns/pod` isolated for `dir` ("Ingress" or "Egress") with nothing allowed, by policy
/// `deny-<dir>-<pod>`.
fn deny_all(w: &mut World, r: &PodRef, dir: &str) {
    w.put_policy(
        &r.ns,
        &format!("deny-{}-{}", dir.to_lowercase(), r.name),
        &json!({"podSelector": {"matchLabels": {"pod": r.name}}, "policyTypes": [dir]}),
        false,
    )
    .unwrap();
}

/// The peer `r` as a policy names it: its namespace and its pod label.
fn peer(r: &PodRef) -> serde_json::Value {
    json!({"namespaceSelector": {"matchLabels": {"ns": r.ns}},
           "podSelector": {"matchLabels": {"pod": r.name}}})
}

#[test]
fn link_local_unicast_gets_the_verdict_of_the_pods_addresses() {
    needs_root!();
    let (mut w, [a, b, c]) = world();
    let servers: Vec<TcpServer> = [&b, &c]
        .iter()
        .map(|r| TcpServer::start(ns(&w, r), TCP_PORT).expect("a server"))
        .collect();
    // Each pod has exactly one link-local address (the one ferry derives from its MAC).
    let (ll_b, ll_c) = (
        IpAddr::V6(l2::link_local(ns(&w, &b))),
        IpAddr::V6(l2::link_local(ns(&w, &c))),
    );
    assert!(
        tcp_becomes(&w, &a, ll_b, true) && tcp_becomes(&w, &c, ll_b, true),
        "link-local TCP does not work without policies\n{}",
        w.logs()
    );
    // b isolated for ingress, a for egress, nothing allowed.
    deny_all(&mut w, &b, "Ingress");
    deny_all(&mut w, &a, "Egress");
    let global_b = ipv6(&w, &b);
    assert!(
        tcp_becomes(&w, &c, global_b, false) && tcp_becomes(&w, &a, ipv6(&w, &c), false),
        "the policies are not enforced on the global addresses\n{}",
        w.logs()
    );
    assert!(
        tcp_refused(&w, &a, ll_b),
        "a (egress deny-all) reached b (ingress deny-all) at {ll_b}\n{}",
        tables(&w)
    );
    assert!(
        tcp_refused(&w, &c, ll_b),
        "c reached b (ingress deny-all) at its link-local {ll_b}\n{}",
        tables(&w)
    );
    assert!(
        tcp_refused(&w, &a, ll_c),
        "a (egress deny-all) reached c at its link-local {ll_c}\n{}",
        tables(&w)
    );
    // The node explains it as it enforces it: the link-local address is b's.
    let (code, text) = explain(&w, &c.to_string(), &ll_b.to_string(), TCP_PORT, "TCP");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("ingress of z/b: DENIED"), "{text}");

    // The allowed counterpart: b admits a, a may reach b; over link-local too, and only
    // that pair.
    w.delete_all_policies().unwrap();
    w.put_policy(
        &b.ns,
        "b-from-a",
        &json!({"podSelector": {"matchLabels": {"pod": b.name}},
                "ingress": [{"from": [peer(&a)]}]}),
        false,
    )
    .unwrap();
    w.put_policy(
        &a.ns,
        "a-to-b",
        &json!({"podSelector": {"matchLabels": {"pod": a.name}}, "policyTypes": ["Egress"],
                "egress": [{"to": [peer(&b)]}]}),
        false,
    )
    .unwrap();
    assert!(
        tcp_becomes(&w, &a, ll_b, true),
        "a is admitted by b but cannot reach it at {ll_b}\n{}",
        tables(&w)
    );
    assert!(tcp_becomes(&w, &a, global_b, true));
    assert!(tcp_becomes(&w, &c, ll_b, false), "{}", tables(&w));
    assert!(tcp_refused(&w, &c, ll_b), "c reached b at {ll_b}");
    assert!(tcp_refused(&w, &a, ll_c), "a reached c at {ll_c}");
    let (code, text) = explain(&w, &ll_a(&w, &a), &ll_b.to_string(), TCP_PORT, "TCP");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("matched by z/b-from-a ingress[0]"), "{text}");
    drop(servers);
}

/// Whether UDP from `from` to each of `dsts` reaches `inbox`: one answer per destination.
fn group_reach(w: &World, from: &PodRef, dsts: &[IpAddr], inbox: &Inbox) -> Vec<(IpAddr, bool)> {
    dsts.iter()
        .map(|d| {
            let got = l2::udp_reaches(ns(w, from), *d, inbox, Duration::from_millis(700));
            (*d, got)
        })
        .collect()
}

/// A pod's link-local address, as text.
fn ll_a(w: &World, r: &PodRef) -> String {
    l2::link_local(ns(w, r)).to_string()
}

fn all(seen: &[(IpAddr, bool)], want: bool) -> bool {
    seen.iter().all(|(_, got)| *got == want)
}

#[test]
fn multicast_and_broadcast_obey_the_policies_of_both_ends() {
    needs_root!();
    let (mut w, [a, b, c]) = world();
    let inbox = |r: &PodRef, port| Inbox::open(ns(&w, r), port).expect("an inbox");
    let (in_a, in_b, in_c) = (
        inbox(&a, UDP_PORT),
        inbox(&b, UDP_PORT),
        inbox(&c, UDP_PORT),
    );
    let dsts = l2::group_destinations(&ipv4_cidr(&w, &c));
    // Without policies every group destination reaches every pod of the bridge: what the
    // denials below are measured against.
    let open = wait_until(Duration::from_secs(10), || {
        all(&group_reach(&w, &c, &dsts, &in_b), true)
    });
    assert!(
        open,
        "group traffic does not reach b without policies: {:?}",
        group_reach(&w, &c, &dsts, &in_b)
    );

    // b isolated for ingress: no group traffic reaches it; a, not isolated, still gets it.
    deny_all(&mut w, &b, "Ingress");
    let b4 = w.pod(&b).ip;
    assert!(
        wait_until(Duration::from_secs(10), || !w.probe(
            &c,
            b4,
            80,
            Protocol::Tcp
        )),
        "the policy is not enforced on b's address\n{}",
        w.logs()
    );
    let denied = wait_until(Duration::from_secs(10), || {
        all(&group_reach(&w, &c, &dsts, &in_b), false)
    });
    assert!(
        denied,
        "group traffic reaches b (ingress deny-all): {:?}\n{}",
        group_reach(&w, &c, &dsts, &in_b),
        tables(&w)
    );
    let control = group_reach(&w, &c, &dsts, &in_a);
    assert!(all(&control, true), "a no longer gets it: {control:?}");
    let (code, text) = explain(
        &w,
        &c.to_string(),
        &format!("{b}@ff02::1"),
        UDP_PORT + 1,
        "UDP",
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("ingress of z/b: DENIED")
            && text.contains("ff02::1 is not an address of z/b's"),
        "{text}"
    );

    // a isolated for egress: its group traffic reaches nobody (c is not isolated).
    deny_all(&mut w, &a, "Egress");
    let silenced = wait_until(Duration::from_secs(10), || {
        all(&group_reach(&w, &a, &dsts, &in_c), false)
    });
    assert!(
        silenced,
        "a (egress deny-all) still reaches c by group traffic: {:?}\n{}",
        group_reach(&w, &a, &dsts, &in_c),
        tables(&w)
    );

    // The allowed counterparts, rule by rule: b admits a on the inboxes' UDP ports, a may
    // send to the group and broadcast addresses by ipBlock. c's traffic still does not
    // reach b.
    w.delete_all_policies().unwrap();
    w.put_policy(
        &b.ns,
        "b-from-a-udp",
        &json!({"podSelector": {"matchLabels": {"pod": b.name}},
                "ingress": [{"from": [peer(&a)],
                             "ports": [{"protocol": "UDP", "port": UDP_PORT,
                                        "endPort": UDP_PORT + 1}]}]}),
        false,
    )
    .unwrap();
    let blocks: Vec<serde_json::Value> = dsts
        .iter()
        .map(|d| {
            let len = if d.is_ipv4() { 32 } else { 128 };
            json!({"ipBlock": {"cidr": format!("{d}/{len}")}})
        })
        .collect();
    w.put_policy(
        &a.ns,
        "a-to-groups",
        &json!({"podSelector": {"matchLabels": {"pod": a.name}}, "policyTypes": ["Egress"],
                "egress": [{"to": blocks}]}),
        false,
    )
    .unwrap();
    let admitted = wait_until(Duration::from_secs(10), || {
        all(&group_reach(&w, &a, &dsts, &in_b), true)
    });
    assert!(
        admitted,
        "b admits a's UDP, but a's group traffic does not reach it: {:?}\n{}",
        group_reach(&w, &a, &dsts, &in_b),
        tables(&w)
    );
    let to_c = group_reach(&w, &a, &dsts, &in_c);
    assert!(all(&to_c, true), "a's egress ipBlocks: {to_c:?}");
    let (code, text) = explain(
        &w,
        &a.to_string(),
        &format!("{b}@224.0.0.1"),
        UDP_PORT,
        "UDP",
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("matched by x/a-to-groups egress[0]")
            && text.contains("matched by z/b-from-a-udp ingress[0]"),
        "{text}"
    );
    let from_c = group_reach(&w, &c, &dsts, &in_b);
    assert!(
        all(&from_c, false),
        "c reaches b: {from_c:?}\n{}",
        tables(&w)
    );
    // Another port of b's: not admitted, even from a.
    let other = Inbox::open(ns(&w, &b), UDP_PORT + 10).expect("an inbox");
    let off_port = group_reach(&w, &a, &dsts, &other);
    assert!(
        all(&off_port, false),
        "a reaches b off its port: {off_port:?}"
    );
}
