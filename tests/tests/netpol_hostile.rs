//! NetworkPolicy under what a hostile or unlucky cluster does to it: policies built to
//! exhaust or confuse the daemon (thousands of ipBlocks, ten thousand selector values,
//! port ranges and ipBlocks the API would refuse), and the daemon killed mid-enforcement
//! while the API is away for minutes. Nodes, etcd, nftables and traffic are real; the API
//! is the tests' stand-in, which stores what it is given unvalidated, as a lying or broken
//! source would serve it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::cluster::{http_get, HEALTH_ADDR};
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::netpol::cases::{PodRef, Protocol};
use ferry_tests::netpol::probe::Servers;
use ferry_tests::netpol::world::World;
use ferry_tests::proc::wait_until;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

fn p(s: &str) -> PodRef {
    s.parse().expect("a pod of the model")
}

fn world() -> World {
    World::new(&[80], &[Protocol::Tcp], &mut |_| {})
}

/// Whether `from` → `to`:80 comes to `allowed` within 15 s.
fn becomes(w: &World, from: &str, to: &str, allowed: bool) -> bool {
    let ip = w.pod(&p(to)).ip;
    wait_until(Duration::from_secs(15), || {
        w.probe(&p(from), ip, 80, Protocol::Tcp) == allowed
    })
}

/// Three probes `from` → `to`:80, each refused.
fn refused(w: &World, from: &str, to: &str) -> bool {
    let ip = w.pod(&p(to)).ip;
    (0..3).all(|_| !w.probe(&p(from), ip, 80, Protocol::Tcp))
}

/// How many lines of `log` hold `needle`.
fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A gauge or counter a node serves (None when absent).
fn metric(w: &World, node: usize, name: &str) -> Option<f64> {
    w.cluster
        .metrics(node)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The three problems the invalid policies carry, as the daemon words them.
const PROBLEMS: [&str; 3] = [
    "NetworkPolicy z/end-below: spec.ingress[0].ports[0].endPort: 70 is below port 80",
    "NetworkPolicy z/port-zero: spec.ingress[0].ports[0].port: 0 is not in 1..65535",
    "NetworkPolicy z/except-self: spec.ingress[0].from[0].ipBlock.except[0]: 0.0.0.0/0 is not strictly inside cidr 0.0.0.0/0",
];

#[test]
fn hostile_policies_leave_the_daemon_up_bounded_and_their_pods_isolated() {
    needs_root!();
    let mut w = world();
    let rss_before: Vec<u64> = (0..3)
        .map(|i| {
            w.cluster.nodes[i]
                .daemon_rss_kib()
                .expect("a running daemon")
        })
        .collect();
    // x/a admits 5,000 ipBlocks: 4,999 addresses of nobody's, and y/a's.
    let ya = w.pod(&p("y/a")).ip;
    let mut blocks: Vec<serde_json::Value> = (0..4999u32)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i);
            json!({"ipBlock": {"cidr": format!("{ip}/32")}})
        })
        .collect();
    blocks.push(json!({"ipBlock": {"cidr": format!("{ya}/32")}}));
    w.put_policy(
        "x",
        "many-blocks",
        &json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": blocks}]}),
        false,
    )
    .unwrap();
    // y/b admits the pods of x whose label is one of 10,000 values ("a" the last).
    let mut values: Vec<String> = (0..9999).map(|i| format!("v{i}")).collect();
    values.push("a".into());
    w.put_policy(
        "y",
        "many-values",
        &json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{
            "namespaceSelector": {"matchLabels": {"ns": "x"}},
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": values}]}}]}]}),
        false,
    )
    .unwrap();
    // Invalid rules the API server would refuse: each selects a pod of z.
    for (name, pod, rule) in [
        (
            "end-below",
            "a",
            json!({"ports": [{"port": 80, "endPort": 70}]}),
        ),
        ("port-zero", "b", json!({"ports": [{"port": 0}]})),
        (
            "except-self",
            "c",
            json!({"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["0.0.0.0/0"]}}]}),
        ),
    ] {
        w.put_policy(
            "z",
            name,
            &json!({"podSelector": {"matchLabels": {"pod": pod}}, "ingress": [rule]}),
            false,
        )
        .unwrap();
    }

    // Enforced as written where valid; where not, the pods stay isolated with nothing
    // allowed (a refused rule opens nothing).
    assert!(becomes(&w, "z/b", "x/a", false), "{}", w.logs());
    assert!(
        becomes(&w, "y/a", "x/a", true),
        "y/a's ipBlock\n{}",
        w.logs()
    );
    assert!(becomes(&w, "z/a", "y/b", false), "{}", w.logs());
    assert!(becomes(&w, "x/a", "y/b", true), "x/a's label\n{}", w.logs());
    assert!(refused(&w, "x/b", "y/b"));
    for target in ["z/a", "z/b", "z/c"] {
        assert!(
            becomes(&w, "y/a", target, false),
            "{target} is open\n{}",
            w.logs()
        );
        for from in ["x/a", "y/c", "x/c"] {
            assert!(refused(&w, from, target), "{from} reached {target}");
        }
    }
    // Several resyncs and a read-back of the whole table later: still up, still bounded,
    // each problem reported once by every node, and counted.
    std::thread::sleep(Duration::from_secs(35));
    for (i, before) in rss_before.iter().enumerate() {
        let n = &w.cluster.nodes[i];
        assert_eq!(
            http_get(&n.host, HEALTH_ADDR, "/readyz").0,
            200,
            "{} is not ready:\n{}",
            n.name,
            n.log()
        );
        let rss = n.daemon_rss_kib().expect("the daemon still runs");
        eprintln!("{}: RSS {before} KiB before, {rss} KiB after", n.name);
        assert!(
            rss < 128 * 1024 && rss < before + 64 * 1024,
            "{}: RSS {rss} KiB (was {before})",
            n.name
        );
        let log = n.log();
        for problem in PROBLEMS {
            assert_eq!(
                lines_with(&log, problem),
                1,
                "{}: {problem:?} is not logged once:\n{log}",
                n.name
            );
        }
        assert_eq!(
            metric(&w, i, "ferry_policy_invalid_objects"),
            Some(3.0),
            "{}",
            w.cluster.metrics(i)
        );
        assert_eq!(lines_with(&log, "panicked"), 0, "{log}");
    }
    // Memory does not creep with the rounds that follow.
    let settled: Vec<u64> = (0..3)
        .map(|i| w.cluster.nodes[i].daemon_rss_kib().unwrap_or(0))
        .collect();
    std::thread::sleep(Duration::from_secs(20));
    for (i, s) in settled.iter().enumerate() {
        let now = w.cluster.nodes[i].daemon_rss_kib().unwrap_or(u64::MAX);
        assert!(
            now < s + 16 * 1024,
            "node{i}: RSS grew from {s} to {now} KiB in 20 s of resyncs"
        );
    }
    // The broken policies fixed: the problems go, and their pods take the rules.
    w.put_policy(
        "z",
        "port-zero",
        &json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"ports": [{"port": 80}]}]}),
        true,
    )
    .unwrap();
    assert!(becomes(&w, "y/a", "z/b", true), "{}", w.logs());
    assert!(wait_until(Duration::from_secs(10), || {
        metric(&w, 0, "ferry_policy_invalid_objects") == Some(2.0)
    }));
    // A podSelector no one can read: which pods it isolates is unknown, so it isolates
    // every pod of y, allowing nothing; y/b keeps what its valid policy allows.
    w.put_policy(
        "y",
        "unreadable",
        &json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near", "values": ["a"]}]},
                "ingress": [{}]}),
        false,
    )
    .unwrap();
    assert!(becomes(&w, "z/a", "y/a", false), "{}", w.logs());
    assert!(refused(&w, "x/a", "y/c"));
    assert!(becomes(&w, "x/a", "y/b", true), "{}", w.logs());
    assert!(wait_until(Duration::from_secs(10), || {
        metric(&w, 0, "ferry_policy_invalid_objects") == Some(3.0)
    }));
}

/// A TCP connection from the namespace at `netns` to `ip`:80 within 300 ms.
fn connects(netns: &Path, ip: Ipv4Addr) -> bool {
    let file = match std::fs::File::open(netns) {
        Ok(f) => f,
        Err(_) => return false,
    };
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a valid descriptor.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return false;
        }
        std::net::TcpStream::connect_timeout(&(ip, 80).into(), Duration::from_millis(300)).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// Probes from each of `from` to `ip` every 100 ms while `run` holds; every outcome.
fn watch<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    from: Vec<(String, PathBuf)>,
    ip: Ipv4Addr,
    run: &'static AtomicBool,
) -> Vec<std::thread::ScopedJoinHandle<'scope, (String, Vec<bool>)>> {
    from.into_iter()
        .map(|(name, path)| {
            s.spawn(move || {
                let mut seen = Vec::new();
                while run.load(Ordering::Relaxed) {
                    seen.push(connects(&path, ip));
                    std::thread::sleep(Duration::from_millis(100));
                }
                (name, seen)
            })
        })
        .collect()
}

/// The Pod object a kubelet writes, labelled `pod=<name>`, with `ip` once known.
fn pod_object(ns: &str, name: &str, node: &str, ip: Option<Ipv4Addr>) -> Pod {
    let mut v = json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
        "spec": {"nodeName": node, "containers": [{"name": "serve"}]},
    });
    if let Some(ip) = ip {
        v["status"] = json!({"phase": "Running", "podIP": ip.to_string(),
                             "podIPs": [{"ip": ip.to_string()}]});
    }
    serde_json::from_value(v).expect("a pod object")
}

static PROBING: AtomicBool = AtomicBool::new(false);

/// Stops the probers when dropped: on a failed assertion too, or the scope holding them
/// would wait for them for ever.
struct StopProbing;

impl Drop for StopProbing {
    fn drop(&mut self) {
        PROBING.store(false, Ordering::Relaxed);
    }
}

/// How long the API stays away.
const OUTAGE: Duration = Duration::from_secs(150);

#[test]
fn a_killed_daemon_and_the_api_away_for_minutes_change_no_verdict() {
    needs_root!();
    let mut w = world();
    // Namespace x admits namespace y only.
    w.put_policy(
        "x",
        "from-y",
        &json!({"podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        false,
    )
    .unwrap();
    assert!(becomes(&w, "z/a", "x/a", false), "{}", w.logs());
    assert!(becomes(&w, "y/a", "x/a", true), "{}", w.logs());
    let node = w.pod(&p("x/a")).node;
    let node_name = w.cluster.nodes[node].name.clone();
    // x/m is scheduled on that node before the outage; its sandbox comes during it.
    w.api()
        .create(pod_object("x", "m", &node_name, None))
        .unwrap();
    let target = w.pod(&p("x/a")).ip;
    let path = |r: &str| (r.to_string(), w.pod(&p(r)).pod.ns.path());
    // Allowed and denied clients, on the target's node and on others.
    let allowed: Vec<(String, PathBuf)> = ["y/a", "y/b", "y/c"].iter().map(|r| path(r)).collect();
    let denied: Vec<(String, PathBuf)> = ["z/a", "z/b", "z/c"].iter().map(|r| path(r)).collect();

    w.api().set_down(true);
    let down_at = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || {
            metric(&w, node, "ferry_policy_ready") == Some(0.0)
        }),
        "the node still says ready with the API away"
    );
    PROBING.store(true, Ordering::Relaxed);
    let (ok, bad, m) = std::thread::scope(|s| {
        let stop = StopProbing;
        let ok = watch(s, allowed.clone(), target, &PROBING);
        let bad = watch(s, denied.clone(), target, &PROBING);
        std::thread::sleep(Duration::from_secs(1));
        w.cluster.nodes[node].kill_daemon();
        // No daemon: a new pod cannot start (ADD fails, try again later), so none starts
        // open.
        let netns = Netns::new("fyp");
        let servers = Servers::start(&netns, &[80], &[Protocol::Tcp]).expect("servers");
        let id = ferry_tests::unique("nk");
        let args = "K8S_POD_NAMESPACE=x;K8S_POD_NAME=m";
        let r = w.cluster.nodes[node].cni_as("ADD", &id, Some(&netns), Some(args));
        assert_eq!(r.err_code(), 11, "ADD without the daemon: {r:?}");
        std::thread::sleep(Duration::from_secs(3));
        // Back, the API still away: the table it finds is kept, and the new pod starts
        // closed, even to the namespace its policy admits.
        w.cluster.nodes[node].start_daemon();
        let mut made = None;
        let started = wait_until(Duration::from_secs(40), || {
            let r = w.cluster.nodes[node].cni_as("ADD", &id, Some(&netns), Some(args));
            let ok = r.status == 0;
            if ok {
                made = Some(r.ok());
            }
            ok
        });
        assert!(started, "no ADD succeeded\n{}", w.cluster.nodes[node].log());
        let ip: Ipv4Addr = ferry_tests::cni::pod_ip(&made.expect("a result"))
            .parse()
            .expect("an IPv4 address");
        let closed = watch(s, [allowed.clone(), denied.clone()].concat(), ip, &PROBING);
        // The rest of the outage: minutes in all.
        std::thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
        drop(stop);
        let collect = |hs: Vec<std::thread::ScopedJoinHandle<'_, (String, Vec<bool>)>>| {
            hs.into_iter()
                .map(|h| h.join().expect("a prober"))
                .collect::<Vec<_>>()
        };
        (
            collect(ok),
            collect(bad),
            (collect(closed), netns, servers, id, ip),
        )
    });
    for (from, seen) in &ok {
        assert!(
            seen.len() > 100 && seen.iter().all(|a| *a),
            "{from} lost x/a during the outage: {} of {} refused",
            seen.iter().filter(|a| !**a).count(),
            seen.len()
        );
    }
    for (from, seen) in &bad {
        assert!(
            seen.len() > 100 && seen.iter().all(|a| !*a),
            "{from} reached x/a during the outage: {} of {} times",
            seen.iter().filter(|a| **a).count(),
            seen.len()
        );
    }
    let (closed, netns, servers, id, ip) = m;
    for (from, seen) in &closed {
        assert!(
            !seen.is_empty() && seen.iter().all(|a| !*a),
            "{from} reached x/m before its labels were known: {seen:?}"
        );
    }
    // Minutes without the API are a few lines in each node's log, not a line per retry
    // (each of the three watches retries every 5 s at most).
    for n in &w.cluster.nodes {
        let log = n.log();
        let failed = lines_with(&log, "the API watch failed");
        assert!(
            (1..=9).contains(&failed),
            "{}: {failed} lines say the watch failed",
            n.name
        );
    }

    // The API back: x/m's labels decide, as for any pod of x.
    w.api().expire_before(w.api().resource_version() + 1);
    w.api().set_down(false);
    let mut obj: Pod = w.api().get(Some("x"), "m").expect("x/m");
    obj.status = pod_object("x", "m", &node_name, Some(ip)).status;
    w.api().update(obj).unwrap();
    let path_of = |r: &str| w.pod(&p(r)).pod.ns.path();
    assert!(
        wait_until(Duration::from_secs(20), || connects(&path_of("y/a"), ip)),
        "y/a cannot reach x/m with the API back\n{}",
        w.cluster.nodes[node].log()
    );
    assert!(!connects(&path_of("z/a"), ip));
    assert!(
        wait_until(Duration::from_secs(20), || {
            metric(&w, node, "ferry_policy_ready") == Some(1.0)
        }),
        "not ready again"
    );
    w.cluster.nodes[node].cni("DEL", &id, Some(&netns)).ok();
    drop(servers);
}
