//! `cargo xtask bench failover`: fault → first request served by the
//! secondary, in the lab, with the real daemon and its default health
//! settings. Not a test: it prints tables.
//!
//! A client sends one UDP request per millisecond on one flow (series 1) or
//! opens one TCP connection per 10 ms (series 2) to the VIP; both servers
//! log every request's arrival on CLOCK_MONOTONIC (shared by all
//! namespaces). A fault is injected at a recorded instant; the failover time
//! is the first arrival at the secondary after it. Faults, interleaved run by
//! run: the primary's server process SIGKILLed, the primary's link set down
//! inside its namespace, and a silent drop (an nftables rule in the primary's
//! namespace dropping everything). Each run reports which signal the daemon
//! acted on (the cause of its failover event) and how many requests got no
//! answer. A last phase saturates both vCPUs for a while and counts false
//! failovers.
use std::{
    collections::{BTreeMap, HashMap},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

#[path = "bench_failover/peers.rs"]
mod peers;
use redirector::control::{
    client,
    proto::{Request, Response},
};
use redirector_tests::{
    lab::{Running, Server, lab_config_with},
    netns::{NetNs, in_ns},
};

/// Time between two TCP connections of the TCP series, µs (`--tcp-per-sec`).
static TCP_EVERY_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(10_000);

fn tcp_every() -> Duration {
    Duration::from_micros(TCP_EVERY_US.load(Ordering::Relaxed).max(1))
}

/// The TCP series' name, with its rate.
fn tcp_series_name() -> String {
    let every = tcp_every();
    if every >= Duration::from_millis(1) && every.subsec_micros().is_multiple_of(1000) {
        format!("TCP, 1 connection/{} ms", every.as_millis())
    } else {
        format!("TCP, {:.0} connections/s", 1.0 / every.as_secs_f64())
    }
}

fn monotonic_ns() -> u64 {
    redirector::datapath::monotonic_ns()
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Fault {
    Kill,
    LinkDown,
    SilentDrop,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "server SIGKILL",
            Fault::LinkDown => "primary link down",
            Fault::SilentDrop => "silent drop (nft)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Series {
    Udp,
    Tcp,
}

struct Sample {
    /// Fault → first request at the secondary, ms.
    ms: f64,
    lost: u64,
    signal: String,
    /// How long injecting the fault took (the fault is timed from its end).
    injection_ms: f64,
}

struct Args {
    runs: usize,
    busy_secs: u64,
    /// Seconds of the traffic-flood phase (0 skips it).
    flood_secs: u64,
    /// `[service.health] interval` of every service (default: the kind's).
    interval: Option<String>,
    /// More `[service.health]` keys for every service, `;`-separated
    /// (`timeout = "25ms"; fall = 3`).
    health: Option<String>,
    verbose: bool,
    /// Compare with the peers (HAProxy, nftables + prober) instead.
    peers: bool,
    /// Service counts for the probing-cost phase.
    scale: Vec<usize>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        runs: 100,
        busy_secs: 60,
        flood_secs: 60,
        interval: None,
        health: None,
        verbose: false,
        peers: false,
        scale: vec![1, 1024],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--runs" => a.runs = it.next().context("--runs N")?.parse()?,
            "--busy-secs" => a.busy_secs = it.next().context("--busy-secs N")?.parse()?,
            "--flood-secs" => a.flood_secs = it.next().context("--flood-secs N")?.parse()?,
            "--interval" => a.interval = Some(it.next().context("--interval DURATION (e.g. 100ms)")?),
            "--health" => a.health = Some(it.next().context("--health 'key = value; …'")?),
            "--verbose" => a.verbose = true,
            "--peers" => a.peers = true,
            "--tcp-per-sec" => {
                let rate: u64 = it.next().context("--tcp-per-sec N")?.parse()?;
                TCP_EVERY_US.store(1_000_000 / rate.clamp(1, 10_000), Ordering::Relaxed);
            }
            "--scale" => {
                a.scale = it
                    .next()
                    .context("--scale N,N,… (empty: skip)")?
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// The lab configuration with a short failback delay (so runs follow each
/// other quickly) and flap damping off (the benchmark fails the primary every
/// second on purpose); health settings are the defaults.
fn config(interval: Option<&str>, extra: Option<&str>) -> String {
    let mut keys: Vec<String> = interval
        .map(|i| format!("interval = \"{i}\""))
        .into_iter()
        .collect();
    keys.extend(
        extra
            .into_iter()
            .flat_map(|e| e.split(';').map(|k| k.trim().to_owned())),
    );
    let health = if keys.is_empty() {
        String::new()
    } else {
        format!("[service.health]\n{}\n", keys.join("\n"))
    };
    let mut c = lab_config_with(&format!(
        "{health}[service.failover]\nfailback_delay = \"200ms\"\nflap_hold = \"0s\""
    ));
    c.push_str(SINK);
    c.push_str("\n[control]\nmetrics = \"198.18.1.1:9630\"\n");
    c
}

/// The flood phase's target: a UDP service whose backends have nothing on
/// the port (their kernels drop the datagrams; ICMP errors are rate-limited),
/// probed by ping so its own probes stay healthy. One-way traffic: no
/// silence watch, as the docs advise.
const SINK: &str = r#"
[[service]]
name = "sink"
vip = "198.18.100.1"
port = 9000
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.3.2"
[service.health]
kind = "icmp"
silence = "off"
"#;

/// Waits until every service is active on its primary with both backends up.
fn settled(socket: &std::path::Path, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let st = redirector_tests::client::status_json(socket);
        let services = st["services"].as_array().cloned().unwrap_or_default();
        if services.iter().all(|s| s["active"] == "primary") && redirector_tests::client::all_up(&st) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("services did not settle on their primaries within {within:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Arrival lines of a server: `udp|tcp SEQ NS`.
fn drain(server: &Server, into: &mut Vec<(Series, u64, u64)>) {
    while let Ok(line) = server.lines.try_recv() {
        let mut w = line.split_whitespace();
        let series = match w.next() {
            Some("udp") => Series::Udp,
            Some("tcp") => Series::Tcp,
            _ => continue,
        };
        if let (Some(Ok(seq)), Some(Ok(ns))) = (w.next().map(str::parse), w.next().map(str::parse)) {
            into.push((series, seq, ns));
        }
    }
}

/// One client flow until `stop`: UDP `seq:N` each ms on one socket, or a TCP
/// connection per 10 ms. Returns (sent, answered).
/// A TCP connection from `src` (any port) to `to`, 300 ms to connect.
fn connect_from(src: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_millis(300))?;
    Ok(s.into())
}

/// Source address of run `k`: every run's flows are new to the gateway (a
/// reused port could meet a flow entry pinned by an earlier run's failover).
fn source(k: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 18, 4 + (k / 250) as u8, 1 + (k % 250) as u8)
}

/// Gives the client the run addresses (198.18.4.0/22) and the gateway a route to them.
fn add_sources(run: &Running, n: usize) -> Result<()> {
    let mut batch = String::new();
    for k in 0..n {
        batch.push_str(&format!("addr add {}/32 dev c0\n", source(k)));
    }
    let mut child = std::process::Command::new("ip")
        .args(["-n", &run.lab.client.name, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(batch.as_bytes())?;
    if !child.wait()?.success() {
        bail!("adding client addresses failed");
    }
    in_ns(
        &run.lab.gw.name,
        &["ip", "route", "add", "198.18.4.0/22", "via", "198.18.1.2"],
    );
    Ok(())
}

fn client(
    ns: &NetNs,
    series: Series,
    stop: Arc<AtomicBool>,
    first_seq: u64,
    src: std::net::Ipv4Addr,
) -> thread::JoinHandle<(u64, u64)> {
    client_for(ns, series, stop, first_seq, src, Duration::from_secs(10))
}

/// [`client`] for at most `max`.
fn client_for(
    ns: &NetNs,
    series: Series,
    stop: Arc<AtomicBool>,
    first_seq: u64,
    src: std::net::Ipv4Addr,
    max: Duration,
) -> thread::JoinHandle<(u64, u64)> {
    let vip = match series {
        Series::Udp => SocketAddr::from(([198, 18, 100, 1], 53)),
        Series::Tcp => SocketAddr::from(([198, 18, 100, 1], 80)),
    };
    client_to(ns, series, stop, first_seq, src, max, vip)
}

/// [`client_for`] to `vip` (another system's, in the peers comparison).
fn client_to(
    ns: &NetNs,
    series: Series,
    stop: Arc<AtomicBool>,
    first_seq: u64,
    src: std::net::Ipv4Addr,
    max: Duration,
    vip: SocketAddr,
) -> thread::JoinHandle<(u64, u64)> {
    let name = ns.name.clone();
    thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&name);
        let limit = Instant::now() + max;
        let (mut sent, mut answered) = (0u64, 0u64);
        match series {
            Series::Udp => {
                let Ok(sock) = UdpSocket::bind((src, 0)) else {
                    return (0, 0);
                };
                let _ = sock.set_nonblocking(true);
                let start = Instant::now();
                let mut buf = [0u8; 128];
                while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                    let seq = first_seq + sent;
                    if sock.send_to(format!("seq:{seq}").as_bytes(), vip).is_ok() {
                        sent += 1;
                    }
                    let next = start + Duration::from_millis(sent);
                    loop {
                        while let Ok((n, _)) = sock.recv_from(&mut buf) {
                            if n > 0 {
                                answered += 1;
                            }
                        }
                        let now = Instant::now();
                        if now >= next {
                            break;
                        }
                        thread::sleep((next - now).min(Duration::from_micros(200)));
                    }
                }
                // Late answers.
                let _ = sock.set_nonblocking(false);
                let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
                while answered < sent && sock.recv_from(&mut buf).is_ok() {
                    answered += 1;
                }
            }
            Series::Tcp => {
                // A new connection every 10 ms (`--tcp-per-sec`) whatever the earlier ones do
                // (a connection to a silent primary must not hold the next one back).
                let start = Instant::now();
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                    let seq = first_seq + sent;
                    sent += 1;
                    let ns = name.clone();
                    conns.push(thread::spawn(move || {
                        let _in = redirector_tests::netns::enter(&ns);
                        let Ok(mut c) = connect_from(src, vip) else {
                            return false;
                        };
                        let _ = c.set_read_timeout(Some(Duration::from_millis(300)));
                        let mut s = Vec::new();
                        c.write_all(format!("seq:{seq}").as_bytes()).is_ok()
                            && c.read_to_end(&mut s).is_ok()
                            && !s.is_empty()
                    }));
                    let next = start + tcp_every() * u32::try_from(sent).unwrap_or(u32::MAX);
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(d);
                    }
                }
                answered = conns
                    .into_iter()
                    .map(|c| u64::from(c.join().unwrap_or(false)))
                    .sum();
            }
        }
        (sent, answered)
    })
}

fn events(socket: &std::path::Path) -> Vec<redirector::control::proto::EventRecord> {
    let mut out = Vec::new();
    let _ = client::call(
        socket,
        Request::Events { follow: false },
        Some(Duration::from_secs(5)),
        |r| match r {
            Response::Event(e) => {
                out.push(e);
                true
            }
            _ => false,
        },
    );
    out
}

/// Waits until a fresh UDP flow is answered by `who`.
fn wait_serving(ns: &NetNs, who: &str, within: Duration) -> Result<()> {
    let _in = ns.enter();
    let vip: SocketAddr = "198.18.100.1:53".parse()?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        s.send_to(b"hello", vip)?;
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = s.recv_from(&mut buf)
            && buf[..n].starts_with(who.as_bytes())
        {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    bail!("the VIP is not served by {who} after {within:?}")
}

/// Sets `dev` down inside namespace `ns` with one ioctl (no process to start,
/// so the fault's instant is the syscall's).
fn link_down_now(ns: &NetNs, dev: &str) -> Result<()> {
    let _in = ns.enter();
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: an all-zero ifreq is valid; the name fits (IFNAMSIZ).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: valid fd and ifreq for SIOCGIFFLAGS / SIOCSIFFLAGS.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            -1
        } else {
            ifr.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    if r < 0 {
        bail!("{dev} down: {err}");
    }
    Ok(())
}

/// Injects the fault; returns the instant it is surely in effect (CLOCK_MONOTONIC ns).
fn inject(run: &mut Running, fault: Fault) -> Result<u64> {
    match fault {
        Fault::Kill => run.primary.kill(),
        Fault::LinkDown => link_down_now(&run.lab.primary, "p0")?,
        Fault::SilentDrop => {
            // One atomic nft transaction: the drop policy is in force when it returns.
            let mut child = std::process::Command::new("ip")
                .args(["netns", "exec", &run.lab.primary.name, "nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .context("nft stdin")?
                .write_all(b"table inet rdrbench {\n chain in {\n  type filter hook input priority 0; policy drop;\n }\n}\n")?;
            if !child.wait()?.success() {
                bail!("nft failed");
            }
        }
    }
    Ok(monotonic_ns())
}

fn repair(run: &mut Running, fault: Fault) {
    let p = run.lab.primary.name.clone();
    match fault {
        Fault::Kill => {
            run.primary = Server::start(&run.lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", true);
        }
        Fault::LinkDown => {
            in_ns(&p, &["ip", "link", "set", "p0", "up"]);
            // Setting a link down deleted the routes through it.
            in_ns(
                &p,
                &["ip", "route", "replace", "198.18.0.0/15", "via", "198.18.2.1"],
            );
            in_ns(
                &p,
                &[
                    "ip",
                    "-6",
                    "route",
                    "replace",
                    "2001:2::/48",
                    "via",
                    "2001:2:0:2::1",
                ],
            );
        }
        Fault::SilentDrop => in_ns(&p, &["nft", "delete", "table", "inet", "rdrbench"]),
    }
}

fn one_run(run: &mut Running, series: Series, fault: Fault, first_seq: u64, k: usize) -> Result<Sample> {
    wait_serving(&run.lab.client, "primary", Duration::from_secs(10))?;
    let mut arrivals = Vec::new();
    drain(&run.primary, &mut arrivals);
    drain(&run.secondary, &mut arrivals);
    arrivals.clear();
    let stop = Arc::new(AtomicBool::new(false));
    let c = client(&run.lab.client, series, stop.clone(), first_seq, source(k));
    thread::sleep(Duration::from_millis(60));
    let t_fault_unix = unix_ms();
    let t_before = monotonic_ns();
    let t_fault = inject(run, fault)?;
    let injection_ms = (t_fault - t_before) as f64 / 1e6;
    // Until the secondary served one request (bounded), plus a little.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut secondary_at = None;
    while Instant::now() < deadline && secondary_at.is_none() {
        thread::sleep(Duration::from_millis(5));
        let mut got = Vec::new();
        drain(&run.secondary, &mut got);
        secondary_at = got
            .iter()
            .filter(|(s, _, ns)| *s == series && *ns >= t_before)
            .map(|(_, _, ns)| *ns)
            .min();
    }
    thread::sleep(Duration::from_millis(40));
    stop.store(true, Ordering::Relaxed);
    let (sent, answered) = c.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    let evs = events(&run.leftovers.socket);
    let wanted = match series {
        Series::Udp => "dns4",
        Series::Tcp => "web4",
    };
    let signal = evs
        .iter()
        .find(|e| e.service == wanted && e.unix_ms + 1 >= t_fault_unix && e.from != e.to)
        .map_or_else(|| "-".to_owned(), |e| e.cause.clone());
    repair(run, fault);
    let Some(at) = secondary_at else {
        bail!("{}: no request reached the secondary within 3 s", fault.name());
    };
    Ok(Sample {
        ms: (at.max(t_fault) - t_fault) as f64 / 1e6,
        lost: sent.saturating_sub(answered),
        signal,
        injection_ms,
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU time not idle over a window, from /proc/stat (all CPUs).
fn busy_fraction(window: Duration) -> f64 {
    let read = || -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let line = s.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4)?;
        Some((v.iter().sum(), idle))
    };
    let (Some(a), b) = (read(), {
        thread::sleep(window);
        read()
    }) else {
        return f64::NAN;
    };
    let Some(b) = b else { return f64::NAN };
    let total = (b.0 - a.0) as f64;
    1.0 - (b.1 - a.1) as f64 / total
}

fn main() -> Result<()> {
    let a = args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark creates network namespaces and loads XDP programs: run it as root");
    }
    if a.peers {
        return peers::compare(a.runs, &config(a.interval.as_deref(), a.health.as_deref()));
    }
    let started = Instant::now();
    let mut run = Running::start_with("bfo", &config(a.interval.as_deref(), a.health.as_deref()), true);
    println!("lab up; {} runs per fault and series, faults interleaved", a.runs);
    let mut samples: BTreeMap<(Series, Fault), Vec<Sample>> = BTreeMap::new();
    let mut seq = 1u64;
    let mut k = 0usize;
    add_sources(&run, 2 * 3 * a.runs + 1)?;
    for series in [Series::Udp, Series::Tcp] {
        for i in 0..a.runs {
            for fault in [Fault::Kill, Fault::LinkDown, Fault::SilentDrop] {
                match one_run(&mut run, series, fault, seq, k) {
                    Ok(s) => {
                        if a.verbose {
                            eprintln!(
                                "{series:?} {}: {:.1} ms, {} lost, {}",
                                fault.name(),
                                s.ms,
                                s.lost,
                                s.signal
                            );
                        }
                        samples.entry((series, fault)).or_default().push(s);
                    }
                    Err(e) => eprintln!("run {i} {series:?} {}: {e:#}", fault.name()),
                }
                seq += 100_000;
                k += 1;
            }
            if (i + 1) % 10 == 0 {
                eprintln!(
                    "{series:?}: {} runs done ({:.0} s)",
                    i + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    println!();
    println!(
        "| series | fault | detected by | runs | min | median | p90 | p99 | max | requests lost (median / max) | injection (median) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((series, fault), v) in &samples {
        let mut ms: Vec<f64> = v.iter().map(|s| s.ms).collect();
        ms.sort_by(f64::total_cmp);
        let mut lost: Vec<u64> = v.iter().map(|s| s.lost).collect();
        lost.sort_unstable();
        let mut signals: HashMap<&str, usize> = HashMap::new();
        for s in v {
            *signals.entry(s.signal.as_str()).or_default() += 1;
        }
        let mut sig: Vec<_> = signals.into_iter().collect();
        sig.sort_by_key(|s| std::cmp::Reverse(s.1));
        let sig = sig
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut inj: Vec<f64> = v.iter().map(|s| s.injection_ms).collect();
        inj.sort_by(f64::total_cmp);
        let series = match series {
            Series::Udp => "UDP, 1 request/ms".to_owned(),
            Series::Tcp => tcp_series_name(),
        };
        println!(
            "| {series} | {} | {sig} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} / {} | {:.2} ms |",
            fault.name(),
            ms.len(),
            ms[0],
            percentile(&ms, 0.5),
            percentile(&ms, 0.9),
            percentile(&ms, 0.99),
            ms[ms.len() - 1],
            lost[lost.len() / 2],
            lost[lost.len() - 1],
            percentile(&inj, 0.5),
        );
    }
    // No false failover on a busy machine: a CPU hog per vCPU (and one more)
    // while the primary keeps serving.
    if a.busy_secs > 0 {
        wait_serving(&run.lab.client, "primary", Duration::from_secs(10))?;
        // Every service back on a healthy primary (a UDP backend is probed
        // once a second while down): a failback late from the last fault is
        // not this phase's.
        settled(&run.leftovers.socket, Duration::from_secs(10))?;
        let t_busy = unix_ms();
        let cpus = thread::available_parallelism().map_or(2, |n| n.get());
        let mut hogs = Vec::new();
        for _ in 0..=cpus {
            hogs.push(
                std::process::Command::new("sh")
                    .args([
                        "-c",
                        &format!("timeout {} sh -c 'while :; do :; done'", a.busy_secs),
                    ])
                    .spawn()?,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let c = client(&run.lab.client, Series::Udp, stop.clone(), seq, source(k));
        let busy = busy_fraction(Duration::from_secs(a.busy_secs.saturating_sub(1).max(1)));
        stop.store(true, Ordering::Relaxed);
        let (sent, answered) = c.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        for mut h in hogs {
            let _ = h.wait();
        }
        let transitions: Vec<_> = events(&run.leftovers.socket)
            .into_iter()
            .filter(|e| e.unix_ms >= t_busy && e.from != e.to)
            .collect();
        println!();
        println!(
            "busy machine: {} CPU hogs on {cpus} vCPUs for {} s, CPU busy {:.1} %; client sent {sent} requests, \
             {answered} answered; transitions: {}",
            cpus + 1,
            a.busy_secs,
            busy * 100.0,
            transitions.len()
        );
        for t in &transitions {
            println!(
                "  FALSE FAILOVER: {} {} → {}: {}",
                t.service, t.from, t.to, t.cause
            );
        }
    }
    if a.flood_secs > 0 {
        flood(&run, a.flood_secs, seq + 1_000_000, source(k), true)?;
        flood(&run, a.flood_secs, seq + 2_000_000, source(k), false)?;
    }
    let (_dp, _lab) = run.stop();
    if !a.scale.is_empty() {
        println!();
        println!(
            "| services | backends probed | effective interval | probes/s | daemon CPU (% of one vCPU) | kill → failover decided (median / max over services) | the one with traffic (dns4, 1 request/ms): kill → decided, cause |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---|");
        for &n in &a.scale {
            scale(n)?;
        }
    }
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Probe verdicts the gateway could not judge (`result="local"`: the prober
/// was late, or could not run) and the slowest probe bucket reached, from
/// the daemon's metrics.
fn probe_metrics(run: &Running) -> (f64, String) {
    let Ok(text) = redirector_tests::client::try_scrape(&run.lab.gw) else {
        return (f64::NAN, String::new());
    };
    let local = text
        .lines()
        .filter(|l| l.starts_with("redirector_probes_total{") && l.contains("result=\"local\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (local, text)
}

/// The number of probes slower than each histogram bound, summed over
/// backends: (bound in ms, count above it).
fn probes_slower_than(text: &str, bounds_ms: &[f64]) -> Vec<(f64, f64)> {
    let mut total = 0.0;
    let mut at_or_below = vec![0.0; bounds_ms.len()];
    for l in text
        .lines()
        .filter(|l| l.starts_with("redirector_probe_duration_seconds_"))
    {
        let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if l.starts_with("redirector_probe_duration_seconds_count") {
            total += v;
        } else if let Some(le) = l.split("le=\"").nth(1).and_then(|x| x.split('"').next())
            && let Ok(le) = le.parse::<f64>()
        {
            for (i, b) in bounds_ms.iter().enumerate() {
                if (le * 1e3 - b).abs() < 1e-9 {
                    at_or_below[i] += v;
                }
            }
        }
    }
    bounds_ms
        .iter()
        .zip(at_or_below)
        .map(|(b, n)| (*b, total - n))
        .collect()
}

/// Pins every thread of process `pid` (0: this one) to `cpus`.
fn pin(pid: u32, cpus: &[usize]) {
    let dir = if pid == 0 {
        "/proc/self/task".to_owned()
    } else {
        format!("/proc/{pid}/task")
    };
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return;
    };
    for t in tasks.filter_map(Result::ok) {
        let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: cpu_set_t is plain data, filled by CPU_SET; sched_setaffinity reads it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// A gateway saturated by traffic: two senders per vCPU in the client
/// namespace send small datagrams to the sink service as fast as they can
/// (through the XDP program), while one client sends a request per ms to
/// dns4. Counts false transitions and verdicts the prober could not judge.
///
/// On one VM the backends share the gateway's CPUs, so a saturated machine
/// starves the servers too: their answers are late for real. With
/// `gateway_only`, the senders and this process (daemon, prober) are pinned
/// to CPU 0 and the servers to the others: the gateway is saturated, the
/// backends are not.
fn flood(run: &Running, secs: u64, seq: u64, src: std::net::Ipv4Addr, gateway_only: bool) -> Result<()> {
    wait_serving(&run.lab.client, "primary", Duration::from_secs(10))?;
    let cpus = thread::available_parallelism().map_or(2, |n| n.get());
    let all: Vec<usize> = (0..cpus).collect();
    let gateway_only = gateway_only && cpus >= 2;
    if gateway_only {
        pin(0, &[0]);
        for server in [&run.primary, &run.secondary] {
            pin(server.pid(), &all[1..]);
        }
    }
    let (local0, text0) = probe_metrics(run);
    let t0 = unix_ms();
    let stop = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(secs);
    let senders: Vec<_> = (0..2 * cpus)
        .map(|_| {
            let name = run.lab.client.name.clone();
            thread::spawn(move || -> u64 {
                let _in = redirector_tests::netns::enter(&name);
                let Ok(sock) = UdpSocket::bind("198.18.1.2:0") else {
                    return 0;
                };
                if sock.connect("198.18.100.1:9000").is_err() {
                    return 0;
                }
                let mut sent = 0u64;
                // Bounded in time and count.
                while sent < 1_000_000_000 {
                    for _ in 0..1000 {
                        if sock.send(b"flood").is_ok() {
                            sent += 1;
                        }
                    }
                    if Instant::now() >= until {
                        break;
                    }
                }
                sent
            })
        })
        .collect();
    let c = client_for(
        &run.lab.client,
        Series::Udp,
        stop.clone(),
        seq,
        src,
        Duration::from_secs(secs),
    );
    let busy = busy_fraction(Duration::from_secs(secs.saturating_sub(1).max(1)));
    let flooded: u64 = senders.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    stop.store(true, Ordering::Relaxed);
    let (sent, answered) = c.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    if gateway_only {
        pin(0, &all);
        for server in [&run.primary, &run.secondary] {
            pin(server.pid(), &all);
        }
    }
    let (local1, text1) = probe_metrics(run);
    let transitions: Vec<_> = events(&run.leftovers.socket)
        .into_iter()
        .filter(|e| e.unix_ms >= t0 && e.from != e.to)
        .collect();
    let bounds = [5.0, 10.0, 25.0];
    let before = probes_slower_than(&text0, &bounds);
    let after = probes_slower_than(&text1, &bounds);
    let slower = bounds
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(b, ((_, x), (_, y)))| format!("> {b} ms: {}", y - x))
        .collect::<Vec<_>>()
        .join(", ");
    println!();
    println!(
        "saturated by traffic ({}): {} senders for {secs} s, {:.0} datagrams/s through the gateway, CPU busy {:.1} %; \
         dns4 client sent {sent}, {answered} answered; probes slower than ({slower}); verdicts the prober could \
         not judge (late or local error): {}; transitions: {}",
        if gateway_only {
            "gateway only: senders, daemon and prober on CPU 0, servers on the others"
        } else {
            "the whole machine, servers too"
        },
        2 * cpus,
        flooded as f64 / secs as f64,
        busy * 100.0,
        local1 - local0,
        transitions.len()
    );
    for t in &transitions {
        println!(
            "  FALSE TRANSITION: {} {} → {}: {}",
            t.service, t.from, t.to, t.cause
        );
    }
    Ok(())
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `n` DSR services on the lab's two backends (TCP probes of their port 80)
/// with the default health settings: the probing cost at that scale, and how
/// long after the primary's server is killed each service decides. One more
/// service, NAT UDP `dns4`, carries a client's request every ms: its
/// failure shows in the traffic whatever the stretched probe interval.
fn scale(n: usize) -> Result<()> {
    let mut config = String::from(
        "[gateway]\ninterfaces = [\"g-c\", \"g-p\", \"g-s\"]\nbackend_interfaces = [\"g-p\", \"g-s\"]\n\
         xdp_mode = \"driver\"\nmax_services = 2048\n\
         [[service]]\nname = \"dns4\"\nvip = \"198.18.100.1\"\nport = 53\nprotocol = \"udp\"\n\
         primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n",
    );
    for i in 0..n {
        config.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"198.18.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n\
             primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n",
            100 + i / 250,
            1 + i % 250
        ));
    }
    let mut run = Running::start_with(&format!("sc{n}"), &config, false);
    // Let the prober settle, then measure its cost over 10 s.
    thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (cpu_time(), Instant::now());
    thread::sleep(Duration::from_secs(10));
    let cpu = (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let mut interval = None;
    let _ = client::call(
        &run.leftovers.socket,
        Request::Status,
        Some(Duration::from_secs(10)),
        |r| {
            if let Response::Status(st) = r {
                interval = st.services.first().and_then(|s| s.backends[0].probe_interval_ms);
            }
            false
        },
    );
    let interval = interval.unwrap_or(f64::NAN);
    let stop = Arc::new(AtomicBool::new(false));
    let resolver = {
        let (stop, ns) = (stop.clone(), run.lab.client.name.clone());
        thread::spawn(move || {
            let _in = redirector_tests::netns::enter(&ns);
            let until = Instant::now() + Duration::from_secs(60);
            let mut open = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                // A new source port per request, as resolvers do.
                if let Ok(sock) = UdpSocket::bind("198.18.1.2:0") {
                    let _ = sock.send_to(b"seq:0", "198.18.100.1:53");
                    open.push_back(sock);
                }
                if open.len() > 50 {
                    open.pop_front();
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    // Followed live: the event log keeps the last 1024 transitions, fewer
    // than this kill makes.
    let watcher = {
        let socket = run.leftovers.socket.clone();
        thread::spawn(move || {
            let mut found = None;
            let _ = client::call(
                &socket,
                Request::Events { follow: true },
                Some(Duration::from_secs(10)),
                |r| match r {
                    Response::Event(e) if e.service == "dns4" && e.from != e.to => {
                        found = Some(e);
                        false
                    }
                    _ => true,
                },
            );
            found
        })
    };
    thread::sleep(Duration::from_millis(100));
    let kill_unix = unix_ms();
    run.primary.kill();
    thread::sleep(Duration::from_millis(500 + (interval * 3.0) as u64));
    stop.store(true, Ordering::Relaxed);
    let _ = resolver.join();
    let all = events(&run.leftovers.socket);
    let traffic = watcher
        .join()
        .ok()
        .flatten()
        .filter(|e| e.unix_ms >= kill_unix)
        .map_or("none".to_owned(), |e| {
            format!(
                "{} ms (detection {:.1} ms), {}",
                e.unix_ms - kill_unix,
                e.detection_ms.unwrap_or(f64::NAN),
                e.cause
            )
        });
    let mut decided: Vec<f64> = all
        .into_iter()
        .filter(|e| e.service != "dns4" && e.unix_ms >= kill_unix && e.from != e.to)
        .map(|e| (e.unix_ms - kill_unix) as f64)
        .collect();
    decided.sort_by(f64::total_cmp);
    let backends = 2 * (n + 1);
    println!(
        "| {n} + 1 | {backends} | {interval:.1} ms | {:.0} | {:.1} | {} of {n} failed over: {:.0} / {:.0} ms | {traffic} |",
        backends as f64 * 1000.0 / interval,
        cpu * 100.0,
        decided.len(),
        percentile(&decided, 0.5),
        decided.last().copied().unwrap_or(f64::NAN),
    );
    let _ = run.stop();
    Ok(())
}
