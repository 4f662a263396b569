//! `soak`: the lab under random faults every few seconds — a backend's
//! server killed, its link down, its packets silently dropped, a flip, a
//! drain, a reload, a daemon restart, a daemon SIGKILL — against steady client
//! traffic (one UDP request per ms to dns4, 50 TCP connections per second to
//! web4), with the invariants checked over the whole run:
//! - no request is lost outside a fault that takes a backend away, and within
//!   one only while the failure is being detected (the first 500 ms);
//! - operator actions, reloads and daemon restarts or kills lose nothing;
//! - the data plane's counters add up with what the client saw;
//! - the daemon's memory, open fds and flow entries stay flat (reported as
//!   a slope per minute).
//!
//! Usage: `soak [--minutes M | --seconds S] [--seed N]`; exits non-zero on a
//! violated invariant. Faults repeat on purpose, so flap damping is off.
#![expect(clippy::unwrap_used, reason = "a lab tool: a failed setup is a failed run")]

use std::{
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use redirector_tests::{
    client::{WEB4, connect_in, scrape, wait_for},
    daemon::{Setup, cli},
    lab::{Server, lab_config_with},
    packets::Rng,
};

/// How long after a fault begins its requests may be lost (detection: a
/// kill or link loss within milliseconds, a silent drop by timeouts).
const DETECTION: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ServerKill { primary: bool },
    LinkDown,
    SilentDrop,
    Flip,
    Drain,
    Reload,
    Restart,
    Kill,
}

impl Fault {
    const ALL: [Fault; 9] = [
        Fault::ServerKill { primary: true },
        Fault::ServerKill { primary: false },
        Fault::LinkDown,
        Fault::SilentDrop,
        Fault::Flip,
        Fault::Drain,
        Fault::Reload,
        Fault::Restart,
        Fault::Kill,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::ServerKill { primary: true } => "primary server killed",
            Fault::ServerKill { primary: false } => "secondary server killed",
            Fault::LinkDown => "primary link down",
            Fault::SilentDrop => "primary silent drop",
            Fault::Flip => "flip",
            Fault::Drain => "drain",
            Fault::Reload => "reload",
            Fault::Restart => "daemon restart",
            Fault::Kill => "daemon SIGKILL",
        }
    }

    /// Takes a backend away: its requests may be lost while that is detected.
    fn takes_a_backend(self) -> bool {
        matches!(
            self,
            Fault::ServerKill { .. } | Fault::LinkDown | Fault::SilentDrop
        )
    }
}

/// One injected fault: when it began and ended (ms since the run began).
struct Window {
    fault: Fault,
    start: u64,
    end: u64,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut seconds, mut seed) = (60u64, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().context("a value after the flag");
        match a.as_str() {
            "--minutes" => seconds = value()?.parse::<u64>()? * 60,
            "--seconds" => seconds = value()?.parse()?,
            "--seed" => seed = Some(value()?.parse()?),
            other => bail!("unknown argument {other}; usage: soak [--minutes M | --seconds S] [--seed N]"),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1)
    });
    if !redirector_tests::require_root("soak") {
        bail!("the soak builds namespaces and loads XDP programs: run it as root");
    }
    println!("soak: {seconds} s, seed {seed} (replay: --seconds {seconds} --seed {seed})");
    let mut rng = Rng(seed);
    let config = lab_config_with("[service.failover]\nflap_hold = \"0s\"");
    let mut s = Setup::with_config("soak", &config);
    let mut daemon = Some(s.daemon());
    wait_for(&s.lab.client, "primary");

    let t0 = Instant::now();
    let ms = move || u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let stop = Arc::new(AtomicBool::new(false));
    let udp = udp_flow(&s.lab.client.name, stop.clone(), t0);
    let tcp_failures: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let tcp = {
        let (stop, ns, failures) = (stop.clone(), s.lab.client.name.clone(), tcp_failures.clone());
        thread::spawn(move || {
            let mut made = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = u64::try_from(t0.elapsed().as_millis()).unwrap_or(0);
                made += 1;
                match connect_in(&ns, 0, WEB4) {
                    Ok(w) if w == "primary" || w == "secondary" => {}
                    Ok(w) => failures.lock().unwrap().push((at, format!("answer {w:?}"))),
                    Err(e) => failures.lock().unwrap().push((at, e)),
                }
                thread::sleep(Duration::from_millis(20));
            }
            made
        })
    };
    // Pre-started injectors: an exec costs ~4 ms, which would be counted.
    let mut ip = Injector::start(&["ip", "-n", &s.lab.gw.name, "-force", "-batch", "-"]);
    let mut nft = Injector::start(&["ip", "netns", "exec", &s.lab.primary.name, "nft", "-i"]);
    nft.send("add table inet soak\nadd chain inet soak in { type filter hook input priority 0; }\n");

    let mut windows = Vec::new();
    let mut samples: Vec<(f64, f64, f64, f64)> = Vec::new();
    let deadline = t0 + Duration::from_secs(seconds);
    while Instant::now() + Duration::from_secs(5) < deadline {
        thread::sleep(Duration::from_millis(1500 + rng.next_u64() % 2000));
        if let Some(d) = &daemon {
            samples.push(sample(&s, d.pid(), t0));
        }
        let fault = Fault::ALL[usize::try_from(rng.next_u64() % 9).unwrap_or(0)];
        let hold = Duration::from_millis(800 + rng.next_u64() % 1200);
        let start = ms();
        match fault {
            Fault::ServerKill { primary } => {
                let (server, ns, own4, own6, name) = if primary {
                    (
                        &mut s.primary,
                        &s.lab.primary,
                        "198.18.2.2",
                        "2001:2:0:2::2",
                        "primary",
                    )
                } else {
                    (
                        &mut s.secondary,
                        &s.lab.secondary,
                        "198.18.3.2",
                        "2001:2:0:3::2",
                        "secondary",
                    )
                };
                server.kill();
                thread::sleep(hold);
                *server = Server::start(ns, name, own4, own6, false);
            }
            Fault::LinkDown => {
                ip.send("link set g-p down\n");
                thread::sleep(hold);
                ip.send("link set g-p up\n");
            }
            Fault::SilentDrop => {
                nft.send("add rule inet soak in ip daddr 198.18.2.2 drop\n");
                thread::sleep(hold);
                nft.send("flush chain inet soak in\n");
            }
            Fault::Flip => {
                let ms = hold.as_millis().to_string() + "ms";
                let _ = cli(
                    &s.left.socket,
                    &["flip", "web4", "secondary", "--for", &ms, "--force"],
                );
                thread::sleep(hold);
            }
            Fault::Drain => {
                let _ = cli(&s.left.socket, &["drain", "dns4", "primary"]);
                thread::sleep(hold);
                let _ = cli(&s.left.socket, &["undrain", "dns4", "primary"]);
            }
            Fault::Reload => {
                let _ = cli(&s.left.socket, &["reload"]);
            }
            Fault::Restart | Fault::Kill => {
                if let Some(mut d) = daemon.take() {
                    d.signal(if fault == Fault::Kill {
                        libc::SIGKILL
                    } else {
                        libc::SIGTERM
                    });
                }
                thread::sleep(Duration::from_millis(200));
                daemon = Some(s.daemon());
            }
        }
        windows.push(Window {
            fault,
            start,
            end: ms(),
        });
    }
    // Let the last fault settle (failback after 1 s of health), then stop.
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (sent_at, answered) = udp.join().unwrap();
    let tcp_made = tcp.join().unwrap();
    if let Some(d) = &daemon {
        samples.push(sample(&s, d.pid(), t0));
    }
    drop(ip);
    drop(nft);

    // Invariants.
    let mut violations = Vec::new();
    let mut lost_by: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for w in &windows {
        lost_by.entry(w.fault.name()).or_default().0 += 1;
    }
    let mut lost = 0u64;
    for (seq, &at) in sent_at.iter().enumerate() {
        if answered.get(seq).copied().unwrap_or(false) {
            continue;
        }
        lost += 1;
        match windows
            .iter()
            .find(|w| w.fault.takes_a_backend() && at + 5 >= w.start && at <= w.start + ms_of(DETECTION))
        {
            Some(w) => lost_by.entry(w.fault.name()).or_default().1 += 1,
            None => violations.push(format!(
                "UDP request {} sent at {at} ms lost outside a fault's detection ({})",
                seq + 1,
                near(&windows, at)
            )),
        }
    }
    for (at, why) in tcp_failures.lock().unwrap().iter() {
        let excused = windows
            .iter()
            .any(|w| w.fault.takes_a_backend() && at + 100 >= w.start && *at <= w.start + ms_of(DETECTION));
        if !excused {
            violations.push(format!(
                "TCP connection begun at {at} ms failed outside a fault's detection: {why} ({})",
                near(&windows, *at)
            ));
        }
    }
    // Counters: every answer the client got was translated back by the data plane.
    let text = scrape(&s);
    let to_client: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("redirector_backend_packets_total{")
                && l.contains("service=\"dns4\"")
                && l.contains("direction=\"to_client\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let answered_n = answered.iter().filter(|a| **a).count() as f64;
    if to_client < answered_n {
        violations.push(format!(
            "counters: {to_client} replies translated for dns4, but the client got {answered_n}"
        ));
    }

    println!();
    println!("| fault | injected | UDP requests lost within its detection |");
    println!("|---|---|---|");
    for (name, (n, l)) in &lost_by {
        println!("| {name} | {n} | {l} |");
    }
    println!();
    println!(
        "traffic: {} UDP requests, {lost} lost; {tcp_made} TCP connections, {} failed",
        sent_at.len(),
        tcp_failures.lock().unwrap().len()
    );
    println!("data plane: {to_client} dns4 replies translated, {answered_n} received");
    for (i, what) in ["RSS kB", "open fds", "flow entries"].iter().enumerate() {
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (s.0, [s.1, s.2, s.3][i]))
            .filter(|p| p.1 >= 0.0)
            .collect();
        let (lo, hi) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        println!(
            "daemon {what}: min {lo:.0}, max {hi:.0}, slope {:+.1} per minute ({} samples)",
            slope(&pts) * 60.0,
            pts.len()
        );
    }
    if violations.is_empty() {
        println!("soak: no invariant violated");
        Ok(())
    } else {
        for v in violations.iter().take(20) {
            println!("VIOLATION: {v}");
        }
        bail!("{} invariant violations", violations.len())
    }
}

fn ms_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The fault nearest to `at`, for a report.
fn near(windows: &[Window], at: u64) -> String {
    windows
        .iter()
        .min_by_key(|w| w.start.abs_diff(at))
        .map_or("no fault yet".into(), |w| {
            format!("nearest fault: {} at {}..{} ms", w.fault.name(), w.start, w.end)
        })
}

/// Least-squares slope of y over x.
fn slope(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let var: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / var
}

/// (seconds since start, RSS kB, open fds, flow entries or -1).
fn sample(s: &Setup, pid: u32, t0: Instant) -> (f64, f64, f64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(-1.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(-1.0, |d| d.count() as f64);
    let flows = scrape(s)
        .lines()
        .find_map(|l| l.strip_prefix("redirector_flow_entries ")?.trim().parse().ok())
        .unwrap_or(-1.0);
    (t0.elapsed().as_secs_f64(), rss, fds, flows)
}

/// One UDP request per ms from one client port to dns4 (`seq:N`), until
/// stopped: when each was sent (ms since `t0`) and which were answered.
fn udp_flow(ns: &str, stop: Arc<AtomicBool>, t0: Instant) -> thread::JoinHandle<(Vec<u64>, Vec<bool>)> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&ns);
        let sock = UdpSocket::bind("198.18.1.2:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
        let (mut sent_at, mut answered) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 128];
        let note = |buf: &[u8], answered: &mut Vec<bool>| {
            if let Some((_, n)) = String::from_utf8_lossy(buf).split_once(" seq:")
                && let Ok(n) = n.parse::<usize>()
                && n >= 1
            {
                if answered.len() < n {
                    answered.resize(n, false);
                }
                answered[n - 1] = true;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            sent_at.push(u64::try_from(t0.elapsed().as_millis()).unwrap_or(0));
            let _ = sock.send_to(format!("seq:{}", sent_at.len()).as_bytes(), vip);
            thread::sleep(Duration::from_millis(1));
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                note(&buf[..n], &mut answered);
            }
        }
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            note(&buf[..n], &mut answered);
        }
        answered.resize(sent_at.len().max(answered.len()), false);
        (sent_at, answered)
    })
}

/// A command reading injections on stdin, started before the faults.
struct Injector(Child);

impl Injector {
    fn start(words: &[&str]) -> Injector {
        let child = Command::new(words[0])
            .args(&words[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Injector(child)
    }

    fn send(&mut self, line: &str) {
        if let Some(stdin) = self.0.stdin.as_mut() {
            let _ = stdin.write_all(line.as_bytes());
            let _ = stdin.flush();
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
