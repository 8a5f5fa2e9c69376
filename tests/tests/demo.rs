//! `ferry-demo` end to end, as a newcomer runs it: it must pass every check, print every
//! section, and leave nothing behind (itself, or through the script `--keep` names).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ferry_tests::needs_root;
use ferry_tests::proc::wait_until;

fn demo(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-demo"))
        .args(args)
        .output()
        .expect("run ferry-demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

/// Section 6, in either cluster: the tenants' verdicts before and after blue's allow-all
/// NetworkPolicy, and `ferry-ipam explain` naming the tier and rule of each.
const ISOLATION: [&str; 11] = [
    "6. Isolation: ClusterNetworkPolicy's tiers around NetworkPolicy",
    "ok   blue-dev/app -> blue/web: allowed (one tenant: Admin Accept)",
    "ok   green/app -> blue/web: denied (another tenant: Admin Deny)",
    "ok   demo/pod-00 -> blue/web: denied (no tenant: Baseline Deny)",
    "blue adds NetworkPolicy allow-all",
    "ok   demo/pod-00 -> blue/web: allowed (blue's NetworkPolicy overrides the Baseline)",
    "ok   green/app -> blue/web: denied (NetworkPolicy cannot reopen the Admin tier)",
    "ferry-ipam explain green/app blue/web --port 7000",
    "denied\n  egress of green/app: allowed: no policy isolates it\n  ingress of blue/web: DENIED \
     by the Admin tier: ClusterNetworkPolicy tenant-blue (Admin tier, priority 10) ingress[0] \
     \"not-from-other-tenants\": Deny\n",
    "ferry-ipam explain blue-dev/app blue/web --port 7000",
    "allowed\n  egress of blue-dev/app: allowed: no policy isolates it\n  ingress of blue/web: \
     allowed by the Admin tier: ClusterNetworkPolicy tenant-blue (Admin tier, priority 10) \
     ingress[1] \"own-tenant\": Accept\n",
];

/// Every part the demo promises, in order, and a clean result.
fn assert_every_section(out: &Output, text: &str) {
    let sections = [
        &[
            "starting an underlay switch, etcd and an API",
            "node0 192.0.2.11: ferry-overlayd ready, lease 10.244.",
            "node1 192.0.2.12: ferry-overlayd ready, lease 10.244.",
            "node2 192.0.2.13: ferry-overlayd ready, lease 10.244.",
            "overlay converged",
            "adding 6 pods and 3 tenants' pods through ferry",
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
        ][..],
        &ISOLATION,
        &["All 48 checks passed"],
    ]
    .concat();
    assert_in_order(out, text, &sections);
}

/// A clean exit, each of `expected` in order, and no failed check.
fn assert_in_order(out: &Output, text: &str, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{stderr}");
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

/// The cleanup script `--keep` names, and the namespaces it deletes; the guard runs it
/// if the test stops first.
fn kept_script(text: &str) -> (String, Vec<String>, RunOnDrop) {
    let script = text
        .lines()
        .find_map(|l| l.strip_prefix("Remove it all: sh "))
        .unwrap_or_else(|| panic!("no cleanup script named:\n{text}"))
        .to_string();
    let guard = RunOnDrop(script.clone());
    let body = std::fs::read_to_string(&script).expect("cleanup script");
    let namespaces: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("ip netns del "))
        .map(str::to_string)
        .collect();
    // The switch, etcd's host (--cri: the API's), the outside host, 3 nodes, 6 pods and the
    // tenants' 3.
    assert_eq!(namespaces.len(), 15, "{body}");
    for ns in &namespaces {
        assert!(Path::new("/run/netns").join(ns).exists(), "{ns} not kept");
    }
    (script, namespaces, guard)
}

/// Runs the hint line of `text` holding `hint` (without its comment) as a user would
/// paste it; what it printed.
fn run_hint(text: &str, hint: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(hint))
        .unwrap_or_else(|| panic!("no hint `{hint}`:\n{text}"));
    let command = line.split('#').next().unwrap_or(line).trim();
    let by_hand = Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("run the hint");
    String::from_utf8_lossy(&by_hand.stdout).into_owned()
}

/// Runs the cleanup script: it succeeds, deletes every namespace and itself.
fn run_cleanup(script: &str, namespaces: &[String]) {
    let cleaned = Command::new("sh").arg(script).output().expect("cleanup");
    assert!(cleaned.status.success(), "{cleaned:?}");
    for ns in namespaces {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} left by the cleanup script"
        );
    }
    assert!(!Path::new(script).exists(), "the script removes itself");
}

#[test]
fn the_demo_kept_is_removed_by_the_script_it_names() {
    needs_root!();
    let (out, text) = demo(&["--keep"]);
    assert_every_section(&out, &text);
    let (script, namespaces, _guard) = kept_script(&text);
    // The script names the switch first, then etcd's host: etcd still running.
    let etcd = &namespaces[1];
    let pids = Command::new("ip")
        .args(["netns", "pids", etcd])
        .output()
        .expect("ip netns pids");
    assert!(!pids.stdout.is_empty(), "etcd not kept running in {etcd}");
    // The kept cluster still answers: a hint run by hand (pod-00 to the Service).
    let seen = run_hint(&text, "cat </dev/tcp/10.96.0.10/80");
    assert!(seen.starts_with("10.244."), "{seen}");
    run_cleanup(&script, &namespaces);
}

/// The processes whose cgroup or command line holds one of `marks` (a sandbox's ID, a
/// CRI node's directory): what a CRI node left running.
fn processes_holding(marks: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let dir = PathBuf::from("/proc").join(&pid);
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if marks
            .iter()
            .any(|m| cgroup.contains(m) || cmdline.contains(m))
        {
            found.push(format!("{pid} {cmdline}"));
        }
    }
    found
}

/// Every part `--cri` promises, in order (then `ISOLATION`, and the total).
const CRI_SECTIONS: [&str; 29] = [
    "a 3-node kind cluster on this machine",
    "creating the cluster: 3 nodes, each its own containerd",
    "building ferry's image",
    "ferry's image built: ferry.test/ferry:",
    "installing ferry: apply -k deploy/kubernetes",
    "kind-control-plane 192.0.2.11: Ready, lease 10.244.",
    "kind-worker 192.0.2.12: Ready, lease 10.244.",
    "kind-worker2 192.0.2.13: Ready, lease 10.244.",
    "adding 6 pods and 3 tenants' pods through containerd's CRI",
    "a NodePort Service 10.96.0.10:80 -> pod-21",
    "1. Containers of one pod, over localhost",
    "ok   pod-00: client -> server on 127.0.0.1:8080: server saw 127.0.0.1\n",
    "2. Pod to pod, on one node and across nodes",
    "ok   30 of 30 pairs: 6 on one node, 24 across nodes",
    "3. Pod to Service: ClusterIP 10.96.0.10:80, backend pod-21 on kind-worker2",
    "-> itself (hairpin): server saw",
    "4. Outside (192.0.2.200) to NodePort 30080; pod to outside",
    "ok   outside -> kind-control-plane:30080: server saw",
    "ok   pod-00 -> outside: server saw 192.0.2.11 (kind-control-plane)",
    "5. What an operator types next (in ferry's container on kind-control-plane)",
    "-c ferry-overlayd -- ferry-ipam leases\n",
    "192.0.2.11",
    "-c ferry-overlayd -- ferry-ipam show\n",
    "capacity 253  used 2",
    "demo/pod-00",
    "demo/pod-01",
    "The runtime's view",
    "ok   Status: NetworkReady=true",
    "ok   PodSandboxStatus of demo/pod-00: ip 10.244.",
];

fn cri_sections() -> Vec<&'static str> {
    [&CRI_SECTIONS[..], &ISOLATION, &["All 50 checks passed"]].concat()
}

/// The control-plane node's sandboxes, as `ferry-ipam show` names them in `text` (its
/// CONTAINER column), and the node's directory (where its containerd's socket is).
fn control_plane_sandboxes_and_dir(text: &str) -> (Vec<&str>, &str) {
    let show = text
        .split_once("-- ferry-ipam show\n")
        .and_then(|(_, rest)| rest.split_once("The runtime's view"))
        .map(|(show, _)| show)
        .unwrap_or_else(|| panic!("no `ferry-ipam show` in:\n{text}"));
    let sandboxes: Vec<&str> = show
        .split_whitespace()
        .filter(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert_eq!(sandboxes.len(), 2, "{text}");
    let node_dir = text
        .split_once("containerd at ")
        .and_then(|(_, rest)| rest.split_once("/containerd.sock"))
        .map(|(dir, _)| dir)
        .unwrap_or_else(|| panic!("no node directory (containerd's socket) in:\n{text}"));
    (sandboxes, node_dir)
}

/// No process left in the sandboxes or naming the node's directory, the directory gone,
/// and the sandboxes' cgroups gone from every hierarchy (cgroup v2's one, or v1's per
/// controller).
fn assert_cri_node_gone(sandboxes: &[&str], node_dir: &str) {
    let mut marks = sandboxes.to_vec();
    marks.push(node_dir);
    // Killed pods' processes are reaped by init, not by the demo: a moment for that.
    wait_until(Duration::from_secs(5), || {
        processes_holding(&marks).is_empty()
    });
    let left = processes_holding(&marks);
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(!Path::new(node_dir).exists(), "{node_dir} left behind");
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .expect("/sys/fs/cgroup")
        .flatten()
        .map(|e| e.path())
        .chain([PathBuf::from("/sys/fs/cgroup")]);
    for h in hierarchies {
        for id in sandboxes {
            let c = h.join("k8s.io").join(id);
            assert!(!c.exists(), "{} left behind", c.display());
        }
    }
}

#[test]
fn the_demo_through_the_cri_passes_every_check_and_leaves_nothing() {
    needs_root!();
    let (out, text) = demo(&["--cri"]);
    assert_in_order(&out, &text, &cri_sections());
    let (sandboxes, node_dir) = control_plane_sandboxes_and_dir(&text);
    assert_cri_node_gone(&sandboxes, node_dir);
}

#[test]
fn the_demo_through_the_cri_kept_is_removed_by_the_script_it_names() {
    needs_root!();
    let (out, text) = demo(&["--cri", "--keep"]);
    // A kind cluster left running holds containerds and pods: removed even when a check
    // below fails.
    let _early = text
        .lines()
        .find_map(|l| l.strip_prefix("Remove it all: sh "))
        .map(|s| RunOnDrop(s.to_string()));
    assert_in_order(&out, &text, &cri_sections());
    let (script, namespaces, _guard) = kept_script(&text);
    // The kept cluster still answers, and its first node still holds its pods: hints by
    // hand.
    let seen = run_hint(&text, "cat </dev/tcp/10.96.0.10/80");
    assert!(seen.starts_with("10.244."), "{seen}");
    let show = run_hint(&text, "/opt/cni/bin/ferry-ipam show");
    assert!(
        show.starts_with("subnet 10.244.") && show.contains("demo/pod-00"),
        "{show}"
    );
    let (sandboxes, node_dir) = control_plane_sandboxes_and_dir(&text);
    run_cleanup(&script, &namespaces);
    assert_cri_node_gone(&sandboxes, node_dir);
}
