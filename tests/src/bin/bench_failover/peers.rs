//! `cargo xtask bench failover --peers`: redirector and the systems a user
//! would pick instead, in the same lab, interleaved run by run (system after
//! system for each fault, then the next fault, then the next run), so the
//! VM's drift hits them alike.
//!
//! - **redirector** with its defaults (the lab's `dns4` and `web4`);
//! - **HAProxy** (TCP only: it carries no UDP) in the gateway's namespace on
//!   198.18.101.1:80, the secondary as `backup`, `check inter 10ms fall 2
//!   rise 2`, `on-marked-down shutdown-sessions`;
//! - **nftables DNAT switched by a prober**: 198.18.102.1 (UDP 53, TCP 80)
//!   rewritten to the active backend by a rule in the gateway's namespace; a
//!   prober thread probes both backends every 10 ms (a UDP request, timeout
//!   10 ms, fall 2 rise 2) and switches with a rule swap through a pre-started
//!   `nft -i` plus `conntrack -D` of the VIP's entries (else a running UDP
//!   flow stays on the dead backend until its entry expires). The
//!   `conntrack` exec (~4 ms here) is part of that system's cost; only the
//!   VIP's flows are tracked (`notrack` for the gateway's own traffic), as
//!   on a gateway that does nothing else, so the delete walks a short table.
//!
//! - **keepalived VRRP** (`vrrp_version 3`, `advert_int 0.01`): the VIP
//!   moves between the servers, which share one L2 segment (a bridge in the
//!   gateway's namespace, 198.18.110.0/24, beside their own links); once
//!   plain (198.18.110.100: VRRP alone never sees a process die), once
//!   tracking the server process (198.18.110.101). `track_process` cannot
//!   run here: it listens on the kernel's process connector, which only the
//!   initial network namespace gets (keepalived logs `Failed to set/clear
//!   process event listen - errno 111`), and Debian's keepalived has no
//!   `net_namespace`; so the tracking is a `track_script` running `pgrep`,
//!   whose shortest interval is 1 s.
//!
//! Each peer has its own `lab-server` per backend namespace (arrivals logged
//! like the lab's; the VRRP ones under process names of their own, which
//! the tracking matches): a kill kills the system's own server. A link
//! down sets the link the system's traffic reaches the primary by down (the
//! lab's `p0`; VRRP: `v0` on the bridge), a silent drop is an input drop
//! policy in the primary's namespace; both hit every system alike. The
//! silent drop goes through a pre-started `nft -i` in that namespace, timed
//! from its answer to a follow-up `list`, so no exec is counted.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, Write as _},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use redirector_tests::{
    lab::{Running, Server},
    netns::{NetNs, in_ns},
};

use super::{Fault, Series, client_to, drain, link_down_now, monotonic_ns, percentile, source};

/// The systems compared.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum System {
    Redirector,
    Haproxy,
    NftProber,
    Vrrp,
    VrrpTrack,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Redirector => "redirector (defaults)",
            System::Haproxy => "HAProxy 2.6 (inter 10ms fall 2 rise 2, backup)",
            System::NftProber => "nftables DNAT + 10 ms prober",
            System::Vrrp => "keepalived VRRP (advert_int 0.01)",
            System::VrrpTrack => "keepalived VRRP + track_script (pgrep every 1 s)",
        }
    }

    /// The VIP it serves `series` on, if it carries that series.
    fn vip(self, series: Series) -> Option<SocketAddr> {
        let (addr, port) = match (self, series) {
            (System::Redirector, Series::Udp) => ([198, 18, 100, 1], 53),
            (System::Redirector, Series::Tcp) => ([198, 18, 100, 1], 80),
            (System::Haproxy, Series::Udp) => return None,
            (System::Haproxy, Series::Tcp) => ([198, 18, 101, 1], 80),
            (System::NftProber, Series::Udp) => ([198, 18, 102, 1], 53),
            (System::NftProber, Series::Tcp) => ([198, 18, 102, 1], 80),
            (System::Vrrp, Series::Udp) => ([198, 18, 110, 100], VRRP_PLAIN.0),
            (System::Vrrp, Series::Tcp) => ([198, 18, 110, 100], VRRP_PLAIN.1),
            (System::VrrpTrack, Series::Udp) => ([198, 18, 110, 101], VRRP_TRACK.0),
            (System::VrrpTrack, Series::Tcp) => ([198, 18, 110, 101], VRRP_TRACK.1),
        };
        Some(SocketAddr::from((Ipv4Addr::from(addr), port)))
    }
}

/// A process killed (with its process group's `ip netns exec`) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pre-started `nft -i` in a namespace: a command is in force when nft
/// answers the `list` that follows it.
struct NftShell {
    _child: Proc,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl NftShell {
    fn start(ns: &str) -> Result<NftShell> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-i"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nft -i")?;
        let stdin = child.stdin.take().context("nft stdin")?;
        let stdout = child.stdout.take().context("nft stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(NftShell {
            _child: Proc(child),
            stdin,
            lines,
        })
    }

    /// Runs `command` (one line: one transaction), then waits until table
    /// `marker` (which the command leaves in place) is listed back.
    fn run(&mut self, command: &str, marker: &str) -> Result<()> {
        while self.lines.try_recv().is_ok() {}
        writeln!(self.stdin, "{command}\nlist table {marker}")?;
        self.stdin.flush()?;
        let want = format!("table {marker} {{");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.trim() == want => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("nft did not confirm {command:?}"),
            }
        }
    }
}

/// The peers' own servers: one per backend namespace.
struct PeerServers {
    primary: Server,
    secondary: Server,
}

const PEER_ARGS: [&str; 4] = ["--udp", "0.0.0.0:5301", "--tcp", "0.0.0.0:8091"];

fn peer_server(ns: &NetNs, name: &str) -> Server {
    Server::start_args(ns, name, &PEER_ARGS, true)
}

/// A VRRP variant's servers: a copy of `lab-server` named `comm` (what the
/// tracking `pgrep -x` matches), bound to all addresses.
fn vrrp_server(
    ns: &NetNs,
    dir: &std::path::Path,
    comm: &str,
    name: &str,
    ports: (u16, u16),
) -> Result<Server> {
    let bin = dir.join(comm);
    if !bin.exists() {
        std::fs::copy(redirector_tests::lab::lab_server_binary(), &bin)?;
    }
    let args = [
        "--udp".to_owned(),
        format!("0.0.0.0:{}", ports.0),
        "--tcp".to_owned(),
        format!("0.0.0.0:{}", ports.1),
    ];
    Ok(Server::start_bin(ns, &bin, name, &args, true))
}

/// The VRRP segment, keepalived on both servers (one instance per variant)
/// and the variants' servers.
struct Vrrp {
    dir: std::path::PathBuf,
    /// (primary, secondary) of the plain and of the tracked variant.
    plain: (Server, Server),
    track: (Server, Server),
    _keepalived: Vec<Proc>,
}

impl Drop for Vrrp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const VRRP_PLAIN: (u16, u16) = (5302, 8092);
const VRRP_TRACK: (u16, u16) = (5303, 8093);

fn keepalived_conf(primary: bool) -> String {
    let (state, priority, me) = if primary {
        ("MASTER", 150, "p")
    } else {
        ("BACKUP", 100, "s")
    };
    let instance = |name: &str, vrid: u8, vip: &str, track: &str| {
        format!(
            "vrrp_instance {name} {{\n  state {state}\n  interface v0\n  virtual_router_id {vrid}\n  \
             priority {priority}\n  advert_int 0.01\n  virtual_ipaddress {{\n    {vip}/24\n  }}\n{track}}}\n"
        )
    };
    format!(
        "global_defs {{\n  router_id rdr_{me}\n  vrrp_version 3\n  vrrp_garp_master_delay 0\n  \
         script_user root\n  enable_script_security\n}}\n\
         vrrp_script server {{\n  script \"/usr/bin/pgrep -x vrrp-track-{me}\"\n  interval 1\n  timeout 1\n  \
         fall 1\n  rise 1\n}}\n{}{}",
        instance("plain", 51, "198.18.110.100", ""),
        instance(
            "track",
            52,
            "198.18.110.101",
            "  track_script {\n    server\n  }\n"
        ),
    )
}

fn vrrp(run: &Running) -> Result<Vrrp> {
    let gw = &run.lab.gw.name;
    in_ns(gw, &["ip", "link", "add", "vbr", "type", "bridge"]);
    in_ns(gw, &["ip", "addr", "add", "198.18.110.1/24", "dev", "vbr"]);
    in_ns(gw, &["ip", "link", "set", "vbr", "up"]);
    let dir = std::env::temp_dir().join(format!("{gw}-vrrp"));
    std::fs::create_dir_all(&dir)?;
    let mut keepalived = Vec::new();
    for (ns, end, addr, primary) in [
        (&run.lab.primary, "vp", "198.18.110.2/24", true),
        (&run.lab.secondary, "vs", "198.18.110.3/24", false),
    ] {
        in_ns(
            gw,
            &[
                "ip", "link", "add", end, "type", "veth", "peer", "name", "v0", "netns", &ns.name,
            ],
        );
        in_ns(gw, &["ip", "link", "set", end, "master", "vbr"]);
        in_ns(gw, &["ip", "link", "set", end, "up"]);
        in_ns(&ns.name, &["ip", "addr", "add", addr, "dev", "v0"]);
        in_ns(&ns.name, &["ip", "link", "set", "v0", "up"]);
        // Answers from a VIP go back the way their requests came.
        in_ns(
            &ns.name,
            &["ip", "rule", "add", "from", "198.18.110.0/24", "table", "110"],
        );
        in_ns(
            &ns.name,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                "198.18.110.1",
                "dev",
                "v0",
                "table",
                "110",
            ],
        );
        let me = if primary { "p" } else { "s" };
        let conf = dir.join(format!("keepalived-{me}.conf"));
        std::fs::write(&conf, keepalived_conf(primary))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--vrrp",
            ])
            .arg("--use-file")
            .arg(&conf)
            .arg("--pid")
            .arg(dir.join(format!("keepalived-{me}.pid")))
            .arg("--vrrp_pid")
            .arg(dir.join(format!("vrrp-{me}.pid")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting keepalived (apt-get install keepalived)")?;
        keepalived.push(Proc(child));
    }
    let plain = (
        vrrp_server(&run.lab.primary, &dir, "vrrp-plain-p", "primary", VRRP_PLAIN)?,
        vrrp_server(&run.lab.secondary, &dir, "vrrp-plain-s", "secondary", VRRP_PLAIN)?,
    );
    let track = (
        vrrp_server(&run.lab.primary, &dir, "vrrp-track-p", "primary", VRRP_TRACK)?,
        vrrp_server(&run.lab.secondary, &dir, "vrrp-track-s", "secondary", VRRP_TRACK)?,
    );
    Ok(Vrrp {
        dir,
        plain,
        track,
        _keepalived: keepalived,
    })
}

/// HAProxy in the gateway's namespace.
fn haproxy(gw: &NetNs) -> Result<Proc> {
    in_ns(&gw.name, &["ip", "addr", "add", "198.18.101.1/32", "dev", "lo"]);
    let cfg = std::env::temp_dir().join(format!("{}-haproxy.cfg", gw.name));
    std::fs::write(
        &cfg,
        "global\n  maxconn 4000\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
         frontend vip\n  bind 198.18.101.1:80\n  default_backend pair\n\
         backend pair\n\
         \x20 server primary 198.18.2.2:8091 check inter 10ms fall 2 rise 2 on-marked-down shutdown-sessions\n\
         \x20 server secondary 198.18.3.2:8091 check inter 10ms fall 2 rise 2 backup on-marked-down shutdown-sessions\n",
    )?;
    let child = Command::new("ip")
        .args(["netns", "exec", &gw.name, "haproxy", "-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    Ok(Proc(child))
}

/// The nftables DNAT rules toward `backend`, one transaction.
fn dnat_rules(backend: Ipv4Addr) -> String {
    format!(
        "flush chain ip rdrpeer pre ; \
         add rule ip rdrpeer pre ip daddr 198.18.102.1 udp dport 53 dnat to {backend}:5301 ; \
         add rule ip rdrpeer pre ip daddr 198.18.102.1 tcp dport 80 dnat to {backend}:8091"
    )
}

/// The DNAT table and its prober thread (stopped on drop).
struct NftProber {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for NftProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const SECONDARY: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);

fn nft_prober(gw: &NetNs) -> Result<NftProber> {
    let mut shell = NftShell::start(&gw.name)?;
    shell.run(
        "add table ip rdrpeer ; add chain ip rdrpeer pre { type nat hook prerouting priority -100 ; }",
        "ip rdrpeer",
    )?;
    // Only the VIP's flows in conntrack, as on a gateway that does nothing
    // else: the lab's other probes and HAProxy's connections (all to or
    // from the gateway itself) would fill the table, and `conntrack -D`
    // walks all of it (~100 ms here).
    shell.run(
        "add chain ip rdrpeer raw_pre { type filter hook prerouting priority raw ; fib daddr type local notrack ; } ; \
         add chain ip rdrpeer raw_out { type filter hook output priority raw ; notrack ; }",
        "ip rdrpeer",
    )?;
    let _ = Command::new("ip")
        .args(["netns", "exec", &gw.name, "conntrack", "-F"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    shell.run(&dnat_rules(PRIMARY), "ip rdrpeer")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, ns) = (stop.clone(), gw.name.clone());
    let thread = thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&ns);
        let probe = |to: Ipv4Addr| -> bool {
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let mut buf = [0u8; 64];
            s.connect((to, 5301)).is_ok()
                && s.set_read_timeout(Some(Duration::from_millis(10))).is_ok()
                && s.send(b"probe").is_ok()
                && s.recv(&mut buf).is_ok()
        };
        // (consecutive passes, consecutive failures, up) per backend.
        let mut state = [(0u32, 0u32, true); 2];
        let mut active = 0usize;
        // Bounded: the benchmark stops it; 30 minutes at most.
        let until = Instant::now() + Duration::from_secs(1800);
        let mut next = Instant::now();
        while !flag.load(Ordering::Relaxed) && Instant::now() < until {
            for (i, to) in [PRIMARY, SECONDARY].into_iter().enumerate() {
                let ok = probe(to);
                let st = &mut state[i];
                if ok {
                    st.0 += 1;
                    st.1 = 0;
                    if st.0 >= 2 {
                        st.2 = true;
                    }
                } else {
                    st.1 += 1;
                    st.0 = 0;
                    if st.1 >= 2 {
                        st.2 = false;
                    }
                }
            }
            // The primary when it is up, else the secondary when it is.
            let want = if state[0].2 || !state[1].2 { 0 } else { 1 };
            if want != active {
                let to = if want == 0 { PRIMARY } else { SECONDARY };
                if shell.run(&dnat_rules(to), "ip rdrpeer").is_ok() {
                    let _ = Command::new("conntrack")
                        .args(["-D", "--orig-dst", "198.18.102.1"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    active = want;
                }
            }
            next += Duration::from_millis(10);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                thread::sleep(d);
            } else {
                next = Instant::now();
            }
        }
        drop(shell);
    });
    Ok(NftProber {
        stop,
        thread: Some(thread),
    })
}

/// One run's figure.
struct Sample {
    ms: f64,
    lost: u64,
}

/// Waits until `system` answers a fresh `series` request from the primary.
fn wait_primary(ns: &NetNs, system: System, series: Series, within: Duration) -> Result<()> {
    let _in = ns.enter();
    let Some(vip) = system.vip(series) else {
        return Ok(());
    };
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let who = match series {
            Series::Udp => UdpSocket::bind("198.18.1.2:0").ok().and_then(|s| {
                let mut buf = [0u8; 128];
                s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
                s.send_to(b"ping", vip).ok()?;
                let (n, _) = s.recv_from(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            }),
            Series::Tcp => std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(100))
                .ok()
                .and_then(|mut c| {
                    use std::io::Read as _;
                    c.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
                    c.write_all(b"ping").ok()?;
                    let mut s = String::new();
                    c.read_to_string(&mut s).ok()?;
                    Some(s)
                }),
        };
        if who.is_some_and(|w| w.starts_with("primary")) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    bail!("{} is not served by the primary after {within:?}", system.name())
}

/// The lab, the peers and the fault injectors.
struct Bench {
    // Dropped in this order: keepalived before the lab's namespaces.
    vrrp: Vrrp,
    _haproxy: Proc,
    _prober: NftProber,
    silent: NftShell,
    peers: PeerServers,
    run: Running,
}

impl Bench {
    fn servers(&mut self, system: System) -> (&mut Server, &mut Server) {
        match system {
            System::Redirector => (&mut self.run.primary, &mut self.run.secondary),
            System::Haproxy | System::NftProber => (&mut self.peers.primary, &mut self.peers.secondary),
            System::Vrrp => (&mut self.vrrp.plain.0, &mut self.vrrp.plain.1),
            System::VrrpTrack => (&mut self.vrrp.track.0, &mut self.vrrp.track.1),
        }
    }

    /// The primary's link that `system`'s traffic reaches it by.
    fn link(system: System) -> &'static str {
        match system {
            System::Vrrp | System::VrrpTrack => "v0",
            _ => "p0",
        }
    }

    /// Injects `fault` on `system`; the instant it is surely in force.
    fn inject(&mut self, system: System, fault: Fault) -> Result<u64> {
        match fault {
            Fault::Kill => self.servers(system).0.kill(),
            Fault::LinkDown => link_down_now(&self.run.lab.primary, Self::link(system))?,
            Fault::SilentDrop => self.silent.run(
                "add table inet rdrbench ; add chain inet rdrbench in { type filter hook input priority 0 ; policy drop ; }",
                "inet rdrbench",
            )?,
        }
        Ok(monotonic_ns())
    }

    fn repair(&mut self, system: System, fault: Fault) -> Result<()> {
        let p = self.run.lab.primary.name.clone();
        match fault {
            Fault::Kill => match system {
                System::Redirector => {
                    self.run.primary = Server::start(
                        &self.run.lab.primary,
                        "primary",
                        "198.18.2.2",
                        "2001:2:0:2::2",
                        true,
                    );
                }
                System::Haproxy | System::NftProber => {
                    self.peers.primary = peer_server(&self.run.lab.primary, "primary");
                }
                System::Vrrp => {
                    self.vrrp.plain.0 = vrrp_server(
                        &self.run.lab.primary,
                        &self.vrrp.dir,
                        "vrrp-plain-p",
                        "primary",
                        VRRP_PLAIN,
                    )?;
                }
                System::VrrpTrack => {
                    self.vrrp.track.0 = vrrp_server(
                        &self.run.lab.primary,
                        &self.vrrp.dir,
                        "vrrp-track-p",
                        "primary",
                        VRRP_TRACK,
                    )?;
                }
            },
            Fault::LinkDown if Self::link(system) == "v0" => {
                in_ns(&p, &["ip", "link", "set", "v0", "up"]);
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
            Fault::SilentDrop => {
                // The marker table stays; the drop chain goes.
                self.silent
                    .run("delete chain inet rdrbench in", "inet rdrbench")?;
            }
        }
        Ok(())
    }

    fn one(&mut self, system: System, series: Series, fault: Fault, seq: u64, k: usize) -> Result<Sample> {
        let vip = system.vip(series).context("series not carried")?;
        wait_primary(&self.run.lab.client, system, series, Duration::from_secs(10))?;
        let mut arrivals = Vec::new();
        {
            let (p, s) = self.servers(system);
            drain(p, &mut arrivals);
            drain(s, &mut arrivals);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let c = client_to(
            &self.run.lab.client,
            series,
            stop.clone(),
            seq,
            source(k),
            Duration::from_secs(10),
            vip,
        );
        thread::sleep(Duration::from_millis(60));
        let t_fault = self.inject(system, fault)?;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut at = None;
        while Instant::now() < deadline && at.is_none() {
            thread::sleep(Duration::from_millis(5));
            let mut got = Vec::new();
            drain(self.servers(system).1, &mut got);
            at = got
                .iter()
                .filter(|(s, _, ns)| *s == series && *ns >= t_fault)
                .map(|(_, _, ns)| *ns)
                .min();
        }
        thread::sleep(Duration::from_millis(40));
        stop.store(true, Ordering::Relaxed);
        let (sent, answered) = c.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        self.repair(system, fault)?;
        Ok(Sample {
            // `None`: never within 3 s.
            ms: at.map_or(f64::INFINITY, |at| (at - t_fault) as f64 / 1e6),
            lost: sent.saturating_sub(answered),
        })
    }
}

/// Runs the comparison: `runs` per system, fault and series.
pub(super) fn compare(runs: usize, config: &str) -> Result<()> {
    let started = Instant::now();
    let run = Running::start_with("bfp", config, true);
    super::add_sources(&run, 2 * 3 * 5 * runs + 1)?;
    let peers = PeerServers {
        primary: peer_server(&run.lab.primary, "primary"),
        secondary: peer_server(&run.lab.secondary, "secondary"),
    };
    let haproxy = haproxy(&run.lab.gw)?;
    let prober = nft_prober(&run.lab.gw)?;
    let vrrp = vrrp(&run)?;
    let mut silent = NftShell::start(&run.lab.primary.name)?;
    silent.run("add table inet rdrbench", "inet rdrbench")?;
    let mut b = Bench {
        vrrp,
        _haproxy: haproxy,
        _prober: prober,
        silent,
        peers,
        run,
    };
    println!("peers: {runs} runs per system, fault and series, interleaved (HAProxy: TCP only)");
    let systems = [
        System::Redirector,
        System::Haproxy,
        System::NftProber,
        System::Vrrp,
        System::VrrpTrack,
    ];
    let faults = [Fault::Kill, Fault::LinkDown, Fault::SilentDrop];
    let mut samples: BTreeMap<(Series, Fault, System), Vec<Sample>> = BTreeMap::new();
    let (mut seq, mut k) = (1u64, 0usize);
    for i in 0..runs {
        for series in [Series::Udp, Series::Tcp] {
            for fault in faults {
                for system in systems {
                    if system.vip(series).is_none() {
                        continue;
                    }
                    match b.one(system, series, fault, seq, k) {
                        Ok(s) => samples.entry((series, fault, system)).or_default().push(s),
                        Err(e) => eprintln!("run {i} {} {series:?} {}: {e:#}", system.name(), fault.name()),
                    }
                    seq += 100_000;
                    k += 1;
                }
            }
        }
        eprintln!(
            "peers: {} runs done ({:.0} s)",
            i + 1,
            started.elapsed().as_secs_f64()
        );
    }
    print_tables(&samples);
    println!("peers: total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn print_tables(samples: &BTreeMap<(Series, Fault, System), Vec<Sample>>) {
    println!();
    println!(
        "| series | fault | system | runs | min | median | p90 | p99 | max | never (within 3 s) | requests lost (median / max) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut medians: BTreeMap<(Series, Fault), Vec<(System, f64)>> = BTreeMap::new();
    for ((series, fault, system), v) in samples {
        let mut ms: Vec<f64> = v.iter().map(|s| s.ms).filter(|m| m.is_finite()).collect();
        ms.sort_by(f64::total_cmp);
        let never = v.len() - ms.len();
        let mut lost: Vec<u64> = v.iter().map(|s| s.lost).collect();
        lost.sort_unstable();
        let cell = |p: f64| {
            if ms.is_empty() {
                "never".to_owned()
            } else {
                format!("{:.1}", percentile(&ms, p))
            }
        };
        let series_name = match series {
            Series::Udp => "UDP, 1 request/ms".to_owned(),
            Series::Tcp => super::tcp_series_name(),
        };
        println!(
            "| {series_name} | {} | {} | {} | {} | {} | {} | {} | {} | {never} | {} / {} |",
            fault.name(),
            system.name(),
            v.len(),
            cell(0.0),
            cell(0.5),
            cell(0.9),
            cell(0.99),
            cell(1.0),
            lost.get(lost.len() / 2).copied().unwrap_or(0),
            lost.last().copied().unwrap_or(0),
        );
        // A system that missed more than half never "has" a median.
        let median = if never * 2 > v.len() {
            f64::INFINITY
        } else {
            let mut all: Vec<f64> = v.iter().map(|s| s.ms).collect();
            all.sort_by(f64::total_cmp);
            percentile(&all, 0.5)
        };
        medians
            .entry((*series, *fault))
            .or_default()
            .push((*system, median));
    }
    println!();
    println!("| series | fault | redirector median | best peer (median) | best peer ÷ redirector |");
    println!("|---|---|---:|---|---:|");
    for ((series, fault), v) in &medians {
        let ours = v.iter().find(|(s, _)| *s == System::Redirector).map(|x| x.1);
        let best = v
            .iter()
            .filter(|(s, _)| *s != System::Redirector)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let (Some(ours), Some((peer, theirs))) = (ours, best) else {
            continue;
        };
        let series_name = match series {
            Series::Udp => "UDP",
            Series::Tcp => "TCP",
        };
        let ratio = if theirs.is_finite() {
            format!("{:.1}×", theirs / ours)
        } else {
            "∞ (never)".to_owned()
        };
        let theirs = if theirs.is_finite() {
            format!("{theirs:.1} ms")
        } else {
            "never".to_owned()
        };
        println!(
            "| {series_name} | {} | {ours:.1} ms | {} ({theirs}) | {ratio} |",
            fault.name(),
            peer.name()
        );
    }
}
