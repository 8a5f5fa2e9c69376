//! What can be checked of the Kubernetes install without a cluster: the manifests against
//! the API schemas, the scripts, the daemon's flags, and the install logic with the
//! shipped network config on the namespace harness.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::cluster::Cluster;
use ferry_tests::cni::{Call, Reply};
use ferry_tests::netns::Netns;
use ferry_tests::{bin, root_or_skip};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    v.push(repo().join("deploy/kind/kind-config.yaml"));
    v.sort();
    v
}

/// `kubernetes-validate`, from `FERRY_K8S_VALIDATE`, the venv `deploy/install-deps.sh`
/// makes under target/, or PATH.
fn validator() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_K8S_VALIDATE") {
        return p.into();
    }
    let venv = repo().join("target/ci-venv/bin/kubernetes-validate");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("kubernetes-validate")
}

#[test]
fn manifests_validate_strictly_against_the_kubernetes_schemas() {
    for m in manifests() {
        if m.ends_with("kind-config.yaml") {
            continue; // kind's own API, not Kubernetes'
        }
        let out = Command::new(validator())
            .args(["--strict", "-k", "1.31.0"])
            .arg(&m)
            .output()
            .unwrap_or_else(|e| {
                panic!("run kubernetes-validate ({e}): deploy/install-deps.sh installs it")
            });
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "{}: {text}",
            m.display()
        );
        assert!(text.contains("passed"), "{}: {text}", m.display());
    }
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let r = repo();
    let scripts = [
        "deploy/install-cni.sh",
        "deploy/node-cleanup.sh",
        "deploy/install-deps.sh",
        "deploy/fresh-machine-check.sh",
        "deploy/demo.sh",
        "deploy/kind/up.sh",
        "deploy/kind/check.sh",
        "deploy/kind/down.sh",
        "tests/run",
        ".ci/run",
    ];
    let out = Command::new("shellcheck")
        .args(scripts.iter().map(|s| r.join(s)))
        .output()
        .expect("run shellcheck (deploy/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The main container's part of the DaemonSet: from `containers:` to `volumes:`.
fn overlayd_container(yaml: &str) -> &str {
    let start = yaml.find("\n      containers:\n").expect("containers:");
    let end = yaml[start..].find("\n      volumes:\n").expect("volumes:") + start;
    &yaml[start..end]
}

#[test]
fn every_flag_and_variable_the_daemonset_passes_exists() {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let part = overlayd_container(&yaml);
    let help = Command::new(bin("ferry-overlayd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = part
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|f| f.split('=').next().unwrap_or(f))
        .collect();
    let vars: Vec<&str> = part
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(flags.len() >= 3 && vars.len() >= 5, "{flags:?} {vars:?}");
    for f in flags {
        assert!(
            help.contains(&format!("--{f} ")) || help.contains(&format!("--{f}\n")),
            "--{f} is not a ferry-overlayd flag"
        );
    }
    for v in vars {
        assert!(
            help.contains(&format!("[env: {v}")),
            "{v} is not read by ferry-overlayd"
        );
    }
}

/// The conflist in the ConfigMap: the block under `10-ferry.conflist: |`.
fn shipped_conflist() -> Value {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/config.yaml")).unwrap();
    let block: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("10-ferry.conflist: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    serde_json::from_str(&block)
        .unwrap_or_else(|e| panic!("shipped conflist is not JSON ({e}):\n{block}"))
}

#[test]
fn the_install_script_and_the_shipped_conflist_make_a_working_node() {
    if !root_or_skip("the_install_script_and_the_shipped_conflist_make_a_working_node") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let conflist = shipped_conflist();
    std::fs::write(src.path().join("10-ferry.conflist"), conflist.to_string()).unwrap();
    let out = Command::new(repo().join("deploy/install-cni.sh"))
        .arg(root.path())
        .env("FERRY_BIN_SRC", ferry_tests::bin_dir())
        .env("FERRY_CONFLIST_SRC", src.path().join("10-ferry.conflist"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin_dir = root.path().join("opt/cni/bin");
    let conf_dir = root.path().join("etc/cni/net.d");
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    // Only the finished files: no temporary left behind.
    assert_eq!(names(&bin_dir), ["ferry", "ferry-ipam"]);
    assert_eq!(names(&conf_dir), ["10-ferry.conflist"]);
    let installed: Value =
        serde_json::from_slice(&std::fs::read(conf_dir.join("10-ferry.conflist")).unwrap())
            .unwrap();
    assert_eq!(installed, conflist);

    // A node whose ferry-overlayd wrote node.json; a pod added as a runtime would, through
    // the installed binary and the installed conflist (only the node's state and data
    // directories pointed at the test's own).
    let c = Cluster::new(1, "10.74.0.0/16");
    let node = &c.nodes[0];
    let pod = Netns::new("fyp");
    let cni_path = format!("{}:{}", bin_dir.display(), ferry_tests::REFERENCE_PLUGINS);
    let plugin_conf = |i: usize, prev: Option<&Value>| {
        let mut p = installed["plugins"][i].clone();
        p["name"] = installed["name"].clone();
        p["cniVersion"] = installed["cniVersion"].clone();
        if i == 0 {
            p["stateDir"] = json!(node.state_dir());
            p["ipam"] = json!({"type": "ferry-ipam", "dataDir": node.dir.path().join("ipam")});
        } else {
            p["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8080, "containerPort": 7000, "protocol": "tcp"}]});
        }
        if let Some(prev) = prev {
            p["prevResult"] = prev.clone();
        }
        p.to_string()
    };
    let call = |i: usize, cmd: &'static str, prev: Option<&Value>| -> Reply {
        let plugin = match installed["plugins"][i]["type"].as_str().unwrap() {
            "ferry" => bin_dir.join("ferry"),
            other => Path::new(ferry_tests::REFERENCE_PLUGINS).join(other),
        };
        Call {
            host: &node.host,
            plugin,
            command: cmd,
            container_id: "installed",
            netns: Some(pod.path()),
            ifname: "eth0",
            cni_path: cni_path.clone(),
        }
        .run(&plugin_conf(i, prev))
    };
    let r = call(0, "ADD", None).ok();
    let r = call(1, "ADD", Some(&r)).ok();
    let ip = ferry_tests::cni::pod_ip(&r);
    assert!(ip.starts_with("10.74."), "{r}");
    pod.sh("ping -c1 -W2 $(ip route | awk '/default/ {print $3}')");
    let _srv = ferry_tests::proc::echo_peer_server(&pod, 7000);
    assert!(
        ferry_tests::proc::connect(&c.outside, &node.ip, 8080).is_some(),
        "hostPort through the shipped conflist failed"
    );
    call(1, "DEL", Some(&r)).ok();
    call(0, "DEL", Some(&r)).ok();
}
