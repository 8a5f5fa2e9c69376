//! The node's CNI config, installed by the daemon once it is ready.
//!
//! Written before the daemon is ready, the config makes the runtime send pods to a node
//! that cannot give them addresses yet; and a runtime uses the config whose name sorts
//! first, so ferry's is `00-ferry.conflist`, ahead of `05-cilium`, `10-calico` or
//! `10-containerd-net` that a node may still hold. What sorts before it anyway is named in
//! the log: it would win silently otherwise.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::status::{Cause, Status};

use ferry_cni::conf_dir::sorts_first;
/// The installed config's name in the runtime's config directory.
pub use ferry_cni::conf_dir::CONFLIST_NAME;
/// Runtimes read the directory as whatever user they run as.
const MODE: u32 = 0o644;

pub struct CniConf {
    dir: PathBuf,
    src: PathBuf,
    /// Configs that sort first, each named once.
    warned: BTreeSet<OsString>,
    /// The last error, logged once until it changes or is mended.
    failing: Option<String>,
    installed: bool,
}

impl CniConf {
    /// From `--cni-conf-dir` and `--cni-conflist` (clap makes them come together).
    pub fn new(dir: Option<&Path>, src: Option<&Path>) -> Option<CniConf> {
        Some(CniConf {
            dir: dir?.to_path_buf(),
            src: src?.to_path_buf(),
            warned: BTreeSet::new(),
            failing: None,
            installed: false,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(CONFLIST_NAME)
    }

    /// Not installed yet, and nothing wrong with it known: waiting for the daemon to be
    /// ready. A failing source is retried at the resyncs instead.
    pub fn waiting(&self) -> bool {
        !self.installed && self.failing.is_none()
    }

    /// Re-reads the source, installs it when the installed one differs or is missing,
    /// and names the configs that would win over it. A source that is not a ferry
    /// conflist makes the daemon not ready (the installed file is left as it is).
    pub fn keep(&mut self, status: &Status) {
        match self.ensure() {
            Ok(changed) => {
                if changed {
                    tracing::info!(path = %self.path().display(), from = %self.src.display(), "CNI config installed");
                } else if self.failing.is_some() {
                    tracing::info!(path = %self.path().display(), "CNI config is right again");
                }
                self.failing = None;
                self.installed = true;
                status.clear(Cause::CniConf);
            }
            Err(e) => {
                let text = format!("{e:#}");
                if self.failing.as_deref() != Some(&text) {
                    tracing::error!("CNI config not installed: {text}");
                }
                status.set(Cause::CniConf, format!("CNI config not installed: {text}"));
                self.failing = Some(text);
            }
        }
        self.warn_others();
    }

    fn ensure(&self) -> Result<bool> {
        let src = self.src.display();
        let bytes =
            std::fs::read(&self.src).with_context(|| format!("read --cni-conflist {src}"))?;
        check(&bytes).with_context(|| format!("--cni-conflist {src}"))?;
        let path = self.path();
        let same = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.mode() & 0o777 == MODE)
            && std::fs::read(&path).is_ok_and(|b| b == bytes);
        if same {
            return Ok(false);
        }
        write(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
        Ok(true)
    }

    /// Logs, once per file, each config of the directory that a runtime would read before
    /// ferry's.
    fn warn_others(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if !sorts_first(&name) || self.warned.contains(&name) {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            tracing::warn!(
                other = %e.path().display(),
                "another CNI config sorts before {CONFLIST_NAME}: the runtime uses it instead of ferry's; remove it from {}",
                self.dir.display()
            );
            self.warned.insert(name);
        }
    }
}

/// A conflist whose first plugin is ferry: anything else, installed first, would take
/// the node's pods.
fn check(bytes: &[u8]) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(bytes).context("not JSON")?;
    let plugins = v
        .get("plugins")
        .and_then(|p| p.as_array())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| anyhow!("no \"plugins\" array, or an empty one: not a conflist"))?;
    match plugins[0].get("type").and_then(|t| t.as_str()) {
        Some("ferry") => Ok(()),
        other => bail!(
            "its first plugin's \"type\" is {}, not \"ferry\"",
            other.map_or("missing".to_string(), |t| format!("{t:?}"))
        ),
    }
}

/// Replaces `path` atomically: a runtime reading the directory sees the old config or
/// the new one, never half of one.
fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Not a config name: a runtime listing the directory meanwhile ignores it.
    let tmp = dir.join(format!(".{CONFLIST_NAME}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(MODE))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ferry_conflist_passes() {
        assert!(check(br#"{"plugins":[{"type":"ferry"},{"type":"portmap"}]}"#).is_ok());
        for (bad, why) in [
            (&b"{"[..], "not JSON"),
            (br#"{"type":"ferry"}"#, "plugins"),
            (br#"{"plugins":[]}"#, "plugins"),
            (br#"{"plugins":[{"type":"bridge"}]}"#, "\"bridge\""),
            (br#"{"plugins":[{}]}"#, "missing"),
        ] {
            let e = format!("{:#}", check(bad).unwrap_err());
            assert!(e.contains(why), "{e}");
        }
    }
}
