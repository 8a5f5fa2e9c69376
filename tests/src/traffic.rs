//! Traffic the benchmarks measure a path with: TCP throughput (iperf3, one stream or
//! several) and the rate of new TCP connections (a connect-and-close loop in this process).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::proc::Bg;

/// Gbit/s of one iperf3 run from `client` to `server_ip` (server in `server`).
pub fn iperf(client: &Netns, server: &Netns, server_ip: &str, secs: u32) -> f64 {
    iperf_streams(client, server, server_ip, secs, 1)
}

/// The same with `streams` parallel TCP streams (`iperf3 -P`), their sum.
pub fn iperf_streams(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    secs: u32,
    streams: u32,
) -> f64 {
    let _srv = Bg::spawn(server, "iperf3 -s -1");
    std::thread::sleep(Duration::from_millis(300));
    let out = client.sh(&format!("iperf3 -c {server_ip} -t {secs} -P {streams} -J"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

/// What a run of [`connect_rate`] counted.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRate {
    /// Connections made per second.
    pub per_second: f64,
    /// Connects that failed or timed out (a path that drops SYNs shows here).
    pub failed: u64,
}

/// New TCP connections per second from `client` to `server_ip:port` for `dur`: one
/// connection at a time, each closed as soon as the handshake is done. The close is an
/// RST (SO_LINGER 0) so that no TIME_WAIT state piles up and ephemeral ports never run
/// out: what is measured is the handshake's path (the first packets of a flow, the ones
/// a firewall looks at), not the port allocator.
pub fn connect_rate(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    port: u16,
    dur: Duration,
) -> ConnectRate {
    let listener = crate::inside::run(server, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap_or_else(|e| panic!("listen on port {port} in {}: {e}", server.name));
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        // The kernel completes handshakes on its own; accepting only drains the backlog.
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_micros(500)),
                }
            }
        })
    };
    let ip: IpAddr = server_ip.parse().expect("server address");
    let addr = SocketAddr::new(ip, port);
    let (made, failed) = crate::inside::run(client, move || {
        let (mut made, mut failed) = (0u64, 0u64);
        let end = Instant::now() + dur;
        while Instant::now() < end {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    reset_on_close(&s);
                    made += 1;
                }
                Err(_) => failed += 1,
            }
        }
        (made, failed)
    });
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    ConnectRate {
        per_second: made as f64 / dur.as_secs_f64(),
        failed,
    }
}

/// SO_LINGER with a zero timeout: close sends an RST and leaves no TIME_WAIT.
fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = crate::set_socket_option(s, libc::SO_LINGER, &linger);
}
