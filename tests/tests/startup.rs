//! A start-up that a user's node survives: health served from the first instant, etcd
//! waited for, the node's sysctls checked before anything of it is published, a killed
//! daemon's successor taking over at once (and a second daemon on the node waiting), and
//! the CNI config installed only once the daemon is ready, under a name that sorts first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::cluster::{
    http_get, run_overlayd, Cluster, Datastore, Node, ETCD_IP, HEALTH_ADDR,
};
use ferry_tests::netns::Netns;
use ferry_tests::proc::{wait_until, Bg};
use ferry_tests::{bin, needs_root};

/// Runs the rest of a command line in a mount namespace of its own where /proc/sys is
/// read-only: the DaemonSet's container, as far as sysctls go. Writes from outside (the
/// test's `sysctl -w` in the node's namespace) still reach the same values: sysctls
/// belong to the network namespace, not to the mount.
const READ_ONLY_SYSCTLS: &str = "unshare --mount sh -c 'mount --bind /proc/sys /proc/sys && \
     mount -o remount,bind,ro /proc/sys && exec \"$@\"' ro-sys";

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"ferry","plugins":[{"type":"ferry"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

fn readyz(n: &Node) -> (u16, String) {
    http_get(&n.host, HEALTH_ADDR, "/readyz")
}

fn healthz(n: &Node) -> u16 {
    http_get(&n.host, HEALTH_ADDR, "/healthz").0
}

fn running(n: &mut Node) -> bool {
    n.daemon.as_mut().is_some_and(|d| d.exited().is_none())
}

/// Waits until `/readyz` answers 503 with a body holding every one of `words`; the body.
fn wait_not_ready(n: &mut Node, words: &[&str], timeout: Duration) -> String {
    let mut last = (0, String::new());
    let seen = wait_until(timeout, || {
        last = readyz(n);
        last.0 == 503 && words.iter().all(|w| last.1.contains(w))
    });
    assert!(
        seen,
        "{}: /readyz should be 503 naming {words:?}: {last:?}\n{}",
        n.name,
        n.log()
    );
    last.1
}

/// Waits until node.json is there and `/readyz` answers 200; how long that took.
fn wait_ready_within(n: &mut Node, timeout: Duration) -> Duration {
    let t = Instant::now();
    let state = n.state_dir().join("node.json");
    let ok = wait_until(timeout, || {
        state.exists() && readyz(n).0 == 200 || !running(n)
    });
    assert!(
        ok && running(n),
        "{} not ready within {timeout:?}: {:?}\n{}",
        n.name,
        readyz(n),
        n.log()
    );
    t.elapsed()
}

fn etcd_keys(c: &Cluster) -> String {
    c.etcd
        .ctl(&format!("get --prefix --keys-only {}", c.prefix))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A node whose daemon installs the CNI config: (config directory, source conflist).
fn with_cni_conf(n: &mut Node) -> (PathBuf, PathBuf) {
    let dir = n.dir.path().join("net.d");
    let src = n.dir.path().join("conflist.json");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&src, CONFLIST).unwrap();
    n.daemon_args += &format!(
        " --cni-conf-dir {} --cni-conflist {}",
        dir.display(),
        src.display()
    );
    (dir, src)
}

fn installed(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("00-ferry.conflist")).ok()
}

#[test]
fn health_is_served_at_once_and_etcd_is_waited_for() {
    needs_root!();
    // etcd itself is down while the daemon starts.
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(0)
        .build();
    c.etcd.stop();
    let n = c.add_node_stopped();
    let (conf_dir, _) = with_cni_conf(n);
    let started = Instant::now();
    n.start_daemon();
    let alive = wait_until(Duration::from_secs(5), || healthz(n) == 200);
    assert!(alive, "/healthz while etcd is down:\n{}", n.log());
    eprintln!("/healthz 200 {:?} after start", started.elapsed());
    let body = wait_not_ready(
        n,
        &[
            &format!("waiting for etcd at http://{ETCD_IP}:2379"),
            "refused",
        ],
        Duration::from_secs(5),
    );
    eprintln!("/readyz while etcd is down: {body}");
    // Longer than a few backoffs: still there, still serving, said once in the log.
    std::thread::sleep(Duration::from_secs(5));
    assert!(running(n), "exited while etcd was down:\n{}", n.log());
    assert_eq!(healthz(n), 200);
    assert_eq!(
        n.log().matches("waiting for etcd at").count(),
        1,
        "logged once, then at most every 30 s:\n{}",
        n.log()
    );
    assert!(!n.state_dir().join("node.json").exists());
    assert_eq!(installed(&conf_dir), None, "no CNI config before ready");
    // A stop while the start waits is a stop like any other.
    assert_eq!(
        n.stop_daemon(),
        Some(0),
        "SIGTERM while waiting:\n{}",
        n.log()
    );
    n.start_daemon();
    wait_not_ready(n, &["waiting for etcd at"], Duration::from_secs(5));

    let back = Instant::now();
    c.etcd.resume();
    let n = &mut c.nodes[0];
    let took = wait_ready_within(n, Duration::from_secs(15));
    eprintln!(
        "ready {took:?} after etcd answered, {:?} after it was started (backoff at most 5 s)",
        back.elapsed()
    );
    assert!(n.log().contains("answers after"), "{}", n.log());
    assert!(back.elapsed() < Duration::from_secs(15));
    assert_eq!(installed(&conf_dir).as_deref(), Some(CONFLIST));
    assert_eq!(n.stop_daemon(), Some(0), "SIGTERM exits 0:\n{}", n.log());
}

#[test]
fn a_node_not_prepared_publishes_nothing_until_it_is() {
    needs_root!();
    // etcd's keys are read to see that nothing was written.
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(0)
        .build();
    let root_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let n = c.add_node_stopped();
    n.host.sh("sysctl -qw net.ipv4.ip_forward=0");
    n.start_daemon_under(READ_ONLY_SYSCTLS);
    let body = wait_not_ready(
        n,
        &[
            "node not prepared",
            "net.ipv4.ip_forward is 0, ferry needs 1",
            "Read-only file system",
            "prepare-node init container",
            "sysctl -w net.ipv4.ip_forward=1",
        ],
        Duration::from_secs(10),
    );
    eprintln!("/readyz of an unprepared node: {body}");
    // Rechecked every 2 s, logged once, and nothing of the node in etcd meanwhile (not
    // even the cluster config its flags would create).
    std::thread::sleep(Duration::from_secs(5));
    let n = &mut c.nodes[0];
    assert!(running(n), "{}", n.log());
    let said = n.log().matches("net.ipv4.ip_forward is 0").count();
    assert_eq!(said, 1, "the error is logged once:\n{}", n.log());
    assert!(n.log().contains("ERROR"), "{}", n.log());
    assert_eq!(etcd_keys(&c), "", "nothing may be written before the check");

    let n = &mut c.nodes[0];
    n.host.sh("sysctl -qw net.ipv4.ip_forward=1");
    let took = wait_ready_within(n, Duration::from_secs(10));
    eprintln!("ready {took:?} after the sysctl was set (rechecked every 2 s)");
    assert!(etcd_keys(&c).contains("/v1/alive/node0"));

    // Turned off later: not ready, warned once, never an exit; ready again when set.
    let n = &mut c.nodes[0];
    n.host.sh("sysctl -qw net.ipv4.ip_forward=0");
    wait_not_ready(
        n,
        &["node not prepared", "net.ipv4.ip_forward is 0"],
        Duration::from_secs(8),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(running(n), "{}", n.log());
    let warned = n
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("net.ipv4.ip_forward is 0"))
        .count();
    assert_eq!(warned, 1, "warned once:\n{}", n.log());
    n.host.sh("sysctl -qw net.ipv4.ip_forward=1");
    wait_ready_within(n, Duration::from_secs(8));
    assert_eq!(n.stop_daemon(), Some(0), "{}", n.log());
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forward,
        "the root namespace's sysctl is untouched"
    );
}

#[test]
fn prepare_node_sets_the_table_and_names_what_it_cannot() {
    needs_root!();
    let ns = Netns::new("fyp");
    let bin = bin("ferry-overlayd");
    let run = |cmd: &str| {
        let out = ns.try_sh(&cmd.replace("BIN", &bin.display().to_string()));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    ns.sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0");
    let (code, out, err) = run("BIN prepare-node");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out, "net.ipv4.ip_forward: set to 1\nnet.bridge.bridge-nf-call-iptables: already 1\n",
        "{err}"
    );
    assert_eq!(ns.sh("sysctl -n net.ipv4.ip_forward").trim(), "1");
    assert_eq!(
        ns.sh("sysctl -n net.ipv6.conf.all.forwarding").trim(),
        "0",
        "no IPv6 without --cluster-cidr-v6"
    );
    // The IPv6 ones with an IPv6 cluster CIDR, as a flag on either side or from the env.
    for cmd in [
        "BIN prepare-node --cluster-cidr-v6 fd00:9::/56",
        "FERRY_CLUSTER_CIDR_V6=fd00:9::/56 BIN prepare-node",
    ] {
        ns.sh("sysctl -qw net.ipv6.conf.all.forwarding=0");
        let (code, out, err) = run(cmd);
        assert_eq!(code, Some(0), "{cmd}: {out}{err}");
        assert_eq!(
            out,
            "net.ipv4.ip_forward: already 1\nnet.bridge.bridge-nf-call-iptables: already 1\n\
             net.ipv6.conf.all.forwarding: set to 1\nnet.bridge.bridge-nf-call-ip6tables: already 1\n",
            "{cmd}: {err}"
        );
    }
    // Without the right to write /proc/sys: exit 1, naming the sysctl and why.
    ns.sh("sysctl -qw net.ipv4.ip_forward=0");
    let (code, out, err) = run(&format!("{READ_ONLY_SYSCTLS} BIN prepare-node"));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("net.ipv4.ip_forward: not set to 1")
            && out.contains("net.bridge.bridge-nf-call-iptables: already 1"),
        "{out}"
    );
    assert!(
        err.contains("net.ipv4.ip_forward") && err.contains("Read-only file system"),
        "{err}"
    );
    assert_eq!(ns.sh("sysctl -n net.ipv4.ip_forward").trim(), "0");
}

#[test]
fn a_killed_daemon_is_back_at_once_and_a_second_one_waits() {
    needs_root!();
    // etcd's alive key is read directly.
    let mut c = Cluster::builder().datastore(Datastore::Etcd).build();
    let alive_key = format!("{}/v1/alive/node0", c.prefix);
    let n = &mut c.nodes[0];
    n.wait_answering();
    let secret = n.dir.path().join("node-secret");
    let meta = std::fs::metadata(&secret).expect("the node secret is made");
    assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o600));
    let before = c.etcd_get(&alive_key);
    assert!(before.contains("\"machine\""), "{before}");

    let n = &mut c.nodes[0];
    n.daemon
        .take()
        .unwrap()
        .stop(libc::SIGKILL, Duration::from_secs(5));
    let killed = Instant::now();
    n.start_daemon();
    let took = wait_ready_within(n, Duration::from_secs(10));
    eprintln!("SIGKILL to ready (node.json, /readyz 200): {took:?}");
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "a restarted daemon takes its killed predecessor's key at once, took {:?}:\n{}",
        killed.elapsed(),
        n.log()
    );
    assert!(
        n.log().contains("took its liveness key over"),
        "{}",
        n.log()
    );
    let after = c.etcd_get(&alive_key);
    assert_ne!(before, after, "a new instance holds the key");

    // A second daemon on the same node and state directory (its own health port) waits,
    // says why, and writes nothing.
    let n = &c.nodes[0];
    let first = n.daemon.as_ref().unwrap().pid();
    let second_addr = "127.0.0.1:9798";
    let second_log = n.dir.path().join("second.log");
    let second = Bg::spawn_logged(
        &n.host,
        &format!(
            "env FERRY_LOG=info {} {}",
            bin("ferry-overlayd").display(),
            n.daemon_args.replace(HEALTH_ADDR, second_addr)
        ),
        &second_log,
    );
    let why = format!("another ferry-overlayd runs on this node (pid {first})");
    let mut last = (0, String::new());
    let waits = wait_until(Duration::from_secs(10), || {
        last = http_get(&n.host, second_addr, "/readyz");
        last.0 == 503 && last.1.contains(&why)
    });
    let log2 = || std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(waits, "{last:?}\n{}", log2());
    assert_eq!(http_get(&n.host, second_addr, "/healthz").0, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(log2().matches(&why).count(), 1, "said once:\n{}", log2());
    assert_eq!(c.etcd_get(&alive_key), after, "the second wrote nothing");
    assert_eq!(readyz(n).0, 200, "the first is still ready");

    // The first stops: the second goes on.
    let n = &mut c.nodes[0];
    assert_eq!(n.stop_daemon(), Some(0), "{}", n.log());
    let ready = wait_until(Duration::from_secs(10), || {
        http_get(&n.host, second_addr, "/readyz").0 == 200
    });
    assert!(ready, "{}", log2());
    assert_eq!(second.stop(libc::SIGTERM, Duration::from_secs(10)), Some(0));
}

#[test]
fn a_name_held_by_another_machine_is_waited_for_then_refused() {
    needs_root!();
    // A second daemon is run against etcd by hand.
    let c = Cluster::builder().datastore(Datastore::Etcd).build();
    let stranger = c.stranger("192.0.2.50");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("impostor.log");
    let mut impostor = Bg::spawn_logged(
        &stranger,
        &format!(
            "env FERRY_LOG=info {} {} --etcd-prefix {} --node-name node0 --state-dir {} \
             --node-secret {} --health-addr {HEALTH_ADDR}",
            bin("ferry-overlayd").display(),
            c.etcd.client_flags(),
            c.prefix,
            dir.path().join("run").display(),
            dir.path().join("node-secret").display(),
        ),
        &log,
    );
    let mut last = (0, String::new());
    let says = wait_until(Duration::from_secs(10), || {
        last = http_get(&stranger, HEALTH_ADDR, "/readyz");
        last.0 == 503
            && last
                .1
                .contains("waiting for this node's name: another ferry-overlayd")
            && last.1.contains(&format!("{}/v1/alive/node0", c.prefix))
    });
    assert!(
        says,
        "{last:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let refused = wait_until(Duration::from_secs(40), || impostor.exited().is_some());
    assert!(refused);
    assert_eq!(impostor.exited(), Some(1));
}

#[test]
fn the_cni_config_is_installed_when_ready_and_kept() {
    needs_root!();
    // A daemon is run against etcd by hand.
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(0)
        .build();
    let n = c.add_node_stopped();
    let (dir, src) = with_cni_conf(n);
    // What a node may hold from earlier: one config that sorts first, one after.
    let other = r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#;
    for f in ["00-calico.conflist", "10-calico.conflist", "README"] {
        std::fs::write(dir.join(f), other).unwrap();
    }
    n.start_daemon();
    wait_ready_within(n, Duration::from_secs(30));
    let path = dir.join("00-ferry.conflist");
    assert_eq!(installed(&dir).as_deref(), Some(CONFLIST));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let warned = |n: &Node, f: &str| n.log().lines().filter(|l| l.contains(f)).count();
    assert_eq!(warned(n, "00-calico.conflist"), 1, "{}", n.log());
    assert_eq!(warned(n, "10-calico.conflist"), 0, "{}", n.log());

    // A ConfigMap update reaches the node at the next resync; a deleted config comes back.
    let updated = CONFLIST.replace("\"name\":\"ferry\"", "\"name\":\"ferry2\"");
    std::fs::write(&src, &updated).unwrap();
    let follows = wait_until(Duration::from_secs(8), || {
        installed(&dir).as_deref() == Some(updated.as_str())
    });
    assert!(follows, "{:?}\n{}", installed(&dir), n.log());
    std::fs::remove_file(&path).unwrap();
    let mended = wait_until(Duration::from_secs(8), || path.exists());
    assert!(mended, "{}", n.log());
    assert_eq!(warned(n, "00-calico.conflist"), 1, "warned once per file");

    // A source that is not a ferry conflist: not ready, naming it; the installed one stays.
    std::fs::write(&src, other).unwrap();
    let body = wait_not_ready(
        n,
        &[&src.display().to_string(), "\"bridge\"", "not \"ferry\""],
        Duration::from_secs(8),
    );
    eprintln!("/readyz with a bad conflist: {body}");
    assert_eq!(installed(&dir).as_deref(), Some(updated.as_str()));
    std::fs::write(&src, CONFLIST).unwrap();
    wait_ready_within(n, Duration::from_secs(8));
    assert_eq!(installed(&dir).as_deref(), Some(CONFLIST));

    // Nothing is removed on exit.
    assert_eq!(n.stop_daemon(), Some(0), "{}", n.log());
    assert!(path.exists());
    // The two flags go together.
    let host = c.stranger("192.0.2.60");
    let (code, err) = run_overlayd(
        &host,
        &format!("{} --cni-conf-dir {}", c.etcd.client_flags(), dir.display()),
        20,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--cni-conflist"), "{err}");
}

#[test]
fn a_node_secret_that_is_not_one_is_refused_naming_it() {
    needs_root!();
    let host = Netns::new("fys");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("node-secret");
    let run = || {
        run_overlayd(
            &host,
            &format!(
                "--etcd-endpoints http://192.0.2.2:2379 --node-name n --state-dir {} \
                 --node-secret {}",
                dir.path().join("run").display(),
                secret.display()
            ),
            20,
        )
    };
    // A secret of `bytes` with `mode` is refused (exit 1), naming the file and `why`.
    let refused = |bytes: &[u8], mode: u32, why: &str| {
        std::fs::write(&secret, bytes).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, err) = run();
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&secret.display().to_string()) && err.contains(why),
            "{err}"
        );
    };
    refused(&[7u8; 32], 0o644, "not 0600");
    refused(b"short", 0o600, "5 bytes, not 32");
}
