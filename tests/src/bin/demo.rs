//! `ferry-demo`: a 3-node cluster built out of namespaces on this machine, with a real
//! etcd, `ferry-overlayd` on every node and pods added through `ferry`; prints who reaches
//! whom, then removes everything (or, with `--keep`, leaves it running and says how to
//! look around and clean up).

use std::fmt::Write as _;
use std::io::Write as _;

use ferry_tests::cluster::{Cluster, OUTSIDE_IP};
use ferry_tests::proc::{connect, echo_peer_server};

const CIDR: &str = "10.244.0.0/16";
const PORT: u16 = 7000;

fn main() {
    let keep = std::env::args().any(|a| a == "--keep");
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("ferry-demo needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    println!("Building a 3-node cluster: an underlay switch, etcd, ferry-overlayd on each node...");
    let c = Cluster::new(3, CIDR);
    println!(
        "\n{:<7} {:<12} {:<16} {:<19} NAMESPACE",
        "NODE", "UNDERLAY", "POD SUBNET", "VTEP MAC"
    );
    for n in &c.nodes {
        println!(
            "{:<7} {:<12} {:<16} {:<19} {}",
            n.name,
            n.ip,
            n.subnet(),
            n.vtep_mac(),
            n.host.name
        );
    }

    let pods: Vec<_> = c
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| (0..2).map(move |k| (i, n.add_pod(&format!("pod-{i}{k}")))))
        .collect();
    let _servers: Vec<_> = pods
        .iter()
        .map(|(_, p)| echo_peer_server(&p.ns, PORT))
        .collect();
    let _outside = echo_peer_server(&c.outside, PORT);

    let mut table = String::new();
    let _ = write!(table, "{:<27}", "FROM \\ TO");
    for (i, p) in &pods {
        let _ = write!(table, "{:<13}", format!("{}@node{i}", &p.id[4..]));
    }
    let _ = writeln!(table, "outside ({OUTSIDE_IP})");
    let mut failures = 0;
    for (i, a) in &pods {
        let _ = write!(table, "{:<27}", format!("{} {} @node{i}", a.id, a.ip));
        for (_, b) in &pods {
            let cell = if a.id == b.id {
                "-".to_string()
            } else {
                match connect(&a.ns, &b.ip, PORT) {
                    Some(seen) if seen == a.ip => "ok".to_string(),
                    Some(seen) => {
                        failures += 1;
                        format!("NAT {seen}")
                    }
                    None => {
                        failures += 1;
                        "FAIL".to_string()
                    }
                }
            };
            let _ = write!(table, "{cell:<13}");
        }
        let out = match connect(&a.ns, OUTSIDE_IP, PORT) {
            Some(seen) => format!("ok, seen as {seen}"),
            None => {
                failures += 1;
                "FAIL".to_string()
            }
        };
        let _ = writeln!(table, "{out}");
    }
    println!("\nTCP between every pair of pods (ok: the server saw the client's own pod IP),");
    println!("and to a host outside the cluster (masqueraded to the node's address):\n");
    print!("{table}");
    let _ = std::io::stdout().flush();
    println!(
        "\n{} of {} checks passed.",
        pods.len() * pods.len() - failures,
        pods.len() * pods.len()
    );

    if keep {
        let script = cleanup_script(&c, &pods);
        let path =
            std::env::temp_dir().join(format!("ferry-demo-cleanup-{}.sh", std::process::id()));
        let _ = std::fs::write(&path, script);
        let n0 = &c.nodes[0];
        let (_, p0) = &pods[0];
        println!(
            "\nKept running. Look around:\n\
             \x20 ip netns list\n\
             \x20 ip netns exec {h} ip route                      # a route per remote node via ferry.1\n\
             \x20 ip netns exec {h} bridge fdb show dev ferry.1   # remote VTEPs\n\
             \x20 ip netns exec {h} ip -d link show ferry0        # the bridge and pods' veths\n\
             \x20 ip netns exec {p} ip addr                       # a pod\n\
             \x20 {ipam} show --data-dir {data}\n\
             \x20 ip netns exec {h} python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9797/metrics').read().decode())\"\n\
             \x20 ETCDCTL_API=3 ip netns exec {e} etcdctl --endpoints {ep} get {prefix}/ --prefix\n\
             Remove it all: sh {cleanup}",
            h = n0.host.name,
            p = p0.ns.name,
            ipam = ferry_tests::bin("ferry-ipam").display(),
            data = n0.dir.path().join("ipam").display(),
            e = c.etcd.host.name,
            ep = c.etcd.endpoint(),
            prefix = c.prefix,
            cleanup = path.display(),
        );
        std::mem::forget(_servers);
        std::mem::forget(_outside);
        std::mem::forget(pods);
        std::mem::forget(c);
        return;
    }
    println!("\nRemoving the cluster (run with --keep to look around first).");
    drop(pods);
    drop(c);
    if failures > 0 {
        std::process::exit(1);
    }
}

/// Everything `--keep` leaves: the processes (by PID) and namespaces of this demo only.
fn cleanup_script(c: &Cluster, pods: &[(usize, ferry_tests::cluster::Pod)]) -> String {
    let mut s = String::from("#!/bin/sh\n# Removes what ferry-demo --keep left running.\n");
    for ns in c
        .all_namespaces()
        .into_iter()
        .chain(pods.iter().map(|(_, p)| p.ns.name.clone()))
    {
        let _ = writeln!(s, "for p in $(ip netns pids {ns}); do kill $p; done");
    }
    s.push_str("sleep 1\n");
    for ns in c
        .all_namespaces()
        .into_iter()
        .chain(pods.iter().map(|(_, p)| p.ns.name.clone()))
    {
        let _ = writeln!(s, "ip netns del {ns}");
    }
    for d in c.all_dirs() {
        let _ = writeln!(s, "rm -rf {}", d.display());
    }
    s
}
