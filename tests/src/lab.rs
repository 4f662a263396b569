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
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use std::os::fd::AsRawFd;

use aya::{Ebpf, programs::Xdp};
use redirector::{config::Config, daemon::Daemon, datapath::Datapath};

use crate::netns::{NetNs, in_ns, sh};

/// The services the lab runs: NAT TCP/UDP over IPv4 and IPv6, DSR TCP/IPv4 and UDP/IPv6.
pub const LAB_CONFIG: &str = r#"
[gateway]
interfaces = ["g-c", "g-p", "g-s"]
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
        let client = NetNs::new(&format!("{tag}c"));
        let gw = NetNs::new(&format!("{tag}g"));
        let primary = NetNs::new(&format!("{tag}p"));
        let secondary = NetNs::new(&format!("{tag}s"));
        // Link-local addresses would otherwise sit in duplicate address
        // detection for ~2 s after link up, stalling neighbour discovery.
        for ns in [&client, &gw, &primary, &secondary] {
            in_ns(&ns.name, &["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"]);
            in_ns(&ns.name, &["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
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
            prog.attach(ifname, aya::programs::XdpMode::Driver).unwrap();
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

/// Backend servers answering with their name, until `stop` is set (or 120 s):
/// TCP on `own:8080` (NAT backends) and `0.0.0.0:80` (DSR), UDP on `own:53`
/// and `[2001:2::200]:53` (a DSR VIP, bound so answers come from it).
pub fn serve(
    ns: &NetNs,
    name: &'static str,
    own4: &str,
    own6: &str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let nsname = ns.name.clone();
    let tcp: Vec<String> = vec![
        format!("{own4}:8080"),
        format!("[{own6}]:8080"),
        "0.0.0.0:80".into(),
    ];
    let udp: Vec<String> = vec![
        format!("{own4}:53"),
        format!("[{own6}]:53"),
        "[2001:2::200]:53".into(),
    ];
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let _in = crate::netns::enter(&nsname);
        let listeners: Vec<TcpListener> = tcp
            .iter()
            .map(|a| {
                let l = TcpListener::bind(a.as_str()).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let sockets: Vec<UdpSocket> = udp
            .iter()
            .map(|a| {
                let s = UdpSocket::bind(a.as_str()).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        ready_tx.send(()).unwrap();
        let mut fds: Vec<libc::pollfd> = listeners
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(sockets.iter().map(AsRawFd::as_raw_fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            // Event-driven (no sleeping between polls), so the demo's round-trip
            // figure measures the network path, not this loop; 50 ms bounds
            // how long a stop request waits.
            // SAFETY: fds is a valid, correctly sized array of pollfd.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
            if n <= 0 {
                continue;
            }
            for l in &listeners {
                if let Ok((mut c, _)) = l.accept() {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    if c.read(&mut buf).is_ok() {
                        let _ = c.write_all(name.as_bytes());
                    }
                }
            }
            for s in &sockets {
                while let Ok((_, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(name.as_bytes(), from);
                }
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    h
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
    done: mpsc::Receiver<Datapath>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Gateway {
    /// Runs the real daemon (Daemon::start + run) in a thread inside the gateway namespace.
    pub fn start(ns: &NetNs, cfg: Config) -> Gateway {
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
                let daemon = match Daemon::start(cfg) {
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

    /// Stops the daemon; returns its data plane (detached once dropped).
    pub fn stop(mut self) -> Datapath {
        let _ = self.stop.take().unwrap().send(());
        let dp = self.done.recv_timeout(Duration::from_secs(10)).unwrap();
        self.thread.take().unwrap().join().unwrap();
        dp
    }
}

/// The lab as the demo and the end-to-end test use it: servers on both
/// backends, redirector running [`LAB_CONFIG`] on the gateway.
pub struct Running {
    /// The namespaces.
    pub lab: Lab,
    stop: Arc<AtomicBool>,
    servers: Vec<thread::JoinHandle<()>>,
    gw: Gateway,
}

impl Running {
    /// Builds the lab and starts everything in it.
    pub fn start(tag: &str) -> Running {
        // The DSR VIPs of LAB_CONFIG.
        let lab = Lab::new(
            tag,
            &DsrVips {
                v4: &["198.18.100.2"],
                v6: &["2001:2::200"],
            },
        );
        let stop = Arc::new(AtomicBool::new(false));
        let servers = vec![
            serve(
                &lab.primary,
                "primary",
                "198.18.2.2",
                "2001:2:0:2::2",
                stop.clone(),
            ),
            serve(
                &lab.secondary,
                "secondary",
                "198.18.3.2",
                "2001:2:0:3::2",
                stop.clone(),
            ),
        ];
        let cfg = Config::from_str_named(LAB_CONFIG, "lab.toml").unwrap();
        let gw = Gateway::start(&lab.gw, cfg);
        Running {
            lab,
            stop,
            servers,
            gw,
        }
    }

    /// Stops redirector and the servers; returns the data plane (still
    /// loaded, for its counters) and the lab (removed when dropped).
    pub fn stop(self) -> (Datapath, Lab) {
        let dp = self.gw.stop();
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers {
            s.join().unwrap();
        }
        (dp, self.lab)
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
