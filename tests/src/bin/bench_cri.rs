//! `ferry-bench-cri`: what the network plugin adds to a pod's start through the whole
//! runtime stack. RunPodSandbox latency on one CRI node (a private containerd, as in the CRI
//! tests) with ferry against the reference `bridge` + `host-local` (+ `portmap` in both
//! chains), switched between by the conflist containerd loads, in alternating rounds so
//! both see the same machine.
//!
//! Usage (root): `cargo build --release --workspace && target/release/ferry-bench-cri [PODS]`
//! (PODS per plugin, default 30).

use std::time::{Duration, Instant};

use ferry_tests::cluster::Cluster;
use ferry_tests::cri::{CriNode, PodSpec};
use ferry_tests::proc::wait_until;
use ferry_tests::stats::{ms, percentile};

const ROUNDS: usize = 3;

fn reference_conflist() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// Makes containerd load `network` (the reference conflist sorts before ferry's, and
/// containerd loads the first one) and waits until it has.
fn switch(node: &CriNode, network: &str) {
    let path = node.path("/etc/cni/net.d/05-reference.conflist");
    if network == "reference" {
        std::fs::write(&path, reference_conflist()).expect("write reference conflist");
    } else {
        let _ = std::fs::remove_file(&path);
    }
    let loaded = wait_until(Duration::from_secs(20), || {
        node.cri
            .cni_network()
            .is_some_and(|(name, _)| name == network)
    });
    assert!(loaded, "containerd did not load {network}");
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("ferry-bench-cri needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    let pods: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let per_round = pods.div_ceil(ROUNDS);
    println!("Starting one CRI node (containerd, ferry installed, ferry-overlayd)...");
    let c = Cluster::new(0, "10.244.0.0/16");
    let mut node = CriNode::start(&c, 0);
    node.install_ferry();
    node.start_overlayd();

    let sides = ["ferry", "reference"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); sides.len()];
    for round in 0..ROUNDS {
        for (s, side) in sides.iter().enumerate() {
            switch(&node, side);
            for i in 0..per_round {
                let spec = PodSpec::new("bench", &format!("{side}-{round}-{i}"));
                let t = Instant::now();
                let id = node
                    .cri
                    .run_pod(&spec)
                    .unwrap_or_else(|e| panic!("RunPodSandbox ({side}): {e:?}"));
                times[s].push(t.elapsed());
                node.cri.stop_pod(&id).expect("StopPodSandbox");
                node.cri.remove_pod(&id).expect("RemovePodSandbox");
            }
        }
    }
    println!(
        "\nCRI RunPodSandbox through containerd {}, {} pods per plugin, {ROUNDS} alternating rounds\n",
        containerd_version(),
        times[0].len()
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "network", "p50", "p90", "min"
    );
    for (s, side) in sides.iter().enumerate() {
        let label = if *side == "ferry" {
            "ferry + portmap"
        } else {
            "bridge + host-local + portmap"
        };
        println!(
            "{label:<28} {:>10} {:>10} {:>10}",
            ms(percentile(&times[s], 0.5)),
            ms(percentile(&times[s], 0.9)),
            ms(percentile(&times[s], 0.0)),
        );
    }
    let d = percentile(&times[0], 0.5).as_secs_f64() - percentile(&times[1], 0.5).as_secs_f64();
    println!(
        "\nferry's p50 is {:.1} ms {} the reference's",
        d.abs() * 1000.0,
        if d <= 0.0 { "below" } else { "above" }
    );
    drop(node);
}

fn containerd_version() -> String {
    std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}
