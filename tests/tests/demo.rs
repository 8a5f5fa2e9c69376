//! `ferry-demo` end to end, as a newcomer runs it: it must pass every check, print every
//! section, and leave nothing behind (itself, or through the script `--keep` names).

use std::path::Path;
use std::process::{Command, Output};

use ferry_tests::root_or_skip;

macro_rules! needs_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

fn demo(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-demo"))
        .args(args)
        .output()
        .expect("run ferry-demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

/// Every part the demo promises, in order, and a clean result.
fn assert_every_section(out: &Output, text: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{stderr}");
    let expected = [
        "starting an underlay switch and etcd",
        "node0 192.0.2.11: ferry-overlayd ready, lease 10.244.",
        "node1 192.0.2.12: ferry-overlayd ready, lease 10.244.",
        "node2 192.0.2.13: ferry-overlayd ready, lease 10.244.",
        "overlay converged",
        "adding 6 pods through ferry",
        "1. Containers of one pod, over localhost",
        "ok   pod-00: client -> server on 127.0.0.1:8080: server saw 127.0.0.1\n",
        "2. Pod to pod, on one node and across nodes",
        "ok   30 of 30 pairs: 6 on one node, 24 across nodes",
        "3. Pod to Service: ClusterIP 10.96.0.10:80",
        "-> itself (hairpin): server saw",
        "4. Outside (192.0.2.200) to NodePort 30080; pod to outside",
        "ok   outside -> node0:30080: server saw",
        "ok   pod-00 -> outside: server saw 192.0.2.11 (node0)",
        "5. What an operator types next (on node0)",
        "$ ferry-ipam leases --etcd-endpoints http://192.0.2.2:2379",
        "NODE   SUBNET",
        "$ ferry-ipam show --data-dir",
        "capacity 253  used 2",
        "All 41 checks passed",
    ];
    let mut from = 0;
    for e in expected {
        let at = text[from..]
            .find(e)
            .unwrap_or_else(|| panic!("`{e}` missing (or out of order) in:\n{text}"));
        from += at + e.len();
    }
    assert!(
        !text.lines().any(|l| l.starts_with("FAIL")),
        "a check failed:\n{text}"
    );
}

/// Runs the cleanup script if the test stops before it does (the script deletes itself).
struct RunOnDrop(String);

impl Drop for RunOnDrop {
    fn drop(&mut self) {
        if Path::new(&self.0).exists() {
            let _ = Command::new("sh").arg(&self.0).output();
        }
    }
}

#[test]
fn the_demo_passes_every_check_and_removes_its_cluster() {
    needs_root!();
    let (out, text) = demo(&[]);
    assert_every_section(&out, &text);
    assert!(text.contains("--keep"), "{text}");
    // The pods' namespaces `ferry-ipam show` listed are gone with the rest.
    let pods: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.starts_with("/run/netns/"))
        .collect();
    assert_eq!(pods.len(), 2, "{text}");
    for p in pods {
        assert!(!Path::new(p).exists(), "{p} left behind");
    }
}

#[test]
fn the_demo_kept_is_removed_by_the_script_it_names() {
    needs_root!();
    let (out, text) = demo(&["--keep"]);
    assert_every_section(&out, &text);
    let script = text
        .lines()
        .find_map(|l| l.strip_prefix("Remove it all: sh "))
        .unwrap_or_else(|| panic!("no cleanup script named:\n{text}"))
        .to_string();
    let _guard = RunOnDrop(script.clone());
    let body = std::fs::read_to_string(&script).expect("cleanup script");
    let namespaces: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("ip netns del "))
        .collect();
    // The switch, etcd, outside host, 3 nodes and 6 pods, and etcd still running.
    assert_eq!(namespaces.len(), 12, "{body}");
    for ns in &namespaces {
        assert!(Path::new("/run/netns").join(ns).exists(), "{ns} not kept");
    }
    // The script names the switch first, then etcd's host.
    let etcd = &namespaces[1];
    let pids = Command::new("ip")
        .args(["netns", "pids", etcd])
        .output()
        .expect("ip netns pids");
    assert!(!pids.stdout.is_empty(), "etcd not kept running in {etcd}");
    // The kept cluster still answers: a hint run by hand (pod-00 to the Service).
    let hint = text
        .lines()
        .find(|l| l.contains("cat </dev/tcp/10.96.0.10/80"))
        .unwrap_or_else(|| panic!("no Service hint:\n{text}"));
    let by_hand = Command::new("sh")
        .args(["-c", hint.trim()])
        .output()
        .expect("run the hint");
    assert!(
        String::from_utf8_lossy(&by_hand.stdout).starts_with("10.244."),
        "{hint}: {by_hand:?}"
    );

    let cleaned = Command::new("sh").arg(&script).output().expect("cleanup");
    assert!(cleaned.status.success(), "{cleaned:?}");
    for ns in &namespaces {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} left by the cleanup script"
        );
    }
    assert!(!Path::new(&script).exists(), "the script removes itself");
}
