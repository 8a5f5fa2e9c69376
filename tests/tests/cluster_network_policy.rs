//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) enforced by the node daemons:
//! the Admin tier before the namespaces' NetworkPolicies, the Baseline tier after them, an
//! open connection cut when an Admin Deny comes to cover it, the denial logged and
//! explained by the rule that decided, a cluster without the CRD (NetworkPolicy alone
//! enforced, the CRD's arrival picked up without a restart), and hostile objects that fail
//! closed without breaking anything else. The API is the tests' stand-in (`kapi`); nodes,
//! etcd, nftables, conntrack and traffic are real.
//!
//! The world is the conformance world: namespaces x, y, z (labelled `ns=<name>`), pods a,
//! b, c in each (labelled `pod=<name>`), spread over 3 nodes, each serving TCP 80.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_netpol::ClusterNetworkPolicy;
use ferry_tests::netpol::cases::{PodRef, Protocol};
use ferry_tests::netpol::world::World;
use ferry_tests::proc::wait_until;
use ferry_tests::{inside, needs_root};
use serde_json::{json, Value};

/// One world at a time: several 3-node clusters probing at once on a small machine would
/// only measure the machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn world() -> World {
    World::new(&[80], &[Protocol::Tcp], &mut |_| {})
}

fn p(s: &str) -> PodRef {
    s.parse().expect("a pod of the model")
}

/// Creates ClusterNetworkPolicy `name` with `spec` (any JSON: the API stand-in keeps it
/// as given, as a CRD's schema-less field would be).
fn put_cnp(w: &World, name: &str, spec: Value) {
    w.api()
        .create(ClusterNetworkPolicy::new(name, spec))
        .unwrap_or_else(|e| panic!("create ClusterNetworkPolicy {name}: {e}"));
}

/// Namespaces whose `ns` label is `name`.
fn ns(name: &str) -> Value {
    json!({"matchLabels": {"ns": name}})
}

/// Waits until `from` → `ip`:80 gives `allowed`; false on timeout.
fn becomes(w: &World, from: &str, to: &str, allowed: bool) -> bool {
    let ip = w.pod(&p(to)).ip;
    wait_until(Duration::from_secs(15), || {
        w.probe(&p(from), ip, 80, Protocol::Tcp) == allowed
    })
}

/// Whether `from` → `to`:80 connects now (three tries: one lost SYN on a loaded machine is
/// no verdict).
fn reaches(w: &World, from: &str, to: &str) -> bool {
    let ip = w.pod(&p(to)).ip;
    (0..3).any(|_| w.probe(&p(from), ip, 80, Protocol::Tcp))
}

/// Asserts each of `(from, to, allowed)`.
fn assert_matrix(w: &World, expected: &[(&str, &str, bool)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(from, to, allowed)| reaches(w, from, to) != *allowed)
        .map(|(from, to, allowed)| {
            format!(
                "{from} -> {to}: expected {}",
                if *allowed { "allowed" } else { "denied" }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", w.logs());
}

/// `ferry-ipam explain from to --port 80` on the node of `node_of`, with `-o json` when
/// asked.
fn explain(w: &World, node_of: &str, from: &str, to: &str, json: bool) -> std::process::Output {
    let node = w.pod(&p(node_of)).node;
    let mut c = std::process::Command::new(ferry_tests::bin("ferry-ipam"));
    c.args(["explain", from, to, "--port", "80", "--state-dir"])
        .arg(w.cluster.nodes[node].state_dir());
    if json {
        c.args(["-o", "json"]);
    }
    c.output().expect("run ferry-ipam explain")
}

/// The tenants policy of the tests: subject namespace x, its ingress from namespace y
/// denied by rule `deny-other-tenants` (index 1, after an Accept from x itself).
fn tenants(tier: &str) -> Value {
    json!({"tier": tier, "priority": 10,
           "subject": {"namespaces": ns("x")},
           "ingress": [
               {"name": "own-tenant", "action": "Accept", "from": [{"namespaces": ns("x")}]},
               {"name": "deny-other-tenants", "action": "Deny", "from": [{"namespaces": ns("y")}]}]})
}

/// (a), (d), (e): an Admin Deny between two tenants' namespaces holds against a
/// namespace NetworkPolicy that allows everything; the denial is logged naming the
/// ClusterNetworkPolicy, its rule and tier, and explained by the tier.
#[test]
fn an_admin_deny_is_not_reopened_by_a_namespace_policy_and_is_logged_and_explained() {
    needs_root!();
    let _one = one_at_a_time();
    let mut w = world();
    assert!(reaches(&w, "y/a", "x/a"));
    put_cnp(&w, "tenants", tenants("Admin"));
    assert!(becomes(&w, "y/a", "x/a", false), "{}", w.logs());
    // x's owner allows everything: the Admin tier decided first.
    w.put_policy(
        "x",
        "allow-all",
        &json!({"podSelector": {}, "ingress": [{}]}),
        false,
    )
    .unwrap();
    // Give the NetworkPolicy time to land everywhere before judging.
    std::thread::sleep(Duration::from_secs(2));
    assert_matrix(
        &w,
        &[
            ("y/a", "x/a", false),
            ("y/b", "x/b", false),
            ("y/c", "x/c", false),
            ("x/b", "x/a", true),
            ("z/a", "x/a", true),
            ("x/a", "y/b", true),
            ("z/c", "y/a", true),
        ],
    );

    // (e) explain, on the node of the denied side (ingress: x/a's), names the tier.
    let out = explain(&w, "x/a", "y/a", "x/a", false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text.contains("Admin tier")
            && text.contains("ClusterNetworkPolicy tenants")
            && text.contains("deny-other-tenants"),
        "{text}"
    );
    let out = explain(&w, "x/a", "y/a", "x/a", true);
    let v: Value = serde_json::from_slice(&out.stdout).expect("explain's JSON");
    assert_eq!(v["allowed"], false, "{v}");
    let admin = &v["ingress"]["admin"];
    assert_eq!(
        (
            admin["tier"].as_str(),
            admin["policy"].as_str(),
            admin["name"].as_str(),
            admin["index"].as_u64(),
            admin["action"].as_str()
        ),
        (
            Some("Admin"),
            Some("tenants"),
            Some("deny-other-tenants"),
            Some(1),
            Some("Deny")
        ),
        "{v}"
    );
    // What the Admin tier accepts says so too.
    let out = explain(&w, "x/a", "x/b", "x/a", true);
    let v: Value = serde_json::from_slice(&out.stdout).expect("explain's JSON");
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(v["ingress"]["admin"]["name"], "own-tenant", "{v}");

    // (d) the denial's log line, on x/a's node.
    let node = w.pod(&p("x/a")).node;
    let logged = wait_until(Duration::from_secs(5), || {
        w.cluster.nodes[node].log().lines().any(|l| {
            l.contains("connection denied by ClusterNetworkPolicy")
                && l.contains("from=y/a")
                && l.contains("to=x/a")
                && l.contains("policy=ClusterNetworkPolicy tenants")
                && l.contains("rule=\"deny-other-tenants\"")
                && l.contains("index=ingress[1]")
                && l.contains("tier=Admin")
        })
    });
    assert!(logged, "{}", w.cluster.nodes[node].log());
}

/// (b): a Baseline Deny isolates by default; the namespace's own NetworkPolicy opens it.
#[test]
fn a_baseline_deny_isolates_until_the_namespace_policy_opens_it() {
    needs_root!();
    let _one = one_at_a_time();
    let mut w = world();
    put_cnp(
        &w,
        "closed-by-default",
        json!({"tier": "Baseline", "priority": 10,
               "subject": {"namespaces": ns("x")},
               "ingress": [{"name": "nothing-in", "action": "Deny",
                            "from": [{"namespaces": {}}]}]}),
    );
    assert!(becomes(&w, "y/a", "x/a", false), "{}", w.logs());
    assert_matrix(
        &w,
        &[
            ("y/a", "x/a", false),
            ("z/b", "x/b", false),
            ("x/c", "x/a", false),
            ("x/a", "y/a", true),
            ("z/a", "y/b", true),
        ],
    );
    let out = explain(&w, "x/a", "y/a", "x/a", true);
    let v: Value = serde_json::from_slice(&out.stdout).expect("explain's JSON");
    assert_eq!(v["ingress"]["baseline"]["tier"], "Baseline", "{v}");
    assert_eq!(v["ingress"]["baseline"]["name"], "nothing-in", "{v}");
    // x's owner admits y: NetworkPolicy decides now, the Baseline tier no more.
    w.put_policy(
        "x",
        "from-y",
        &json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        false,
    )
    .unwrap();
    assert!(becomes(&w, "y/a", "x/a", true), "{}", w.logs());
    assert_matrix(
        &w,
        &[
            ("y/a", "x/a", true),
            ("y/c", "x/b", true),
            ("z/b", "x/b", false),
            ("x/c", "x/a", false),
            ("z/a", "y/b", true),
        ],
    );
}

/// (c): an established TCP connection is cut when an Admin Deny that covers it is
/// created; a connection it does not cover goes on.
#[test]
fn an_open_connection_is_cut_when_an_admin_deny_covers_it() {
    needs_root!();
    let _one = one_at_a_time();
    let w = world();
    let (server, denied, allowed) = (p("x/a"), p("y/b"), p("z/b"));
    // An echo server in x/a that keeps its connections open; stopped before the world goes.
    let listener = inside::run(&w.pod(&server).pod.ns, || {
        TcpListener::bind("0.0.0.0:8080").expect("bind 0.0.0.0:8080")
    });
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut open = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            if let Ok((c, _)) = listener.accept() {
                c.set_nonblocking(true).expect("nonblocking");
                open.push(c);
            }
            for c in &mut open {
                let mut buf = [0u8; 16];
                if let Ok(n) = c.read(&mut buf) {
                    let _ = c.write_all(&buf[..n]);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let target = w.pod(&server);
    let (ip, service_ip) = (target.ip, target.service_ip);
    let open = |from: &PodRef, to: Ipv4Addr| -> TcpStream {
        inside::run(&w.pod(from).pod.ns, move || {
            let c = TcpStream::connect_timeout(&(to, 8080).into(), Duration::from_secs(2))
                .expect("connect before the policy");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("read timeout");
            c
        })
    };
    let echoes = |c: &mut TcpStream| -> bool {
        let mut buf = [0u8; 1];
        c.write_all(b"p").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"p"
    };
    let mut to_pod = open(&denied, ip);
    let mut to_service = open(&denied, service_ip);
    let mut kept = open(&allowed, ip);
    assert!(echoes(&mut to_pod) && echoes(&mut to_service) && echoes(&mut kept));

    put_cnp(&w, "tenants", tenants("Admin"));
    let enforced = wait_until(Duration::from_secs(15), || {
        !w.probe(&denied, ip, 8080, Protocol::Tcp)
    });
    assert!(enforced, "the policy never came into force:\n{}", w.logs());
    assert!(
        !echoes(&mut to_pod),
        "the open connection to the pod IP was not cut"
    );
    assert!(
        !echoes(&mut to_service),
        "the open connection through the ClusterIP was not cut"
    );
    assert!(echoes(&mut kept), "an allowed connection was cut");
    stop.store(true, Ordering::Relaxed);
    echo.join().expect("the echo server");
}

const ABSENT: &str = "ClusterNetworkPolicy: the API serves no clusternetworkpolicies.policy.networking.k8s.io (the CRD of network-policy-api v0.2.0 is not installed): enforcing NetworkPolicy only";
const APPEARED: &str =
    "ClusterNetworkPolicy: the API serves clusternetworkpolicies.policy.networking.k8s.io now";

/// (f): without the CRD the nodes are ready and enforce NetworkPolicy, say so once, and
/// take up ClusterNetworkPolicy within a bounded wait once the CRD is installed.
#[test]
fn without_the_crd_networkpolicy_is_enforced_and_the_crd_is_taken_up_later() {
    needs_root!();
    let _one = one_at_a_time();
    let mut w = World::with_api_first(&mut |api| api.set_cnp_served(false));
    // Built: every node became ready with the CRD absent.
    w.put_policy(
        "z",
        "deny-in",
        &json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        false,
    )
    .unwrap();
    assert!(becomes(&w, "x/a", "z/a", false), "{}", w.logs());
    assert!(reaches(&w, "y/a", "x/a"));
    let nodes = w.cluster.nodes.len();
    for i in 0..nodes {
        let metrics = w.cluster.metrics(i);
        assert!(
            metrics.contains("ferry_policy_ready 1"),
            "node {i}: {metrics}"
        );
        assert!(
            metrics.contains("ferry_policy_api_errors_total 0"),
            "node {i}: a 404 counted as an API error: {metrics}"
        );
    }
    // The CRD is installed and a policy created: enforced within the recheck period and
    // a round.
    w.api().set_cnp_served(true);
    put_cnp(&w, "tenants", tenants("Admin"));
    let taken_up = wait_until(Duration::from_secs(50), || {
        !w.probe(&p("y/a"), w.pod(&p("x/a")).ip, 80, Protocol::Tcp)
    });
    assert!(
        taken_up,
        "the CRD's arrival was not picked up:\n{}",
        w.logs()
    );
    assert!(becomes(&w, "y/b", "x/c", false), "{}", w.logs());
    // More than one recheck period has passed: each node said each thing once.
    for (i, node) in w.cluster.nodes.iter().enumerate() {
        let log = node.log();
        let absent = log.lines().filter(|l| l.contains(ABSENT)).count();
        let appeared = log.lines().filter(|l| l.contains(APPEARED)).count();
        assert_eq!((absent, appeared), (1, 1), "node {i}:\n{log}");
        assert!(
            log.lines()
                .any(|l| l.contains(ABSENT) && l.contains("WARN")),
            "node {i}: not at warn level:\n{log}"
        );
        let metrics = w.cluster.metrics(i);
        assert!(
            metrics.contains("ferry_policy_api_errors_total 0"),
            "node {i}: {metrics}"
        );
    }
    // NetworkPolicy still holds beside it.
    assert!(!reaches(&w, "x/a", "z/a"));
}

/// (g): hostile ClusterNetworkPolicies break nothing: a spec that is no object, a Deny
/// rule with a peer of an unknown type (it denies everything: fail closed), an Accept of
/// `domainNames` (it matches nothing); the daemons stay up and ready, and every other
/// policy holds.
#[test]
fn hostile_cluster_network_policies_fail_closed_and_break_nothing() {
    needs_root!();
    let _one = one_at_a_time();
    let mut w = world();
    // z admits only x, by NetworkPolicy.
    w.put_policy(
        "z",
        "from-x",
        &json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
        false,
    )
    .unwrap();
    assert!(becomes(&w, "y/a", "z/a", false), "{}", w.logs());
    put_cnp(&w, "garbage", json!("this is no spec"));
    put_cnp(
        &w,
        "bad-deny",
        json!({"tier": "Admin", "priority": 5,
               "subject": {"namespaces": ns("x")},
               "ingress": [{"name": "mystery", "action": "Deny",
                            "from": [{"mysteryPeer": {"whatever": true}}]}]}),
    );
    put_cnp(
        &w,
        "by-name",
        json!({"tier": "Admin", "priority": 20,
               "subject": {"namespaces": ns("y")},
               "egress": [
                   {"name": "to-example", "action": "Accept",
                    "to": [{"domainNames": ["example.com"]}]},
                   {"name": "not-own", "action": "Deny", "to": [{"namespaces": ns("y")}]}]}),
    );
    assert!(becomes(&w, "z/a", "x/a", false), "{}", w.logs());
    assert!(becomes(&w, "y/a", "y/b", false), "{}", w.logs());
    assert_matrix(
        &w,
        &[
            // bad-deny: every ingress of x denied, its own namespace's too.
            ("z/a", "x/a", false),
            ("x/b", "x/a", false),
            ("y/c", "x/c", false),
            // by-name: the unreadable Accept opens nothing, the Deny after it holds.
            ("y/a", "y/b", false),
            ("y/c", "y/a", false),
            // z's NetworkPolicy holds.
            ("x/a", "z/a", true),
            ("y/b", "z/c", false),
            ("z/b", "z/a", false),
            // Nothing else is touched.
            ("x/c", "y/a", true),
            ("z/a", "y/c", true),
            ("x/a", "z/b", true),
        ],
    );
    for (i, node) in w.cluster.nodes.iter().enumerate() {
        assert!(node.daemon_pid().is_some(), "node {i}'s daemon is gone");
        let metrics = w.cluster.metrics(i);
        assert!(
            metrics.contains("ferry_policy_ready 1"),
            "node {i}: {metrics}"
        );
        let log = node.log();
        for problem in [
            "ClusterNetworkPolicy garbage: spec:",
            "ClusterNetworkPolicy bad-deny: spec.ingress[0].from[0].mysteryPeer",
            "ClusterNetworkPolicy by-name: spec.egress[0].to[0].domainNames",
        ] {
            let n = log.lines().filter(|l| l.contains(problem)).count();
            assert_eq!(n, 1, "node {i}: {problem:?} logged {n} times:\n{log}");
        }
    }
}
