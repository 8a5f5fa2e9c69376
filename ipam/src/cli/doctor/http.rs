//! One HTTP/1.1 GET with short timeouts, std only: the daemon's /readyz and kube-proxy's
//! /proxyMode are plain text on loopback, and a doctor must not hang on a stuck port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);
/// More than either endpoint ever answers; a stranger on the port cannot make it more.
const MAX_BODY: u64 = 64 * 1024;

/// (status, body), or why no answer came.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.take(MAX_BODY)
        .read_to_end(&mut raw)
        .map_err(|e| match e.kind() {
            // Connected but silent: a process that is stuck (or stopped), not one that is gone.
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("connected, but no answer within {}s", TIMEOUT.as_secs())
            }
            _ => e.to_string(),
        })?;
    parse(&String::from_utf8_lossy(&raw))
}

/// The status code and body of a response (`Connection: close`: the body is the rest).
fn parse(text: &str) -> Result<(u16, String), String> {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {:?}", head.lines().next()))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let ok = parse("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nnot ready");
        assert_eq!(ok, Ok((503, "not ready".to_string())));
        assert!(parse("garbage").is_err());
        assert!(parse("HTTP/1.1 x\r\n\r\n").is_err());
    }
}
