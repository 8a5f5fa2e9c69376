//! `ferry-overlayd uninstall`: removes everything ferry made on a node, then looks again.
//!
//! Every removal is tried whatever became of the others (as netavark's teardown does), and
//! each failure is said; the exit status is the second look's: 0 only when nothing of
//! ferry is left. Only what ferry makes is touched, each thing found by what marks it as
//! ferry's: links by name and kind or by the tombstone group, routes by protocol, nftables
//! tables and iptables chains by name, files by path. Whatever else shares a prefix, a
//! table or a directory with them stays.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use ferry_netlink::{Link, Netlink, TaggedRoute};
use ferry_node_ipam::attachment::{is_ferry_link_name, TOMBSTONE_GROUP};

use crate::iptables::Backend;
use crate::node_filter::{self, Family};
use crate::rules::{self, Found};

#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    /// Where the node's root file system is (the cleanup DaemonSet mounts the node's
    /// directories under /host): ferry's files are looked for under it.
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    /// The node bridge (the daemon's `--bridge`).
    #[arg(long, env = "FERRY_BRIDGE", default_value = "ferry0")]
    pub bridge: String,
}

/// ferry's files and directories, from the node's root: the daemon's state (node.json,
/// peers.json, drift.json, policy.sock), the IPAM store, the control-plane node's etcd data, the CNI
/// config under both names it has had, and ferry's two plugins (never the CNI
/// directories' other files).
const FILES: [&str; 7] = [
    "run/ferry",
    "var/lib/ferry",
    "var/lib/ferry-etcd",
    "etc/cni/net.d/00-ferry.conflist",
    "etc/cni/net.d/10-ferry.conflist",
    "opt/cni/bin/ferry",
    "opt/cni/bin/ferry-ipam",
];

/// ferry's nftables tables: the node filter (VXLAN and the node-only services), the
/// VXLAN filters of earlier versions (one per underlay family), NetworkPolicy's two.
fn nft_tables() -> [(&'static str, &'static str); 5] {
    let [legacy4, legacy6] = node_filter::LEGACY;
    [
        (node_filter::FAMILY, node_filter::TABLE),
        legacy4,
        legacy6,
        (ferry_netpol::TableFamily::Inet.name(), ferry_netpol::TABLE),
        (
            ferry_netpol::TableFamily::Bridge.name(),
            ferry_netpol::TABLE,
        ),
    ]
}

/// One thing of ferry's on the node.
enum Thing {
    Link {
        name: String,
        what: &'static str,
    },
    Route {
        route: TaggedRoute,
        dev: Option<String>,
    },
    NftTable {
        family: &'static str,
        name: &'static str,
    },
    Rule {
        backend: Backend,
        family: Family,
        found: Found,
    },
    File(PathBuf),
}

impl fmt::Display for Thing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Thing::Link { name, what } => write!(f, "{what} {name}"),
            Thing::Route { route, dev } => write!(f, "route {}", route.show(dev.as_deref())),
            Thing::NftTable { family, name } => write!(f, "nftables table {family} {name}"),
            Thing::Rule {
                backend,
                family,
                found,
            } => write!(f, "{} {found}", backend.program(*family, "")),
            Thing::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What a link is to ferry, if it is ferry's.
fn ferrys_link(l: &Link, bridge: &str) -> Option<&'static str> {
    let kind = l.kind.as_deref();
    if l.name.starts_with(crate::datapath::VXLAN_PREFIX) && kind == Some("vxlan") {
        Some("VXLAN device")
    } else if l.name == bridge && kind == Some("bridge") {
        Some("bridge")
    } else if is_ferry_link_name(&l.name) {
        Some("pod link")
    } else if l.group == TOMBSTONE_GROUP {
        Some("retired link")
    } else {
        None
    }
}

/// The kinds of things, in the order they are removed.
#[derive(Debug, Clone, Copy)]
enum Step {
    Links,
    Routes,
    NftTables,
    Iptables,
    Files,
}

impl Step {
    const ALL: [Step; 5] = [
        Step::Links,
        Step::Routes,
        Step::NftTables,
        Step::Iptables,
        Step::Files,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Links => "links",
            Step::Routes => "routes",
            Step::NftTables => "nftables tables",
            Step::Iptables => "iptables rules",
            Step::Files => "files",
        }
    }
}

struct Node<'a> {
    nl: Result<Netlink>,
    args: &'a UninstallArgs,
}

impl Node<'_> {
    fn nl(&self) -> Result<&Netlink> {
        self.nl.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    /// ferry's things of one kind, and what could not be looked at.
    async fn find(&self, step: Step) -> (Vec<Thing>, Vec<anyhow::Error>) {
        match step {
            Step::Links => one(self.links().await),
            Step::Routes => one(self.routes().await),
            Step::NftTables => one(find_nft_tables()),
            Step::Iptables => find_rules(),
            Step::Files => find_files(&self.args.host_root),
        }
    }

    async fn links(&self) -> Result<Vec<Thing>> {
        let links = self.nl()?.list_links().await?;
        Ok(links
            .into_iter()
            .filter_map(|l| {
                let what = ferrys_link(&l, &self.args.bridge)?;
                Some(Thing::Link { name: l.name, what })
            })
            .collect())
    }

    async fn routes(&self) -> Result<Vec<Thing>> {
        let nl = self.nl()?;
        let names: BTreeMap<u32, String> = nl
            .list_links()
            .await
            .map(|ls| ls.into_iter().map(|l| (l.index, l.name)).collect())
            .unwrap_or_default();
        let routes = nl
            .routes_of_protocol(ferry_netlink::ROUTE_PROTO_FERRY)
            .await?;
        Ok(routes
            .into_iter()
            .map(|route| {
                let dev = route.oif.and_then(|i| names.get(&i).cloned());
                Thing::Route { route, dev }
            })
            .collect())
    }

    async fn remove(&self, t: &Thing) -> Result<()> {
        match t {
            Thing::Link { name, .. } => self.nl()?.del_link(name).await.map(drop)?,
            Thing::Route { route, .. } => self.nl()?.del_tagged_route(route).await?,
            Thing::NftTable { family, name } => {
                crate::nft::nft(&["delete", "table", family, name], None).map(drop)?
            }
            Thing::Rule {
                backend,
                family,
                found,
            } => rules::remove(*backend, *family, found)?,
            Thing::File(p) => remove_path(p)?,
        }
        Ok(())
    }
}

fn one(r: Result<Vec<Thing>>) -> (Vec<Thing>, Vec<anyhow::Error>) {
    match r {
        Ok(v) => (v, Vec::new()),
        Err(e) => (Vec::new(), vec![e]),
    }
}

fn find_nft_tables() -> Result<Vec<Thing>> {
    let listing = crate::nft::nft(&["list", "tables"], None)?;
    let present: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "table").then_some(())?;
            Some((w.next()?, w.next()?))
        })
        .collect();
    Ok(nft_tables()
        .into_iter()
        .filter(|t| present.contains(t))
        .map(|(family, name)| Thing::NftTable { family, name })
        .collect())
}

/// Both backends, both families: ferry may have used either (an earlier version, or an
/// earlier choice of backend).
fn find_rules() -> (Vec<Thing>, Vec<anyhow::Error>) {
    let (mut things, mut errors) = (Vec::new(), Vec::new());
    for backend in Backend::ALL {
        for family in [Family::V4, Family::V6] {
            match rules::find(backend, family) {
                Ok(found) => things.extend(found.into_iter().flatten().map(|found| Thing::Rule {
                    backend,
                    family,
                    found,
                })),
                Err(e) => errors.push(e),
            }
        }
    }
    (things, errors)
}

fn find_files(root: &Path) -> (Vec<Thing>, Vec<anyhow::Error>) {
    let (mut things, mut errors) = (Vec::new(), Vec::new());
    for rel in FILES {
        let p = root.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(_) => things.push(Thing::File(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(anyhow::Error::new(e).context(format!("{}", p.display()))),
        }
    }
    (things, errors)
}

/// Removes a file, or a directory with all it holds (a symbolic link itself, never what
/// it points to). A directory that cannot be emptied is named with what it still holds.
/// The caller names `p`.
fn remove_path(p: &Path) -> Result<()> {
    if !std::fs::symlink_metadata(p)?.is_dir() {
        return Ok(std::fs::remove_file(p)?);
    }
    std::fs::remove_dir_all(p).map_err(|e| {
        let left = remaining(p, 3);
        if left.is_empty() {
            anyhow::Error::new(e)
        } else {
            anyhow::anyhow!("{e}; it still holds {}", left.join(", "))
        }
    })
}

/// Up to `n` files left under `dir`, deepest first found.
fn remaining(dir: &Path, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if out.len() < n {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

pub fn run(args: &UninstallArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(uninstall(args))
}

async fn uninstall(args: &UninstallArgs) -> ExitCode {
    let node = Node {
        nl: Netlink::open().context("netlink"),
        args,
    };
    let mut removed = 0;
    for step in Step::ALL {
        let (things, errors) = node.find(step).await;
        for e in errors {
            eprintln!("cannot look for ferry's {}: {e:#}", step.name());
        }
        for t in things {
            match node.remove(&t).await {
                Ok(()) => {
                    println!("removed {t}");
                    removed += 1;
                }
                Err(e) => eprintln!("cannot remove {t}: {e:#}"),
            }
        }
    }
    // The exit status is what is there now, not what each removal said.
    let mut left = 0;
    for step in Step::ALL {
        let (things, errors) = node.find(step).await;
        for t in &things {
            eprintln!("still there: {t}");
        }
        for e in &errors {
            eprintln!("cannot look for ferry's {}: {e:#}", step.name());
        }
        left += things.len() + errors.len();
    }
    if left > 0 {
        eprintln!("ferry is not removed from this node: {left} left or not looked at");
        return ExitCode::FAILURE;
    }
    if removed == 0 {
        println!("nothing of ferry was found on this node");
    }
    println!("ferry removed from this node");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>, group: u32) -> Link {
        Link {
            index: 1,
            vxlan: None,
            name: name.into(),
            mac: Vec::new(),
            mtu: 1500,
            up: true,
            controller: None,
            kind: kind.map(String::from),
            alias: None,
            group,
            sizes: Default::default(),
        }
    }

    #[test]
    fn only_ferrys_links_are_ferrys() {
        let pod = ferry_node_ipam::attachment::host_veth("c1", "eth0");
        for (l, what) in [
            (link("ferry.1", Some("vxlan"), 0), Some("VXLAN device")),
            (link("ferry.42", Some("vxlan"), 0), Some("VXLAN device")),
            (link("ferry0", Some("bridge"), 0), Some("bridge")),
            (link(&pod, Some("veth"), 0), Some("pod link")),
            (
                link("fz0123456789abc", Some("veth"), TOMBSTONE_GROUP),
                Some("pod link"),
            ),
            (
                link("renamed", Some("veth"), TOMBSTONE_GROUP),
                Some("retired link"),
            ),
            // Another CNI's, or ferry's names on something ferry never makes so.
            (link("ferry.1", Some("dummy"), 0), None),
            (link("ferry0", Some("veth"), 0), None),
            (link("cni0", Some("bridge"), 0), None),
            (link("fy12345", Some("veth"), 0), None),
            (link("eth0", Some("veth"), 1), None),
        ] {
            assert_eq!(ferrys_link(&l, "ferry0"), what, "{}", l.name);
        }
        assert_eq!(
            ferrys_link(&link("br-pods", Some("bridge"), 0), "br-pods"),
            Some("bridge")
        );
    }

    #[test]
    fn the_daemons_and_plugins_default_places_are_removed() {
        let covered = |p: &str| {
            let rel = p.trim_start_matches('/');
            FILES.iter().any(|f| Path::new(rel).starts_with(f))
        };
        assert!(covered(ferry_node_ipam::node_state::DEFAULT_STATE_DIR));
        assert!(covered(ferry_node_ipam::config::DEFAULT_DATA_DIR));
        // Never a whole CNI directory.
        for f in FILES {
            assert!(
                !matches!(f, "etc/cni/net.d" | "opt/cni/bin" | "etc/cni" | "opt/cni"),
                "{f}"
            );
        }
    }

    #[test]
    fn the_nft_tables_are_the_ones_ferry_makes() {
        assert_eq!(
            nft_tables(),
            [
                ("inet", "ferry"),
                ("ip", "ferry"),
                ("ip6", "ferry"),
                ("inet", "ferry_policy"),
                ("bridge", "ferry_policy")
            ]
        );
    }

    #[test]
    fn a_directory_that_cannot_be_emptied_names_what_it_holds() {
        let d = tempfile_dir();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), b"x").unwrap();
        assert_eq!(
            remaining(&d, 3),
            vec![d.join("a/b/f").display().to_string()]
        );
        remove_path(&d).unwrap();
        assert!(!d.exists());
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-uninstall-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
