//! `ferry-bench-cni`: per-pod ADD and DEL latency of `ferry` (with ferry-ipam in-process)
//! against the reference `bridge` + `host-local` (Debian's containernetworking-plugins),
//! both giving the same result (gateway on the bridge, hairpin, no masquerade), run
//! alternately in one process so that both see the same machine.
//!
//! Each call is a real exec of the plugin, entered into its host namespace by `setns` in
//! the child (no `ip netns exec`, whose mount work would dilute the comparison), and into
//! a mount namespace whose `/sys` is that host's, as a runtime on a node has it.
//!
//! Usage (root): `cargo build --release --workspace && target/release/ferry-bench-cni [PODS]`
//! for per-call latency over sequential pods, or `ferry-bench-cni burst [PODS [PARALLEL]]`
//! (default 120 pods, 16 at a time) for a burst of ADDs then DELs, end to end, or
//! `ferry-bench-cni dual [PODS]` for ferry's dual-stack ADD (IPv4 + IPv6) against its
//! IPv4-only ADD, sequential and alternating like the first.
//!
//! The plugins measured are the ones beside this binary, or those in `FERRY_BIN_DIR`: the
//! image ships static-pie plugins, so measure those with
//! `deploy/build-plugins.sh && FERRY_BIN_DIR=target/plugins target/release/ferry-bench-cni ...`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::cni::{exec, in_host_mounted, HostMounts, Reply};
use ferry_tests::netns::Netns;
use serde_json::json;

struct Side {
    label: &'static str,
    plugin: PathBuf,
    host: Netns,
    host_fd: File,
    mounts: HostMounts,
    conf: String,
    cni_path: String,
    _data: tempfile::TempDir,
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// ferry only: from DEL's start until the background reaper has removed the veth.
    gone: Vec<Duration>,
    version: Vec<Duration>,
}

impl Side {
    fn call(&self, command: &str, cid: &str, pod: &Netns) -> (Duration, Reply) {
        let mut cmd = in_host_mounted(&self.host_fd, &self.mounts, &self.plugin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path);
        let t = Instant::now();
        let r = exec(cmd, &self.conf);
        (t.elapsed(), r)
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &mut [Duration]) -> Duration {
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn side(
    label: &'static str,
    plugin: PathBuf,
    cni_path: String,
    conf: impl Fn(&Path) -> String,
) -> Side {
    let host = Netns::new("fyb");
    let host_fd = File::open(host.path()).expect("open host netns");
    let mounts = HostMounts::new(&host);
    let data = tempfile::tempdir().expect("tempdir");
    Side {
        label,
        plugin,
        host,
        host_fd,
        mounts,
        conf: conf(data.path()),
        cni_path,
        _data: data,
        add: Vec::new(),
        del: Vec::new(),
        gone: Vec::new(),
        version: Vec::new(),
    }
}

fn main() {
    if !ferry_tests::is_root() {
        eprintln!("ferry-bench-cni needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("burst") => burst(&sides(), num(1, 120), num(2, 16)),
        Some("dual") => sequential(&mut dual_sides(), num(1, 60)),
        _ => sequential(&mut sides(), num(0, 60)),
    }
}

/// The plugins' directory and the `ferry` in it: `FERRY_BIN_DIR` (the static plugins of
/// `deploy/build-plugins.sh`, as the image ships them), else beside this binary.
fn own_ferry() -> (PathBuf, PathBuf) {
    let dir = ferry_tests::bin_dir();
    let ferry = dir.join("ferry");
    (dir, ferry)
}

/// ferry IPv4-only and ferry dual-stack, each in its own host namespace.
fn dual_sides() -> [Side; 2] {
    let (own_dir, ferry) = own_ferry();
    let conf = |ranges: serde_json::Value| {
        move |d: &Path| {
            json!({"cniVersion": "1.0.0", "name": "bench", "type": "ferry",
                   "ipam": {"type": "ferry-ipam", "ranges": ranges, "dataDir": d}})
            .to_string()
        }
    };
    [
        side(
            "ferry IPv4",
            ferry.clone(),
            own_dir.display().to_string(),
            conf(json!([[{"subnet": "10.52.0.0/24"}]])),
        ),
        side(
            "ferry dual-stack",
            ferry,
            own_dir.display().to_string(),
            conf(json!([[{"subnet": "10.53.0.0/24"}], [{"subnet": "fd00:53::/64"}]])),
        ),
    ]
}

/// ferry and the reference, each in its own host namespace.
fn sides() -> [Side; 2] {
    let (own_dir, ferry) = own_ferry();
    let reference = Path::new(ferry_tests::REFERENCE_PLUGINS);
    assert!(
        reference.join("bridge").is_file(),
        "reference plugins missing: apt-get install containernetworking-plugins"
    );
    [
        side("ferry", ferry, own_dir.display().to_string(), |d| {
            json!({"cniVersion": "1.0.0", "name": "bench", "type": "ferry",
                   "ipam": {"type": "ferry-ipam", "subnet": "10.50.0.0/24", "dataDir": d}})
            .to_string()
        }),
        side(
            "bridge+host-local",
            reference.join("bridge"),
            reference.display().to_string(),
            |d| {
                json!({"cniVersion": "1.0.0", "name": "benchref", "type": "bridge", "bridge": "cni0",
                   "isGateway": true, "hairpinMode": true,
                   "ipam": {"type": "host-local", "dataDir": d,
                            "ranges": [[{"subnet": "10.51.0.0/24"}]],
                            "routes": [{"dst": "0.0.0.0/0"}]}})
            .to_string()
            },
        ),
    ]
}

/// How many retired veths ferry's host namespace still holds.
fn tombstones(side: &Side) -> usize {
    ferry_tests::cni::tombstones(&side.host).len()
}

/// Runs `command` for every pod, `parallel` calls at a time; the wall time.
fn phase(side: &Side, command: &str, pods: &[&Netns], parallel: usize) -> Duration {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(pod) = pods.get(i) else { break };
                side.call(command, &format!("u{i}"), pod).1.ok();
            });
        }
    });
    start.elapsed()
}

/// A burst: every pod ADDed, then every pod DELed, `parallel` calls at a time, the two
/// plugins in turn (ferry's reaper done before the reference starts), three rounds.
fn burst(sides: &[Side; 2], pods: usize, parallel: usize) {
    let pod_ns: Vec<[Netns; 2]> = (0..pods)
        .map(|_| [Netns::new("fyq"), Netns::new("fyq")])
        .collect();
    println!("CNI burst: {pods} pods ADDed, then DELed, {parallel} calls at a time\n");
    println!(
        "{:<6} {:<20} {:>11} {:>11} {:>11} {:>16}",
        "round", "plugin", "ADDs", "DELs", "total", "tombstones gone"
    );
    let mut totals = [Vec::new(), Vec::new()];
    for round in 1..=3 {
        for (s, side) in sides.iter().enumerate() {
            let mine: Vec<&Netns> = pod_ns.iter().map(|p| &p[s]).collect();
            let add = phase(side, "ADD", &mine, parallel);
            let del = phase(side, "DEL", &mine, parallel);
            let after_del = Instant::now();
            let gone = if s == 0 {
                let ok =
                    ferry_tests::proc::wait_until(Duration::from_secs(2), || tombstones(side) == 0);
                assert!(
                    ok,
                    "{} tombstones left 2 s after the last DEL",
                    tombstones(side)
                );
                ms(after_del.elapsed())
            } else {
                "(in DEL)".to_string()
            };
            println!(
                "{:<6} {:<20} {:>11} {:>11} {:>11} {:>16}",
                round,
                side.label,
                ms(add),
                ms(del),
                ms(add + del),
                gone
            );
            totals[s].push(add + del);
        }
    }
    let ferry = median(&mut totals[0]);
    let reference = median(&mut totals[1]);
    println!(
        "\nferry is {:.1}x faster end to end (median of the rounds: {} against {})",
        reference.as_secs_f64() / ferry.as_secs_f64(),
        ms(ferry),
        ms(reference)
    );
}

fn sequential(sides: &mut [Side; 2], pods: usize) {
    let pod_ns: Vec<[Netns; 2]> = (0..pods)
        .map(|_| [Netns::new("fyq"), Netns::new("fyq")])
        .collect();

    // One warm-up pair each (page cache, bridge creation), not counted.
    for (s, side) in sides.iter_mut().enumerate() {
        let (_, r) = side.call("ADD", "warm", &pod_ns[0][s]);
        r.ok();
        side.call("DEL", "warm", &pod_ns[0][s]).1.ok();
    }
    for (i, pair) in pod_ns.iter().enumerate() {
        for (s, side) in sides.iter_mut().enumerate() {
            let (d, r) = side.call("ADD", &format!("b{i}"), &pair[s]);
            r.ok();
            side.add.push(d);
        }
    }
    for (i, pair) in pod_ns.iter().enumerate() {
        for (s, side) in sides.iter_mut().enumerate() {
            let start = Instant::now();
            let (d, r) = side.call("DEL", &format!("b{i}"), &pair[s]);
            r.ok();
            side.del.push(d);
            // ferry's reaper finishes before anything else is timed: its unregistration
            // holds the kernel's RTNL lock and would slow the next plugin down.
            if side.label.starts_with("ferry") {
                let gone = ferry_tests::proc::wait_until(Duration::from_secs(5), || {
                    !pair[s].has_link("eth0")
                });
                assert!(gone, "ferry's reaper did not remove pod {i}'s veth");
                side.gone.push(start.elapsed());
            }
        }
    }
    // The floor: exec and answer VERSION, no kernel work.
    for _ in 0..pods {
        for (s, side) in sides.iter_mut().enumerate() {
            let (d, r) = side.call("VERSION", "v", &pod_ns[0][s]);
            r.ok();
            side.version.push(d);
        }
    }

    println!("CNI ADD/DEL, {pods} pods sequentially per plugin, alternating, one process\n");
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>14} {:>13}",
        "plugin", "ADD p50", "ADD p90", "DEL p50", "DEL p90", "veth gone p50", "VERSION p50"
    );
    let mut med = Vec::new();
    for s in sides.iter_mut() {
        let (a50, a90, d50, d90) = (
            median(&mut s.add),
            p90(&mut s.add),
            median(&mut s.del),
            p90(&mut s.del),
        );
        let gone = if s.gone.is_empty() {
            "(in DEL)".to_string()
        } else {
            ms(median(&mut s.gone))
        };
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>14} {:>13}",
            s.label,
            ms(a50),
            ms(a90),
            ms(d50),
            ms(d90),
            gone,
            ms(median(&mut s.version))
        );
        med.push((a50, d50));
    }
    if sides[1].label.starts_with("ferry") {
        println!(
            "\ndual-stack ADD takes {:.2}x the IPv4-only ADD, DEL {:.2}x (median against median)",
            med[1].0.as_secs_f64() / med[0].0.as_secs_f64(),
            med[1].1.as_secs_f64() / med[0].1.as_secs_f64()
        );
        return;
    }
    println!(
        "\nferry is {:.1}x faster on ADD and {:.1}x faster on DEL (median against median)",
        med[1].0.as_secs_f64() / med[0].0.as_secs_f64(),
        med[1].1.as_secs_f64() / med[0].1.as_secs_f64()
    );
}
