//! `cargo xtask bench gateways`: what a gateway's death, a gateway's
//! graceful drain and a backend's death cost a cluster of gateways, in the
//! multi-gateway lab (`redirector_tests::cluster`) with the real daemons,
//! BIRD and keepalived. Not a test: it prints tables.
//!
//! Topologies: three gateways behind an ECMP router (eBGP + BFD 20 ms × 3)
//! with plain multipath routes and with resilient next-hop groups; a VRRP
//! pair (keepalived, 10 ms adverts, front and backend addresses in one sync
//! group); one gateway alone (backend fault only: its own death is an
//! outage until it is back). Traffic: one UDP request per ms spread over
//! 100 flows (each its own source port) to the NAT VIP, and long-lived TCP
//! connections (one request each before and after the fault). Faults, at
//! 1 s into a 4 s run: `kill` deletes the first gateway's links (a dead
//! host: a SIGKILLed daemon keeps forwarding, by design), `drain` is
//! `redirector withdraw` on it, `backend` SIGKILLs the primary server.
//!
//! Reported per topology and fault (median over runs, worst in brackets):
//! the outage of the flows the faulty gateway carried (from the fault to
//! their last lost request, 1 request per ms overall),
//! UDP requests lost on its flows and on the others', TCP connections
//! broken on its flows and on the others', survivors' flows the router
//! moved, and after a backend fault the window in which the gateways
//! disagreed on the active backend (their decisions' spread).
#![expect(clippy::unwrap_used, reason = "a benchmark: a failed setup is a failed run")]

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use redirector::control::{
    client,
    proto::{Request, Response},
};
use redirector::policy::Slot;
use redirector_tests::cluster::{self, Cluster, FIRST_PORT, FLOWS, Front, Run, traffic};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Topology {
    EcmpPlain,
    EcmpResilient,
    Vrrp,
    Single,
}

impl Topology {
    fn name(self) -> &'static str {
        match self {
            Topology::EcmpPlain => "3 gateways, ECMP (plain multipath)",
            Topology::EcmpResilient => "3 gateways, ECMP (resilient groups)",
            Topology::Vrrp => "VRRP pair (keepalived)",
            Topology::Single => "1 gateway",
        }
    }

    fn gateways(self) -> u8 {
        match self {
            Topology::EcmpPlain | Topology::EcmpResilient => 3,
            Topology::Vrrp => 2,
            Topology::Single => 1,
        }
    }

    fn front(self) -> Front {
        match self {
            Topology::EcmpPlain | Topology::Single => Front::Bgp { resilient: false },
            Topology::EcmpResilient => Front::Bgp { resilient: true },
            Topology::Vrrp => Front::Vrrp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    Drain,
    Backend,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "gateway killed (links deleted)",
            Fault::Drain => "gateway drained (redirector withdraw)",
            Fault::Backend => "primary server SIGKILLed",
        }
    }
}

/// One run's figures.
#[derive(Debug, Default, Clone)]
struct Sample {
    /// UDP flows on the faulty gateway (all of them for a backend fault).
    dead_flows: usize,
    /// From the fault to the last lost request of those flows (`None`: a
    /// flow never answered again).
    restored: Option<Duration>,
    lost_dead: usize,
    lost_others: usize,
    tcp_dead: usize,
    tcp_broken_dead: usize,
    tcp_others: usize,
    tcp_broken_others: usize,
    /// UDP flows of the other gateways the router moved.
    moved_others: usize,
    /// Spread of the gateways' decisions after a backend fault.
    disagreement: Option<Duration>,
    /// From the fault to the last gateway's decision.
    last_decision: Option<Duration>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Opens `n` long-lived connections to `NAT_VIP:80` from the client; each
/// answered once. Returns them with their source ports.
fn open_tcp(c: &Cluster, n: usize) -> Result<Vec<(TcpStream, u16)>> {
    let _in = c.client.enter();
    let to: SocketAddr = format!("{}:80", cluster::NAT_VIP).parse()?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_nodelay(true)?;
        s.write_all(b"hold\n")?;
        let mut buf = [0u8; 64];
        let k = s.read(&mut buf)?;
        if k == 0 {
            bail!("a held connection closed at once");
        }
        let port = s.local_addr()?.port();
        conns.push((s, port));
    }
    Ok(conns)
}

/// One more request on every connection; true for those answered within
/// `within` (all sent first, then read without blocking).
fn check_tcp(conns: &mut [(TcpStream, u16)], within: Duration) -> Vec<bool> {
    let mut ok = vec![false; conns.len()];
    let mut sent = vec![false; conns.len()];
    for (i, (s, _)) in conns.iter_mut().enumerate() {
        sent[i] = s.set_nonblocking(true).is_ok() && s.write_all(b"again\n").is_ok();
    }
    let until = Instant::now() + within;
    let mut buf = [0u8; 256];
    while Instant::now() < until && ok.iter().zip(&sent).any(|(o, s)| *s && !o) {
        for (i, (s, _)) in conns.iter_mut().enumerate() {
            if sent[i] && !ok[i] {
                match s.read(&mut buf) {
                    Ok(k) if k > 0 => ok[i] = true,
                    Ok(_) => sent[i] = false,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => sent[i] = false,
                }
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    ok
}

/// The gateways' `dns4` decisions to the secondary, as Unix ms.
fn decisions(c: &Cluster) -> Vec<u64> {
    c.gateways
        .iter()
        .filter_map(|g| {
            let mut at = None;
            let _ = client::call(
                &g.left.socket,
                Request::Events { follow: false },
                Some(Duration::from_secs(5)),
                |r| match r {
                    Response::Event(e) => {
                        if e.service == "dns4" && e.to == Slot::Secondary && at.is_none() {
                            at = Some(e.unix_ms);
                        }
                        true
                    }
                    _ => false,
                },
            );
            at
        })
        .collect()
}

fn wait(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let until = Instant::now() + within;
    while !ok() {
        if Instant::now() > until {
            bail!("{what}: not within {within:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn track_zero(c: &Cluster, i: usize) -> bool {
    std::fs::read_to_string(&c.gateways[i].track_file).is_ok_and(|t| t.trim() == "0")
}

fn run_once(top: Topology, fault: Fault, run: u32, tcp: usize) -> Result<Sample> {
    let tag = format!("bg{}{}{run}", top as u8, fault as u8);
    let mut c = Cluster::new(&tag, top.gateways(), top.front());
    for i in 0..c.gateways.len() {
        c.start_gateway(i);
    }
    let n = c.gateways.len();
    match top.front() {
        Front::Bgp { .. } => wait("the router's routes", Duration::from_secs(20), || {
            c.router_hops(cluster::NAT_VIP).len() == n
        })?,
        Front::Vrrp => wait("gw1 holding the address", Duration::from_secs(20), || {
            track_zero(&c, 0) && track_zero(&c, 1) && c.vrrp_masters() == [0]
        })?,
    }
    // Every gateway has decided (both backends up) before the traffic starts.
    thread::sleep(Duration::from_millis(500));
    let mut conns = open_tcp(&c, tcp)?;
    let udp_ports: Vec<u16> = (0..FLOWS).map(|i| FIRST_PORT + i).collect();
    let tcp_ports: Vec<u16> = conns.iter().map(|(_, p)| *p).collect();
    let first = &c.gateways[0].uplink;
    let on_first = |choices: &[Option<String>]| -> Vec<bool> {
        choices
            .iter()
            .map(|g| match top.front() {
                Front::Vrrp => true,
                Front::Bgp { .. } => g.as_deref() == Some(first.as_str()),
            })
            .collect()
    };
    let udp_before = c.router_choices(cluster::NAT_VIP, "udp", 53, &udp_ports);
    let tcp_before = c.router_choices(cluster::NAT_VIP, "tcp", 80, &tcp_ports);
    let (udp_dead, tcp_dead) = match fault {
        // A backend fault concerns every flow.
        Fault::Backend => (vec![true; udp_ports.len()], vec![true; tcp_ports.len()]),
        _ => (on_first(&udp_before), on_first(&tcp_before)),
    };

    // The fault, ready before it happens (no exec on the fault's path).
    let mut injector = (fault == Fault::Kill).then(|| {
        Command::new("ip")
            .args(["-n", &c.gateways[0].ns.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap()
    });
    let mut stdin = injector.as_mut().and_then(|i| i.stdin.take());
    let socket = c.gateways[0].left.socket.clone();
    let primary_pid = c.servers[0].pid();
    let mut at: Option<(Instant, u64)> = None;
    let result: Run = {
        let mut inject = || {
            at = Some((Instant::now(), unix_ms()));
            match fault {
                Fault::Kill => {
                    if let Some(mut s) = stdin.take() {
                        s.write_all(b"link del g-r\nlink del g-b\n").unwrap();
                    }
                }
                Fault::Drain => {
                    let _ = client::call(
                        &socket,
                        Request::Announce {
                            on: false,
                            reason: Some("bench".into()),
                        },
                        Some(Duration::from_secs(2)),
                        |_| false,
                    );
                }
                Fault::Backend => {
                    // SAFETY: kill(2) on a pid this process started and has not reaped.
                    unsafe { libc::kill(i32::try_from(primary_pid).unwrap_or(0), libc::SIGKILL) };
                }
            }
        };
        traffic(&c, cluster::NAT_VIP, 4, (1000, &mut inject))
    };
    if let Some(mut i) = injector {
        i.wait()?;
        c.kill_gateway_processes(0);
    }
    let (at, at_unix) = at.unwrap();
    let mut s = Sample::default();
    // UDP: requests lost after the fault; the outage of the faulty
    // gateway's flows ends with their last lost request (the client sends
    // one per ms, so this is exact to a ms), if every flow is answered again.
    let mut last_lost = Duration::ZERO;
    let mut all_back = true;
    for (f, sent) in result.sent.iter().enumerate() {
        let dead = udp_dead[f];
        s.dead_flows += usize::from(dead);
        let later: Vec<&(Instant, u64)> = sent.iter().filter(|(t, _)| *t >= at).collect();
        let lost: Vec<Duration> = later
            .iter()
            .filter(|(_, q)| !result.answered.contains_key(q))
            .map(|(t, _)| t.duration_since(at))
            .collect();
        if dead {
            s.lost_dead += lost.len();
            last_lost = last_lost.max(lost.iter().max().copied().unwrap_or_default());
            all_back &= later.last().is_none_or(|(_, q)| result.answered.contains_key(q));
        } else {
            s.lost_others += lost.len();
        }
    }
    s.restored = all_back.then_some(last_lost);
    if fault != Fault::Backend && n > 1 && top.front() != Front::Vrrp {
        let after = c.router_choices(cluster::NAT_VIP, "udp", 53, &udp_ports);
        s.moved_others = (0..udp_ports.len())
            .filter(|&f| !udp_dead[f] && udp_before[f] != after[f])
            .count();
    }
    // TCP.
    let ok = check_tcp(&mut conns, Duration::from_secs(3));
    for (i, good) in ok.iter().enumerate() {
        if tcp_dead[i] {
            s.tcp_dead += 1;
            s.tcp_broken_dead += usize::from(!good);
        } else {
            s.tcp_others += 1;
            s.tcp_broken_others += usize::from(!good);
        }
    }
    drop(conns);
    if fault == Fault::Backend {
        let d = decisions(&c);
        if d.len() == n {
            let (lo, hi) = (
                d.iter().min().copied().unwrap_or(0),
                d.iter().max().copied().unwrap_or(0),
            );
            s.disagreement = Some(Duration::from_millis(hi - lo));
            s.last_decision = Some(Duration::from_millis(hi.saturating_sub(at_unix)));
        }
    }
    Ok(s)
}

fn median_worst(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    let worst = v[v.len() - 1];
    if (med - worst).abs() < f64::EPSILON {
        format!("{med:.0}")
    } else {
        format!("{med:.0} ({worst:.0})")
    }
}

fn print_table(samples: &BTreeMap<(Topology, Fault), Vec<Sample>>, tcp: usize) {
    for fault in [Fault::Kill, Fault::Drain, Fault::Backend] {
        println!("\n### {}\n", fault.name());
        println!(
            "| topology | its flows | last loss after, ms | UDP lost: its flows / others' | TCP broken (of {tcp}): \
             its / others' | others' flows moved | decisions spread, ms | last decision, ms |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for ((top, f), ss) in samples {
            if *f != fault {
                continue;
            }
            let col = |g: &dyn Fn(&Sample) -> Option<f64>| {
                let v: Vec<f64> = ss.iter().filter_map(g).collect();
                if v.len() < ss.len() {
                    format!("{} ({} runs never)", median_worst(&v), ss.len() - v.len())
                } else {
                    median_worst(&v)
                }
            };
            let count = |g: &dyn Fn(&Sample) -> usize| {
                median_worst(&ss.iter().map(|s| g(s) as f64).collect::<Vec<_>>())
            };
            let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
            println!(
                "| {} | {} | {} | {} / {} | {} of {} / {} of {} | {} | {} | {} |",
                top.name(),
                count(&|s| s.dead_flows),
                col(&|s| ms(s.restored)),
                count(&|s| s.lost_dead),
                count(&|s| s.lost_others),
                count(&|s| s.tcp_broken_dead),
                count(&|s| s.tcp_dead),
                count(&|s| s.tcp_broken_others),
                count(&|s| s.tcp_others),
                if fault == Fault::Backend || *top == Topology::Vrrp {
                    "–".into()
                } else {
                    count(&|s| s.moved_others)
                },
                if fault == Fault::Backend {
                    col(&|s| ms(s.disagreement))
                } else {
                    "–".into()
                },
                if fault == Fault::Backend {
                    col(&|s| ms(s.last_decision))
                } else {
                    "–".into()
                },
            );
        }
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut tcp) = (3u32, 1000usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().unwrap_or_default().parse()?,
            "--tcp" => tcp = args.next().unwrap_or_default().parse()?,
            other => bail!("unknown argument {other}; usage: bench-gateways [--runs N] [--tcp CONNECTIONS]"),
        }
    }
    if runs == 0 || runs > 20 || tcp > 5000 {
        bail!("--runs 1..=20, --tcp 0..=5000");
    }
    let t0 = Instant::now();
    let mut samples: BTreeMap<(Topology, Fault), Vec<Sample>> = BTreeMap::new();
    let plan: Vec<(Topology, Fault)> = [Topology::EcmpPlain, Topology::EcmpResilient, Topology::Vrrp]
        .into_iter()
        .flat_map(|t| [Fault::Kill, Fault::Drain, Fault::Backend].map(|f| (t, f)))
        .chain([(Topology::Single, Fault::Backend)])
        .collect();
    // Interleaved: every case once per round.
    for run in 0..runs {
        for &(top, fault) in &plan {
            let s = run_once(top, fault, run, tcp)?;
            eprintln!(
                "run {}: {} / {}: restored {:?}, UDP lost {}/{}, TCP broken {}/{}, moved {}, spread {:?}",
                run + 1,
                top.name(),
                fault.name(),
                s.restored,
                s.lost_dead,
                s.lost_others,
                s.tcp_broken_dead,
                s.tcp_broken_others,
                s.moved_others,
                s.disagreement
            );
            samples.entry((top, fault)).or_default().push(s);
        }
    }
    println!(
        "\nbench gateways: {runs} run(s) per case, 1 UDP request/ms over {FLOWS} flows + {tcp} long-lived TCP \
         connections, fault 1 s into a 4 s run ({:.0} s)",
        t0.elapsed().as_secs_f64()
    );
    print_table(&samples, tcp);
    Ok(())
}
