//! Running another plugin (an IPAM plugin) as the spec says: found in `CNI_PATH`, the same
//! environment with `CNI_COMMAND` replaced, the whole network configuration on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::{Command, Env};
use crate::error::{Code, Error};
use crate::result::CniResult;

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, Error> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(Error::new(
            Code::InvalidConfig,
            format!("invalid plugin type {plugin:?}"),
        ));
    }
    path.iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(
                Code::InvalidConfig,
                format!("failed to find plugin {plugin:?} in CNI_PATH"),
            )
            .with_details(format!("searched {path:?}"))
        })
}

/// Runs `plugin` for `command`; returns its stdout (empty for DEL, CHECK, GC, STATUS).
pub fn exec(plugin: &Path, command: Command, env: &Env, conf: &[u8]) -> Result<Vec<u8>, Error> {
    let mut child = Process::new(plugin)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env(
            "CNI_NETNS",
            env.netns
                .as_deref()
                .map(Path::as_os_str)
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env(
            "CNI_PATH",
            std::env::join_paths(&env.path).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            Error::new(
                Code::Delegate,
                format!("cannot run IPAM plugin {}", plugin.display()),
            )
            .with_details(e.to_string())
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading stdin is judged by its exit code below.
        let _ = stdin.write_all(conf);
    }
    let out = child.wait_with_output().map_err(|e| {
        Error::new(
            Code::Delegate,
            format!("IPAM plugin {} failed", plugin.display()),
        )
        .with_details(e.to_string())
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    // A plugin's own error JSON keeps its code; anything else is reported as is.
    if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
        if let Some(code) = v.get("code").and_then(Value::as_u64) {
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or("");
            let details = v.get("details").and_then(Value::as_str).unwrap_or("");
            return Err(Error {
                code: code as u32,
                msg: format!("IPAM plugin {}: {msg}", display_name(plugin)),
                details: details.to_string(),
            });
        }
    }
    Err(Error::new(
        Code::Delegate,
        format!(
            "IPAM plugin {} failed ({})",
            display_name(plugin),
            out.status
        ),
    )
    .with_details(String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// Runs an IPAM ADD and parses its result.
pub fn add(plugin: &Path, env: &Env, conf: &[u8]) -> Result<CniResult, Error> {
    let out = exec(plugin, Command::Add, env, conf)?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| {
        Error::new(
            Code::Decode,
            format!(
                "IPAM plugin {} printed no JSON result",
                display_name(plugin)
            ),
        )
        .with_details(e.to_string())
    })?;
    CniResult::from_value(v).map_err(|e| {
        Error::new(
            Code::Decode,
            format!(
                "cannot parse the result of IPAM plugin {}",
                display_name(plugin)
            ),
        )
        .with_details(e.to_string())
    })
}

fn display_name(plugin: &Path) -> String {
    plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| plugin.display().to_string())
}
