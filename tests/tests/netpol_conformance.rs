//! `ferry-netpol-conformance` on every case file of `tests/netpol/`: each case passes
//! against ferry's NetworkPolicy and ClusterNetworkPolicy enforcement on a 3-node cluster
//! (needs root: the runner makes network namespaces). `examples.yaml`, `ferry.yaml` and
//! `upstream.yaml` each have a test; `cnp_files_pass` runs every `cnp-*.yaml` present and
//! prints each one's counts; `every_case_file_is_run` sees that no file is left out. These
//! tests never skip: without root, or without the built binaries (`cargo build
//! --workspace`), they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_tests::netpol::cases::{self, PodRef, Protocol, CLAIMED_FEATURES};
use ferry_tests::netpol::world::World;
use ferry_tests::{inside, needs_root};
use serde_json::{json, Value};

/// One world at a time: three clusters probing at once on a small machine would only
/// measure the machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn case_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("netpol")
        .join(name)
}

fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry-netpol-conformance"))
        .args(args)
        .output()
        .expect("run ferry-netpol-conformance")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The counts of the runner's last line, `N passed, N failed, N skipped`.
fn counts(line: &str) -> Option<(usize, usize, usize)> {
    let mut n = line
        .split(", ")
        .map(|part| part.split_once(' ')?.0.parse().ok());
    let counts = (n.next()??, n.next()??, n.next()??);
    let words: Vec<&str> = line
        .split(", ")
        .filter_map(|p| p.split_once(' '))
        .map(|(_, w)| w)
        .collect();
    (words == ["passed", "failed", "skipped"]).then_some(counts)
}

/// Runs every case of `file`: none may fail, and only cases needing a feature ferry does
/// not claim may be skipped. Returns (passed, failed, skipped).
fn all_pass(file: &str, json: bool) -> (usize, usize, usize) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let path = case_file(file);
    let parsed = cases::read(&path).expect("the case file parses");
    let n = parsed.cases.len();
    let claimed: Vec<String> = CLAIMED_FEATURES.iter().map(|f| f.to_string()).collect();
    let skipped = parsed
        .cases
        .iter()
        .filter(|c| !c.unclaimed_features(&claimed).is_empty())
        .count();
    let path = path.display().to_string();
    let mut args = vec!["--cases", path.as_str()];
    if json {
        args.extend(["-o", "json"]);
    }
    let out = runner(&args);
    let all = text(&out);
    let last = if json { &out.stderr } else { &out.stdout };
    let last = String::from_utf8_lossy(last);
    let got = last.lines().last().and_then(counts);
    println!("{file}: {got:?} (passed, failed, skipped) of {n}");
    assert_eq!(out.status.code(), Some(0), "{file}: {all}");
    assert_eq!(
        got,
        Some((n - skipped, 0, skipped)),
        "{file}: the last line: {all}"
    );
    if json {
        let doc: Value = serde_json::from_slice(&out.stdout).expect("-o json is JSON");
        assert_eq!(doc["passed"], n - skipped, "{all}");
        assert_eq!(doc["failed"], 0, "{all}");
        assert_eq!(doc["skipped"], skipped, "{all}");
        let cases = doc["cases"].as_array().expect("cases");
        assert_eq!(cases.len(), n);
        assert!(cases.iter().all(|c| c["skipped"].is_string()
            || (c["passed"] == true && c["probes"].as_array().is_some_and(|p| !p.is_empty()))));
    }
    (n - skipped, 0, skipped)
}

/// The case files of `tests/netpol/` named `cnp-*.yaml`.
fn cnp_files() -> Vec<String> {
    let mut names: Vec<String> = case_files()
        .into_iter()
        .filter(|n| n.starts_with("cnp-"))
        .collect();
    names.sort();
    names
}

/// Every `*.yaml` of `tests/netpol/`.
fn case_files() -> Vec<String> {
    let dir = case_file("");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect()
}

#[test]
fn examples_pass() {
    needs_root!();
    all_pass("examples.yaml", true);
}

#[test]
fn ferry_cases_pass() {
    needs_root!();
    all_pass("ferry.yaml", false);
}

#[test]
fn upstream_cases_pass() {
    needs_root!();
    all_pass("upstream.yaml", false);
}

/// Every `cnp-*.yaml` (ClusterNetworkPolicy cases: cnp-examples.yaml, and the upstream
/// suite's translation cnp-upstream.yaml when present), one after the other; each file's
/// counts are printed, then all must pass.
#[test]
fn cnp_files_pass() {
    needs_root!();
    let files = cnp_files();
    assert!(
        files.contains(&"cnp-examples.yaml".to_string()),
        "{files:?}"
    );
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for f in &files {
        match std::panic::catch_unwind(|| all_pass(f, true)) {
            Ok(c) => counts.push(format!(
                "{f}: {} passed, {} failed, {} skipped",
                c.0, c.1, c.2
            )),
            Err(_) => failures.push(f.clone()),
        }
    }
    println!("{}", counts.join("\n"));
    assert!(
        failures.is_empty(),
        "failed: {failures:?} (their output above)"
    );
}

/// No case file of `tests/netpol/` is left unrun.
#[test]
fn every_case_file_is_run() {
    for f in case_files() {
        let named = ["examples.yaml", "ferry.yaml", "upstream.yaml"].contains(&f.as_str());
        assert!(
            named || f.starts_with("cnp-"),
            "tests/netpol/{f}: no test runs it (name it cnp-*.yaml or give it a test)"
        );
        cases::read(&case_file(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

/// The runner is no rubber stamp: cases expecting what ferry does not do fail, exit 1,
/// and the table marks each wrong observation, to the pod IP and to the ClusterIP.
#[test]
fn wrong_expectations_fail_and_are_marked() {
    needs_root!();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        "cases:
- name: expects a denial no policy makes
  source: derived
  pods: [x/a, y/b]
  server_protocols: [SCTP]
  steps:
  - actions: []
    probes:
    - port: 80
      protocol: SCTP
      expect:
      - {from: 'y/b', to: 'x/a', allow: false}
- name: expects an allowance a policy forbids
  source: derived
  pods: [x/a, y/b]
  server_protocols: [UDP]
  steps:
  - actions:
    - create:
        name: deny
        ns: x
        spec: {podSelector: {}, policyTypes: [Ingress]}
    probes:
    - port: 81
      protocol: UDP
      expect: []
",
    )
    .unwrap();
    let out = runner(&["--cases", &wrong.display().to_string(), "--timeout", "1"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().last(),
        Some("0 passed, 2 failed, 0 skipped"),
        "{all}"
    );
    // Row y/b, column x/a: observed allowed (SCTP), then observed denied (UDP), both
    // to the pod IP and to the ClusterIP.
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("y/b")).collect();
    assert_eq!(rows.len(), 2, "{all}");
    assert_eq!(rows[0].matches(".!").count(), 2, "{all}");
    assert_eq!(rows[1].matches("X!").count(), 2, "{all}");
}

/// A case needing a feature ferry does not claim is skipped, counted, and builds no
/// cluster; `--features` overrides the claimed set.
#[test]
fn unclaimed_features_are_skipped() {
    needs_root!();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("features.yaml");
    std::fs::write(
        &file,
        "cases:
- name: needs a feature nobody claims
  source: derived
  features: [ClusterNetworkPolicy, SomethingElse]
  pods: [x/a, y/b]
  steps:
  - actions: []
    probes:
    - {port: 80, expect: []}
",
    )
    .unwrap();
    let path = file.display().to_string();
    let out = runner(&["--cases", &path]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SKIP") && stdout.contains("needs SomethingElse"),
        "{all}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("0 passed, 0 failed, 1 skipped"),
        "{all}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("building"),
        "{all}"
    );
    let examples = case_file("cnp-examples.yaml").display().to_string();
    let out = runner(&["--cases", &examples, "--features", "", "-o", "json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("-o json is JSON");
    assert_eq!(doc["skipped"], 6, "{all}");
    assert_eq!(doc["features"], json!([]), "{all}");
}

/// A declared world: host-network pods (probed at, and probing from, their node's
/// address), no Services, `scope: listed` (only the listed pairs, one line each). A
/// wrong expectation there fails and is marked, and the pair not listed is not probed.
#[test]
fn a_world_case_probes_listed_pairs_and_marks_wrong_ones() {
    needs_root!();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("world.yaml");
    std::fs::write(
        &file,
        "worlds:
  w:
    services: false
    denied: timeout
    node_labels: {kubernetes.io/os: linux}
    namespaces:
      ns-a: {labels: {house: a}}
      ns-h: {labels: {house: h}}
    pods:
      ns-a/p0: {labels: {house: a}, ports: [{port: 80, protocol: TCP, name: web}, {port: 53, protocol: UDP}]}
      ns-a/p1: {labels: {house: a}, ports: [{port: 80, protocol: TCP, name: web}, {port: 53, protocol: UDP}]}
      ns-h/h0: {labels: {house: h}, host_network: true, ports: [{port: 34345, protocol: TCP}, {port: 34347, protocol: UDP}]}
cases:
- name: right
  source: derived
  world: w
  pods: [ns-a/p0, ns-a/p1, ns-h/h0]
  steps:
  - actions: []
    probes:
    - {port: 34345, protocol: TCP, scope: listed, expect: [{from: ns-a/p0, to: ns-h/h0, allow: true}]}
    - {port: 80, protocol: TCP, scope: listed, expect: [{from: ns-h/h0, to: ns-a/p1, allow: true}]}
    - {port: 53, protocol: UDP, scope: listed, expect: [{from: ns-a/p1, to: ns-a/p0, allow: true}]}
- name: wrong
  source: derived
  world: w
  pods: [ns-a/p0, ns-h/h0]
  steps:
  - actions: []
    probes:
    - {port: 34347, protocol: UDP, scope: listed, expect: [{from: ns-a/p0, to: ns-h/h0, allow: false}]}
",
    )
    .unwrap();
    let path = file.display().to_string();
    let out = runner(&["--cases", &path, "--timeout", "2"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().last(),
        Some("1 passed, 1 failed, 0 skipped"),
        "{all}"
    );
    assert!(
        stdout.contains("  ns-a/p0 -> ns-h/h0: expected denied; pod IP: allowed !\n"),
        "{all}"
    );
    assert!(!stdout.contains("ClusterIP"), "no Services: {all}");
    assert!(
        stdout.contains(
            "  step 1 34347/UDP ns-a/p0 -> ns-h/h0: the evaluator DISAGREES with the case: allowed"
        ),
        "{all}"
    );
    assert!(!stdout.contains("ns-h/h0 -> ns-a/p0"), "not listed: {all}");
}

/// A file it cannot use: exit 2, the case and the key named, nothing built (no root
/// needed to get there).
#[test]
fn a_bad_file_exits_2_naming_the_case_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "cases:\n- name: first\n  source: e2e\n  pods: [x/a, x/b]\n  steps:\n  - actions: []\n    probes:\n    - port: 80\n      expect: [{from: '*', to: 'x/a', alow: false}]\n",
    )
    .unwrap();
    let out = runner(&["--cases", &bad.display().to_string()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"first\"") && err.contains("alow"), "{all}");

    let missing = dir.path().join("missing.yaml");
    let out = runner(&["--cases", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));

    let out = runner(&[
        "--cases",
        &case_file("examples.yaml").display().to_string(),
        "-o",
        "xml",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = runner(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn help_says_what_is_probed_and_how() {
    let out = runner(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--cases FILE",
        "-o table|json",
        "SCTP INIT",
        "CRC32c",
        "Only the case's pods",
        "are probed",
        "N passed, N failed, N skipped",
        "--features",
        "scope: listed",
        "denied: timeout",
        "host_network",
        "reference evaluator",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

/// A world of its own (one at a time), serving TCP 80.
fn world() -> (MutexGuard<'static, ()>, World) {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    (one, World::new(&[80], &[Protocol::Tcp], &mut |_| {}))
}

fn pod(ns: &str, name: &str) -> PodRef {
    PodRef {
        ns: ns.into(),
        name: name.into(),
    }
}

/// Ingress to every pod of x only from namespace x.
fn ingress_to_x_only_from_x(world: &mut World) {
    world
        .put_policy(
            "x",
            "from-x-only",
            &json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
            false,
        )
        .unwrap();
}

/// A connection open before a policy that denies it is cut once the policy is in force
/// (conntrack's entry deleted: its next packet meets the rules), to the pod IP and through
/// the ClusterIP; a connection the policy still allows goes on.
#[test]
fn an_open_connection_a_new_policy_denies_is_cut() {
    needs_root!();
    let (_one, mut world) = world();
    let (server, denied, allowed) = (pod("x", "a"), pod("y", "b"), pod("x", "b"));
    // An echo server that keeps its connections open, in x/a; stopped (every socket
    // closed) before the world goes.
    let listener = inside::run(&world.pod(&server).pod.ns, || {
        TcpListener::bind("0.0.0.0:8080").unwrap()
    });
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut open = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            if let Ok((c, _)) = listener.accept() {
                c.set_nonblocking(true).unwrap();
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
    let target = world.pod(&server);
    let (ip, service_ip) = (target.ip, target.service_ip);
    let open = |from: &PodRef, to: std::net::Ipv4Addr| -> TcpStream {
        inside::run(&world.pod(from).pod.ns, move || {
            let c = TcpStream::connect_timeout(&(to, 8080).into(), Duration::from_secs(2)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
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

    ingress_to_x_only_from_x(&mut world);
    let enforced = ferry_tests::proc::wait_until(Duration::from_secs(10), || {
        !world.probe(&denied, ip, 8080, Protocol::Tcp)
    });
    assert!(
        enforced,
        "the policy never came into force:\n{}",
        world.logs()
    );
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
    echo.join().unwrap();
}

/// A pod made while a policy isolates its namespace is never reachable from where the
/// policy forbids, not even in its first moment: the ADD returns only once the node's
/// table covers it. What the policy allows reaches it (once its labels are known).
#[test]
fn a_pod_added_under_a_policy_is_covered_when_add_returns() {
    needs_root!();
    let (_one, mut world) = world();
    ingress_to_x_only_from_x(&mut world);
    let (stranger, neighbour) = (pod("y", "a"), pod("x", "b"));
    let enforced = ferry_tests::proc::wait_until(Duration::from_secs(10), || {
        let a = world.pod(&pod("x", "a")).ip;
        !world.probe(&stranger, a, 80, Protocol::Tcp)
    });
    assert!(
        enforced,
        "the policy never came into force:\n{}",
        world.logs()
    );

    // On every node in turn, the first probe right after the ADD is denied.
    for (node, name) in ["d", "e", "f"].into_iter().enumerate() {
        let late = pod("x", name);
        let ip = world
            .add_late_pod(late.clone(), node, &[80], &[Protocol::Tcp])
            .ip;
        assert!(
            !world.probe(&stranger, ip, 80, Protocol::Tcp),
            "x/{name} on node{node} was reachable from y/a right after its ADD:\n{}",
            world.logs()
        );
        let t = Instant::now();
        let reached = ferry_tests::proc::wait_until(Duration::from_secs(10), || {
            world.probe(&neighbour, ip, 80, Protocol::Tcp)
        });
        assert!(
            reached,
            "x/{name} never reachable from x/b:\n{}",
            world.logs()
        );
        assert!(
            !world.probe(&stranger, ip, 80, Protocol::Tcp),
            "x/{name} reachable from y/a after {:?}",
            t.elapsed()
        );
    }
}
