//! docs/troubleshooting.md, tried as written: every command it has an operator run in
//! ferry's container (`fx …`, i.e. `kubectl exec` into the node's ferry-overlayd
//! container) is run there, on a kind-like cluster installed from deploy/ (the image's own
//! tools, the container's capabilities, mounts and env), and must succeed. A placeholder
//! (`<…>`) is filled with what the cluster has; a command with a placeholder this test does
//! not know fails it, so a new one cannot be skipped silently.

use std::time::Duration;

use ferry_tests::kind::{image, Backend, Family, KindCluster};

/// The commands of `fx …` in code blocks and in inline code of the document.
fn fx_commands(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    // The text outside code blocks, joined: an inline span may wrap onto the next line.
    let mut prose = String::new();
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            if let Some(cmd) = line.trim_start().strip_prefix("fx ") {
                // An aligned comment ends the command; a pipe runs on the operator's side.
                let cmd = cmd.split("  #").next().unwrap_or(cmd);
                let cmd = cmd.split(" | ").next().unwrap_or(cmd);
                out.push(cmd.trim().to_string());
            }
        } else {
            prose.push_str(line.trim());
            prose.push(' ');
        }
    }
    for span in prose.split('`').skip(1).step_by(2) {
        if let Some(cmd) = span.strip_prefix("fx ") {
            out.push(cmd.split(" | ").next().unwrap_or(cmd).trim().to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_command_troubleshooting_md_runs_in_ferrys_container_works() {
    ferry_tests::needs_root!();
    let doc =
        std::fs::read_to_string(ferry_tests::manifest::repo().join("docs/troubleshooting.md"))
            .expect("troubleshooting.md");
    let commands = fx_commands(&doc);
    assert!(commands.len() >= 20, "{commands:#?}");

    let ready = Duration::from_secs(120);
    let mut c = KindCluster::create(Family::Ipv4, 1, Backend::Nft);
    c.install(image::ferry(), ready);
    let client = c.run_pod(1, "shop", "client", &[("app", "client")]);
    // A pod with a hostPort, so that portmap's chain exists.
    let web: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "pause", "image": ferry_tests::cri::image::IMAGE,
                                 "ports": [{"containerPort": 80, "hostPort": 18080}]}]}
    }))
    .expect("pod");
    let web = c.schedule(1, web);
    let server = c.run_pod(0, "shop", "server", &[("app", "server")]);
    c.wait_ready(&client, ready);
    c.wait_ready(&server, ready);
    c.wait_ready(&web, ready);
    let node = 1;
    let uid = c.ferry_pod(node).metadata.uid.unwrap_or_default();
    let veth = c.nodes[node]
        .ferry_links()
        .into_iter()
        .find(|l| l.starts_with("fy"))
        .expect("a pod's host veth");
    let remote = c.nodes[0].ips[0].clone();
    let fill = |cmd: &str| -> String {
        cmd.replace("<host veth>", &veth)
            .replace("<remote node IP>", &remote)
            .replace("NS/CLIENT NS/SERVER", "shop/client shop/server")
            .replace("ingress_<hash>", "ingress_dispatch")
    };
    let mut failed = Vec::new();
    for cmd in &commands {
        let filled = fill(cmd);
        assert!(
            !filled.contains('<'),
            "troubleshooting.md: `fx {cmd}` has a placeholder this test does not fill"
        );
        let (code, out, err) = c.exec(&uid, "ferry-overlayd", &["sh", "-c", &filled]);
        // A listing of a chain that does not exist yet is the one expected failure here
        // (no policy isolates a pod on this cluster).
        let expected_miss = filled.contains("ingress_dispatch") || filled.contains("ingress_pods4");
        if code != 0 && !expected_miss {
            failed.push(format!("fx {filled}: exit {code}\n{out}{err}"));
        }
    }
    assert!(
        failed.is_empty(),
        "commands of troubleshooting.md that fail in ferry's container:\n{}",
        failed.join("\n")
    );
}
