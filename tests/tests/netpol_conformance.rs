//! `ferry-netpol-conformance` on every case file of `tests/netpol/`: each case passes
//! against ferry's NetworkPolicy enforcement on a 3-node cluster (needs root: the runner
//! makes network namespaces). These tests never skip: without root, or without the built
//! binaries (`cargo build --workspace`), they fail.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

use ferry_tests::netpol::cases;
use serde_json::Value;

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

/// Runs every case of `file`; all must pass.
fn all_pass(file: &str, json: bool) {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the NetworkPolicy conformance run needs root (it makes network namespaces)"
    );
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let path = case_file(file);
    let n = cases::read(&path)
        .expect("the case file parses")
        .cases
        .len();
    let path = path.display().to_string();
    let mut args = vec!["--cases", path.as_str()];
    if json {
        args.extend(["-o", "json"]);
    }
    let out = runner(&args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{file}: {all}");
    let summary = format!("{n} passed, 0 failed");
    let last = if json { &out.stderr } else { &out.stdout };
    let last = String::from_utf8_lossy(last);
    assert_eq!(
        last.lines().last(),
        Some(summary.as_str()),
        "{file}: the last line: {all}"
    );
    if json {
        let doc: Value = serde_json::from_slice(&out.stdout).expect("-o json is JSON");
        assert_eq!(doc["passed"], n, "{all}");
        assert_eq!(doc["failed"], 0, "{all}");
        let cases = doc["cases"].as_array().expect("cases");
        assert_eq!(cases.len(), n);
        assert!(cases
            .iter()
            .all(|c| c["passed"] == true && c["probes"].as_array().is_some_and(|p| !p.is_empty())));
    }
}

#[test]
fn examples_pass() {
    all_pass("examples.yaml", true);
}

#[test]
fn ferry_cases_pass() {
    all_pass("ferry.yaml", false);
}

#[test]
fn upstream_cases_pass() {
    all_pass("upstream.yaml", false);
}

/// The runner is no rubber stamp: cases expecting what ferry does not do fail, exit 1,
/// and the table marks each wrong observation, to the pod IP and to the ClusterIP.
#[test]
fn wrong_expectations_fail_and_are_marked() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root");
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
    assert_eq!(stdout.lines().last(), Some("0 passed, 2 failed"), "{all}");
    // Row y/b, column x/a: observed allowed (SCTP), then observed denied (UDP), both
    // to the pod IP and to the ClusterIP.
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("y/b")).collect();
    assert_eq!(rows.len(), 2, "{all}");
    assert_eq!(rows[0].matches(".!").count(), 2, "{all}");
    assert_eq!(rows[1].matches("X!").count(), 2, "{all}");
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
        "N passed, N failed",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
