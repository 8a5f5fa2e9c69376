//! `ferry-ipam doctor` on a node of the kit's cluster: clean on a healthy node, and each
//! failure injected by hand named by the right check within 10 s, then clean again once
//! repaired. The doctor runs inside the node's namespace as an operator runs it on a node,
//! pointed at the node's state directory and at a CNI config directory the node's daemon
//! installs its conflist into (the kit's daemons have no runtime directory of their own).
//!
//! Run with `--nocapture` to see each finding as the doctor prints it (docs/
//! troubleshooting.md shows these).

use std::path::Path;
use std::time::Duration;

use ferry_tests::cluster::{Cluster, Node};
use ferry_tests::needs_root;
use ferry_tests::proc::wait_until;
use serde_json::Value;

/// How soon a failure must be named, and a repair seen.
const WITHIN: Duration = Duration::from_secs(10);

/// The runtime's directories as the test gives them to the daemons and the doctor: the
/// conflist source, the config directory the daemons install it into, a bin directory
/// holding the plugins it names.
struct Dirs {
    src: tempfile::TempDir,
    conf: tempfile::TempDir,
    bin: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let d = Dirs {
            src: tempfile::tempdir().expect("tempdir"),
            conf: tempfile::tempdir().expect("tempdir"),
            bin: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::write(
            d.conflist(),
            r#"{"cniVersion":"1.0.0","name":"ferry","plugins":[{"type":"ferry","ipam":{"type":"ferry-ipam"}}]}"#,
        )
        .expect("write conflist");
        for p in ["ferry", "ferry-ipam"] {
            std::os::unix::fs::symlink(ferry_tests::bin(p), d.bin.path().join(p))
                .expect("symlink plugin");
        }
        d
    }

    fn conflist(&self) -> std::path::PathBuf {
        self.src.path().join("conflist")
    }

    /// The daemons' flags installing the conflist.
    fn flags(&self) -> Vec<String> {
        vec![
            "--cni-conf-dir".into(),
            self.conf.path().display().to_string(),
            "--cni-conflist".into(),
            self.conflist().display().to_string(),
        ]
    }
}

fn cluster(nodes: usize, d: &Dirs) -> Cluster {
    let c = Cluster::builder().nodes(nodes).flags(d.flags()).build();
    let installed = d.conf.path().join("00-ferry.conflist");
    assert!(
        wait_until(WITHIN, || installed.exists()),
        "conflist not installed:\n{}",
        c.nodes[0].log()
    );
    c
}

/// `ferry-ipam doctor` on `n` with `-o json` and the table: (exit code, JSON, table).
fn doctor(n: &Node, d: &Dirs) -> (Option<i32>, Value, String) {
    let cmd = |o: &str| {
        format!(
            "{} doctor --state-dir {} --cni-conf-dir {} --cni-bin-dir {} -o {o}",
            ferry_tests::bin("ferry-ipam").display(),
            n.state_dir().display(),
            d.conf.path().display(),
            d.bin.path().display()
        )
    };
    let json = n.host.try_sh(&cmd("json"));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor -o json: {e}: {}{}",
            String::from_utf8_lossy(&json.stdout),
            String::from_utf8_lossy(&json.stderr)
        )
    });
    let table = n.host.try_sh(&cmd("table"));
    (
        json.status.code(),
        v,
        String::from_utf8_lossy(&table.stdout).into_owned(),
    )
}

fn checks(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["check"].as_str().map(str::to_string))
        .collect()
}

/// Waits until the doctor exits 1 naming `check`; prints its table (the docs' output).
fn assert_named(n: &Node, d: &Dirs, check: &str) -> Value {
    let mut last = (None, Value::Null, String::new());
    let named = wait_until(WITHIN, || {
        last = doctor(n, d);
        last.0 == Some(1) && checks(&last.1).iter().any(|c| c == check)
    });
    println!("--- {check}:\n{}", last.2);
    assert!(
        named,
        "doctor did not name {check} within {WITHIN:?}: exit {:?}\n{}\n{}",
        last.0,
        last.2,
        n.log()
    );
    let f = last.1["findings"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["check"] == check))
        .cloned()
        .unwrap_or_default();
    for k in ["severity", "saw", "why", "doc"] {
        assert!(f[k].as_str().is_some_and(|s| !s.is_empty()), "{k} in {f}");
    }
    assert_eq!(f["doc"], format!("docs/troubleshooting.md#{check}"));
    f
}

/// Waits until the doctor exits 0 with no finding.
fn assert_clean(n: &Node, d: &Dirs) {
    let mut last = (None, Value::Null, String::new());
    let clean = wait_until(WITHIN, || {
        last = doctor(n, d);
        last.0 == Some(0) && checks(&last.1).is_empty()
    });
    assert!(
        clean,
        "doctor not clean within {WITHIN:?}: exit {:?}\n{}\n{}",
        last.0,
        last.2,
        n.log()
    );
}

/// Restarts node `i`'s daemon with /proc/sys read-only, as in ferry's container: it can
/// no longer set a sysctl back, only see it off (the sysctls it set before stay).
fn read_only_proc_sys(c: &mut Cluster, i: usize) {
    let n = &mut c.nodes[i];
    n.stop_daemon();
    n.start_daemon_under(
        "unshare -m --propagation private sh -c 'mount --bind /proc/sys /proc/sys && \
         mount -o remount,bind,ro /proc/sys && exec \"$@\"' sh",
    );
    n.wait_answering();
}

#[test]
fn a_healthy_node_has_no_findings() {
    needs_root!();
    let d = Dirs::new();
    let c = cluster(2, &d);
    let _pod = c.nodes[0].add_pod("a");
    let (code, v, table) = doctor(&c.nodes[0], &d);
    println!("{table}");
    assert_eq!(code, Some(0), "{table}\n{}", c.nodes[0].log());
    assert_eq!(v["findings"], serde_json::json!([]), "{v}");
    assert_eq!(v["node"], c.nodes[0].name.as_str());
    assert!(table.starts_with("no findings on node0"), "{table}");
    // The daemon's drift file is there, naming the devices it wants.
    let drift: Value = serde_json::from_slice(
        &std::fs::read(c.nodes[0].state_dir().join("drift.json")).expect("drift.json"),
    )
    .expect("drift.json parses");
    assert_eq!(drift["vxlan"]["name"], "ferry.1", "{drift}");
    assert!(drift.get("spared").is_none(), "{drift}");
}

#[test]
fn bridge_netfilter_off_is_named_and_clears() {
    needs_root!();
    let d = Dirs::new();
    let mut c = cluster(1, &d);
    read_only_proc_sys(&mut c, 0);
    let n = &c.nodes[0];
    // Per network namespace on this kernel: only the node's is turned off.
    n.host.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=0");
    let f = assert_named(n, &d, "bridge-netfilter");
    assert!(
        f["saw"]
            .as_str()
            .is_some_and(|s| s.starts_with("net.bridge.bridge-nf-call-iptables is 0")),
        "{f}"
    );
    n.host.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=1");
    assert_clean(n, &d);
}

#[test]
fn a_cni_config_sorting_first_is_named_and_clears() {
    needs_root!();
    let d = Dirs::new();
    let c = cluster(1, &d);
    let other = d.conf.path().join("00-calico.conflist");
    std::fs::write(
        &other,
        r#"{"name":"k8s-pod-network","plugins":[{"type":"calico"}]}"#,
    )
    .expect("write other config");
    let f = assert_named(&c.nodes[0], &d, "cni-config");
    assert!(
        f["saw"]
            .as_str()
            .is_some_and(|s| s.contains("00-calico.conflist") && s.contains("sorts before")),
        "{f}"
    );
    std::fs::remove_file(&other).expect("remove other config");
    assert_clean(&c.nodes[0], &d);
}

#[test]
fn a_stopped_daemon_is_named_and_clears() {
    needs_root!();
    let d = Dirs::new();
    let mut c = cluster(1, &d);
    c.nodes[0].stop_daemon();
    let f = assert_named(&c.nodes[0], &d, "daemon");
    assert!(
        f["saw"]
            .as_str()
            .is_some_and(|s| s.contains("nothing answers /readyz at 127.0.0.1:9797")),
        "{f}"
    );
    c.nodes[0].start_daemon();
    c.nodes[0].wait_answering();
    assert_clean(&c.nodes[0], &d);
}

#[test]
fn a_route_ferry_must_spare_is_named_with_its_node_and_clears() {
    needs_root!();
    let d = Dirs::new();
    let c = cluster(2, &d);
    let (n, peer) = (&c.nodes[0], &c.nodes[1]);
    let subnet = peer.subnet();
    // Someone else's route to the peer's pod subnet, in place of ferry's: ferry never
    // replaces it, so the daemon's check can only report it.
    n.host
        .sh(&format!("ip route replace {subnet} dev eth0 proto static"));
    let f = assert_named(n, &d, "datapath");
    let saw = f["saw"].as_str().unwrap_or_default();
    assert!(
        saw.contains(&subnet) && saw.contains(&format!("node {}", peer.name)),
        "{f}"
    );
    n.host
        .sh(&format!("ip route del {subnet} dev eth0 proto static"));
    assert_clean(n, &d);
    // ferry's own route is back, on whichever path (VXLAN or direct).
    assert!(n.ferry_routes().contains(&subnet), "{}", n.log());
}

#[test]
fn a_vxlan_mtu_changed_by_hand_is_named_and_mended() {
    needs_root!();
    let d = Dirs::new();
    let c = cluster(1, &d);
    let n = &c.nodes[0];
    let pid = n.daemon_pid().expect("daemon pid");
    // Between two of the daemon's checks, held still so that it does not mend at once:
    // the doctor sees the device as a person who changed it does.
    let signal = |sig| {
        // SAFETY: kill(2) on the daemon this test's cluster started.
        let rc = unsafe { libc::kill(pid as i32, sig) };
        assert_eq!(rc, 0, "kill {pid}");
    };
    signal(libc::SIGSTOP);
    n.host.sh("ip link set ferry.1 mtu 1300");
    let f = assert_named(n, &d, "mtu");
    signal(libc::SIGCONT);
    assert!(
        f["saw"]
            .as_str()
            .is_some_and(|s| s.contains("ferry.1 has MTU 1300, ferry-overlayd keeps it at 1450")),
        "{f}"
    );
    // The repair: the daemon's next check.
    assert_clean(n, &d);
    assert!(
        Path::new("/proc").join(pid.to_string()).exists(),
        "daemon gone"
    );
}

#[test]
fn a_shrunk_underlay_mtu_is_named_and_clears() {
    needs_root!();
    let d = Dirs::new();
    let c = cluster(1, &d);
    let n = &c.nodes[0];
    n.host.sh("ip link set eth0 mtu 1400");
    let f = assert_named(n, &d, "mtu");
    assert!(
        f["saw"]
            .as_str()
            .is_some_and(|s| s.contains("underlay eth0 has MTU 1400: 1400 - 50 (VXLAN overhead) = 1350, less than ferry.1's 1450")),
        "{f}"
    );
    n.host.sh("ip link set eth0 mtu 1500");
    assert_clean(n, &d);
}
