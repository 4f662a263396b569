//! `cargo xtask demo`: the product's story in the built-in lab. Servers that
//! answer with their name; a client sending one request per millisecond to
//! the VIP; the primary's server killed → failover; the primary back →
//! failback per policy; a manual flip through the real CLI; `status`; a
//! summary. Cleans up after itself, also on Ctrl-C. With `--case
//! database|web|dns`, a recipe's story instead ([`redirector_tests::cases`]).
use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use redirector_tests::lab::{LAB_CONFIG, Running, Server, tcp_request};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

fn monotonic_ns() -> u64 {
    redirector::datapath::monotonic_ns()
}

/// One UDP flow, `seq:N` every ms, recording who answered each request and
/// when each arrived at a server (the servers log arrivals).
struct Client {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, BTreeMap<u64, String>)>,
}

impl Client {
    fn start(ns: &str) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let ns = ns.to_owned();
        let handle = thread::spawn(move || {
            let _in = redirector_tests::netns::enter(&ns);
            let mut answers = BTreeMap::new();
            let vip: SocketAddr = "198.18.100.1:53".parse().unwrap_or_else(|_| unreachable!());
            let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
                return (0, answers);
            };
            let _ = sock.set_nonblocking(true);
            let (mut sent, start) = (0u64, Instant::now());
            let mut buf = [0u8; 128];
            let limit = start + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && Instant::now() < limit {
                sent += 1;
                let _ = sock.send_to(format!("seq:{sent}").as_bytes(), vip);
                let next = start + Duration::from_millis(sent);
                while Instant::now() < next {
                    while let Ok((n, _)) = sock.recv_from(&mut buf) {
                        let a = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if let Some((who, seq)) = a.split_once(" seq:")
                            && let Ok(seq) = seq.parse()
                        {
                            answers.insert(seq, who.to_owned());
                        }
                    }
                    thread::sleep(Duration::from_micros(200));
                }
            }
            (sent, answers)
        });
        Client { stop, handle }
    }

    fn stop(self) -> (u64, BTreeMap<u64, String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// First arrival at `server` at or after `t` (ns), from its log lines.
fn first_arrival(server: &Server, t: u64, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        while let Ok(line) = server.lines.recv_timeout(Duration::from_millis(10)) {
            let mut w = line.split_whitespace();
            if w.next() == Some("udp")
                && let (Some(_), Some(Ok(ns))) = (w.next(), w.next().map(str::parse::<u64>))
                && ns >= t
            {
                return Some(ns);
            }
        }
    }
    None
}

fn cli(bin: &Path, socket: &Path, args: &[&str]) -> Result<String> {
    println!("  $ redirector {}", args.join(" "));
    let out = Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("redirector {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn redirector_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("no parent")?.join("redirector");
    if !bin.exists() {
        bail!(
            "{} not built: run the demo through `cargo xtask demo`",
            bin.display()
        );
    }
    Ok(bin)
}

fn drain_lines(s: &Server) {
    while s.lines.try_recv().is_ok() {}
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads XDP programs: run it as root");
    }
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let bin = redirector_binary()?;
    // `--case database|web|dns`: a recipe's story with the real servers.
    let args: Vec<String> = std::env::args().collect();
    if let Some(case) = args
        .iter()
        .position(|a| a == "--case")
        .and_then(|i| args.get(i + 1))
    {
        match case.as_str() {
            "database" => redirector_tests::cases::database(),
            "web" => redirector_tests::cases::website(),
            "dns" => redirector_tests::cases::resolver(),
            other => bail!("unknown case {other:?}: database, web or dns"),
        }
        return Ok(());
    }
    let t0 = Instant::now();
    println!("== 1. the lab: client ─ gateway (redirector, native XDP) ─ primary / secondary");
    let mut run = Running::start_with("demo", LAB_CONFIG, true);
    let socket = run.leftovers.socket.clone();
    let result = story(&mut run, &bin, &socket, t0);
    let _ = run.stop();
    println!("\nlab removed ({:.0} s in all).", t0.elapsed().as_secs_f64());
    result
}

fn story(run: &mut Running, bin: &Path, socket: &Path, t0: Instant) -> Result<()> {
    let mut summary: Vec<(String, String)> = Vec::new();
    check_interrupt()?;
    {
        let _in = run.lab.client.enter();
        let who = tcp_request("198.18.100.1:80".parse()?);
        println!("  TCP 198.18.100.1:80 answered by {who}");
        let who6 = tcp_request("[2001:2::100]:80".parse()?);
        println!("  TCP [2001:2::100]:80 answered by {who6}");
    }
    println!("\n== 2. traffic: one UDP request per ms to 198.18.100.1:53 (all answered by the primary)");
    let client = Client::start(&run.lab.client.name);
    thread::sleep(Duration::from_millis(500));
    check_interrupt()?;

    println!("\n== 3. the primary's server process is SIGKILLed");
    drain_lines(&run.secondary);
    let t_kill = monotonic_ns();
    run.primary.kill();
    let served = first_arrival(&run.secondary, t_kill, Duration::from_secs(5))
        .context("no request reached the secondary within 5 s")?;
    thread::sleep(Duration::from_millis(300));
    let ev = cli(bin, socket, &["events"])?;
    let failover = ev
        .lines()
        .find(|l| l.contains("dns4: primary → secondary"))
        .unwrap_or("-")
        .to_owned();
    println!("  {failover}");
    let first_ms = (served - t_kill) as f64 / 1e6;
    println!("  first request served by the secondary {first_ms:.1} ms after the kill");
    summary.push((
        "server killed → first request at the secondary".into(),
        format!("{first_ms:.1} ms"),
    ));
    check_interrupt()?;

    println!("\n== 4. the primary comes back: failback after failback_delay (1 s) of health");
    run.primary = Server::start(&run.lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", true);
    thread::sleep(Duration::from_millis(1800));
    let ev = cli(bin, socket, &["events"])?;
    if let Some(l) = ev.lines().rev().find(|l| l.contains("dns4: secondary → primary")) {
        println!("  {l}");
    }
    let (sent, answers) = client.stop();
    let lost = sent - answers.len() as u64;
    let by = |name: &str| answers.values().filter(|w| w.as_str() == name).count();
    println!(
        "  the UDP flow: {sent} requests, {} answered by the primary, {} by the secondary, {lost} lost",
        by("primary"),
        by("secondary")
    );
    println!("  (the flow that moved to the secondary stays there; new flows go to the primary)");
    summary.push(("requests lost in the failover".into(), lost.to_string()));
    {
        let _in = run.lab.client.enter();
        let who = tcp_request("198.18.100.1:80".parse()?);
        println!("  a new TCP connection is answered by the {who}");
    }
    check_interrupt()?;

    println!("\n== 5. an operator pins dns4 to the secondary for 2 s, with a reason");
    cli(
        bin,
        socket,
        &[
            "flip",
            "dns4",
            "secondary",
            "--for",
            "2s",
            "--reason",
            "demo: patching the primary",
        ],
    )?;
    {
        let _in = run.lab.client.enter();
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.send_to(b"hello", "198.18.100.1:53")?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf)?;
        println!(
            "  a new flow is answered by the {}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    println!("\n== 6. status");
    for l in cli(bin, socket, &["status"])?.lines() {
        println!("  {l}");
    }
    thread::sleep(Duration::from_millis(2200));
    let ev = cli(bin, socket, &["events"])?;
    if let Some(l) = ev
        .lines()
        .rev()
        .find(|l| l.contains("dns4") && l.contains("expired"))
    {
        println!("  {l}");
    }
    check_interrupt()?;

    println!("\n== summary");
    summary.push(("demo time".into(), format!("{:.0} s", t0.elapsed().as_secs_f64())));
    for (k, v) in &summary {
        println!("  {k:<48} {v}");
    }
    Ok(())
}
