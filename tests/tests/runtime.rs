//! ferry under a real runtime: containerd's `ctr run --cni` with a conflist of ferry and
//! the reference portmap, as Debian's containerd and runc run it.
//!
//! The runtime gets a private containerd (own root, state and socket under a temp dir),
//! runs in a test-made network namespace, and sees /etc, /opt and /var/lib through
//! overlays in a private mount namespace: the host's CNI directories stay untouched.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_tests::netns::Netns;
use ferry_tests::proc::{wait_until, Bg};
use ferry_tests::{bin, needs_root};

fn need_tool(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's containerd and busybox-static (.ci/run does)"
    );
}

#[test]
fn ctr_run_with_ferry_and_portmap() {
    needs_root!();
    for t in [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/sbin/runc",
        "/bin/busybox",
    ] {
        need_tool(t);
    }
    let host = Netns::new("fyr");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let rootfs = t.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "ip", "ping"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for d in ["eu", "ew", "ou", "ow", "vu", "vw", "ipam"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let sock = t.join("containerd.sock");
    std::fs::write(
        t.join("config.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            t.display(),
            sock.display()
        ),
    )
    .unwrap();
    std::fs::write(
        t.join("ferry.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "ctrnet",
            "plugins": [
                {"type": "ferry", "ipam": {"type": "ferry-ipam", "subnet": "10.45.0.0/24",
                                            "dataDir": t.join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
        .to_string(),
    )
    .unwrap();

    // nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup
    // mounts runc needs.
    let netns_arg = format!("--net={}", host.path().display());
    let mut daemon = Command::new("nsenter");
    daemon
        .arg(&netns_arg)
        .arg("containerd")
        .arg("--config")
        .arg(t.join("config.toml"));
    let _containerd = Bg::spawn_cmd(daemon);
    assert!(
        wait_until(Duration::from_secs(20), || sock.exists()),
        "containerd did not start"
    );

    let td = t.display();
    let script = format!(
        "set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir={td}/eu,workdir={td}/ew /etc
mount -t overlay overlay -o lowerdir=/opt,upperdir={td}/ou,workdir={td}/ow /opt
mount -t overlay overlay -o lowerdir=/var/lib,upperdir={td}/vu,workdir={td}/vw /var/lib
mkdir -p /etc/cni/net.d /opt/cni/bin
cp {td}/ferry.conflist /etc/cni/net.d/10-ferry.conflist
cp {ferry} {ipam} /opt/cni/bin/
ctr --address {sock} run --rm --cni --rootfs {td}/rootfs fyctr{pid} /bin/sh -c \
  'ip -4 -o addr show dev eth0; ping -c1 -W3 10.45.0.1'
",
        ferry = bin("ferry").display(),
        ipam = bin("ferry-ipam").display(),
        sock = sock.display(),
        pid = std::process::id(),
    );
    let out = Command::new("nsenter")
        .arg(&netns_arg)
        .args([
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ctr run failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("inet 10.45.0.2/24"),
        "no address:\n{stdout}"
    );
    assert!(
        stdout.contains("1 packets received"),
        "no ping reply:\n{stdout}"
    );

    // After the container exited, the runtime's DEL freed the address and the veth.
    let store: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.join("ipam/allocations.json")).unwrap()).unwrap();
    assert_eq!(store["allocations"], serde_json::json!({}), "{store}");
    // The host veth is retired at once and deleted by the reaper soon after.
    let gone = wait_until(Duration::from_secs(5), || {
        !host
            .links()
            .iter()
            .any(|l| l.starts_with("fy") || l.starts_with("fz"))
    });
    assert!(gone, "{:?}", host.links());
    assert!(!Path::new("/etc/cni/net.d/10-ferry.conflist").exists());
}
