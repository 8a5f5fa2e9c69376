//! `ferry-bench-cri`: what the network plugin adds to a pod's start through the whole
//! runtime stack. RunPodSandbox latency on one kind-like node (`ferry_tests::kind`: its own
//! containerd, ferry installed from deploy/kubernetes as the DaemonSet) with ferry against
//! the reference `bridge` + `host-local` (+ `portmap` in both chains), switched between by
//! the conflist containerd loads, in alternating rounds so both see the same machine.
//!
//! Usage (root): `cargo build --release --workspace && target/release/ferry-bench-cri [PODS]`
//! (PODS per plugin, default 30). The first run builds ferry's image base with debootstrap
//! (about 40 s, network to a Debian mirror).

use std::time::{Duration, Instant};

use ferry_tests::kind::{image, Backend, Family, KindCluster, KindNode};
use ferry_tests::proc::wait_until;
use ferry_tests::stats::{ms, percentile};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const ROUNDS: usize = 3;
/// From the pods' creation in the API to the first RunPodSandbox.
const SCHEDULED: Duration = Duration::from_secs(1);
/// Sorts before ferry's 00-ferry.conflist (runtimes take the first name, bytewise: '-'
/// before '0'), so that containerd loads it while it is there.
const REFERENCE: &str = "/etc/cni/net.d/0-reference.conflist";

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

/// Makes containerd load `network` (the reference conflist, while present, sorts before
/// ferry's) and waits until it has.
fn switch(node: &KindNode, network: &str) {
    let path = node.path(REFERENCE);
    if network == "reference" {
        std::fs::write(&path, reference_conflist()).expect("write reference conflist");
    } else {
        let _ = std::fs::remove_file(&path);
    }
    let cri = node.cri();
    let loaded = wait_until(Duration::from_secs(20), || {
        cri.cni_network().is_some_and(|(name, _)| name == network)
    });
    assert!(loaded, "containerd did not load {network}");
}

/// A pod as the scheduler leaves it for the node's kubelet: in the API (ferry's
/// NetworkPolicy watch sees it there), bound to the node.
fn bench_pod(node: &str, name: &str, n: usize) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("bench".into()),
            uid: Some(format!(
                "{:08x}-0000-4000-8000-bench{n:07x}",
                std::process::id()
            )),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            ..Default::default()
        }),
        status: None,
    }
}

fn main() {
    if !ferry_tests::is_root() {
        eprintln!("ferry-bench-cri needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    let pods: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let per_round = pods.div_ceil(ROUNDS);
    println!(
        "Starting a one-node kind cluster (containerd, the kubelet stand-in) and installing \
         ferry from deploy/kubernetes (the first run debootstraps its image's base)..."
    );
    let mut c = KindCluster::create(Family::Ipv4, 0, Backend::Nft);
    c.install(image::ferry(), Duration::from_secs(180));
    let node = &c.nodes[0];
    // kind's node image ships no bridge plugin; the reference chain needs it.
    let bridge = std::path::Path::new(ferry_tests::REFERENCE_PLUGINS).join("bridge");
    std::fs::copy(&bridge, node.path("/opt/cni/bin/bridge"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", bridge.display()));
    let cri = node.cri();
    let _ = c.api.create(Namespace {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            ..Default::default()
        },
        ..Default::default()
    });

    let sides = ["ferry", "reference"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); sides.len()];
    let mut n = 0;
    for round in 0..ROUNDS {
        for (s, side) in sides.iter().enumerate() {
            switch(node, side);
            // The round's pods are in the API (bound to the node) before its kubelet starts
            // the first: on a cluster the scheduler's binding comes well before the
            // kubelet's RunPodSandbox, so ferry's NetworkPolicy watch has seen the pod by
            // its ADD. Made and timed at once, the ADD would wait on that watch instead.
            let pods: Vec<Pod> = (0..per_round)
                .map(|i| {
                    n += 1;
                    bench_pod(&node.name, &format!("{side}-{round}-{i}"), n)
                })
                .collect();
            for pod in &pods {
                let _ = c.api.create(pod.clone());
            }
            std::thread::sleep(SCHEDULED);
            for pod in &pods {
                let config = ferry_tests::kind::spec::sandbox_config(pod, 0);
                let t = Instant::now();
                let id = cri
                    .run_sandbox(config)
                    .unwrap_or_else(|e| panic!("RunPodSandbox ({side}): {e:?}"));
                times[s].push(t.elapsed());
                cri.stop_pod(&id).expect("StopPodSandbox");
                cri.remove_pod(&id).expect("RemovePodSandbox");
            }
            for pod in &pods {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                let _ = c.api.delete::<Pod>(Some("bench"), name);
            }
        }
    }
    switch(node, "ferry");
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
    drop(cri);
    drop(c);
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
