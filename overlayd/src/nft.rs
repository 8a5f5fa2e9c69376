//! Running `nft`, the one way the daemon changes nftables: a script is one transaction.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `nft ARGS`, feeding `stdin` when given; its stdout, or an error with its stderr.
pub fn nft(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft (is nftables installed?)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).context("write to nft")?;
    }
    let out = child.wait_with_output().context("wait for nft")?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nft -j list table FAMILY NAME`; `None` when there is no such table.
pub fn list_table(family: &str, name: &str) -> Result<Option<String>> {
    match nft(&["-j", "list", "table", family, name], None) {
        Ok(text) => Ok(Some(text)),
        // A missing table is an error to nft, and simply "nothing yet" to us.
        Err(e) if e.to_string().contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Applies `script` as one transaction (`nft -f -`).
pub fn apply(script: &str) -> Result<()> {
    nft(&["-f", "-"], Some(script)).map(drop)
}
