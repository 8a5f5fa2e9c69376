//! `ferry-overlayd`'s flags and listener (issue 10): every flag is checked before anything
//! reaches etcd, and idle connections to the health port cannot stall the daemon.

use std::time::Duration;

use ferry_tests::cluster::{http_get, run_overlayd, Cluster, Datastore, HEALTH_ADDR};
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::proc::{wait_until, Bg};

/// A bare etcd and a host at 192.0.2.11 with no daemon: (cluster, host, flags to etcd).
fn bare() -> (Cluster, Netns, tempfile::TempDir) {
    // The daemons are run against etcd by hand, and its keys read.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(0)
        .build();
    let host = c.stranger("192.0.2.11");
    (c, host, tempfile::tempdir().unwrap())
}

fn flags(c: &Cluster, dir: &tempfile::TempDir) -> String {
    format!(
        "{} --etcd-prefix {} --node-name n0 --state-dir {} --ipam-data-dir {} --cluster-cidr {}",
        c.etcd.client_flags(),
        c.prefix,
        dir.path().join("run").display(),
        dir.path().join("ipam").display(),
        c.cidr
    )
}

fn assert_nothing_in_etcd(c: &Cluster) {
    let keys = c
        .etcd
        .ctl(&format!("get --prefix --keys-only {}", c.prefix));
    assert!(keys.trim().is_empty(), "nothing may be written: {keys}");
}

#[test]
fn a_zero_resync_interval_is_refused_before_etcd_is_written() {
    needs_root!();
    let (c, host, dir) = bare();
    for bad in ["0s", "10ms"] {
        let (code, err) = run_overlayd(
            &host,
            &format!("{} --resync-interval {bad}", flags(&c, &dir)),
            20,
        );
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("--resync-interval") && !err.contains("panicked"),
            "{err}"
        );
        assert_nothing_in_etcd(&c);
    }
}

#[test]
fn a_public_ip_not_on_the_host_is_refused() {
    needs_root!();
    let (c, host, dir) = bare();
    for extra in [
        "--public-ip 192.0.2.77",
        "--iface eth0 --public-ip 192.0.2.77",
    ] {
        let (code, err) = run_overlayd(&host, &format!("{} {extra}", flags(&c, &dir)), 20);
        assert_eq!(code, Some(1), "{extra}: {err}");
        assert!(
            err.contains("192.0.2.77") && err.contains("192.0.2.11"),
            "{extra}: the error names the address and the host's: {err}"
        );
        assert_nothing_in_etcd(&c);
    }
}

/// Holds COUNT connections to HOST:PORT open, sending nothing, and opens a new one for
/// each the server closes: a steady crowd of idle clients.
const IDLE: &str = r#"
import resource, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, count + 100))
def fresh():
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    return s
held = [fresh() for _ in range(count)]
print('open', flush=True)
while True:
    time.sleep(0.2)
    for i, s in enumerate(held):
        try:
            if s.recv(1, socket.MSG_PEEK) == b'':
                raise ConnectionResetError
        except BlockingIOError:
            continue
        except OSError:
            pass
        s.close()
        held[i] = fresh()
"#;

#[test]
fn idle_connections_to_the_health_port_stall_nothing() {
    needs_root!();
    let mut c = Cluster::builder().nodes(2).build();
    // The daemon under the file limit a container commonly gets.
    c.nodes[0].stop_daemon();
    c.nodes[0].start_daemon_under("prlimit --nofile=1024:1024");
    c.nodes[0].wait_answering();
    let s1 = c.nodes[1].subnet();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("idle.py");
    std::fs::write(&script, IDLE).unwrap();
    let out = dir.path().join("idle.log");
    let (host, port) = HEALTH_ADDR.split_once(':').unwrap();
    let idle = Bg::spawn_logged(
        &c.nodes[0].host,
        &format!("python3 {} {host} {port} 1500", script.display()),
        &out,
    );
    let opened = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("open")
    });
    assert!(
        opened,
        "{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_secs(2));
    // The crowd holds few of the daemon's file descriptors: the rest wait in the backlog.
    let pid = c.nodes[0].daemon.as_ref().unwrap().pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    eprintln!("daemon file descriptors under 1500 idle connections: {fds}");
    assert!(
        fds < 200,
        "the daemon holds {fds} file descriptors under 1500 idle connections"
    );
    // The resync still runs: a hand-deleted route comes back.
    c.nodes[0].host.sh(&format!("ip route del {s1} proto 102"));
    let mended = wait_until(Duration::from_secs(15), || {
        c.nodes[0].ferry_routes().contains(&s1)
    });
    assert!(
        mended,
        "route not mended under 1500 idle connections:\n{}",
        c.nodes[0].log()
    );
    drop(idle);
    let answers = wait_until(Duration::from_secs(20), || {
        http_get(&c.nodes[0].host, HEALTH_ADDR, "/healthz").0 == 200
    });
    assert!(
        answers,
        "/healthz after the idle connections closed:\n{}",
        c.nodes[0].log()
    );
    assert!(c.nodes[0].daemon.as_mut().unwrap().exited().is_none());
}
