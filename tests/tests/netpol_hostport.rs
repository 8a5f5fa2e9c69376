//! NetworkPolicy on the hostPort path: the reference `portmap` plugin chained after ferry,
//! as the shipped conflist chains it, DNATs a node port to the pod; the connection reaches
//! the pod through the node's forward hook, and the pod's ingress policy judges its real
//! source, over IPv4 and IPv6. Nodes, etcd, iptables, nftables and traffic are real; the
//! API is the tests' stand-in.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ferry_tests::cni::Call;
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::netpol::l2::{self, TcpServer};
use ferry_tests::netpol::world::World;
use ferry_tests::proc::wait_until;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

const HOST_PORT: u16 = 8080;
const CONTAINER_PORT: u16 = 80;
/// Two hosts on the underlay that are not nodes: the policy admits the first.
const ADMITTED: [&str; 2] = ["192.0.2.202", "2001:db8::202"];
const STRANGER: [&str; 2] = ["192.0.2.201", "2001:db8::201"];

/// A host on the switch at `ips` (IPv4, IPv6).
fn host(w: &World, ips: [&str; 2]) -> Netns {
    let h = w.cluster.stranger(ips[0]);
    h.sh(&format!("ip -6 addr add {}/64 dev eth0 nodad", ips[1]));
    h
}

/// Node 0's policy table and portmap's rules, for a failure's report.
fn tables(w: &World) -> String {
    w.cluster.nodes[0].host.sh(
        "nft list table inet ferry_policy; iptables-save -t nat | grep -i hostport; \
         ip6tables-save -t nat | grep -i hostport; true",
    )
}

/// The pod's addresses from a CNI result.
fn addresses(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// portmap, as a runtime runs the conflist's second plugin: the same attachment, ferry's
/// result as `prevResult`, the pod's port mapping in `runtimeConfig`.
fn portmap(host: &Netns, command: &str, id: &str, netns: &Path, prev: &Value) -> Value {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ferry", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"}]},
        "prevResult": prev,
    });
    let call = Call {
        host,
        plugin: Path::new(ferry_tests::REFERENCE_PLUGINS).join("portmap"),
        command,
        container_id: id,
        netns: Some(netns.to_path_buf()),
        ifname: "eth0",
        cni_path: ferry_tests::cni::cni_path(),
    };
    let r = call.run(&conf.to_string());
    if command == "ADD" {
        r.ok()
    } else {
        Value::Null
    }
}

#[test]
fn network_policy_holds_on_the_host_port_path_in_both_families() {
    needs_root!();
    let mut w = World::dual_stack();
    w.cluster.add_underlay_v6();
    let (admitted, stranger) = (host(&w, ADMITTED), host(&w, STRANGER));
    let (node_ip, node_ip6): (IpAddr, IpAddr) = (
        w.cluster.nodes[0].ip.parse().unwrap(),
        "2001:db8::11".parse().unwrap(),
    );

    // x/hp on node 0, made as a kubelet makes it, its sandbox wired by ferry then portmap.
    let node_name = w.cluster.nodes[0].name.clone();
    let object: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hp", "namespace": "x", "labels": {"pod": "hp"}},
        "spec": {"nodeName": node_name, "containers": [{"name": "serve",
                 "ports": [{"containerPort": CONTAINER_PORT, "hostPort": HOST_PORT}]}]},
    }))
    .unwrap();
    w.api().create(object).unwrap();
    let netns = Netns::new("fyp");
    let _server = TcpServer::start(&netns, CONTAINER_PORT).expect("a server in the pod");
    let id = ferry_tests::unique("hp");
    let saved = w.cluster.nodes[0].conf_extra.clone();
    ferry_tests::cni::merge(
        &mut w.cluster.nodes[0].conf_extra,
        json!({"cniVersion": "1.0.0"}),
    );
    let n = &w.cluster.nodes[0];
    let prev = n
        .cni_as(
            "ADD",
            &id,
            Some(&netns),
            Some("K8S_POD_NAMESPACE=x;K8S_POD_NAME=hp"),
        )
        .ok();
    let chained = portmap(&n.host, "ADD", &id, &netns.path(), &prev);
    assert_eq!(
        chained["ips"], prev["ips"],
        "portmap passes ferry's result on"
    );
    let ips = addresses(&prev);
    assert_eq!(ips.len(), 2, "{prev}");
    let mut obj: Pod = w.api().get(Some("x"), "hp").unwrap();
    obj.status = serde_json::from_value(json!({"phase": "Running",
        "podIP": ips[0].to_string(),
        "podIPs": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>()}))
    .unwrap();
    w.api().update(obj).unwrap();

    let reaches =
        |from: &Netns, to: IpAddr| l2::tcp(from, to, HOST_PORT, Duration::from_millis(500));
    let becomes = |from: &Netns, to: IpAddr, want: bool| {
        wait_until(Duration::from_secs(15), || reaches(from, to) == want)
    };
    // No policy: the host port answers in both families, from anyone.
    for to in [node_ip, node_ip6] {
        assert!(
            becomes(&admitted, to, true) && becomes(&stranger, to, true),
            "{to}:{HOST_PORT} does not reach the pod without policies\n{}",
            tables(&w)
        );
    }
    // Isolated with nothing allowed: refused at the host port too.
    w.put_policy(
        "x",
        "hp-deny",
        &json!({"podSelector": {"matchLabels": {"pod": "hp"}}, "policyTypes": ["Ingress"]}),
        false,
    )
    .unwrap();
    for to in [node_ip, node_ip6] {
        assert!(
            becomes(&admitted, to, false),
            "{to}:{HOST_PORT} reaches a pod whose policy denies everything\n{}",
            tables(&w)
        );
        assert!((0..3).all(|_| !reaches(&stranger, to)));
    }
    // Admitting the outside host by ipBlock: its connections through the host port come
    // with their own source, which the policy judges; the stranger's stay refused.
    w.put_policy(
        "x",
        "hp-from-outside",
        &json!({"podSelector": {"matchLabels": {"pod": "hp"}}, "ingress": [{"from": [
            {"ipBlock": {"cidr": format!("{}/32", ADMITTED[0])}},
            {"ipBlock": {"cidr": format!("{}/128", ADMITTED[1])}}],
            "ports": [{"port": CONTAINER_PORT}]}]}),
        false,
    )
    .unwrap();
    for to in [node_ip, node_ip6] {
        assert!(
            becomes(&admitted, to, true),
            "{to}:{HOST_PORT}: the admitted host is refused\n{}",
            tables(&w)
        );
        assert!(
            (0..3).all(|_| !reaches(&stranger, to)),
            "{to}:{HOST_PORT}: the stranger is admitted"
        );
    }

    portmap(&w.cluster.nodes[0].host, "DEL", &id, &netns.path(), &prev);
    w.cluster.nodes[0].cni("DEL", &id, Some(&netns)).ok();
    w.cluster.nodes[0].conf_extra = saved;
}
