//! Processes a test starts, ended by PID when dropped (and only those).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

pub struct Bg {
    child: Child,
}

impl Bg {
    /// Starts `cmd` (a shell command) inside `ns` in the background.
    pub fn spawn(ns: &Netns, cmd: &str) -> Bg {
        Self::spawn_in(ns, cmd, Stdio::null(), Stdio::null())
    }

    /// Starts `cmd` inside `ns`, its output appended to `log`.
    pub fn spawn_logged(ns: &Netns, cmd: &str, log: &std::path::Path) -> Bg {
        let (out, err) = log_pair(log);
        Self::spawn_in(ns, cmd, out, err)
    }

    fn spawn_in(ns: &Netns, cmd: &str, out: Stdio, err: Stdio) -> Bg {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &ns.name,
            "sh",
            "-c",
            &format!("exec {cmd}"),
        ])
        .stdout(out)
        .stderr(err);
        Self::spawn_cmd_with(c)
    }

    /// Starts a prepared command in the background, its output appended to `log`.
    pub fn spawn_cmd_logged(mut cmd: Command, log: &std::path::Path) -> Bg {
        let (out, err) = log_pair(log);
        cmd.stdout(out).stderr(err);
        Self::spawn_cmd_with(cmd)
    }

    /// Starts a prepared command in the background, its output dropped.
    pub fn spawn_cmd(mut cmd: Command) -> Bg {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        Self::spawn_cmd_with(cmd)
    }

    fn spawn_cmd_with(mut cmd: Command) -> Bg {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Bg { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` and waits up to `timeout` for the exit; the exit code, if it exited.
    pub fn stop(mut self, sig: i32, timeout: Duration) -> Option<i32> {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The exit code if the process has ended.
    pub fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stdout and stderr both appended to `log`.
fn log_pair(log: &std::path::Path) -> (Stdio, Stdio) {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let err = out.try_clone().expect("clone log");
    (out.into(), err.into())
}

/// A ping every 20 ms from `ns` to `to` while `f` runs (half a second before and after
/// it too): (sent, received).
pub fn ping_through(ns: &Netns, to: &str, f: impl FnOnce()) -> (u32, u32) {
    let log = tempfile::NamedTempFile::new().expect("log");
    let ping = Bg::spawn_logged(ns, &format!("ping -i 0.02 -W 1 {to}"), log.path());
    std::thread::sleep(Duration::from_millis(500));
    f();
    std::thread::sleep(Duration::from_millis(500));
    ping.stop(libc::SIGINT, Duration::from_secs(5));
    let out = std::fs::read_to_string(log.path()).unwrap_or_default();
    let stat = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {out}"));
    let n = |word: &str| -> u32 {
        stat.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    (n("transmitted"), n("received"))
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A one-line TCP server: answers each connection with the peer's address and closes.
/// Python from the base system keeps the tests free of extra tools.
pub fn echo_peer_server(ns: &Netns, port: u16) -> Bg {
    echo_peer_server_on(ns, "0.0.0.0", port)
}

/// `echo_peer_server` bound to one address only (`127.0.0.1`: reachable from the
/// namespace's own processes and nothing else). An IPv6 `addr` (`::` for any) makes it
/// an IPv6 server.
pub fn echo_peer_server_on(ns: &Netns, addr: &str, port: u16) -> Bg {
    let family = socket_family(addr);
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.{family}); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{addr}',{port})); s.listen(64)\n\
         while True:\n    c,a=s.accept(); c.sendall((a[0]+'\\n').encode()); c.close()\n"
    );
    python_listener(
        ns,
        &script,
        &format!("ss -ltn 'sport = :{port}' | grep -q LISTEN"),
        &format!("server on port {port}"),
    )
}

/// Python's socket family for an address: `AF_INET6` for an IPv6 one, else `AF_INET`.
pub fn socket_family(addr: &str) -> &'static str {
    if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    }
}

/// The Python `script` run in `ns` in the background, once the shell command `bound` (an
/// `ss` query) says its socket is there; `what` names it when it never is.
pub fn python_listener(ns: &Netns, script: &str, bound: &str, what: &str) -> Bg {
    let bg = Bg::spawn(ns, &format!("python3 -c \"{script}\""));
    let up = wait_until(Duration::from_secs(5), || ns.try_sh(bound).status.success());
    assert!(up, "{what} in {} did not start", ns.name);
    bg
}

/// Whether, within 10 s, a connection from `from` to the [`echo_peer_server`] at
/// `to:port` is seen by it from `from_ip` (the client's own address, not masqueraded).
pub fn seen_from(from: &Netns, from_ip: &str, to: &str, port: u16) -> bool {
    wait_until(Duration::from_secs(10), || {
        connect(from, to, port).as_deref() == Some(from_ip)
    })
}

/// Every pod of `pods` (its namespace and address) with an [`echo_peer_server`] on `port`,
/// and each reaching every other, seen with its own address.
pub fn assert_pods_talk(pods: &[(&Netns, &str)], port: u16) {
    let _servers: Vec<Bg> = pods
        .iter()
        .map(|(ns, _)| echo_peer_server(ns, port))
        .collect();
    for (a, a_ip) in pods {
        for (_, b_ip) in pods {
            if a_ip == b_ip {
                continue;
            }
            assert!(
                seen_from(a, a_ip, b_ip, port),
                "{a_ip} -> {b_ip}: the server must see the client's own pod IP"
            );
        }
    }
}

/// Connects from `ns` to `addr:port` (either family) and returns what the echo server said (the source
/// address it saw), or None.
pub fn connect(ns: &Netns, addr: &str, port: u16) -> Option<String> {
    let script = format!(
        "import socket\n\
         s=socket.create_connection(('{addr}',{port}),timeout=3)\n\
         print(s.recv(100).decode().strip())\n"
    );
    let out = ns.try_sh(&format!("python3 -c \"{script}\""));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
