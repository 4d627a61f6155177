//! A client for neuwerk's management listener, which lives on loopback
//! inside the firewall namespace: requests run on a thread in that
//! namespace. Plain HTTP/1.1 over a socket, so the suite tests the server,
//! not a client library's view of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::neuwerk::neuwerk_bin;

/// Status code and body of a response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

/// Talks to `management.listen` from inside the firewall namespace.
pub struct Mgmt<'a> {
    ns: &'a Netns,
    addr: SocketAddr,
    token: Option<String>,
}

impl<'a> Mgmt<'a> {
    /// A client for `addr` in `ns`, sending `token` as a bearer token if set.
    pub fn new(ns: &'a Netns, addr: SocketAddr, token: Option<&str>) -> Mgmt<'a> {
        Mgmt {
            ns,
            addr,
            token: token.map(str::to_string),
        }
    }

    /// The same client with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Mgmt<'a> {
        Mgmt::new(self.ns, self.addr, token)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Response> {
        self.request("GET", path)
    }

    /// `POST path` with an empty body.
    pub fn post(&self, path: &str) -> Result<Response> {
        self.request("POST", path)
    }

    fn request(&self, method: &str, path: &str) -> Result<Response> {
        let (addr, token) = (self.addr, self.token.clone());
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{}\r\n",
            token
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default()
        );
        let raw = self.ns.run(move || -> Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .with_context(|| format!("connect {addr}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(req.as_bytes())?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        })?;
        parse_response(&raw)
    }

    /// The sum of every sample of `family` whose labels include all of
    /// `labels` (`key="value"` pairs), from `/metrics`.
    pub fn metric(&self, family: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let r = self.get("/metrics")?;
        if r.status != 200 {
            bail!("/metrics answered {}: {}", r.status, r.body);
        }
        Ok(sum_samples(&r.body, family, labels))
    }
}

/// The sum of the samples of `family` (exact name, or with `_total`)
/// matching `labels`, in Prometheus/OpenMetrics text.
pub fn sum_samples(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, rest) = match name_labels.split_once('{') {
                Some((n, r)) => (n, r),
                None => (name_labels, ""),
            };
            if name != family && name != format!("{family}_total") {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line: {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Response { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A running `neuwerk monitor` (or any CLI command) whose output lines are
/// read as they come.
pub struct CliStream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl CliStream {
    /// Starts `neuwerk ARGS` in `ns`.
    pub fn start(ns: &Netns, args: &[&str]) -> Result<CliStream> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(neuwerk_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn neuwerk CLI")?;
        let stdout: ChildStdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(CliStream { child, lines })
    }

    /// The next line containing every one of `needles`, within `limit`.
    pub fn wait_line(&self, needles: &[&str], limit: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) if needles.iter().all(|n| l.contains(n)) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Drop for CliStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `neuwerk ARGS` in `ns` to completion.
pub fn cli(ns: &Netns, args: &[&str]) -> Result<std::process::Output> {
    Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(neuwerk_bin())
        .args(args)
        .output()
        .context("run neuwerk CLI")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let text = "# TYPE neuwerk_packets counter\n\
            neuwerk_packets_total{network=\"a\",protocol=\"tcp\",verdict=\"dropped\"} 3\n\
            neuwerk_packets_total{network=\"a\",protocol=\"udp\",verdict=\"dropped\"} 4\n\
            neuwerk_packets_total{network=\"a\",protocol=\"udp\",verdict=\"allowed\"} 5\n\
            neuwerk_policy_generation 2\n";
        assert_eq!(
            sum_samples(text, "neuwerk_packets", &[("verdict", "dropped")]),
            7.0
        );
        assert_eq!(sum_samples(text, "neuwerk_packets", &[]), 12.0);
        assert_eq!(sum_samples(text, "neuwerk_policy_generation", &[]), 2.0);
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r =
            parse_response(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno").unwrap();
        assert_eq!((r.status, r.body.as_str()), (401, "no"));
        let r = parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, "abcde");
    }
}
