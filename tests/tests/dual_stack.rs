//! Dual-stack and IPv6-only pods on one node: the results in every CNI version, the
//! kernel state ADD leaves (addresses usable at once, routes), traffic over IPv6, DEL,
//! GC, CHECK against tampering, exhaustion, and hostile configs.

use ferry_tests::cni::Node;
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::proc::{connect, echo_peer_server_on};
use serde_json::{json, Value};

fn node(version: &str, ipam: Value) -> Node {
    Node::ferry(version, ipam, json!({}))
}

/// A node of IPv4 range `v4` and IPv6 range `v6` (CNI 1.1.0) and its pod `id`, added:
/// the node, the pod's namespace, ADD's result.
fn dual_pod(v4: &str, v6: &str, id: &str) -> (Node, Netns, Value) {
    let n = node("1.1.0", dual(v4, v6));
    let pod = Netns::new("fyd");
    let r = n.add(id, &pod).ok();
    (n, pod, r)
}

fn dual(v4: &str, v6: &str) -> Value {
    json!({"ranges": [[{"subnet": v4}], [{"subnet": v6}]]})
}

/// The result's addresses, without prefix lengths.
fn addresses(r: &Value) -> Vec<String> {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn dual_stack_in_every_version_with_usable_addresses() {
    needs_root!();
    // Every version ferry answers: all of them carry several `ips`.
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let j = i + 1; // an IPv6 group of 0 would print compressed
        let n = node(
            version,
            dual(&format!("10.60.{i}.0/24"), &format!("fd00:60:{j}::/64")),
        );
        let pod = Netns::new("fyd");
        let r = n.add("d1", &pod).ok();
        assert_eq!(r["cniVersion"], *version);
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{version}: {r}");
        assert_eq!(ips[0]["address"], format!("10.60.{i}.2/24"));
        assert_eq!(ips[1]["address"], format!("fd00:60:{j}::2/64"));
        assert_eq!(ips[1]["gateway"], format!("fd00:60:{j}::1"));
        if version.starts_with("0.") {
            assert_eq!(ips[1]["version"], "6", "{version}: {r}");
        }
        // Usable at once: not "tentative" (no duplicate address detection).
        let a6 = pod.sh("ip -6 addr show dev eth0 scope global");
        assert!(a6.contains(&format!("fd00:60:{j}::2/64")), "{a6}");
        assert!(!a6.contains("tentative"), "{a6}");
        let br = n.host.sh("ip -6 addr show dev ferry0 scope global");
        assert!(
            br.contains(&format!("fd00:60:{j}::1/64")) && !br.contains("tentative"),
            "{br}"
        );
        let routes = pod.sh("ip -6 route show default");
        assert!(routes.contains(&format!("via fd00:60:{j}::1")), "{routes}");
        assert_eq!(
            n.host.sh("sysctl -n net.ipv6.conf.all.forwarding").trim(),
            "1"
        );
        // The MAC still follows the IPv4 address.
        let mac = pod.sh("cat /sys/class/net/eth0/address");
        assert_eq!(mac.trim(), format!("0a:58:0a:3c:{i:02x}:02"));
        assert_eq!(n.allocations().len(), 2);
        n.del("d1", Some(&pod)).ok();
        assert!(n.allocations().is_empty(), "DEL left {:?}", n.allocations());
    }
}

#[test]
fn ipv6_only_pods_talk_over_ipv6_with_their_addresses() {
    needs_root!();
    let n = node("1.0.0", json!({"subnet": "fd00:61::/64"}));
    let (pa, pb) = (Netns::new("fyd"), Netns::new("fyd"));
    let ra = n.add("a", &pa).ok();
    let rb = n.add("b", &pb).ok();
    assert_eq!(addresses(&ra), ["fd00:61::2"]);
    assert_eq!(addresses(&rb), ["fd00:61::3"]);
    // No IPv4: the MAC comes from the IPv6 address's last 4 bytes.
    assert_eq!(
        pa.sh("cat /sys/class/net/eth0/address").trim(),
        "0a:58:00:00:00:02"
    );
    assert!(pa.sh("ip -4 addr show dev eth0").trim().is_empty());
    let _srv = echo_peer_server_on(&pa, "::", 7200);
    assert_eq!(
        connect(&pb, "fd00:61::2", 7200).as_deref(),
        Some("fd00:61::3")
    );
    pa.sh("ping -6 -c1 -W2 fd00:61::1");
    n.del("a", Some(&pa)).ok();
    n.del("b", Some(&pb)).ok();
    assert!(n.allocations().is_empty());
}

#[test]
fn check_sees_a_removed_ipv6_address_or_route() {
    needs_root!();
    let (n, pod, prev) = dual_pod("10.62.0.0/24", "fd00:62::/64", "c");
    let check = || n.check("c", &pod, &prev);
    check().ok();
    pod.sh("ip -6 route del default");
    let r = check();
    assert_eq!(r.err_code(), 104, "{r:?}");
    assert!(r.msg().contains("::/0"), "{r:?}");
    pod.sh("ip -6 route add default via fd00:62::1 dev eth0");
    check().ok();
    pod.sh("ip -6 addr del fd00:62::2/64 dev eth0");
    let r = check();
    assert_eq!(r.err_code(), 104, "{r:?}");
    assert!(r.msg().contains("fd00:62::2/64"), "{r:?}");
    n.del("c", Some(&pod)).ok();
}

/// A pod's IPv6 addresses on its interface, as `ip -6 addr` lists them.
fn ipv6_addrs(pod: &Netns) -> Vec<String> {
    pod.sh("ip -6 -o addr show dev eth0")
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "inet6")?;
            w.get(i + 1).map(|a| a.to_string())
        })
        .collect()
}

/// The kernel makes no IPv6 address of its own in a pod (`addr_gen_mode` none): a pod's
/// IPv6 addresses are the ones ferry gave it, its one link-local address derived from its
/// MAC included, which the source guard and the node's policy rules know it by. A link
/// taken down and up (as a pod with NET_ADMIN can) gets no other; an IPv4-only pod has
/// none at all; CHECK sees the link-local address gone.
#[test]
fn a_pods_only_ipv6_addresses_are_the_ones_ferry_gives() {
    needs_root!();
    let (n, pod, prev) = dual_pod("10.64.0.0/24", "fd00:64::/64", "l");
    let mac = pod.sh("cat /sys/class/net/eth0/address");
    let mac: Vec<u8> = mac
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let ll = ferry_netlink::link_local(mac.try_into().unwrap());
    let want = vec![format!("fd00:64::2/64"), format!("{ll}/64")];
    let mut have = ipv6_addrs(&pod);
    have.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(have, sorted);
    assert_eq!(
        pod.sh("cat /proc/sys/net/ipv6/conf/eth0/addr_gen_mode")
            .trim(),
        "1"
    );
    pod.sh("ip link set eth0 down && ip link set eth0 up");
    // The addresses ferry added go with the link down (the kernel flushes IPv6 addresses
    // then); none comes back by itself.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        ipv6_addrs(&pod)
            .iter()
            .all(|a| !a.starts_with("fe80") || *a == want[1]),
        "{:?}",
        ipv6_addrs(&pod)
    );
    n.del("l", Some(&pod)).ok();

    let pod = Netns::new("fyd");
    let prev_ll = n.add("m", &pod).ok();
    let check = |prev: &Value| n.check("m", &pod, prev);
    check(&prev_ll).ok();
    let ll = ipv6_addrs(&pod)
        .into_iter()
        .find(|a| a.starts_with("fe80"))
        .expect("a link-local address");
    pod.sh(&format!("ip -6 addr del {ll} dev eth0"));
    let r = check(&prev_ll);
    assert_eq!(r.err_code(), 104, "{r:?}");
    assert!(r.msg().contains("link-local"), "{r:?}");
    n.del("m", Some(&pod)).ok();
    drop(prev);

    let v4 = node("1.1.0", json!({"subnet": "10.65.0.0/24"}));
    let pod = Netns::new("fyd");
    v4.add("n", &pod).ok();
    assert!(ipv6_addrs(&pod).is_empty(), "{:?}", ipv6_addrs(&pod));
    v4.del("n", Some(&pod)).ok();
}

#[test]
fn a_small_ipv6_range_runs_out_and_takes_no_ipv4() {
    needs_root!();
    let n = node(
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.63.0.0/24"}], [{"subnet": "fd00:63::/124"}]]}),
    );
    let pods: Vec<Netns> = (0..15).map(|_| Netns::new("fyd")).collect();
    for (i, p) in pods.iter().take(14).enumerate() {
        n.add(&format!("x{i}"), p).ok();
    }
    let before = n.allocations();
    assert_eq!(before.len(), 28);
    let r = n.add("x14", &pods[14]);
    assert_eq!(r.err_code(), 100, "{r:?}");
    assert_eq!(n.allocations(), before, "a failed ADD changed the store");
    assert!(!pods[14].has_link("eth0"));
    // GC keeps the valid attachments and frees both addresses of the others.
    let mut gc: Value = serde_json::from_str(&n.conf).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "x0", "ifname": "eth0"}]);
    n.call("GC", "", None).run(&gc.to_string()).ok();
    let left = n.allocations();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|a| a["containerId"] == "x0"));
    for (i, p) in pods.iter().take(14).enumerate() {
        n.del(&format!("x{i}"), Some(p)).ok();
    }
}

#[test]
fn hostile_ipv6_configs_are_refused_and_change_nothing() {
    needs_root!();
    for ipam in [
        json!({"ranges": [[{"subnet": "fd00:64::/64", "rangeStart": "fd00:65::5"}]]}),
        json!({"ranges": [[{"subnet": "fd00:64::/64", "gateway": "fd00:65::1"}]]}),
        json!({"ranges": [[{"subnet": "fd00:64::/64"}], [{"subnet": "fd00:66::/64"}]]}),
        json!({"ranges": [[{"subnet": "fd00:64::5/64"}]]}),
        json!({"subnet": "fd00:64::/127"}),
        json!({"subnet": "10.64.0.0/24", "routes": [{"dst": "::/0"}]}),
    ] {
        let n = node("1.1.0", ipam.clone());
        let pod = Netns::new("fyd");
        let r = n.add("h", &pod);
        assert_eq!(r.err_code(), 7, "{ipam}: {r:?}");
        assert!(n.allocations().is_empty(), "{ipam}");
        assert!(n.host_veths().is_empty(), "{ipam}");
        assert!(!n.host.has_link("ferry0"), "{ipam}: the bridge was made");
        assert!(!pod.has_link("eth0"), "{ipam}");
    }
}
