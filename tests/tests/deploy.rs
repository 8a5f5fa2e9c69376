//! What can be checked of the Kubernetes install without a cluster: every kustomization
//! ferry ships, built as `kubectl apply -k` builds it, against the API schemas and against
//! what a cluster operator needs of it (Linux nodes only, SELinux, no etcd in the default
//! install and the etcd component's TLS, the RBAC, the node's own address, the cleanup
//! apart from the install); the scripts (shellcheck, and
//! deploy/kind's with stand-ins for docker, kind and kubectl, which cannot run here); the
//! daemon's flags; the install script and the shipped conflist on the namespace harness.
//! What runs the install for real is kind_lifecycle.rs and kind_install.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::cluster::Cluster;
use ferry_tests::cni::{Call, Reply};
use ferry_tests::kind::kustomize;
use ferry_tests::netns::run_ok;
use ferry_tests::netns::Netns;
use ferry_tests::{bin, needs_root};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every kustomization a user applies.
const KUSTOMIZATIONS: &[&str] = &[
    "deploy/kubernetes",
    "deploy/kind/dual",
    "deploy/kind/ipv6",
    "deploy/kind/etcd",
    "deploy/kind/dual-etcd",
    "deploy/kind/ipv6-etcd",
    "deploy/kubernetes/hardening",
    "deploy/uninstall",
];

/// The installs on the Kubernetes datastore (the default), and on ferry's etcd (the etcd
/// component).
const ON_KUBERNETES: &[&str] = &["deploy/kubernetes", "deploy/kind/dual", "deploy/kind/ipv6"];
const ON_ETCD: &[&str] = &[
    "deploy/kind/etcd",
    "deploy/kind/dual-etcd",
    "deploy/kind/ipv6-etcd",
];

fn installs() -> impl Iterator<Item = &'static str> {
    ON_KUBERNETES.iter().chain(ON_ETCD).copied()
}

fn built(dir: &str) -> Vec<Value> {
    kustomize::build(&repo().join(dir))
}

/// The pod templates of every workload of every kustomization: (where, spec).
fn pod_specs() -> Vec<(String, PodSpec)> {
    let mut out = Vec::new();
    for k in KUSTOMIZATIONS {
        for o in built(k) {
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            let spec = match o["kind"].as_str() {
                Some("DaemonSet") => serde_json::from_value::<DaemonSet>(o.clone())
                    .unwrap()
                    .spec
                    .and_then(|s| s.template.spec),
                Some("Deployment") => serde_json::from_value::<Deployment>(o.clone())
                    .unwrap()
                    .spec
                    .and_then(|s| s.template.spec),
                _ => None,
            };
            if let Some(spec) = spec {
                out.push((format!("{k}: {name}"), spec));
            }
        }
    }
    assert!(out.len() >= 4, "{out:?}");
    out
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
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
fn every_kustomization_validates_strictly_against_the_kubernetes_schemas() {
    for k in KUSTOMIZATIONS {
        let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        let docs: Vec<String> = built(k).iter().map(Value::to_string).collect();
        std::fs::write(file.path(), docs.join("\n---\n")).unwrap();
        let out = Command::new(validator())
            .args(["--strict", "-k", "1.31.0"])
            .arg(file.path())
            .output()
            .unwrap_or_else(|e| {
                panic!("run kubernetes-validate ({e}): deploy/install-deps.sh installs it")
            });
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "{k}: {text}"
        );
        assert!(text.contains("passed"), "{k}: {text}");
    }
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let r = repo();
    let scripts = [
        "deploy/install-cni.sh",
        "deploy/etcd-certs.sh",
        "deploy/image/stage.sh",
        "deploy/install-deps.sh",
        "deploy/build-plugins.sh",
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

/// The `--help` of `ferry-overlayd` or one of its commands.
fn help(command: Option<&str>) -> String {
    let mut c = Command::new(bin("ferry-overlayd"));
    c.args(command).arg("--help");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{command:?} --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ferry-overlayd`'s command (none for the daemon) in a container that runs it.
fn overlayd_command(c: &Container) -> Option<Option<String>> {
    let cmd: Vec<&str> = c.command.iter().flatten().map(String::as_str).collect();
    match cmd.as_slice() {
        // The image's ENTRYPOINT is ferry-overlayd.
        [] => Some(None),
        [exe, sub, ..] if exe.ends_with("/ferry-overlayd") => Some(Some(sub.to_string())),
        [_, "-c", script] if script.contains("ferry-overlayd ") => {
            let after = script.split("ferry-overlayd ").nth(1)?;
            Some(after.split_whitespace().next().map(str::to_string))
        }
        _ => None,
    }
}

#[test]
fn every_flag_and_variable_given_to_ferry_overlayd_exists() {
    let mut seen = 0;
    for (at, spec) in pod_specs() {
        for c in containers(&spec).filter(|c| c.image.as_deref() == Some("ferry:dev")) {
            let Some(command) = overlayd_command(c) else {
                continue;
            };
            seen += 1;
            let text = help(command.as_deref());
            let mut flags: Vec<String> = c
                .args
                .iter()
                .flatten()
                .filter_map(|a| a.strip_prefix("--"))
                .map(|f| f.split('=').next().unwrap_or(f).to_string())
                .collect();
            if let [_, _, script] = c.command.as_deref().unwrap_or_default() {
                flags.extend(
                    script
                        .split_whitespace()
                        .filter_map(|w| w.strip_prefix("--"))
                        .map(str::to_string),
                );
            }
            for f in flags {
                assert!(
                    text.contains(&format!("--{f} ")) || text.contains(&format!("--{f}\n")),
                    "{at}, {}: --{f} is not a flag of ferry-overlayd {command:?}",
                    c.name
                );
            }
            // Environment variables are read by the top-level parser, whatever the command.
            let top = help(None);
            for e in c.env.iter().flatten() {
                assert!(
                    top.contains(&format!("[env: {}", e.name)),
                    "{at}, {}: {} is not read by ferry-overlayd",
                    c.name,
                    e.name
                );
            }
        }
    }
    // The daemon, prepare-node and the cleanup.
    assert!(seen >= 3, "{seen}");
}

#[test]
fn every_pod_template_runs_on_linux_nodes_only() {
    for (at, spec) in pod_specs() {
        let os = spec
            .node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str);
        assert_eq!(os, Some("linux"), "{at}: the image is Linux-only");
    }
}

#[test]
fn containers_writing_the_nodes_files_may_do_so_under_selinux() {
    for (at, spec) in pod_specs() {
        let host_paths: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.host_path.is_some())
            .map(|v| v.name.as_str())
            .collect();
        for c in containers(&spec) {
            let writes = c
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| host_paths.contains(&m.name.as_str()) && m.read_only != Some(true));
            if !writes || at.contains("ferry-etcd") {
                // etcd's own data directory is the upstream etcd image's usual hostPath.
                continue;
            }
            let sc = c.security_context.clone().unwrap_or_default();
            let spc = sc
                .se_linux_options
                .as_ref()
                .and_then(|o| o.type_.as_deref())
                == Some("spc_t");
            assert!(
                sc.privileged == Some(true) || spc,
                "{at}, {}: writes a hostPath but would be confined by SELinux (no spc_t)",
                c.name
            );
        }
    }
}

fn daemon(k: &str) -> (DaemonSet, Container) {
    let ds: DaemonSet = built(k)
        .into_iter()
        .find(|o| o["kind"] == "DaemonSet" && o["metadata"]["name"] == "ferry")
        .map(|o| serde_json::from_value(o).unwrap())
        .expect("the ferry DaemonSet");
    let c = ds.spec.clone().unwrap().template.spec.unwrap().containers[0].clone();
    (ds, c)
}

fn env_field(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| {
            e.value.clone().or_else(|| {
                e.value_from
                    .as_ref()?
                    .field_ref
                    .as_ref()
                    .map(|f| format!("fieldRef:{}", f.field_path))
            })
        })
}

#[test]
fn the_daemon_takes_its_node_address_from_the_kubelet() {
    for k in installs() {
        let (_, c) = daemon(k);
        assert_eq!(
            env_field(&c, "FERRY_PUBLIC_IP").as_deref(),
            Some("fieldRef:status.hostIP"),
            "{k}: a guess from the default route is wrong on a node with several interfaces"
        );
    }
}

fn env_from_config(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.as_ref()?.config_map_key_ref.as_ref())
        .map(|r| r.key.clone())
}

fn config_map(objects: &[Value]) -> &Value {
    objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "ferry-config")
        .expect("the ConfigMap ferry-config")
}

#[test]
fn the_default_install_runs_no_etcd_and_takes_the_kubernetes_datastore() {
    for k in ON_KUBERNETES {
        let objects = built(k);
        for o in &objects {
            let text = o.to_string();
            assert!(
                !text.contains("etcd"),
                "{k}: {} {} names etcd: {text}",
                o["kind"],
                o["metadata"]["name"]
            );
        }
        assert_eq!(
            config_map(&objects)["data"]["datastore"],
            "kubernetes",
            "{k}"
        );
        let (ds, c) = daemon(k);
        assert_eq!(
            env_from_config(&c, "FERRY_DATASTORE").as_deref(),
            Some("datastore"),
            "{k}"
        );
        let spec = ds.spec.unwrap().template.spec.unwrap();
        assert!(
            spec.volumes.iter().flatten().all(|v| v.secret.is_none()),
            "{k}: a Secret mounted without etcd"
        );
    }
    for k in ON_ETCD {
        let objects = built(k);
        assert_eq!(config_map(&objects)["data"]["datastore"], "etcd", "{k}");
        let (_, c) = daemon(k);
        assert_eq!(
            env_from_config(&c, "FERRY_DATASTORE").as_deref(),
            Some("datastore"),
            "{k}"
        );
        assert_eq!(
            env_from_config(&c, "FERRY_ETCD_ENDPOINTS").as_deref(),
            Some("etcd-endpoints"),
            "{k}"
        );
    }
}

#[test]
fn the_etcd_component_is_a_component_the_installs_add_last() {
    let dir = repo().join("deploy/kubernetes/components/etcd");
    let k = &kustomize::documents_at(&dir.join("kustomization.yaml"))[0];
    assert_eq!(k["kind"], "Component");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1alpha1");
    // The base with the component is the IPv4 kind install on etcd, object for object but
    // the etcd ones.
    let base = built("deploy/kubernetes");
    let with = built("deploy/kind/etcd");
    let added: Vec<String> = with
        .iter()
        .filter(|o| {
            !base
                .iter()
                .any(|b| b["kind"] == o["kind"] && b["metadata"] == o["metadata"])
        })
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(added, ["Service/ferry-etcd", "Deployment/ferry-etcd"]);
}

#[test]
fn the_hardening_policy_is_for_ferrys_service_account_and_its_annotations() {
    let objects = built("deploy/kubernetes/hardening");
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let (policy, binding) = (&objects[0], &objects[1]);
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    // The service account the install runs ferry-overlayd as.
    let (ds, _) = daemon("deploy/kubernetes");
    let sa = ds.spec.unwrap().template.spec.unwrap().service_account_name;
    let user = format!(
        "system:serviceaccount:{}:{}",
        ds.metadata.namespace.unwrap(),
        sa.unwrap()
    );
    let text = policy.to_string();
    assert!(text.contains(&format!("'{user}'")), "{text}");
    for needed in [
        "authentication.kubernetes.io/node-name",
        "'ferry.dev/'",
        "object.spec == oldObject.spec",
        "object.metadata.labels",
    ] {
        assert!(text.contains(needed), "{needed}: {text}");
    }
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
}

#[test]
fn ferrys_etcd_takes_only_clients_with_its_certificates_and_compacts() {
    for k in ON_ETCD {
        let objects = built(k);
        let etcd: Deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "ferry-etcd")
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .expect("ferry's etcd");
        let cmd = etcd.spec.unwrap().template.spec.unwrap().containers[0]
            .command
            .clone()
            .unwrap_or_default()
            .join(" ");
        for needed in [
            "--client-cert-auth",
            "--trusted-ca-file=",
            "--listen-client-urls=https://",
            "--auto-compaction-mode=",
            "--auto-compaction-retention=",
        ] {
            assert!(cmd.contains(needed), "{k}: etcd without {needed}: {cmd}");
        }
        assert!(!cmd.contains("--listen-client-urls=http://"), "{k}: {cmd}");
        let ep = config_map(&objects)["data"]["etcd-endpoints"]
            .as_str()
            .unwrap_or_default();
        assert!(ep.starts_with("https://"), "{k}: {ep}");
        let (_, c) = daemon(k);
        for v in ["FERRY_ETCD_CACERT", "FERRY_ETCD_CERT", "FERRY_ETCD_KEY"] {
            assert!(env_field(&c, v).is_some(), "{k}: the daemon has no {v}");
        }
    }
}

#[test]
fn ferrys_clusterrole_reads_and_patches_nodes_and_writes_nothing_else() {
    for k in installs() {
        let objects = built(k);
        let role: k8s_openapi::api::rbac::v1::ClusterRole = objects
            .iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "ferry")
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .expect("ferry's ClusterRole");
        let mut rules: Vec<(String, String, Vec<String>)> = Vec::new();
        for r in role.rules.unwrap_or_default() {
            for g in r.api_groups.clone().unwrap_or_default() {
                for res in r.resources.clone().unwrap_or_default() {
                    rules.push((g.clone(), res, r.verbs.clone()));
                }
            }
        }
        let read = ["get", "list", "watch"].map(String::from).to_vec();
        let mut node = read.clone();
        node.push("patch".into());
        let want: Vec<(String, String, Vec<String>)> = [
            ("", "namespaces", &read),
            ("", "pods", &read),
            ("", "nodes", &node),
            ("networking.k8s.io", "networkpolicies", &read),
            ("policy.networking.k8s.io", "clusternetworkpolicies", &read),
        ]
        .into_iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.clone()))
        .collect();
        assert_eq!(rules, want, "{k}");
    }
}

#[test]
fn the_cleanup_is_apart_from_the_install() {
    // `kubectl apply -R -f deploy/kubernetes/` applies every file under the directory.
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(&repo().join("deploy/kubernetes"), &mut all);
    assert!(all.len() >= 5, "{all:?}");
    for f in all {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("ferry-cleanup"),
            "{}: the cleanup would start with the install",
            f.display()
        );
    }
    let cleanup = built("deploy/uninstall");
    assert!(cleanup
        .iter()
        .any(|o| o["metadata"]["name"] == "ferry-cleanup"));
    // `kustomize edit set image ferry=…` reaches it as it reaches the install.
    let mut images = cleanup.clone();
    kustomize::set_image(
        &mut images,
        "ferry",
        Some("registry.example/ferry"),
        Some("abc"),
    );
    assert!(images
        .iter()
        .any(|o| o.to_string().contains("registry.example/ferry:abc")));
}

#[test]
fn the_image_is_built_from_the_recipe_the_tests_build_it_from() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("deploy/image/packages"), "{dockerfile}");
    assert!(dockerfile.contains("deploy/image/stage.sh"), "{dockerfile}");
    let packages = ferry_tests::kind::image::packages();
    for p in ["iptables", "nftables", "iproute2", "conntrack", "kmod"] {
        assert!(
            packages.iter().any(|x| x == p),
            "{p} is not in deploy/image/packages"
        );
    }
    // The build context leaves out what a checkout accumulates.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for p in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore lacks {p}"
        );
    }
}

/// A directory of stand-ins for docker, kind and kubectl, each logging its arguments
/// (one call per line) to `calls` and answering what deploy/kind's scripts ask.
fn stand_ins(dir: &Path, image_id: &str, internal_ips: &str) -> PathBuf {
    let calls = dir.join("calls");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = format!("echo \"$(basename \"$0\") $*\" >>{}", calls.display());
    let scripts = [
        (
            "docker",
            format!(
                "{log}\ncase \"$1 $2\" in\n  'image inspect') echo 'sha256:{image_id}' ;;\n  \
                 'exec '*) case \"$*\" in *crictl*) echo 'IMAGE TAG ID SIZE'; \
                 echo 'registry.k8s.io/etcd 3.5.21-0 abc 1MB' ;; *) exit 0 ;; esac ;;\nesac"
            ),
        ),
        ("kind", format!("{log}\nexit 0")),
        (
            "kubectl",
            format!(
                "{log}\ncase \"$*\" in\n  kustomize*) printf 'kind: DaemonSet\\nimage: ferry:dev\\n---\\nimage: registry.k8s.io/etcd:3.5.16-0\\n' ;;\n  \
                 'apply -f -') cat >>{applied} ;;\n  *'get secret'*) exit 1 ;;\n  \
                 *InternalIP*) echo '{internal_ips}' ;;\n  *'jsonpath={{.items[*].metadata.name}}'*) echo 'n1' ;;\n  \
                 *'-o jsonpath='*) echo 'x' ;;\nesac\nexit 0",
                applied = dir.join("applied").display()
            ),
        ),
    ];
    for (name, body) in scripts {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    bin
}

fn path_with(bin: &Path) -> String {
    format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display())
}

#[test]
fn up_sh_checks_its_tools_first_and_tags_the_image_by_what_was_built() {
    // A tool missing: named, and nothing done.
    let d = tempfile::tempdir().unwrap();
    let bin = stand_ins(d.path(), "1111", "");
    std::fs::remove_file(bin.join("kubectl")).unwrap();
    // Only what the script needs to get to its check (this machine may have a kubectl).
    let sys = d.path().join("sys");
    std::fs::create_dir(&sys).unwrap();
    for t in ["bash", "dirname"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{t}"), sys.join(t)).unwrap();
    }
    let out = Command::new(repo().join("deploy/kind/up.sh"))
        .env("PATH", format!("{}:{}", bin.display(), sys.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kubectl"),
        "{out:?}"
    );
    assert!(
        !d.path().join("calls").exists(),
        "up.sh acted before checking its tools"
    );

    // Two builds that differ reach the cluster as two images; the first on the Kubernetes
    // datastore (the default: no etcd, its image or its certificates), the second on etcd.
    let mut images = Vec::new();
    for (id, datastore) in [
        ("aaaaaaaaaaaaaaaa", None),
        ("bbbbbbbbbbbbbbbb", Some("etcd")),
    ] {
        let d = tempfile::tempdir().unwrap();
        let bin = stand_ins(d.path(), id, "");
        let mut up = Command::new(repo().join("deploy/kind/up.sh"));
        up.env("PATH", path_with(&bin));
        if let Some(ds) = datastore {
            up.env("FERRY_KIND_DATASTORE", ds);
        }
        run_ok(&mut up);
        let applied = std::fs::read_to_string(d.path().join("applied")).unwrap();
        let calls = std::fs::read_to_string(d.path().join("calls")).unwrap();
        assert!(!applied.contains("image: ferry:dev"), "{applied}");
        if datastore.is_some() {
            assert!(
                calls.contains("kubectl kustomize deploy/kind/etcd\n"),
                "{calls}"
            );
            assert!(
                applied.contains("image: registry.k8s.io/etcd:3.5.21-0"),
                "{applied}"
            );
            // The etcd Secrets were made (no secret existed).
            assert!(applied.contains("name: ferry-etcd-client"), "{applied}");
            assert!(
                calls.contains("rollout status deployment/ferry-etcd"),
                "{calls}"
            );
        } else {
            assert!(
                calls.contains("kubectl kustomize deploy/kubernetes\n"),
                "{calls}"
            );
            assert!(!applied.contains("ferry-etcd-client"), "{applied}");
            assert!(
                !calls.contains("crictl") && !calls.contains("ferry-etcd"),
                "{calls}"
            );
        }
        let image = format!("ferry:{}", &id[..12]);
        assert!(applied.contains(&format!("image: {image}")), "{applied}");
        assert!(
            calls.contains(&format!("kind load docker-image {image}")),
            "{calls}"
        );
        images.push(image);
    }
    assert_ne!(images[0], images[1]);
}

#[test]
fn check_sh_asks_each_address_of_a_dual_stack_node_on_its_own() {
    let d = tempfile::tempdir().unwrap();
    let bin = stand_ins(d.path(), "1", "172.18.0.3 fc00:f853:ccd:e793::3");
    let out = Command::new(repo().join("deploy/kind/check.sh"))
        .env("PATH", path_with(&bin))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(d.path().join("calls")).unwrap();
    assert!(calls.contains("http://172.18.0.3:x/hostname"), "{calls}");
    assert!(
        calls.contains("http://[fc00:f853:ccd:e793::3]:x/hostname"),
        "{calls}"
    );
    assert!(!calls.contains("[172.18.0.3 fc00"), "{calls}");
}

/// The conflist the daemon installs: the ConfigMap's `cni-conflist`.
fn shipped_conflist() -> Value {
    ferry_tests::manifest::shipped_conflist()
}

#[test]
fn the_install_script_and_the_shipped_conflist_make_a_working_node() {
    needs_root!();
    let root = tempfile::tempdir().unwrap();
    let conf_dir = root.path().join("etc/cni/net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    // An older ferry's config, which the new one replaces.
    std::fs::write(conf_dir.join("10-ferry.conflist"), "{}").unwrap();
    run_ok(
        Command::new(repo().join("deploy/install-cni.sh"))
            .arg(root.path())
            .env("FERRY_BIN_SRC", ferry_tests::bin_dir()),
    );
    let bin_dir = root.path().join("opt/cni/bin");
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    // Only the finished files: no temporary left behind, the old config gone, and no
    // config written (the daemon writes it once ready).
    assert_eq!(names(&bin_dir), ["ferry", "ferry-ipam"]);
    assert!(names(&conf_dir).is_empty(), "{:?}", names(&conf_dir));
    let installed = shipped_conflist();

    // A node whose ferry-overlayd wrote node.json; a pod added as a runtime would, through
    // the installed binary and the shipped conflist (only the node's state and data
    // directories pointed at the test's own).
    let c = Cluster::builder().cluster_cidr("10.74.0.0/16").build();
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
