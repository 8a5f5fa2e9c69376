//! The plugin's notices (`policy-notice`): `<stateDir>/policy.sock`, mode 0600, one JSON
//! line in and one out per connection. An attach is answered once the engine has applied
//! a table that covers the pod.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_policy_notice::{Notice, Reply, MAX_LINE, SOCKET_NAME};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// How long a client may take to send its line.
const READ_WAIT: Duration = Duration::from_secs(2);
/// How long the engine may take to cover a pod before the plugin is told it failed.
const ENGINE_WAIT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// A notice and where its answer goes.
pub type Request = (Notice, oneshot::Sender<Reply>);

/// Binds the socket, replacing a stale one (never anything that is not a socket).
pub fn bind(state_dir: &Path) -> Result<UnixListener> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let path = state_dir.join(SOCKET_NAME);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)
            .with_context(|| format!("remove the stale socket {}", path.display()))?,
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, engine: mpsc::Sender<Request>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("NetworkPolicy: accept on the plugin's socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, engine).await {
                tracing::warn!("NetworkPolicy: a notice from the plugin: {e:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, engine: mpsc::Sender<Request>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64 + 1));
    tokio::time::timeout(READ_WAIT, reader.read_until(b'\n', &mut line))
        .await
        .context("no line within 2 s")?
        .context("read")?;
    let reply = match ferry_policy_notice::read_line::<Notice>(line.as_slice()) {
        Ok(notice) => {
            let (tx, rx) = oneshot::channel();
            if engine.send((notice, tx)).await.is_err() {
                Reply::refused("the policy engine has stopped")
            } else {
                match tokio::time::timeout(ENGINE_WAIT, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Reply::refused("the policy engine dropped the notice"),
                    Err(_) => Reply::refused(format!(
                        "the node's rules were not updated within {ENGINE_WAIT:?}"
                    )),
                }
            }
        }
        Err(e) => Reply::refused(e.to_string()),
    };
    write
        .write_all(&ferry_policy_notice::reply_line(&reply))
        .await
        .context("write the answer")?;
    Ok(())
}
