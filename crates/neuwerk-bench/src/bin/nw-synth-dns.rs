//! nw-synth-dns: a synthetic authoritative DNS server for benchmarks.
//!
//! Any name under `--zone` answers A with 198.18.0.0 + the digits of its
//! first label (wrapping inside 198.18.0.0/15), TTL `--ttl`; names outside
//! the zone get NXDOMAIN. UDP is served by `--threads` blocking threads,
//! each with its own SO_REUSEPORT socket; TCP by a tokio runtime with one
//! SO_REUSEPORT listener per thread. Every query received is counted; the
//! counts go to `--stats-file` (JSON, rewritten every 100 ms) and, on
//! SIGTERM or SIGINT, to stdout as one JSON line.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use neuwerk_bench::set_reuse_port;
use neuwerk_bench::synth::{answer, Kind, Zone};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(about = "Synthetic authoritative DNS server for benchmarks")]
struct Args {
    /// Address to serve on (UDP and TCP); repeatable.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: Vec<SocketAddr>,
    /// The zone: names under it get an A record, others NXDOMAIN.
    #[arg(long, default_value = "bench.test")]
    zone: String,
    /// TTL of the A records.
    #[arg(long, default_value_t = 60)]
    ttl: u32,
    /// UDP threads (one SO_REUSEPORT socket each) and TCP listeners per address.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where to write the counters (JSON), every 100 ms and at exit.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Serve UDP only.
    #[arg(long)]
    no_tcp: bool,
}

/// Counters of one thread, on a cache line of its own.
#[derive(Default)]
#[repr(align(64))]
struct Counts {
    udp: AtomicU64,
    tcp: AtomicU64,
    slow: AtomicU64,
}

struct Stats {
    per_thread: Vec<Counts>,
    tcp: Counts,
}

impl Stats {
    fn json(&self) -> String {
        let sum = |f: fn(&Counts) -> &AtomicU64| -> u64 {
            self.per_thread
                .iter()
                .chain(std::iter::once(&self.tcp))
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum()
        };
        let (udp, tcp, slow) = (sum(|c| &c.udp), sum(|c| &c.tcp), sum(|c| &c.slow));
        format!(
            "{{\"queries\":{},\"udp\":{udp},\"tcp\":{tcp},\"slow\":{slow}}}",
            udp + tcp
        )
    }

    fn write(&self, path: &PathBuf) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.json() + "\n")?;
        std::fs::rename(&tmp, path)
    }
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    set_reuse_port(&s)?;
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&addr.into())
        .with_context(|| format!("bind udp {addr}"))?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    set_reuse_port(&s)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("bind tcp {addr}"))?;
    s.listen(1024)?;
    Ok(s.into())
}

fn serve_udp(sock: UdpSocket, zone: Zone, counts: &Counts) {
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(512);
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("nw-synth-dns: udp recv: {e}");
                continue;
            }
        };
        counts.udp.fetch_add(1, Ordering::Relaxed);
        match answer(&zone, &buf[..n], &mut out) {
            Kind::Ignored => continue,
            Kind::Slow => {
                counts.slow.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Fast => {}
        }
        // A full send buffer drops the reply, as a busy server would.
        let _ = sock.send_to(&out, peer);
    }
}

async fn serve_tcp_conn(mut s: TcpStream, zone: Arc<Zone>, stats: Arc<Stats>) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut out = Vec::with_capacity(512);
    let mut framed = Vec::with_capacity(514);
    loop {
        let len = match s.read_u16().await {
            Ok(l) => l as usize,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut q = vec![0u8; len];
        s.read_exact(&mut q).await?;
        stats.tcp.tcp.fetch_add(1, Ordering::Relaxed);
        if answer(&zone, &q, &mut out) == Kind::Ignored {
            continue;
        }
        framed.clear();
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        s.write_all(&framed).await?;
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let zone = Zone::new(&args.zone, args.ttl);
    let threads = args.threads.max(1);
    let stats = Arc::new(Stats {
        per_thread: (0..threads * args.listen.len())
            .map(|_| Counts::default())
            .collect(),
        tcp: Counts::default(),
    });

    // Bind everything before reporting ready, so a bind failure is fatal.
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for &addr in &args.listen {
        for _ in 0..threads {
            udp.push(udp_socket(addr)?);
            if !args.no_tcp {
                tcp.push(tcp_listener(addr)?);
            }
        }
    }
    for (i, sock) in udp.into_iter().enumerate() {
        let zone = zone.clone();
        let stats = stats.clone();
        std::thread::Builder::new()
            .name(format!("udp{i}"))
            .spawn(move || serve_udp(sock, zone, &stats.per_thread[i]))?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let zone = Arc::new(zone);
        for l in tcp {
            let l = TcpListener::from_std(l)?;
            let (zone, stats) = (zone.clone(), stats.clone());
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            tokio::spawn(serve_tcp_conn(s, zone.clone(), stats.clone()));
                        }
                        Err(e) => {
                            eprintln!("nw-synth-dns: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
        eprintln!(
            "nw-synth-dns: serving {} on {:?} ({} udp threads{}), ttl {}",
            args.zone,
            args.listen,
            threads * args.listen.len(),
            if args.no_tcp { ", no tcp" } else { ", tcp" },
            args.ttl
        );
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => {
                    if let Some(p) = &args.stats_file {
                        if let Err(e) = stats.write(p) {
                            eprintln!("nw-synth-dns: stats file {}: {e}", p.display());
                        }
                    }
                }
            }
        }
        if let Some(p) = &args.stats_file {
            let _ = stats.write(p);
        }
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{}", stats.json())?;
        stdout.flush()?;
        // The UDP threads block in recv: leave without joining them.
        std::process::exit(0)
    })
}
