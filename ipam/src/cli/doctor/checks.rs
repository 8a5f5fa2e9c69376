//! Each check: read what the node has, compare with what ferry needs and what its daemon
//! wants, and say what differs. Reading only; what cannot be read is said, never guessed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_cni::conf_dir::{self, CONFLIST_NAME};
use ferry_node_ipam::drift::Drift;
use ferry_node_ipam::node_state::{self, NodeState};
use serde_json::Value;

use super::mtu::{self, Facts};
use super::{http, Args, Check, Finding, Report, Severity};

/// Everything, in any order (`Report::order` puts them in the order to fix them).
pub fn run(args: &Args) -> Report {
    let mut r = Report::default();
    let ready = daemon(args, &mut r);
    let state = node_json(&args.state_dir, &mut r);
    r.node = state.as_ref().map(|s| s.node_name.clone());
    let drift = drift_json(&args.state_dir, &mut r, ready);
    // The families the node has; without node.json, IPv4 (what every cluster but an
    // IPv6-only one has).
    let v4 = state.as_ref().is_none_or(|s| s.pod_cidr.is_some());
    let v6 = state.as_ref().is_some_and(|s| s.pod_cidr_v6.is_some());
    let proxy = kube_proxy_facts(args);
    sysctls(v4, v6, &proxy, &mut r);
    rp_filter(drift.as_ref(), &mut r);
    cni(&args.cni_conf_dir, &args.bin_dir(), &mut r);
    if let Some(d) = &drift {
        mtu_check(d, state.as_ref(), &mut r);
        datapath(d, state.as_ref(), &mut r);
    }
    peer_health(&args.state_dir, &mut r);
    kube_proxy(&proxy, &mut r);
    r
}

fn daemon(args: &Args, r: &mut Report) -> bool {
    let addr = args.health_addr;
    match http::get(addr, "/readyz") {
        Ok((200, _)) => true,
        Ok((code, body)) => {
            let body = body.trim().replace('\n', "; ");
            r.find(Finding::new(
                Severity::Error,
                Check::Daemon,
                format!("ferry-overlayd at {addr} is not ready ({code}): {body}"),
                "until it is ready the node's routes to new nodes, its CNI config and node.json are not kept; the findings below may be why",
                "do what its /readyz says it waits for; its log says more (kubectl -n kube-system logs <ferry pod> -c ferry-overlayd)".into(),
            ));
            false
        }
        Err(e) => {
            r.find(Finding::new(
                Severity::Error,
                Check::Daemon,
                format!("nothing answers /readyz at {addr}: {e}"),
                "without ferry-overlayd the overlay is not kept: routes to new or moved nodes are not made, nor mended when something removes them; pods still start while node.json is there",
                format!("start ferry-overlayd (kubectl -n kube-system get pods -l app.kubernetes.io/name=ferry -o wide: is this node's running, restarting?); if it runs elsewhere than {addr}, pass --health-addr"),
            ));
            false
        }
    }
}

fn node_json(state_dir: &Path, r: &mut Report) -> Option<NodeState> {
    let path = node_state::path(state_dir);
    match node_state::read(state_dir) {
        Ok(Some(s)) => {
            if let Some(want) = std::env::var("NODE_NAME")
                .ok()
                .filter(|n| *n != s.node_name)
            {
                r.find(Finding::new(
                    Severity::Error,
                    Check::NodeState,
                    format!("{} names node {:?}, this node is {want:?} (NODE_NAME)", path.display(), s.node_name),
                    "the plugin gives pods addresses of the subnet node.json names: another node's, they clash with its pods",
                    "restart ferry-overlayd here: it writes node.json for the node it runs as".into(),
                ));
            }
            Some(s)
        }
        Ok(None) => {
            r.find(Finding::new(
                Severity::Error,
                Check::NodeState,
                format!("{} is not there", path.display()),
                "the plugin reads the node's subnet and MTU from it: every pod ADD fails with code 11 until ferry-overlayd writes it",
                "make ferry-overlayd ready (its /readyz says what it waits for); pass --state-dir if it uses another directory".into(),
            ));
            None
        }
        Err(e) => {
            r.find(Finding::new(
                Severity::Error,
                Check::NodeState,
                e.to_string(),
                "the plugin cannot read the node's subnet and MTU: every pod ADD fails",
                "ferry-overlayd writes it anew when it differs: restart it".into(),
            ));
            None
        }
    }
}

fn drift_json(state_dir: &Path, r: &mut Report, ready: bool) -> Option<Drift> {
    match ferry_node_ipam::drift::read(state_dir) {
        Ok(Some(d)) => Some(d),
        Ok(None) => {
            if ready {
                r.note(
                    Check::Datapath,
                    format!(
                        "no {}: a ferry-overlayd older than this doctor; the data path and MTU checks need it",
                        ferry_node_ipam::drift::path(state_dir).display()
                    ),
                );
            }
            None
        }
        Err(e) => {
            r.note(Check::Datapath, e.to_string());
            None
        }
    }
}

/// A sysctl's value, or None when it is not there.
fn sysctl(name: &str) -> Option<String> {
    let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// What the node has of kube-proxy: its mode, and where its Service rules are.
#[derive(Debug)]
pub struct Proxy {
    /// kube-proxy's answer at /proxyMode, or why none came.
    pub mode: Result<String, String>,
    /// Where KUBE-SERVICES (or kube-proxy's nft table) was found.
    pub rules: Vec<String>,
}

fn sysctls(v4: bool, v6: bool, proxy: &Proxy, r: &mut Report) {
    let forward = [
        (v4, "net.ipv4.ip_forward"),
        (v6, "net.ipv6.conf.all.forwarding"),
    ];
    for (_, name) in forward.iter().filter(|(on, _)| *on) {
        let have = sysctl(name);
        if have.as_deref() != Some("1") {
            r.find(Finding::new(
                Severity::Error,
                Check::IpForward,
                format!("{name} is {}", have.as_deref().unwrap_or("absent")),
                "the node routes pods' packets between the bridge, the VXLAN device and the underlay; without forwarding no pod reaches another node, a Service or the outside",
                format!("sysctl -w {name}=1 on the node (the DaemonSet's prepare-node init container sets it at start: something turned it off since)"),
            ));
        }
    }
    let rules = if proxy.rules.is_empty() {
        String::new()
    } else {
        format!(
            "; kube-proxy's Service rules are here ({}) and do not see it",
            proxy.rules.join(", ")
        )
    };
    let bridge = [
        (v4, "net.bridge.bridge-nf-call-iptables"),
        (v6, "net.bridge.bridge-nf-call-ip6tables"),
    ];
    for (_, name) in bridge.iter().filter(|(on, _)| *on) {
        let have = sysctl(name);
        if have.as_deref() != Some("1") {
            let saw = match &have {
                Some(v) => format!("{name} is {v}{rules}"),
                None => format!("{name} is absent: br_netfilter is not loaded{rules}"),
            };
            r.find(Finding::new(
                Severity::Error,
                Check::BridgeNetfilter,
                saw,
                "traffic between two pods of this node is bridged, not routed: without bridge netfilter kube-proxy's Service NAT and NetworkPolicy never see it, so a pod reaching a Service whose backend is on the same node gets replies from the wrong address (the connection hangs), and policy does not apply between them",
                format!("modprobe br_netfilter; sysctl -w {name}=1 on the node (prepare-node sets it at start)"),
            ));
        }
    }
}

/// The devices ferry uses, with the underlay's (which drift.json names).
fn rp_filter(drift: Option<&Drift>, r: &mut Report) {
    let Some(all) = sysctl("net.ipv4.conf.all.rp_filter") else {
        return;
    };
    let all: u8 = all.parse().unwrap_or(0);
    let devs: Vec<String> = drift
        .map(|d| {
            [
                d.underlay.as_ref().map(|u| u.name.clone()),
                d.vxlan.as_ref().map(|v| v.name.clone()),
                d.bridge.clone(),
            ]
            .into_iter()
            .flatten()
            .collect()
        })
        .unwrap_or_default();
    let per_dev: Vec<(String, u8)> = devs
        .into_iter()
        .filter_map(|d| {
            let v = sysctl(&format!("net.ipv4.conf.{d}.rp_filter"))?;
            Some((d, v.parse().unwrap_or(0)))
        })
        .collect();
    let strict = strict_devices(all, &per_dev);
    if !strict.is_empty() {
        r.find(Finding::new(
            Severity::Warning,
            Check::RpFilter,
            format!(
                "strict reverse-path filtering (rp_filter 1) on {} (net.ipv4.conf.all.rp_filter is {all}; the kernel uses the larger of it and the device's)",
                strict.join(", ")
            ),
            "strict mode drops a packet that arrives on a device other than the one the route back to its source leaves by: a peer reached directly one way and over VXLAN the other (nodes on two segments, a route ferry spared), or a second underlay interface; those pods' packets vanish without a trace",
            format!(
                "loose mode keeps the spoofing check without that: sysctl -w net.ipv4.conf.all.rp_filter=2 {}",
                strict
                    .iter()
                    .map(|d| format!("net.ipv4.conf.{d}.rp_filter=2"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
    }
}

/// The devices whose effective rp_filter (the larger of `all`'s and the device's) is
/// strict.
pub fn strict_devices(all: u8, per_dev: &[(String, u8)]) -> Vec<String> {
    per_dev
        .iter()
        .filter(|(_, v)| all.max(*v) == 1)
        .map(|(d, _)| d.clone())
        .collect()
}

/// The configs of `names` a runtime reads before ferry's, sorted as it sorts them.
pub fn sorting_first(names: &[OsString]) -> Vec<String> {
    let mut first: Vec<&OsString> = names.iter().filter(|n| conf_dir::sorts_first(n)).collect();
    first.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    first
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// The plugin binaries a conflist names: each plugin's `type` and its `ipam.type` (ferry's
/// own plugin defaults to `ferry-ipam`).
pub fn plugin_types(conflist: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in conflist["plugins"].as_array().into_iter().flatten() {
        let Some(t) = p["type"].as_str() else {
            continue;
        };
        out.push(t.to_string());
        match p["ipam"]["type"].as_str() {
            Some(i) => out.push(i.to_string()),
            None if t == "ferry" => out.push("ferry-ipam".into()),
            None => {}
        }
    }
    out.dedup();
    out
}

fn cni(conf_dir: &Path, bin_dir: &Path, r: &mut Report) {
    let dir = conf_dir.display();
    let names: Vec<OsString> = match std::fs::read_dir(conf_dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.file_name())
            .collect(),
        Err(e) => {
            r.find(Finding::new(
                Severity::Error,
                Check::CniConfig,
                format!("cannot read {dir}: {e}"),
                "the runtime takes the node's network config from there: none means no pod gets a network (kubelet: NetworkPluginNotReady)",
                "pass --cni-conf-dir with the runtime's directory (in ferry's container: /host/etc/cni/net.d)".into(),
            ));
            return;
        }
    };
    let first = sorting_first(&names);
    if !first.is_empty() {
        r.find(Finding::new(
            Severity::Error,
            Check::CniConfig,
            format!(
                "{} in {dir} sort{} before {CONFLIST_NAME}",
                first.join(", "),
                if first.len() == 1 { "s" } else { "" }
            ),
            "the runtime uses the network config whose name sorts first: new pods get that network's addresses (another CNI's, or none), not ferry's",
            format!("remove {} from {dir} (a leftover of another CNI)", first.join(", ")),
        ));
    }
    let path = conf_dir.join(CONFLIST_NAME);
    let conflist: Value = match std::fs::read(&path) {
        Err(e) => {
            r.find(Finding::new(
                Severity::Error,
                Check::CniConfig,
                format!("{}: {e}", path.display()),
                "ferry-overlayd installs it once the node can add pods: without it the runtime uses another network config, or none (NetworkPluginNotReady)",
                "make ferry-overlayd ready; it needs --cni-conf-dir and --cni-conflist (the DaemonSet sets both)".into(),
            ));
            return;
        }
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(v) => v,
            Err(e) => {
                r.find(Finding::new(
                    Severity::Error,
                    Check::CniConfig,
                    format!("{} is not JSON: {e}", path.display()),
                    "the runtime skips a config it cannot read and uses the next one",
                    "ferry-overlayd writes it anew at its next check; if it does not, its log says why".into(),
                ));
                return;
            }
        },
    };
    let missing: Vec<String> = plugin_types(&conflist)
        .into_iter()
        .filter(|t| !executable(&bin_dir.join(t)))
        .collect();
    if !missing.is_empty() {
        r.find(Finding::new(
            Severity::Error,
            Check::CniPlugins,
            format!(
                "{CONFLIST_NAME} names {} but {} has no executable of that name",
                missing.join(", "),
                bin_dir.display()
            ),
            "the runtime execs each plugin of the config from its bin dir: a missing one fails every pod's ADD",
            "the DaemonSet's install-cni init container copies ferry's; other plugins (portmap, bandwidth) come from the CNI plugins release; pass --cni-bin-dir if the runtime uses another directory (in ferry's container: /host/opt/cni/bin)".into(),
        ));
    }
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A device's MTU from sysfs (the node's, in ferry's container: it shares the network).
fn link_mtu(dev: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn mtu_check(d: &Drift, state: Option<&NodeState>, r: &mut Report) {
    let ports = d
        .bridge
        .as_deref()
        .and_then(|b| std::fs::read_dir(format!("/sys/class/net/{b}/brif")).ok())
        .map(|es| {
            es.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    Some((n.clone(), link_mtu(&n)?))
                })
                .collect()
        })
        .unwrap_or_default();
    let facts = Facts {
        underlay: d
            .underlay
            .as_ref()
            .and_then(|u| Some((u.name.clone(), link_mtu(&u.name)?))),
        underlay_at_start: d.underlay.as_ref().map(|u| u.mtu),
        overhead: d.overhead,
        vxlan: d
            .vxlan
            .as_ref()
            .map(|v| (v.name.clone(), v.mtu, link_mtu(&v.name))),
        node_mtu: state.map(|s| s.mtu),
        ports,
    };
    for f in mtu::findings(&facts) {
        r.find(f);
    }
}

/// The data path by the daemon's own diff (drift.json), and its devices being there.
fn datapath(d: &Drift, state: Option<&NodeState>, r: &mut Report) {
    let doc = "the daemon's last full check of the data path (drift.json)";
    for dev in [d.vxlan.as_ref().map(|v| &v.name), d.bridge.as_ref()]
        .into_iter()
        .flatten()
    {
        if !Path::new("/sys/class/net").join(dev).exists() {
            r.find(Finding::new(
                Severity::Error,
                Check::Datapath,
                format!("device {dev} is not there"),
                "ferry's data path is the bridge (pods on this node) and the VXLAN device (pods on others): without it those pods are cut off",
                "a running ferry-overlayd makes it again at its next check (--resync-interval); if it does not, its log says why".into(),
            ));
        }
    }
    if let Some(e) = &d.error {
        r.find(Finding::new(
            Severity::Error,
            Check::Datapath,
            format!("{doc} stopped short: {e}"),
            "what comes after the failing step (the node-wide rules, the peers' routes) is not checked nor mended until it passes",
            "the error names the device or rule; ferry-overlayd's log has it each round".into(),
        ));
    }
    for s in &d.spared {
        let whose = s
            .node
            .as_deref()
            .map_or(String::new(), |n| format!(" (the pod subnet of node {n})"));
        r.find(Finding::new(
            Severity::Error,
            Check::Datapath,
            format!("the host has a route to {}{whose} that ferry did not make: ferry leaves it alone", s.subnet),
            "ferry never replaces a route of someone else's, so that node's pods are reached by that route (somewhere else, or nowhere), not over ferry's overlay",
            format!("ip route show {}: delete it if it is a leftover (ip route del {}); ferry-overlayd makes its own at its next check", s.subnet, s.subnet),
        ));
    }
    if !d.postponed.is_empty() {
        r.find(Finding::new(
            Severity::Warning,
            Check::Datapath,
            format!("routes to {} wait: the host's routes of their family could not be listed", d.postponed.join(", ")),
            "ferry makes a route only where it knows it replaces no one else's; until the listing works those subnets have no route",
            "ferry-overlayd's log names the netlink error; it tries again each check".into(),
        ));
    }
    if d.failed_total > 0 {
        r.find(Finding::new(
            Severity::Error,
            Check::Datapath,
            format!(
                "{} kernel operation{} failed at the last check: {}",
                d.failed_total,
                if d.failed_total == 1 { "" } else { "s" },
                d.failed
                    .iter()
                    .map(|f| format!("{} ({})", f.op, f.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            "a route, neighbour or FDB entry the peers need is missing or wrong: pods of those nodes are unreachable from here",
            "the error says why the kernel refused; ferry-overlayd retries each check".into(),
        ));
    }
    if d.refused_total > 0 {
        r.find(Finding::new(
            Severity::Warning,
            Check::Datapath,
            format!(
                "{} node record{} refused: {}",
                d.refused_total,
                if d.refused_total == 1 { "" } else { "s" },
                d.refused
                    .iter()
                    .map(|x| format!("{}: {}", x.key, x.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            "ferry routes to no node whose record it refuses (a bad address or MAC, a subnet outside the cluster, a clash): that node's pods are unreachable from here",
            "ferry-ipam leases (and check) name each; fix the record, or the Node's annotations and spec.podCIDRs".into(),
        ));
    }
    if d.mended_total > 0 {
        let at = d
            .mended_at
            .map_or(String::new(), |t| format!(" {} ago", ago(t)));
        r.note(
            Check::Datapath,
            format!(
                "the daemon's last check{at} found {} difference{} and mended them ({}); should this come back at every check, something else on the node changes ferry's entries",
                d.mended_total,
                if d.mended_total == 1 { "" } else { "s" },
                d.mended.join(", ")
            ),
        );
    }
    // The bridge holds the pods' gateway (IPv4: the daemon puts it there; the plugin
    // relies on it). A node without it routes no pod's packet.
    if let (Some(b), Some(gw)) = (d.bridge.as_deref(), state.and_then(|s| s.gateway)) {
        if let Some(addrs) = ipv4_addrs(b) {
            if !addrs.contains(&gw.to_string()) {
                r.find(Finding::new(
                    Severity::Error,
                    Check::NodeState,
                    format!("bridge {b} does not hold node.json's gateway {gw} (it holds: {})", if addrs.is_empty() { "none".to_string() } else { addrs.join(", ") }),
                    "pods' default route is the gateway: without it on the bridge, no pod's packet leaves its node",
                    "ferry-overlayd puts it back at its next check; a node.json of another subnet is stale: restart ferry-overlayd".into(),
                ));
            }
        }
    }
}

/// The IPv4 addresses of `dev` (`ip -j addr`), None when `ip` cannot tell.
fn ipv4_addrs(dev: &str) -> Option<Vec<String>> {
    let out = Command::new("ip")
        .args(["-j", "-4", "addr", "show", "dev", dev])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str().map(str::to_string))
            .collect(),
    )
}

fn ago(at: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s", now.saturating_sub(at))
}

/// Each peer's health in peers.json, as the daemon's prober wrote it: any family of any
/// peer not ok (unreachable or failing the MTU probe: an error; some probes lost: a
/// warning).
fn peer_health(state_dir: &Path, r: &mut Report) {
    let Ok(Some(paths)) = ferry_node_ipam::peer_paths::read(state_dir) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for p in &paths.peers {
        for h in p.health.iter().chain(&p.health_v6) {
            let Some(severity) = health_severity(h) else {
                continue;
            };
            r.find(Finding::new(
                severity,
                Check::PeerHealth,
                format!(
                    "node {} ({}), {} over {}: {}",
                    p.node,
                    p.public_ip,
                    h.family,
                    p.path,
                    h.shown(now)
                ),
                "the daemon's probes cross the pods' path to that node (its pod subnet, over VXLAN or directly): what they lose, pods lose",
                "unreachable: UDP 4789 (the VXLAN port) blocked between the nodes (a cloud security group, a host firewall), or the node down; mtu fails: the path carries less than the pods' MTU; some lost: a lossy or saturated link".into(),
            ));
        }
    }
}

/// How bad a peer's health is; `None` when it is ok.
pub fn health_severity(h: &ferry_node_ipam::peer_paths::PeerHealth) -> Option<Severity> {
    if !h.reachable || h.mtu_ok == Some(false) {
        Some(Severity::Error)
    } else if h.lost > 0 {
        Some(Severity::Warning)
    } else {
        None
    }
}

fn kube_proxy_facts(args: &Args) -> Proxy {
    let mode = match http::get(args.kube_proxy_addr, "/proxyMode") {
        Ok((200, body)) => Ok(body.trim().to_string()),
        Ok((code, _)) => Err(format!("{} answered {code}", args.kube_proxy_addr)),
        Err(e) => Err(format!("nothing answers at {}: {e}", args.kube_proxy_addr)),
    };
    let mut rules = Vec::new();
    // The legacy backend only where its tables exist: asking for one would load its
    // module, and the doctor changes nothing.
    let saves = [
        ("iptables-nft-save", None),
        ("ip6tables-nft-save", None),
        ("iptables-legacy-save", Some("/proc/net/ip_tables_names")),
        ("ip6tables-legacy-save", Some("/proc/net/ip6_tables_names")),
    ];
    for (cmd, names) in saves {
        if let Some(n) = names {
            if std::fs::read_to_string(n).map_or(true, |s| s.trim().is_empty()) {
                continue;
            }
        }
        if output_of(cmd, &[]).is_some_and(|out| out.contains(":KUBE-SERVICES")) {
            rules.push(format!("{cmd}: KUBE-SERVICES"));
        }
    }
    if let Some(out) = output_of("nft", &["list", "tables"]) {
        for l in out.lines().filter(|l| l.ends_with(" kube-proxy")) {
            rules.push(format!("nft: {}", l.trim()));
        }
    }
    Proxy { mode, rules }
}

fn output_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kube_proxy(p: &Proxy, r: &mut Report) {
    match (&p.mode, p.rules.is_empty()) {
        (Ok(mode), true) => r.find(Finding::new(
            Severity::Error,
            Check::KubeProxy,
            format!("kube-proxy answers (mode {mode}) but this node has none of its Service rules (no KUBE-SERVICES chain, no kube-proxy nft table)"),
            "without its rules no Service address leads anywhere from this node",
            "kubectl -n kube-system logs of this node's kube-proxy: it fails to write its rules (a missing iptables backend, a kernel module)".into(),
        )),
        (Ok(mode), false) => r.note(
            Check::KubeProxy,
            format!("mode {mode}; its rules: {}", p.rules.join(", ")),
        ),
        (Err(e), false) => r.note(
            Check::KubeProxy,
            format!("its rules are here ({}); /proxyMode: {e}", p.rules.join(", ")),
        ),
        (Err(e), true) => r.note(
            Check::KubeProxy,
            format!("not seen on this node (/proxyMode: {e}; no KUBE-SERVICES chain, no kube-proxy nft table): Services are someone else's or absent"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configs_sorting_first_are_named_in_the_runtimes_order() {
        let names: Vec<OsString> = [
            "10-calico.conflist",
            CONFLIST_NAME,
            "00-calico.conflist",
            "0-a.json",
            "00-b.conf.bak",
            "README",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        assert_eq!(sorting_first(&names), ["0-a.json", "00-calico.conflist"]);
        assert!(sorting_first(&[OsString::from(CONFLIST_NAME)]).is_empty());
    }

    #[test]
    fn a_conflists_plugins_include_their_ipam() {
        let c: Value = serde_json::from_str(
            r#"{"plugins":[{"type":"ferry"},{"type":"portmap"},{"type":"x","ipam":{"type":"host-local"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            plugin_types(&c),
            ["ferry", "ferry-ipam", "portmap", "x", "host-local"]
        );
        let own: Value =
            serde_json::from_str(r#"{"plugins":[{"type":"ferry","ipam":{"type":"ferry-ipam"}}]}"#)
                .unwrap();
        assert_eq!(plugin_types(&own), ["ferry", "ferry-ipam"]);
    }

    #[test]
    fn strict_is_the_larger_of_all_and_the_device() {
        let devs = vec![
            ("eth0".to_string(), 0),
            ("ferry0".to_string(), 1),
            ("ferry.1".to_string(), 2),
        ];
        assert_eq!(strict_devices(0, &devs), ["ferry0"]);
        // all=1 makes every device strict but one set loose (2 is larger).
        assert_eq!(strict_devices(1, &devs), ["eth0", "ferry0"]);
        assert!(strict_devices(2, &devs).is_empty());
    }

    #[test]
    fn a_peer_unreachable_or_failing_mtu_is_an_error_some_loss_a_warning() {
        use ferry_node_ipam::peer_paths::{PathKind, PeerHealth};
        let ok = PeerHealth {
            family: "ipv4".into(),
            path: PathKind::Vxlan,
            reachable: true,
            lost: 0,
            sent: 10,
            rtt_seconds: Some(0.0002),
            mtu_ok: Some(true),
            mtu: Some(1450),
            unreachable_since: None,
        };
        assert_eq!(health_severity(&ok), None);
        let lossy = PeerHealth {
            lost: 3,
            ..ok.clone()
        };
        assert_eq!(health_severity(&lossy), Some(Severity::Warning));
        let mtu = PeerHealth {
            mtu_ok: Some(false),
            ..ok.clone()
        };
        assert_eq!(health_severity(&mtu), Some(Severity::Error));
        let down = PeerHealth {
            reachable: false,
            ..ok
        };
        assert_eq!(health_severity(&down), Some(Severity::Error));
    }
}
