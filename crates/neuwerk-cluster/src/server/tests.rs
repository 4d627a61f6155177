//! A real nats-server (the one `make deps` installs), on loopback.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

fn binary() -> PathBuf {
    find_binary().expect("no nats-server on PATH or in /usr/local/bin: run `make deps`")
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn conf(dir: &Path, name: &str) -> ServerConf {
    ServerConf {
        name: name.into(),
        address: "127.0.0.1".parse().unwrap(),
        // Clustered JetStream needs a route; nothing answers on this one,
        // which the server keeps retrying.
        peers: vec!["127.0.0.2".parse().unwrap()],
        secret: "a-secret-of-twenty-chars".into(),
        store_dir: dir.join("js"),
        client_port: free_port(),
        route_port: free_port(),
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("nw-nats-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The INFO line a NATS server greets a client with, once it listens.
fn info(addr: SocketAddr) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut line = String::new();
            if BufReader::new(s).read_line(&mut line).is_ok() {
                if let Some(json) = line.strip_prefix("INFO ") {
                    return serde_json::from_str(json.trim()).unwrap();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no NATS server answered at {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks the pid.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_server_listens_on_the_address_given_and_requires_the_secret() {
    let dir = TempDir::new("listen");
    let c = conf(&dir.0, "t0");
    let server = NatsServer::start(&binary(), &c, &dir.0).unwrap();
    let info = info(c.client_addr());
    assert_eq!(info["server_name"], "t0", "{info}");
    assert_eq!(info["auth_required"], true, "{info}");
    assert_eq!(info["jetstream"], true, "{info}");
    let mode = std::fs::metadata(dir.0.join("nats-server.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the file with the secret is root's only"
    );
    drop(server);
}

#[test]
fn a_server_that_dies_is_restarted_and_a_stopped_one_is_gone() {
    let dir = TempDir::new("restart");
    let c = conf(&dir.0, "t1");
    let server = NatsServer::start(&binary(), &c, &dir.0).unwrap();
    info(c.client_addr());
    let first = server.pid().unwrap();
    // SAFETY: the pid is the supervised child's.
    unsafe { libc::kill(first, libc::SIGKILL) };
    wait_until("a second server runs", || {
        server.starts() == 2 && server.pid().is_some_and(|p| p != first)
    });
    info(c.client_addr());
    let second = server.pid().unwrap();
    drop(server);
    assert!(!alive(second), "the server outlived its supervisor");
}
