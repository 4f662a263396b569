//! The built-in lab: four network namespaces joined by veth pairs, with
//! addresses only from 198.18.0.0/15 and 2001:2::/48.
//!
//! ```text
//! client 198.18.1.2 ─ c0 ── g-c 198.18.1.1  gateway  198.18.2.1 g-p ── p0 198.18.2.2 primary
//!        2001:2:0:1::2                                198.18.3.1 g-s ── s0 198.18.3.2 secondary
//! ```
//! Fixed MACs 02:00:00:00:<subnet>:<host>. Transmit checksum offload is off on
//! the client and backend ends (locally generated packets would otherwise
//! carry partial checksums that nothing completes after an XDP redirect), and
//! a trivial XDP_PASS program runs on them (native redirect into a veth only
//! delivers when the peer runs XDP).
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::mpsc,
    thread,
    time::Duration,
};

use aya::{Ebpf, programs::Xdp};
use redirector::{
    config::Config,
    daemon::{Daemon, Stopped},
    datapath::Datapath,
};

use crate::netns::{NetNs, in_ns, sh};

/// The services the lab runs: NAT TCP/UDP over IPv4 and IPv6, DSR TCP/IPv4
/// and UDP/IPv6. Clients arrive on `g-c` only, so the backends' links are
/// declared backend-facing (a backend's refusal seen there is evidence).
pub const LAB_CONFIG: &str = r#"
[gateway]
interfaces = ["g-c", "g-p", "g-s"]
backend_interfaces = ["g-p", "g-s"]
xdp_mode = "driver"

[[service]]
name = "web4"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
primary = "198.18.2.2:8080"
secondary = "198.18.3.2:8080"

[[service]]
name = "dns4"
vip = "198.18.100.1"
port = 53
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.3.2"

[[service]]
name = "web6"
vip = "2001:2::100"
port = 80
protocol = "tcp"
primary = "[2001:2:0:2::2]:8080"
secondary = "[2001:2:0:3::2]:8080"

[[service]]
name = "dns6"
vip = "2001:2::100"
port = 53
protocol = "udp"
primary = "2001:2:0:2::2"
secondary = "2001:2:0:3::2"

[[service]]
name = "dsr-web4"
vip = "198.18.100.2"
port = 80
protocol = "tcp"
mode = "dsr"
primary = "198.18.2.2"
secondary = "198.18.3.2"

[[service]]
name = "dsr-dns6"
vip = "2001:2::200"
port = 53
protocol = "udp"
mode = "dsr"
primary = "2001:2:0:2::2"
secondary = "2001:2:0:3::2"
"#;

/// [`LAB_CONFIG`] with `extra` (e.g. a `[service.failover]` table) appended
/// to every service.
pub fn lab_config_with(extra: &str) -> String {
    let mut c = String::new();
    for (i, block) in LAB_CONFIG.split("[[service]]").enumerate() {
        if i > 0 {
            c.push_str("[[service]]");
        }
        c.push_str(block);
        if i > 0 {
            c.push_str(extra);
            c.push('\n');
        }
    }
    c
}

/// A running lab; everything is removed on drop.
pub struct Lab {
    /// Keeps the `pass` programs attached on c0, p0 and s0.
    _pass: Ebpf,
    /// The client namespace.
    pub client: NetNs,
    /// The gateway namespace (where redirector runs).
    pub gw: NetNs,
    /// The primary backend.
    pub primary: NetNs,
    /// The secondary backend.
    pub secondary: NetNs,
}

fn mac(subnet: u8, host: u8) -> String {
    format!("02:00:00:00:{subnet:02x}:{host:02x}")
}

/// VIPs that DSR backends hold on their loopback.
pub struct DsrVips<'a> {
    /// IPv4 VIPs.
    pub v4: &'a [&'a str],
    /// IPv6 VIPs.
    pub v6: &'a [&'a str],
}

impl Lab {
    /// Builds the lab. `tag` keeps namespace names unique per test.
    pub fn new(tag: &str, dsr: &DsrVips<'_>) -> Lab {
        Self::build(
            [
                NetNs::new(&format!("{tag}c")),
                NetNs::new(&format!("{tag}g")),
                NetNs::new(&format!("{tag}p")),
                NetNs::new(&format!("{tag}s")),
            ],
            dsr,
            None,
        )
    }

    /// Builds the topology in the namespaces (client, gateway, primary,
    /// secondary). With `pin_dir`, the far ends' XDP_PASS links are pinned
    /// there so they outlive this process (`cargo xtask lab up`).
    pub fn build(
        [client, gw, primary, secondary]: [NetNs; 4],
        dsr: &DsrVips<'_>,
        pin_dir: Option<&std::path::Path>,
    ) -> Lab {
        // Link-local addresses would otherwise sit in duplicate address
        // detection for ~2 s after link up, stalling neighbour discovery.
        for ns in [&client, &gw, &primary, &secondary] {
            in_ns(&ns.name, &["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"]);
            in_ns(&ns.name, &["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
            // A link set down and up again (a fault the tests inject) keeps its
            // IPv6 addresses, as IPv4 does.
            in_ns(
                &ns.name,
                &["sysctl", "-qw", "net.ipv6.conf.all.keep_addr_on_down=1"],
            );
            in_ns(
                &ns.name,
                &["sysctl", "-qw", "net.ipv6.conf.default.keep_addr_on_down=1"],
            );
        }
        in_ns(&gw.name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        in_ns(&gw.name, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        for (subnet, far, far_if, gw_if) in [
            (1u8, &client, "c0", "g-c"),
            (2, &primary, "p0", "g-p"),
            (3, &secondary, "s0", "g-s"),
        ] {
            sh(&[
                "ip",
                "link",
                "add",
                far_if,
                "netns",
                &far.name,
                "address",
                &mac(subnet, 2),
                "type",
                "veth",
                "peer",
                "name",
                gw_if,
                "netns",
                &gw.name,
                "address",
                &mac(subnet, 1),
            ]);
            let v4g = format!("198.18.{subnet}.1/24");
            let v4f = format!("198.18.{subnet}.2/24");
            let v6g = format!("2001:2:0:{subnet}::1/64");
            let v6f = format!("2001:2:0:{subnet}::2/64");
            in_ns(&gw.name, &["ip", "addr", "add", &v4g, "dev", gw_if]);
            in_ns(&gw.name, &["ip", "addr", "add", &v6g, "dev", gw_if, "nodad"]);
            in_ns(&gw.name, &["ip", "link", "set", gw_if, "up"]);
            in_ns(&far.name, &["ip", "addr", "add", &v4f, "dev", far_if]);
            in_ns(&far.name, &["ip", "addr", "add", &v6f, "dev", far_if, "nodad"]);
            in_ns(&far.name, &["ip", "link", "set", far_if, "up"]);
            in_ns(
                &far.name,
                &[
                    "ip",
                    "route",
                    "add",
                    "198.18.0.0/15",
                    "via",
                    &format!("198.18.{subnet}.1"),
                ],
            );
            in_ns(
                &far.name,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "2001:2::/48",
                    "via",
                    &format!("2001:2:0:{subnet}::1"),
                ],
            );
            in_ns(&far.name, &["ethtool", "-K", far_if, "tx", "off"]);
        }
        for be in [&primary, &secondary] {
            in_ns(&be.name, &["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"]);
            in_ns(&be.name, &["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"]);
            for v in dsr.v4 {
                in_ns(&be.name, &["ip", "addr", "add", &format!("{v}/32"), "dev", "lo"]);
            }
            for v in dsr.v6 {
                in_ns(
                    &be.name,
                    &["ip", "addr", "add", &format!("{v}/128"), "dev", "lo", "nodad"],
                );
            }
        }
        let mut pass = Ebpf::load(redirector::LAB_OBJECT).unwrap();
        let prog: &mut Xdp = pass.program_mut("pass").unwrap().try_into().unwrap();
        prog.load().unwrap();
        for (ns, ifname) in [(&client, "c0"), (&primary, "p0"), (&secondary, "s0")] {
            let _in = ns.enter();
            let id = prog.attach(ifname, aya::programs::XdpMode::Driver).unwrap();
            if let Some(dir) = pin_dir {
                std::fs::create_dir_all(dir).unwrap();
                let link = prog.take_link(id).unwrap();
                let fd = aya::programs::links::FdLink::try_from(link).unwrap();
                fd.pin(dir.join(format!("pass_{ifname}"))).unwrap();
            }
        }
        Lab {
            _pass: pass,
            client,
            gw,
            primary,
            secondary,
        }
    }
}

/// `lab-server` next to the running executable (tests run from `deps/`).
pub fn lab_server_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("lab-server");
    assert!(
        bin.exists(),
        "{} not built: run through `cargo xtask` (it builds every binary of redirector-tests)",
        bin.display()
    );
    bin
}

/// A backend server as a real process in a backend namespace (so it can be
/// SIGKILLed): answers with its name on TCP `own:8080` (NAT backends) and
/// `0.0.0.0:80` (DSR), UDP `own:53` and `[2001:2::200]:53` (a DSR VIP, bound
/// so answers come from it). Killed when dropped.
pub struct Server {
    child: std::process::Child,
    /// Lines it printed after `ready` (`udp SEQ NS` arrival records with `log`).
    pub lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts it and waits until every socket is bound.
    pub fn start(ns: &NetNs, name: &str, own4: &str, own6: &str, log: bool) -> Server {
        let args = [
            "--tcp".to_owned(),
            format!("{own4}:8080"),
            "--tcp".to_owned(),
            format!("[{own6}]:8080"),
            "--tcp".to_owned(),
            "0.0.0.0:80".to_owned(),
            "--udp".to_owned(),
            format!("{own4}:53"),
            "--udp".to_owned(),
            format!("[{own6}]:53"),
            "--udp".to_owned(),
            "[2001:2::200]:53".to_owned(),
        ];
        Self::start_args(ns, name, &args, log)
    }

    /// A server bound to what `args` (`--tcp ADDR`, `--udp ADDR`) say.
    pub fn start_args(ns: &NetNs, name: &str, args: &[impl AsRef<std::ffi::OsStr>], log: bool) -> Server {
        Self::start_bin(ns, &lab_server_binary(), name, args, log)
    }

    /// [`Server::start_args`] from a copy of the binary at `bin` (a process
    /// name of its own, for a supervisor that tracks processes by name).
    pub fn start_bin(
        ns: &NetNs,
        bin: &std::path::Path,
        name: &str,
        args: &[impl AsRef<std::ffi::OsStr>],
        log: bool,
    ) -> Server {
        use std::io::BufRead as _;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(bin)
            .arg(name)
            .args(args)
            .stdout(std::process::Stdio::piped());
        if log {
            cmd.arg("--log");
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = ready_tx.send(l);
            }
            for l in lines.map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let ready = ready_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(ready.as_deref(), Ok("ready"), "lab-server {name} did not start");
        Server { child, lines: rx }
    }

    /// The server process's pid (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One TCP request (connect retried up to 5 times); returns the answer.
pub fn tcp_request(to: SocketAddr) -> String {
    let mut last = None;
    for _ in 0..5 {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                c.write_all(b"hello").unwrap();
                let mut s = String::new();
                c.read_to_string(&mut s).unwrap();
                return s;
            }
            Err(e) => last = Some(e),
        }
    }
    panic!("TCP to {to}: {last:?}");
}

/// Sends one datagram and returns (who answered, from which address).
pub fn udp_request(sock: &UdpSocket, to: SocketAddr) -> (String, SocketAddr) {
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        sock.send_to(b"hello", to).unwrap();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            return (String::from_utf8_lossy(&buf[..n]).into_owned(), from);
        }
    }
    panic!("no UDP answer from {to}");
}

/// redirector's daemon running in a thread inside the gateway namespace.
pub struct Gateway {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<Stopped>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Gateway {
    /// Runs the real daemon (Daemon::start + run) in a thread inside the gateway namespace.
    pub fn start(ns: &NetNs, cfg: Config) -> Gateway {
        // The daemon's log on stderr (shown for failed tests); RUST_LOG=debug for more.
        let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .is_test(true)
            .try_init();
        let nsname = ns.name.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let _in = crate::netns::enter(&nsname);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let daemon = match Daemon::start(cfg, None).await {
                    Ok(d) => d,
                    Err(e) => {
                        ready_tx.send(Err(format!("{e:#}"))).unwrap();
                        return;
                    }
                };
                ready_tx.send(Ok(())).unwrap();
                let dp = daemon
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
                let _ = done_tx.send(dp);
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        Gateway {
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
        }
    }

    /// Stops the daemon (SIGTERM's path: the data plane stays pinned and attached).
    pub fn stop(mut self) -> Stopped {
        let _ = self.stop.take().unwrap().send(());
        let dp = self.done.recv_timeout(Duration::from_secs(10)).unwrap();
        self.thread.take().unwrap().join().unwrap();
        dp
    }
}

/// Files and pins of one daemon in the lab, removed when dropped (also
/// when a test fails).
pub struct Leftovers {
    /// `[control] state_dir`.
    pub state_dir: std::path::PathBuf,
    /// `[control] bpffs_dir`.
    pub bpffs_dir: std::path::PathBuf,
    /// `[control] socket`.
    pub socket: std::path::PathBuf,
}

impl Leftovers {
    /// Private places for the lab whose gateway namespace is `gw`.
    pub fn new(gw: &NetNs) -> Leftovers {
        let l = Leftovers {
            state_dir: std::env::temp_dir().join(format!("{}-state", gw.name)),
            bpffs_dir: std::path::PathBuf::from(format!("/sys/fs/bpf/{}", gw.name)),
            socket: std::env::temp_dir().join(format!("{}.sock", gw.name)),
        };
        l.remove();
        l
    }

    /// Points a configuration at them.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.control.state_dir = self.state_dir.clone();
        cfg.control.bpffs_dir = self.bpffs_dir.clone();
        cfg.control.socket = self.socket.clone();
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(redirector::lock::socket_lock(&self.socket));
        // Pins: files in versioned directories (bpffs has no recursive rmdir).
        if let Ok(dirs) = std::fs::read_dir(&self.bpffs_dir) {
            for d in dirs.flatten() {
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    for f in files.flatten() {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
                let _ = std::fs::remove_dir(d.path());
            }
        }
        let _ = std::fs::remove_dir(&self.bpffs_dir);
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The lab as the demo and the end-to-end tests use it: server processes on
/// both backends, redirector running [`LAB_CONFIG`] on the gateway with its
/// state, socket and pins in private places.
pub struct Running {
    /// The namespaces.
    pub lab: Lab,
    /// The primary's server process.
    pub primary: Server,
    /// The secondary's server process.
    pub secondary: Server,
    gw: Gateway,
    /// Where the daemon keeps its things.
    pub leftovers: Leftovers,
}

impl Running {
    /// Builds the lab and starts everything in it with [`LAB_CONFIG`].
    pub fn start(tag: &str) -> Running {
        Self::start_with(tag, LAB_CONFIG, false)
    }

    /// Same with another configuration text; `log`: servers print request arrivals.
    pub fn start_with(tag: &str, config: &str, log: bool) -> Running {
        // The DSR VIPs of LAB_CONFIG.
        let lab = Lab::new(
            tag,
            &DsrVips {
                v4: &["198.18.100.2"],
                v6: &["2001:2::200"],
            },
        );
        let primary = Server::start(&lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", log);
        let secondary = Server::start(&lab.secondary, "secondary", "198.18.3.2", "2001:2:0:3::2", log);
        let mut cfg = Config::from_str_named(config, "lab.toml").unwrap();
        let leftovers = Leftovers::new(&lab.gw);
        leftovers.apply(&mut cfg);
        let gw = Gateway::start(&lab.gw, cfg);
        Running {
            lab,
            primary,
            secondary,
            gw,
            leftovers,
        }
    }

    /// Stops redirector and the servers; returns the data plane (still
    /// loaded, for its counters) and the lab (removed when dropped).
    pub fn stop(self) -> (Datapath, Lab) {
        let stopped = self.gw.stop();
        (stopped.dp, self.lab)
    }
}

/// The global counters of the redirector program attached to `ifname` in
/// `ns`, read live (by program and map id) while the daemon owns the maps.
pub fn live_counters(ns: &NetNs, ifname: &str) -> [u64; redirector_common::Counter::COUNT as usize] {
    use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
    let _in = ns.enter();
    let ifindex = crate::netns::ifindex(ifname);
    let prog_id = redirector::netlink::xdp_prog_id(ifindex)
        .unwrap()
        .expect("an XDP program is attached");
    let prog = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .expect("the attached program is loaded");
    let map_id = prog
        .map_ids()
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .find(|&id| {
            MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some(redirector_common::names::COUNTERS))
        })
        .expect("the program uses COUNTERS");
    let map = Map::from_map_data(MapData::from_id(map_id).unwrap()).unwrap();
    let arr = PerCpuArray::<_, u64>::try_from(map).unwrap();
    let mut out = [0u64; redirector_common::Counter::COUNT as usize];
    for (i, slot) in (0u32..).zip(out.iter_mut()) {
        *slot = arr.get(&i, 0).unwrap().iter().sum();
    }
    out
}
