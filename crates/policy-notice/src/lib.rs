//! The notice the plugin sends `ferry-overlayd` over a unix socket when NetworkPolicy is
//! enforced on the node: which pod (namespace and name, from `CNI_ARGS`) now holds which
//! addresses, or that an attachment is gone.
//!
//! An attach is answered only once the node's rules cover the pod, so ADD returns no
//! earlier than that: a pod a policy isolates never receives a connection the policy
//! forbids, not even in its first second. One JSON line each way; the daemon reads at most
//! `MAX_LINE` bytes, so a client that never ends its line costs it nothing.
//!
//! The socket is `<stateDir>/policy.sock` (`SOCKET_NAME`), mode 0600: only root on the
//! node may claim that a pod holds an address.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The socket's file name in the node's state directory.
pub const SOCKET_NAME: &str = "policy.sock";

/// The longest line either side reads.
pub const MAX_LINE: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum Notice {
    /// A pod now holds `ips` through this attachment. `namespace`/`pod` are empty when
    /// the runtime did not name the pod: the daemon then keeps it closed.
    #[serde(rename_all = "camelCase")]
    Attach {
        namespace: String,
        pod: String,
        container_id: String,
        ifname: String,
        ips: Vec<IpAddr>,
    },
    /// The attachment is gone; its addresses may be handed to another pod.
    #[serde(rename_all = "camelCase")]
    Detach {
        container_id: String,
        ifname: String,
    },
    /// An operator asks why a connection is allowed or denied (`ferry-ipam explain`):
    /// `from` and `to` are `namespace/pod` or an address.
    Explain {
        from: String,
        to: String,
        protocol: String,
        port: u16,
    },
}

/// The daemon's answer: `ok`, or the reason it could not do what was asked; an
/// explanation carries its text and its structured form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }

    pub fn refused(error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: error.into(),
            ..Reply::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("connect to ferry-overlayd's policy socket {path}: {source} (is ferry-overlayd running with --network-policy?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talk to ferry-overlayd on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("ferry-overlayd did not answer on {path} within {waited:?}")]
    Timeout { path: String, waited: Duration },
    #[error("ferry-overlayd refused the notice: {0}")]
    Refused(String),
    #[error("not a notice: {0}")]
    Malformed(String),
}

/// Sends `notice` to the daemon listening on `path` and waits at most `wait` for its
/// answer; an answer other than `ok` is an error carrying the daemon's reason.
pub fn send(path: &Path, notice: &Notice, wait: Duration) -> Result<(), NoticeError> {
    ask(path, notice, wait).map(drop)
}

/// `send`, returning the daemon's whole answer.
pub fn ask(path: &Path, notice: &Notice, wait: Duration) -> Result<Reply, NoticeError> {
    let shown = path.display().to_string();
    let io = |source: std::io::Error| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            NoticeError::Timeout {
                path: shown.clone(),
                waited: wait,
            }
        } else {
            NoticeError::Io {
                path: shown.clone(),
                source,
            }
        }
    };
    let mut stream = UnixStream::connect(path).map_err(|source| NoticeError::Connect {
        path: shown.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(wait)).map_err(io)?;
    stream.set_write_timeout(Some(wait)).map_err(io)?;
    let mut line = serde_json::to_vec(notice).map_err(|e| NoticeError::Malformed(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let reply: Reply = read_line(&mut stream).map_err(|e| match e {
        NoticeError::Io { source, .. } => io(source),
        other => other,
    })?;
    if reply.ok {
        Ok(reply)
    } else {
        Err(NoticeError::Refused(reply.error))
    }
}

/// Reads one JSON line of at most `MAX_LINE` bytes and parses it as `T`.
pub fn read_line<T: for<'de> Deserialize<'de>>(r: impl Read) -> Result<T, NoticeError> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(r.take(MAX_LINE as u64 + 1));
    reader
        .read_until(b'\n', &mut line)
        .map_err(|source| NoticeError::Io {
            path: String::new(),
            source,
        })?;
    if line.len() > MAX_LINE {
        return Err(NoticeError::Malformed(format!(
            "a line longer than {MAX_LINE} bytes"
        )));
    }
    if line.last() != Some(&b'\n') {
        return Err(NoticeError::Malformed("the line ended early".into()));
    }
    serde_json::from_slice(&line).map_err(|e| NoticeError::Malformed(e.to_string()))
}

/// The line carrying `reply`.
pub fn reply_line(reply: &Reply) -> Vec<u8> {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn attach() -> Notice {
        Notice::Attach {
            namespace: "x".into(),
            pod: "a".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ips: vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        }
    }

    #[test]
    fn round_trip_through_a_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(SOCKET_NAME);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let n: Notice = read_line(&mut s).unwrap();
            s.write_all(&reply_line(&Reply::ok())).unwrap();
            n
        });
        send(&path, &attach(), Duration::from_secs(2)).unwrap();
        assert_eq!(server.join().unwrap(), attach());
    }

    #[test]
    fn a_refusal_and_a_silent_daemon_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(SOCKET_NAME);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _: Notice = read_line(&mut s).unwrap();
            s.write_all(&reply_line(&Reply::refused("no"))).unwrap();
            // The second one is never answered.
            let (mut s2, _) = listener.accept().unwrap();
            let _: Notice = read_line(&mut s2).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let e = send(&path, &attach(), Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, NoticeError::Refused(ref m) if m == "no"), "{e}");
        let e = send(&path, &attach(), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, NoticeError::Timeout { .. }), "{e}");
        server.join().unwrap();
        let e = send(&d.path().join("absent"), &attach(), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, NoticeError::Connect { .. }), "{e}");
    }

    #[test]
    fn garbage_lines_are_refused() {
        for bad in [
            &b"not json\n"[..],
            b"{\"op\":\"attach\"}\n",
            b"{\"op\":\"explode\",\"containerId\":\"c\",\"ifname\":\"e\"}\n",
            b"{\"op\":\"detach\",\"containerId\":\"c\",\"ifname\":\"e\",\"extra\":1}\n",
            b"{\"op\":\"detach\",\"containerId\":\"c\",\"ifname\":\"e\"}",
        ] {
            assert!(read_line::<Notice>(bad).is_err(), "{bad:?}");
        }
        let long = vec![b' '; MAX_LINE + 10];
        assert!(read_line::<Notice>(&long[..]).is_err());
        let ok = b"{\"op\":\"detach\",\"containerId\":\"c\",\"ifname\":\"e\"}\n";
        assert!(read_line::<Notice>(&ok[..]).is_ok());
    }
}
