//! NetworkPolicy beyond the conformance cases (whose test file also proves the new pod's
//! first probe and connections cut by a change): pods the API has not shown yet, the API
//! away and back, a daemon restart with policies in place, and an address reused by a pod
//! of another namespace. The API is served by the tests' stand-in (`kapi`); nodes, etcd, nftables,
//! conntrack and traffic are real.

use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

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

/// Probes `from` → `ip`:80 every 20 ms for `d`; every outcome. (Paced: thousands of
/// back-to-back connects overflow the server's backlog on a loaded machine.)
fn probe_for(w: &World, from: &PodRef, ip: Ipv4Addr, d: Duration) -> Vec<bool> {
    let end = Instant::now() + d;
    let mut seen = Vec::new();
    while Instant::now() < end {
        seen.push(w.probe(from, ip, 80, Protocol::Tcp));
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// Waits until `from` → `ip`:80 gives `allowed`; false on timeout.
fn becomes(w: &World, from: &PodRef, ip: Ipv4Addr, allowed: bool) -> bool {
    wait_until(Duration::from_secs(10), || {
        w.probe(from, ip, 80, Protocol::Tcp) == allowed
    })
}

/// Makes every pod of namespace `ns` admit only namespace `from`, by policy `from-<from>`.
fn admit_namespace(w: &mut World, ns: &str, from: &str) {
    w.put_policy(
        ns,
        &format!("from-{from}"),
        &json!({"podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": from}}}]}]}),
        false,
    )
    .unwrap();
}

/// Makes `target` (`ns/pod`) admit only pods labelled as `only` is, from `only`'s
/// namespace, by policy `name`; waits until `other` is refused. The target's address.
fn admit_only(w: &mut World, target: &str, only: &str, name: &str, other: &str) -> Ipv4Addr {
    let (t, o) = (p(target), p(only));
    w.put_policy(
        &t.ns,
        name,
        &json!({"podSelector": {"matchLabels": {"pod": t.name}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": o.ns}},
                                       "podSelector": {"matchLabels": {"pod": o.name}}}]}]}),
        false,
    )
    .unwrap();
    let ip = w.pod(&t).ip;
    assert!(becomes(w, &p(other), ip, false), "{}", w.logs());
    ip
}

/// A pod that is not one of the world's nine: its namespace made and its server started
/// before the ADD (a server binds 0.0.0.0 before the pod has an interface), so that a
/// connection refused can only be the rules.
struct Extra {
    _servers: Servers,
    pod: ferry_tests::cluster::Pod,
    ip: Ipv4Addr,
}

fn extra_pod(w: &World, node: usize, ns: &str, name: &str) -> Extra {
    let netns = Netns::new("fyp");
    let servers = Servers::start(&netns, &[80], &[Protocol::Tcp]).expect("servers");
    let id = ferry_tests::unique("nx");
    let args = format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}");
    let r = w.cluster.nodes[node]
        .cni_as("ADD", &id, Some(&netns), Some(&args))
        .ok();
    let ip: Ipv4Addr = ferry_tests::cni::pod_ip(&r)
        .parse()
        .expect("an IPv4 address");
    Extra {
        _servers: servers,
        pod: ferry_tests::cluster::Pod {
            ns: netns,
            id,
            ip: ip.to_string(),
            result: r,
        },
        ip,
    }
}

/// `extra_pod`, given the address: the node's IPAM limited to `ip` for this one ADD.
fn extra_pod_at(w: &mut World, node: usize, ns: &str, name: &str, ip: Ipv4Addr) -> Extra {
    let n = &mut w.cluster.nodes[node];
    let saved = n.conf_extra.clone();
    // The node's own IPAM keys (its dataDir above all), with the range added.
    let conf: serde_json::Value = serde_json::from_str(&n.conf()).expect("the node's config");
    let mut ipam = conf["ipam"].clone();
    ipam["ranges"] = json!([[{"subnet": n.subnet(), "rangeStart": ip.to_string(),
                              "rangeEnd": ip.to_string()}]]);
    ferry_tests::cni::merge(&mut n.conf_extra, json!({ "ipam": ipam }));
    let made = extra_pod(w, node, ns, name);
    w.cluster.nodes[node].conf_extra = saved;
    made
}

/// Whether a TCP connection from the namespace at `netns` (a path: no borrow of the
/// world) to `ip`:`port` completes within 300 ms.
fn connects(netns: &std::path::Path, ip: impl Into<std::net::IpAddr>, port: u16) -> bool {
    let ip = ip.into();
    let file = std::fs::File::open(netns).expect("open netns");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a valid descriptor.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(300)).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// The Pod object a kubelet writes, with the address the ADD gave.
fn pod_object(ns: &str, name: &str, node: &str, ip: Option<Ipv4Addr>) -> Pod {
    let mut v = json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
        "spec": {"nodeName": node, "containers": [{"name": "serve",
                 "ports": [{"name": "serve-80-tcp", "containerPort": 80}]}]},
    });
    if let Some(ip) = ip {
        v["status"] = json!({"phase": "Running", "podIP": ip.to_string(),
                             "podIPs": [{"ip": ip.to_string()}]});
    }
    serde_json::from_value(v).expect("a pod object")
}

#[test]
fn a_pod_the_api_has_not_shown_starts_closed_where_policies_exist() {
    needs_root!();
    let mut w = world();
    // x admits only x.
    w.put_policy(
        "x",
        "same-namespace",
        &json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        false,
    )
    .unwrap();
    assert!(
        becomes(&w, &p("y/a"), w.pod(&p("x/a")).ip, false),
        "{}",
        w.logs()
    );
    // ADD names x/m before the API shows it (a kubelet's watch can lag): closed, even to
    // its own namespace, from the moment ADD returns.
    let m = extra_pod(&w, 2, "x", "m");
    let early = probe_for(&w, &p("x/a"), m.ip, Duration::from_secs(1));
    assert!(
        early.iter().all(|a| !a),
        "x/m was open before the API showed it: {early:?}"
    );
    // The API shows it: its labels decide, as for any pod.
    let node2 = w.cluster.nodes[2].name.clone();
    w.api()
        .create(pod_object("x", "m", &node2, Some(m.ip)))
        .unwrap();
    assert!(becomes(&w, &p("x/a"), m.ip, true), "{}", w.logs());
    assert!(!w.probe(&p("y/a"), m.ip, 80, Protocol::Tcp));
    // A namespace without policies: a pod not shown yet is open, nothing can isolate it.
    // The API never shows z/q here, so a pod started closed would stay closed: any
    // connection proves it open. (A few seconds rather than one probe: on a loaded
    // machine one connect right after ADD can time out for reasons that are not policy.)
    let open = extra_pod(&w, 0, "z", "q");
    assert!(
        becomes(&w, &p("y/a"), open.ip, true),
        "z/q stayed closed\n{}",
        w.logs()
    );
}

#[test]
fn the_api_away_keeps_the_last_state_and_its_return_resyncs() {
    needs_root!();
    let mut w = world();
    let target = w.pod(&p("x/a")).ip;
    assert!(w.probe(&p("y/a"), target, 80, Protocol::Tcp));
    w.api().set_down(true);
    let down = wait_until(Duration::from_secs(15), || {
        (0..3).all(|i| w.cluster.metrics(i).contains("ferry_policy_ready 0"))
    });
    assert!(down, "the nodes still say ready with the API away");
    // A policy written while the nodes cannot see it: nothing changes on them.
    w.put_policy(
        "x",
        "deny-all",
        &json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        false,
    )
    .unwrap();
    let still = probe_for(&w, &p("y/a"), target, Duration::from_secs(2));
    assert!(still.iter().all(|a| *a), "{still:?}");
    // Back: the watches relist (resource versions expired meanwhile force a 410) and the
    // policy is enforced.
    w.api().expire_before(w.api().resource_version() + 1);
    w.api().set_down(false);
    assert!(becomes(&w, &p("y/a"), target, false), "{}", w.logs());
    let up = wait_until(Duration::from_secs(15), || {
        (0..3).all(|i| w.cluster.metrics(i).contains("ferry_policy_ready 1"))
    });
    assert!(up, "the nodes are not ready again");
    let relists = w
        .api()
        .requests()
        .iter()
        .filter(|r| !r.is_watch() && r.path.ends_with("/networkpolicies"))
        .count();
    assert!(
        relists >= 6,
        "every node lists again: {relists} lists of policies"
    );
}

#[test]
fn a_daemon_restart_with_policies_in_place_opens_no_window() {
    needs_root!();
    let mut w = world();
    // x admits y only.
    admit_namespace(&mut w, "x", "y");
    let target = w.pod(&p("x/a")).ip;
    assert!(becomes(&w, &p("z/a"), target, false));
    let node = w.pod(&p("x/a")).node;
    let (z, y) = (
        w.pod(&p("z/a")).pod.ns.path(),
        w.pod(&p("y/a")).pod.ns.path(),
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (denied, allowed) = std::thread::scope(|s| {
        let watch = |from: std::path::PathBuf| {
            let stop = &stop;
            s.spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seen.push(connects(&from, target, 80));
                    std::thread::sleep(Duration::from_millis(20));
                }
                seen
            })
        };
        let z = watch(z);
        let y = watch(y);
        std::thread::sleep(Duration::from_secs(1));
        w.cluster.nodes[node].restart_daemon();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (z.join().unwrap(), y.join().unwrap())
    });
    assert!(
        denied.len() >= 5 && allowed.len() >= 5,
        "too few probes: {denied:?} {allowed:?}"
    );
    assert!(
        denied.iter().all(|a| !a),
        "z/a reached x/a during the restart: {denied:?}"
    );
    assert!(
        allowed.iter().all(|a| *a),
        "y/a lost x/a during the restart: {allowed:?}"
    );
}

#[test]
fn an_address_reused_by_another_namespace_carries_no_allowance() {
    needs_root!();
    let mut w = world();
    let target = admit_only(&mut w, "y/a", "x/b", "from-x-b", "z/b");
    // x/old on node 0, labelled as x/b is: allowed.
    let node0 = w.cluster.nodes[0].name.clone();
    let mut obj = pod_object("x", "old", &node0, None);
    obj.metadata.labels = Some([("pod".to_string(), "b".to_string())].into());
    w.api().create(obj).unwrap();
    let old = extra_pod(&w, 0, "x", "old");
    let mut obj: Pod = w.api().get(Some("x"), "old").unwrap();
    obj.status = pod_object("x", "old", &node0, Some(old.ip)).status;
    w.api().update(obj).unwrap();
    let reach = |ns: &Netns| connects(&ns.path(), target, 80);
    assert!(
        wait_until(Duration::from_secs(10), || reach(&old.pod.ns)),
        "{}",
        w.logs()
    );
    // x/old is deleted (its DEL, then its object), and its address goes to a pod of z
    // created as a kubelet creates pods: the object, the ADD, the status.
    let ip = old.ip;
    w.cluster.nodes[0]
        .cni("DEL", &old.pod.id, Some(&old.pod.ns))
        .ok();
    drop(old);
    w.api().delete::<Pod>(Some("x"), "old").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut obj = pod_object("z", "new", &node0, None);
    obj.metadata.labels = Some([("pod".to_string(), "b".to_string())].into());
    w.api().create(obj).unwrap();
    let reused = extra_pod_at(&mut w, 0, "z", "new", ip);
    assert_eq!(reused.ip, ip);
    let tries: Vec<bool> = (0..10).map(|_| reach(&reused.pod.ns)).collect();
    assert!(
        tries.iter().all(|a| !a),
        "z/new, holding x/old's address, reached y/a: {tries:?}"
    );
    let mut obj: Pod = w.api().get(Some("z"), "new").unwrap();
    obj.status = pod_object("z", "new", &node0, Some(ip)).status;
    w.api().update(obj).unwrap();

    // The harder order: the old pod still terminating in the API (its object not gone)
    // when its address is handed on. Once the new pod's status names the address, the
    // terminating pod gives it up on every node.
    w.cluster.nodes[0]
        .cni("DEL", &reused.pod.id, Some(&reused.pod.ns))
        .ok();
    drop(reused);
    w.api().delete::<Pod>(Some("z"), "new").unwrap();
    let mut obj = pod_object("x", "old2", &node0, None);
    obj.metadata.labels = Some([("pod".to_string(), "b".to_string())].into());
    w.api().create(obj).unwrap();
    let old2 = extra_pod_at(&mut w, 0, "x", "old2", ip);
    let mut v = serde_json::to_value(w.api().get::<Pod>(Some("x"), "old2").unwrap()).unwrap();
    v["status"] = serde_json::to_value(pod_object("x", "old2", &node0, Some(ip)).status).unwrap();
    w.api()
        .update(serde_json::from_value::<Pod>(v).unwrap())
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || reach(&old2.pod.ns)),
        "{}",
        w.logs()
    );
    w.cluster.nodes[0]
        .cni("DEL", &old2.pod.id, Some(&old2.pod.ns))
        .ok();
    drop(old2);
    let v = serde_json::to_value(w.api().get::<Pod>(Some("x"), "old2").unwrap())
        .map(|mut cur| {
            cur["metadata"]["deletionTimestamp"] = json!("2026-11-22T09:00:00Z");
            cur
        })
        .unwrap();
    w.api()
        .update(serde_json::from_value::<Pod>(v).unwrap())
        .unwrap();
    let mut obj = pod_object("z", "new2", &node0, None);
    obj.metadata.labels = Some([("pod".to_string(), "b".to_string())].into());
    w.api().create(obj).unwrap();
    let new2 = extra_pod_at(&mut w, 0, "z", "new2", ip);
    let mut obj: Pod = w.api().get(Some("z"), "new2").unwrap();
    obj.status = pod_object("z", "new2", &node0, Some(ip)).status;
    w.api().update(obj).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !reach(&new2.pod.ns)),
        "z/new2 keeps x/old2's allowance"
    );
    let after: Vec<bool> = (0..10).map(|_| reach(&new2.pod.ns)).collect();
    assert!(after.iter().all(|a| !a), "{after:?}");
}

/// The path of a pod's network namespace (a copy: no borrow of the world).
fn ns_path(w: &World, pod: &str) -> std::path::PathBuf {
    w.pod(&p(pod)).pod.ns.path()
}

/// A pod's IPv6 address, from its ADD's result.
fn ipv6_of(w: &World, pod: &str) -> std::net::Ipv6Addr {
    w.pod(&p(pod)).pod.result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
        .unwrap_or_else(|| panic!("{pod} has no IPv6 address"))
}

#[test]
fn ipv6_is_enforced_as_ipv4_is() {
    needs_root!();
    let mut w = World::dual_stack();
    // A server on [::]:8081 in x/a, z/a and y/b (the world's servers listen on IPv4).
    let mut listeners = Vec::new();
    for pod in ["x/a", "z/a", "y/b"] {
        let l = ferry_tests::inside::run(&w.pod(&p(pod)).pod.ns, || {
            std::net::TcpListener::bind(("::", 8081)).expect("bind [::]:8081")
        });
        listeners.push(l);
    }
    let (xa, za) = (ipv6_of(&w, "x/a"), ipv6_of(&w, "z/a"));
    assert!(wait_until(Duration::from_secs(10), || connects(
        &ns_path(&w, "z/b"),
        xa,
        8081
    )));
    // x admits namespace y only; z/a admits x/b's IPv6 address only (an ipBlock /128).
    admit_namespace(&mut w, "x", "y");
    let xb = ipv6_of(&w, "x/b");
    w.put_policy(
        "z",
        "from-x-b-v6",
        &json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": format!("{xb}/128")}}]}]}),
        false,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !connects(
            &ns_path(&w, "z/b"),
            xa,
            8081
        )),
        "z/b still reaches x/a over IPv6:\n{}",
        w.logs()
    );
    let node = w.pod(&p("x/a")).node;
    let reaches = |from: &str, ip: std::net::IpAddr, port: u16| {
        let path = ns_path(&w, from);
        wait_until(Duration::from_secs(5), || connects(&path, ip, port))
    };
    assert!(
        reaches("y/a", xa.into(), 8081),
        "y/a lost x/a over IPv6:\n{}\n{:?}",
        w.cluster.nodes[node]
            .host
            .sh("nft list table inet ferry_policy"),
        w.pod(&p("y/a")).pod.result
    );
    assert!(
        reaches("x/b", za.into(), 8081),
        "x/b (the ipBlock) cannot reach z/a"
    );
    // x/c's IPv6 works (y has no policy), and z/a refuses it.
    assert!(reaches("x/c", ipv6_of(&w, "y/b").into(), 8081));
    assert!(
        !connects(&ns_path(&w, "x/c"), za, 8081),
        "x/c reached z/a over IPv6"
    );
    // The same policies, over IPv4.
    let xa4 = w.pod(&p("x/a")).ip;
    assert!(!connects(&ns_path(&w, "z/b"), xa4, 80));
    assert!(reaches("y/a", xa4.into(), 80));
    drop(listeners);
}

#[test]
fn a_denial_is_explained_logged_and_counted_and_a_hand_edit_mended() {
    needs_root!();
    let mut w = world();
    let target = admit_only(&mut w, "y/b", "x/a", "b-from-x-a", "z/c");
    let node = w.pod(&p("y/b")).node;
    let explain = |from: &str, to: &str, json: bool| {
        let mut c = std::process::Command::new(ferry_tests::bin("ferry-ipam"));
        c.args(["explain", from, to, "--port", "80", "--state-dir"])
            .arg(w.cluster.nodes[node].state_dir());
        if json {
            c.args(["-o", "json"]);
        }
        c.output().expect("run ferry-ipam explain")
    };
    let denied = explain("z/c", "y/b", false);
    let text = String::from_utf8_lossy(&denied.stdout);
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    assert!(
        text.contains("denied")
            && text.contains("y/b-from-x-a")
            && text.contains("no rule matches"),
        "{text}"
    );
    let allowed = explain("x/a", "y/b", true);
    assert_eq!(allowed.status.code(), Some(0), "{allowed:?}");
    let v: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(
        v["ingress"]["allowed_by"][0]["policy"], "y/b-from-x-a",
        "{v}"
    );
    // An address works as well as a name; garbage is an error naming it.
    let by_ip = explain("z/c", &target.to_string(), false);
    assert_eq!(by_ip.status.code(), Some(1), "{by_ip:?}");
    let bad = explain("no-such/pod", "y/b", false);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no-such/pod"),
        "{bad:?}"
    );

    // The denial was logged once as one line naming both pods, and is counted for y/b.
    let logged = wait_until(Duration::from_secs(5), || {
        w.cluster.nodes[node].log().lines().any(|l| {
            l.contains("connection denied by NetworkPolicy")
                && l.contains("from=z/c")
                && l.contains("to=y/b")
                && l.contains("policies=y/b-from-x-a")
        })
    });
    assert!(logged, "{}", w.cluster.nodes[node].log());
    let counted = wait_until(Duration::from_secs(15), || {
        w.cluster.metrics(node).lines().any(|l| {
            l.starts_with("ferry_policy_denied_packets{namespace=\"y\",pod=\"b\"")
                && !l.ends_with(" 0")
        })
    });
    assert!(counted, "{}", w.cluster.metrics(node));

    // A hand edit of the table (the isolated pods forgotten: their verdict map emptied) is
    // mended at the next read-back, within half a minute.
    w.cluster.nodes[node]
        .host
        .sh("nft flush map inet ferry_policy ingress_pods4");
    assert!(becomes(&w, &p("z/c"), target, true));
    let mended = wait_until(Duration::from_secs(40), || {
        !w.probe(&p("z/c"), target, 80, Protocol::Tcp)
    });
    assert!(mended, "the flushed set was not put back:\n{}", w.logs());
}
