//! Which iptables backend ferry's chains go to, and running its commands.
//!
//! iptables 1.8 comes as two programs over two kernel subsystems: `iptables-legacy` (the
//! x_tables API) and `iptables-nft` (nftables underneath). Rules made through one are
//! evaluated beside the other's but cannot cooperate with them: an accept in ferry's
//! FORWARD chain does not override a DROP policy of the other backend's FORWARD. kube-proxy
//! and kubelet pick one per node, so ferry must use theirs, not whichever `iptables` the
//! image's alternatives name.
//!
//! `auto` decides as kubernetes-sigs/iptables-wrappers does: kubelet's hint chains
//! (`KUBE-IPTABLES-HINT`, or `KUBE-KUBELET-CANARY` of older kubelets) in one backend's
//! mangle table decide (nft when both have them); else the backend holding more rules
//! (legacy with 10 or more, or with at least as many as nft and some); else nft. A choice
//! made with no evidence is looked at again on every resync, since kubelet may start
//! after ferry; once evidence names a backend, the choice stands.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use crate::node_filter::Family;

/// `--iptables-backend`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    Legacy,
    Nft,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Legacy, Backend::Nft];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }

    pub fn other(self) -> Backend {
        match self {
            Backend::Legacy => Backend::Nft,
            Backend::Nft => Backend::Legacy,
        }
    }

    /// The program for `family`, with `suffix` `""`, `"-save"` or `"-restore"`:
    /// `iptables-legacy`, `ip6tables-nft-restore`, …
    pub fn program(self, family: Family, suffix: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{}{suffix}", self.name())
    }
}

/// Runs `<program> -w ARGS`; its output whatever its exit status.
pub fn run(backend: Backend, family: Family, args: &[&str]) -> Result<Output> {
    let program = backend.program(family, "");
    Command::new(&program)
        .arg("-w")
        .args(args)
        .output()
        .with_context(|| format!("run {program} (is iptables installed?)"))
}

/// Feeds `input` to `<program>-restore -w --noflush`: each table in it is changed in one
/// transaction, and tables it does not name are left alone.
pub fn restore(backend: Backend, family: Family, input: &str) -> Result<()> {
    let program = backend.program(family, "-restore");
    let mut child = Command::new(&program)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {program} (is iptables installed?)"))?;
    child
        .stdin
        .take()
        .with_context(|| format!("{program}: no stdin"))?
        .write_all(input.as_bytes())
        .with_context(|| format!("write to {program}"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("wait for {program}"))?;
    if !out.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `<program>-save` of every table the backend has: `None` when its program is not
/// installed. Never `-t TABLE`: for legacy that would create the table in the kernel.
pub fn save(backend: Backend, family: Family) -> Result<Option<String>> {
    let program = backend.program(family, "-save");
    let out = match Command::new(&program).stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("run {program}")),
    };
    if !out.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The chains kubelet makes in the mangle table, whose presence names its backend.
const KUBELET_HINTS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// What one backend holds, from its saves of both families.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Holdings {
    /// A kubelet hint chain is in its mangle table.
    pub kubelet_hint: bool,
    /// Its rules (lines starting with `-`), ferry's own not counted: they are where ferry
    /// put them, no evidence of where anyone else works.
    pub rules: usize,
}

impl Holdings {
    /// Adds what one `-save` output shows.
    pub fn add_save(&mut self, text: &str) {
        let mut table = "";
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim();
            } else if let Some(chain) = line.strip_prefix(':') {
                let name = chain.split_whitespace().next().unwrap_or("");
                if table == "mangle" && KUBELET_HINTS.contains(&name) {
                    self.kubelet_hint = true;
                }
            } else if line.starts_with('-') && !crate::rules::is_ferrys(table, line) {
                self.rules += 1;
            }
        }
    }
}

/// Both backends' holdings.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    pub legacy: Holdings,
    pub nft: Holdings,
}

impl Evidence {
    /// Reads both backends, both families. A backend that cannot be read (not installed,
    /// or refused) simply shows nothing, as in iptables-wrappers.
    pub fn gather() -> Evidence {
        let mut e = Evidence::default();
        for backend in Backend::ALL {
            for family in [Family::V4, Family::V6] {
                match save(backend, family) {
                    Ok(Some(text)) => e.of_mut(backend).add_save(&text),
                    Ok(None) => {}
                    Err(err) => tracing::debug!("{err:#}"),
                }
            }
        }
        e
    }

    fn of_mut(&mut self, b: Backend) -> &mut Holdings {
        match b {
            Backend::Legacy => &mut self.legacy,
            Backend::Nft => &mut self.nft,
        }
    }
}

/// Why a backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Kubelet's hint chain is in that backend's mangle table.
    KubeletHint,
    /// That backend holds the rules.
    RuleCount,
    /// Nothing tells: nft, until something does.
    NoEvidence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub backend: Backend,
    pub reason: Reason,
}

/// The `auto` choice from what both backends hold.
pub fn decide(e: &Evidence) -> Decision {
    let (backend, reason) = if e.nft.kubelet_hint {
        (Backend::Nft, Reason::KubeletHint)
    } else if e.legacy.kubelet_hint {
        (Backend::Legacy, Reason::KubeletHint)
    } else if e.legacy.rules >= 10 || (e.legacy.rules >= e.nft.rules && e.legacy.rules > 0) {
        (Backend::Legacy, Reason::RuleCount)
    } else {
        (Backend::Nft, Reason::NoEvidence)
    };
    Decision { backend, reason }
}

/// The evidence of a decision, as its log line says it.
pub fn explain(d: Decision, e: &Evidence) -> String {
    let counts = format!(
        "legacy holds {} rules, nft {} (ferry's own not counted)",
        e.legacy.rules, e.nft.rules
    );
    match d.reason {
        Reason::KubeletHint => format!(
            "kubelet's hint chain is in iptables-{}'s mangle table",
            d.backend.name()
        ),
        Reason::RuleCount => counts,
        Reason::NoEvidence => format!("no kubelet hint chain in either backend, {counts}"),
    }
}

/// The daemon's backend: chosen at start, looked at again on resync while chosen without
/// evidence.
#[derive(Debug)]
pub struct Selection {
    backend: Backend,
    tentative: bool,
    /// A backend that may still hold ferry's chains (the one left, or, at start, the one
    /// not chosen: an earlier version, or an earlier choice, may have used it).
    stale: Option<Backend>,
}

impl Selection {
    /// Decides, and logs the choice and its evidence.
    pub fn choose(choice: Choice) -> Selection {
        let (backend, tentative) = match choice {
            Choice::Nft | Choice::Legacy => {
                let backend = if choice == Choice::Nft {
                    Backend::Nft
                } else {
                    Backend::Legacy
                };
                tracing::info!(
                    backend = backend.name(),
                    evidence = "--iptables-backend",
                    "iptables backend chosen"
                );
                (backend, false)
            }
            Choice::Auto => {
                let e = Evidence::gather();
                let d = decide(&e);
                let tentative = d.reason == Reason::NoEvidence;
                tracing::info!(
                    backend = d.backend.name(),
                    evidence = %explain(d, &e),
                    "iptables backend chosen{}",
                    if tentative { " for now; looked at again on every resync" } else { "" }
                );
                (d.backend, tentative)
            }
        };
        Selection {
            backend,
            tentative,
            stale: Some(backend.other()),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// For a choice made without evidence, looks again: when evidence now names the other
    /// backend, switches to it (logged once) and marks the old one for cleaning.
    pub fn recheck(&mut self) {
        if !self.tentative {
            return;
        }
        let e = Evidence::gather();
        let d = decide(&e);
        if d.reason == Reason::NoEvidence {
            return;
        }
        self.tentative = false;
        if d.backend == self.backend {
            tracing::info!(backend = d.backend.name(), evidence = %explain(d, &e), "iptables backend confirmed");
            return;
        }
        tracing::warn!(
            from = self.backend.name(), to = d.backend.name(), evidence = %explain(d, &e),
            "iptables backend changed: ferry's chains move to it"
        );
        self.stale = Some(self.backend);
        self.backend = d.backend;
    }

    /// The backend whose ferry chains are still to be removed.
    pub fn stale(&self) -> Option<Backend> {
        self.stale
    }

    /// The stale backend holds nothing of ferry's any more.
    pub fn cleaned(&mut self) {
        self.stale = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(legacy: (bool, usize), nft: (bool, usize)) -> Evidence {
        Evidence {
            legacy: Holdings {
                kubelet_hint: legacy.0,
                rules: legacy.1,
            },
            nft: Holdings {
                kubelet_hint: nft.0,
                rules: nft.1,
            },
        }
    }

    fn chosen(e: Evidence) -> (Backend, Reason) {
        let d = decide(&e);
        (d.backend, d.reason)
    }

    #[test]
    fn kubelets_hint_decides_and_nft_wins_when_both_have_it() {
        use Backend::*;
        use Reason::*;
        assert_eq!(chosen(ev((true, 0), (false, 50))), (Legacy, KubeletHint));
        assert_eq!(chosen(ev((false, 50), (true, 0))), (Nft, KubeletHint));
        assert_eq!(chosen(ev((true, 50), (true, 50))), (Nft, KubeletHint));
    }

    #[test]
    fn without_a_hint_the_rules_decide_and_nothing_means_nft_for_now() {
        use Backend::*;
        use Reason::*;
        assert_eq!(chosen(ev((false, 10), (false, 99))), (Legacy, RuleCount));
        assert_eq!(chosen(ev((false, 3), (false, 3))), (Legacy, RuleCount));
        assert_eq!(chosen(ev((false, 3), (false, 4))), (Nft, NoEvidence));
        assert_eq!(chosen(ev((false, 0), (false, 0))), (Nft, NoEvidence));
        assert_eq!(chosen(ev((false, 0), (false, 7))), (Nft, NoEvidence));
    }

    #[test]
    fn a_save_shows_the_hint_only_in_mangle_and_counts_others_rules() {
        let legacy = "# Generated by iptables-save v1.8.9\n\
            *mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n\
            *nat\n:POSTROUTING ACCEPT [0:0]\n:FERRY-POSTRTG - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
            -A POSTROUTING -m comment --comment \"ferry masquerade\" -j FERRY-POSTRTG\n\
            -A POSTROUTING -j KUBE-POSTROUTING\n\
            -A FERRY-POSTRTG -s 10.244.0.0/16 -j MASQUERADE --random-fully\n\
            -A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\nCOMMIT\n";
        let mut h = Holdings::default();
        h.add_save(legacy);
        assert_eq!(
            h,
            Holdings {
                kubelet_hint: true,
                rules: 2
            }
        );
        // A chain of that name elsewhere is not kubelet's hint.
        let mut h = Holdings::default();
        h.add_save("*filter\n:KUBE-KUBELET-CANARY - [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n");
        assert_eq!(
            h,
            Holdings {
                kubelet_hint: false,
                rules: 1
            }
        );
        h.add_save("*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n");
        assert!(h.kubelet_hint);
    }

    #[test]
    fn programs_are_named_for_backend_and_family() {
        assert_eq!(Backend::Legacy.program(Family::V4, ""), "iptables-legacy");
        assert_eq!(
            Backend::Nft.program(Family::V6, "-restore"),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            Backend::Legacy.program(Family::V6, "-save"),
            "ip6tables-legacy-save"
        );
    }

    #[test]
    fn the_log_says_why() {
        let e = ev((true, 2), (false, 5));
        let d = decide(&e);
        assert_eq!(
            explain(d, &e),
            "kubelet's hint chain is in iptables-legacy's mangle table"
        );
        let e = ev((false, 0), (false, 5));
        assert_eq!(
            explain(decide(&e), &e),
            "no kubelet hint chain in either backend, legacy holds 0 rules, nft 5 (ferry's own not counted)"
        );
    }
}
