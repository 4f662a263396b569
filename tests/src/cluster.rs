//! The multi-gateway lab: N gateways, each running redirector and BIRD,
//! behind a router running BIRD with ECMP (L4 hash), the backends on one
//! LAN every gateway reaches; or ([`Front::Vrrp`]) a pair of gateways
//! running redirector and keepalived, the router's static route for the
//! VIPs pointing at the address VRRP moves between them. Addresses only
//! from 198.18.0.0/15.
//!
//! ```text
//!                         front (bridge in the router)        lan (bridge)
//!                          ┌ g-r 198.18.10.11  gw1  g-b 198.18.2.11 ┐
//! client 198.18.1.2 ─ router 198.18.10.1 ─ g-r 198.18.10.12  gw2  g-b 198.18.2.12 ├─ primary 198.18.2.2
//!                          └ …                                      ├─ secondary 198.18.2.3
//!                    router 198.18.2.1 ─────────────────────────────┘ (DSR replies go straight back)
//! ```
//! The gateways share one segment with the router, as behind a switch: a
//! dead gateway's link going away tells the router nothing, BFD does.
//! The router learns each VIP from every gateway (eBGP, BFD 20 ms × 3) and
//! installs one multipath route. Backends send NAT replies to clients over
//! a multipath route through the gateways (any gateway reverses any NAT
//! reply) that their BIRD learns from every gateway (eBGP, BFD 20 ms × 3:
//! `docs/examples/bird/backend.conf`, `gateway-return.conf`); DSR replies go
//! to the router directly.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use aya::{Ebpf, programs::Xdp};

use crate::{
    bird::Bird,
    daemon::Daemon,
    keepalived::Keepalived,
    lab::{Leftovers, Server},
    netns::{NetNs, in_ns, sh},
};

/// The VIP of the NAT services (web4 tcp 80 → 8080, dns4 udp 53).
pub const NAT_VIP: &str = "198.18.100.1";
/// The VIP of the DSR service (dsr-dns4 udp 53).
pub const DSR_VIP: &str = "198.18.100.2";
/// The kernel table of `[announce]` on every gateway.
pub const ANNOUNCE_TABLE: u32 = 100;
/// The address VRRP moves between the gateways of a pair (the router's
/// next hop for the VIPs).
pub const VRRP_ADDRESS: &str = "198.18.10.100";
/// The backend-side address VRRP moves with it (the backends' route to the
/// clients).
pub const VRRP_BACKEND_ADDRESS: &str = "198.18.2.100";

/// How the router reaches the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// eBGP + BFD from every gateway, ECMP on the router; `resilient`:
    /// kernel resilient next-hop groups instead of plain multipath.
    Bgp {
        /// Resilient next-hop groups (`ecmp-groups`).
        resilient: bool,
    },
    /// A VRRP pair (keepalived): the router's static route for the VIPs
    /// goes to [`VRRP_ADDRESS`].
    Vrrp,
}

/// The configuration every gateway runs (its `[control]` is added per gateway).
pub const CLUSTER_CONFIG: &str = r#"
[gateway]
interfaces = ["g-r", "g-b"]
backend_interfaces = ["g-b"]
xdp_mode = "driver"

[[service]]
name = "web4"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
primary = "198.18.2.2:8080"
secondary = "198.18.2.3:8080"

[[service]]
name = "dns4"
vip = "198.18.100.1"
port = 53
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.2.3"

[[service]]
name = "dsr-dns4"
vip = "198.18.100.2"
port = 53
protocol = "udp"
mode = "dsr"
primary = "198.18.2.2"
secondary = "198.18.2.3"

[announce]
table = 100
"#;

/// One gateway: its namespace, daemon, BIRD and private places.
pub struct ClusterGateway {
    /// `gw<N>`'s namespace.
    pub ns: NetNs,
    /// Its uplink address (the router's BGP neighbour).
    pub uplink: String,
    /// Its daemon, while running.
    pub daemon: Option<Daemon>,
    /// Its BIRD, while running.
    pub bird: Option<Bird>,
    /// Its keepalived, while running ([`Front::Vrrp`]).
    pub keepalived: Option<Keepalived>,
    /// Its `[announce] track_file` ([`Front::Vrrp`]).
    pub track_file: PathBuf,
    /// Socket, state and pins.
    pub left: Leftovers,
    /// Its config file.
    pub config: PathBuf,
}

/// The whole cluster lab; everything is removed on drop.
pub struct Cluster {
    /// Keeps the `pass` programs on the far ends of redirects.
    _pass: Vec<Ebpf>,
    /// The client namespace.
    pub client: NetNs,
    /// The router namespace.
    pub router: NetNs,
    /// The backend LAN's bridge namespace.
    pub lan: NetNs,
    /// The primary backend.
    pub primary: NetNs,
    /// The secondary backend.
    pub secondary: NetNs,
    /// The gateways, `gw1` first.
    pub gateways: Vec<ClusterGateway>,
    /// How the router reaches them.
    pub front: Front,
    /// The router's BIRD.
    pub router_bird: Option<Bird>,
    /// The backends' BIRD (their route back to the clients), with BGP.
    pub backend_birds: Vec<Bird>,
    /// Server processes on the backends.
    pub servers: Vec<Server>,
    /// `ecmp-groups` on the router (it prints `ready` as a server does).
    _groups: Option<Server>,
}

/// UDP flows of [`traffic`], one client source port each.
pub const FLOWS: u16 = 100;
/// The first flow's source port.
pub const FIRST_PORT: u16 = 41000;

/// Per flow: (sent at, seq) and answered seqs with when.
pub struct Run {
    /// Per flow, the requests sent: when, and their sequence number.
    pub sent: Vec<Vec<(Instant, u64)>>,
    /// Answered sequence numbers, with when the answer came.
    pub answered: HashMap<u64, Instant>,
}

/// 1 UDP request per ms over `FLOWS` flows (each its own source port) to
/// `vip:53` from the client for `secs`, calling `at_ms.1` once `at_ms.0` ms
/// in.
pub fn traffic(c: &Cluster, vip: &str, secs: u64, at_ms: (u64, &mut dyn FnMut())) -> Run {
    let _in = c.client.enter();
    let to: SocketAddr = format!("{vip}:53").parse().unwrap();
    let socks: Vec<UdpSocket> = (0..FLOWS)
        .map(|i| {
            let s = UdpSocket::bind(("198.18.1.2", FIRST_PORT + i)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut run = Run {
        sent: vec![Vec::new(); FLOWS as usize],
        answered: HashMap::new(),
    };
    let t0 = Instant::now();
    let (fault_at, fault) = at_ms;
    let mut faulted = false;
    let mut seq = 0u64;
    let mut buf = [0u8; 256];
    while t0.elapsed() < Duration::from_secs(secs) {
        if !faulted && t0.elapsed() >= Duration::from_millis(fault_at) {
            faulted = true;
            fault();
        }
        let flow = (seq % u64::from(FLOWS)) as usize;
        seq += 1;
        socks[flow].send_to(format!("seq:{seq}").as_bytes(), to).unwrap();
        run.sent[flow].push((Instant::now(), seq));
        collect(&socks, &mut buf, &mut run.answered);
        thread::sleep(Duration::from_micros(900));
    }
    thread::sleep(Duration::from_millis(200));
    collect(&socks, &mut buf, &mut run.answered);
    run
}

/// Takes every answer `NAME seq:N` waiting on `socks`, noting when it came.
fn collect(socks: &[UdpSocket], buf: &mut [u8], answered: &mut HashMap<u64, Instant>) {
    for s in socks {
        while let Ok((n, _)) = s.recv_from(buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some((_, q)) = text.split_once(" seq:") {
                answered.entry(q.parse().unwrap()).or_insert_with(Instant::now);
            }
        }
    }
}

/// A binary of this package next to the running test executable.
fn lab_binary(name: &str) -> PathBuf {
    crate::lab::lab_server_binary().with_file_name(name)
}

fn pass_on(ns: &NetNs, ifname: &str) -> Ebpf {
    let mut pass = Ebpf::load(redirector::LAB_OBJECT).unwrap();
    let prog: &mut Xdp = pass.program_mut("pass").unwrap().try_into().unwrap();
    prog.load().unwrap();
    let _in = ns.enter();
    prog.attach(ifname, aya::programs::XdpMode::Driver).unwrap();
    pass
}

fn veth(a_ns: &NetNs, a: &str, b_ns: &NetNs, b: &str) {
    sh(&[
        "ip", "link", "add", a, "netns", &a_ns.name, "type", "veth", "peer", "name", b, "netns", &b_ns.name,
    ]);
    in_ns(&a_ns.name, &["ip", "link", "set", a, "up"]);
    in_ns(&b_ns.name, &["ip", "link", "set", b, "up"]);
}

fn addr(ns: &NetNs, cidr: &str, dev: &str) {
    in_ns(&ns.name, &["ip", "addr", "add", cidr, "dev", dev]);
}

impl Cluster {
    /// Builds the namespaces and links for `n` gateways (1..=9), starts the
    /// backends' servers and, with [`Front::Bgp`], the router's BIRD (with
    /// `resilient`, its routes go to table 200 and `ecmp-groups` keeps them
    /// as resilient next-hop groups in main); no gateway runs anything yet.
    pub fn new(tag: &str, n: u8, front: Front) -> Cluster {
        assert!((1..=9).contains(&n));
        assert!(front != Front::Vrrp || n == 2, "a VRRP pair is two gateways");
        let client = NetNs::new(&format!("{tag}c"));
        let router = NetNs::new(&format!("{tag}r"));
        let lan = NetNs::new(&format!("{tag}l"));
        let primary = NetNs::new(&format!("{tag}p"));
        let secondary = NetNs::new(&format!("{tag}s"));
        let mut pass = Vec::new();
        // Router: forwards, spreads flows by an L4 hash.
        for s in ["net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"] {
            in_ns(&router.name, &["sysctl", "-qw", s]);
        }
        veth(&client, "c0", &router, "r-c");
        addr(&client, "198.18.1.2/24", "c0");
        addr(&router, "198.18.1.1/24", "r-c");
        in_ns(
            &client.name,
            &["ip", "route", "add", "198.18.0.0/15", "via", "198.18.1.1"],
        );
        in_ns(&client.name, &["ethtool", "-K", "c0", "tx", "off"]);
        // The backend LAN: one bridge, the router and both backends on it.
        in_ns(&lan.name, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(&lan.name, &["ip", "link", "set", "br0", "up"]);
        let port = |name: &str| in_ns(&lan.name, &["ip", "link", "set", name, "master", "br0"]);
        veth(&router, "r-b", &lan, "l-r");
        port("l-r");
        addr(&router, "198.18.2.1/24", "r-b");
        for (ns, dev, host, name) in [(&primary, "p0", 2, "l-p"), (&secondary, "s0", 3, "l-s")] {
            veth(ns, dev, &lan, name);
            port(name);
            addr(ns, &format!("198.18.2.{host}/24"), dev);
            addr(ns, &format!("{DSR_VIP}/32"), "lo");
            in_ns(&ns.name, &["ethtool", "-K", dev, "tx", "off"]);
            for s in [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                // NAT replies spread over the gateways by an L4 hash.
                "net.ipv4.fib_multipath_hash_policy=1",
            ] {
                in_ns(&ns.name, &["sysctl", "-qw", s]);
            }
            // DSR replies and anything else: straight to the router. The
            // DSR replies (from the VIP) by a rule of their own: the NAT
            // replies' route to the clients through the gateways is more
            // specific than the default.
            in_ns(&ns.name, &["ip", "route", "add", "default", "via", "198.18.2.1"]);
            in_ns(
                &ns.name,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    "198.18.2.1",
                    "table",
                    "10",
                ],
            );
            in_ns(
                &ns.name,
                &[
                    "ip", "rule", "add", "from", DSR_VIP, "lookup", "10", "priority", "100",
                ],
            );
        }
        // The front segment: a bridge in the router with its address on it.
        in_ns(&router.name, &["ip", "link", "add", "front", "type", "bridge"]);
        in_ns(&router.name, &["ip", "link", "set", "front", "up"]);
        addr(&router, "198.18.10.1/24", "front");
        let mut gateways = Vec::new();
        for i in 1..=n {
            let ns = NetNs::new(&format!("{tag}g{i}"));
            in_ns(&ns.name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let rdev = format!("f-g{i}");
            veth(&router, &rdev, &ns, "g-r");
            in_ns(&router.name, &["ip", "link", "set", &rdev, "master", "front"]);
            addr(&ns, &format!("198.18.10.{}/24", 10 + i), "g-r");
            let ldev = format!("l-g{i}");
            veth(&ns, "g-b", &lan, &ldev);
            port(&ldev);
            addr(&ns, &format!("198.18.2.{}/24", 10 + i), "g-b");
            in_ns(
                &ns.name,
                &["ip", "route", "add", "198.18.0.0/15", "via", "198.18.10.1"],
            );
            // The bridges flood frames for a dead gateway's MAC to the
            // survivors, as switches do; their programs leave those to the
            // stack (not addressed to them), so BFD ends the outage.
            // The far ends of the gateway's redirects run XDP (native veth
            // redirects deliver only then).
            pass.push(pass_on(&router, &rdev));
            pass.push(pass_on(&lan, &ldev));
            let left = Leftovers::new(&ns);
            let config = std::env::temp_dir().join(format!("{}.toml", ns.name));
            let track_file = left.state_dir.join("track");
            let base = match front {
                Front::Bgp { .. } => CLUSTER_CONFIG.to_owned(),
                Front::Vrrp => CLUSTER_CONFIG.replace(
                    "[announce]\ntable = 100\n",
                    &format!("[announce]\ntrack_file = {track_file:?}\n"),
                ),
            };
            std::fs::write(
                &config,
                format!(
                    "{base}\n[control]\nsocket = {:?}\nstate_dir = {:?}\nbpffs_dir = {:?}\n",
                    left.socket, left.state_dir, left.bpffs_dir
                ),
            )
            .unwrap();
            gateways.push(ClusterGateway {
                ns,
                uplink: format!("198.18.10.{}", 10 + i),
                daemon: None,
                bird: None,
                keepalived: None,
                track_file,
                left,
                config,
            });
        }
        // Operator intent reaches every gateway: each lists the others'
        // sockets as peers (the last table of the file is [control]).
        for g in &gateways {
            let peers: Vec<String> = gateways
                .iter()
                .filter(|o| o.config != g.config)
                .map(|o| format!("{:?}", o.left.socket))
                .collect();
            let mut text = std::fs::read_to_string(&g.config).unwrap();
            text.push_str(&format!("peers = [{}]\n", peers.join(", ")));
            std::fs::write(&g.config, text).unwrap();
        }
        // NAT replies to clients: with BGP, a multipath route the backends'
        // BIRD learns from every gateway (BFD drops a dead one); with VRRP,
        // the pair's backend-side address.
        if front == Front::Vrrp {
            let route = ["ip", "route", "add", "198.18.1.0/24", "via", VRRP_BACKEND_ADDRESS];
            for ns in [&primary, &secondary] {
                in_ns(&ns.name, &route);
            }
        }
        let servers = [
            (&primary, "primary", "198.18.2.2"),
            (&secondary, "secondary", "198.18.2.3"),
        ]
        .into_iter()
        .map(|(ns, name, own)| {
            Server::start_args(
                ns,
                name,
                &[
                    "--tcp".to_owned(),
                    format!("{own}:8080"),
                    "--udp".to_owned(),
                    format!("{own}:53"),
                    "--udp".to_owned(),
                    format!("{DSR_VIP}:53"),
                ],
                false,
            )
        })
        .collect();
        let backend_birds = match front {
            Front::Bgp { .. } => [(&primary, "198.18.2.2"), (&secondary, "198.18.2.3")]
                .into_iter()
                .map(|(ns, id)| {
                    let sessions: String = (1..=n)
                        .map(|i| {
                            format!(
                                "protocol bgp gw{i} from redirector_return {{ neighbor 198.18.2.{} as GATEWAY_AS; }}\n",
                                10 + i
                            )
                        })
                        .collect();
                    Bird::start(
                        ns,
                        &format!("define BACKEND_ID = {id};\ndefine BACKEND_AS = 65002;\ndefine GATEWAY_AS = 65001;"),
                        "backend.conf",
                        &sessions,
                    )
                })
                .collect(),
            Front::Vrrp => Vec::new(),
        };
        let (router_bird, groups) = match front {
            Front::Bgp { resilient } => {
                let (bird, groups) = router_bgp(&router, &gateways, resilient);
                (Some(bird), groups)
            }
            Front::Vrrp => {
                for vip in [NAT_VIP, DSR_VIP] {
                    in_ns(&router.name, &["ip", "route", "add", vip, "via", VRRP_ADDRESS]);
                }
                (None, None)
            }
        };
        Cluster {
            _pass: pass,
            client,
            router,
            lan,
            primary,
            secondary,
            gateways,
            front,
            router_bird,
            backend_birds,
            servers,
            _groups: groups,
        }
    }

    /// Starts gateway `i`'s (0-based) redirector and BIRD (waits until its
    /// BGP session is up), or with [`Front::Vrrp`] its redirector and
    /// keepalived (`gw1` preferred: priority 150, `gw2` 100).
    pub fn start_gateway(&mut self, i: usize) {
        let g = &mut self.gateways[i];
        g.daemon = Some(Daemon::start(&g.ns, &g.config, &g.left.socket));
        if self.front == Front::Vrrp {
            g.keepalived = Some(Keepalived::start(
                &g.ns,
                &[
                    ("IFACE", "g-r".to_owned()),
                    ("ADDRESS", format!("{VRRP_ADDRESS}/24")),
                    ("BACKEND_IFACE", "g-b".to_owned()),
                    ("BACKEND_ADDRESS", format!("{VRRP_BACKEND_ADDRESS}/24")),
                    ("VRID", "51".to_owned()),
                    ("PRIORITY", if i == 0 { "150" } else { "100" }.to_owned()),
                    ("TRACK_FILE", g.track_file.display().to_string()),
                ],
                "gateway.conf",
            ));
            return;
        }
        let id = g.uplink.clone();
        let router = "198.18.10.1";
        g.bird = Some(Bird::start(
            &g.ns,
            &format!(
                "define GATEWAY_ID = {id};\ndefine GATEWAY_AS = 65001;\ndefine UPLINK = {router};\n\
                 define UPLINK_AS = 65000;\ndefine ANNOUNCE_TABLE = {ANNOUNCE_TABLE};\n\
                 define RETURN_PREFIX = 198.18.1.0/24;"
            ),
            "gateway.conf",
            &format!(
                "include \"{}\";\n\
                 protocol bgp backend1 from redirector_backend {{ neighbor 198.18.2.2 as 65002; }}\n\
                 protocol bgp backend2 from redirector_backend {{ neighbor 198.18.2.3 as 65002; }}\n",
                crate::bird::example("gateway-return.conf").display()
            ),
        ));
        let name = format!("gw{}", i + 1);
        if let Some(b) = &self.router_bird {
            b.wait_established(&name, Duration::from_secs(30));
        }
        for b in &self.backend_birds {
            b.wait_established(&name, Duration::from_secs(30));
        }
    }

    /// The gateways (0-based) that hold [`VRRP_ADDRESS`] now.
    pub fn vrrp_masters(&self) -> Vec<usize> {
        self.gateways
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                let out = Command::new("ip")
                    .args(["-n", &g.ns.name, "-br", "addr", "show", "dev", "g-r"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains(&format!("{VRRP_ADDRESS}/"))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The router's next hops (gateway uplink addresses) for `vip` now, in
    /// the main table: a multipath route's, or its resilient group's.
    pub fn router_hops(&self, vip: &str) -> Vec<String> {
        router_hops(&self.router.name, vip)
    }

    /// The gateway (uplink address) the router sends a UDP flow from the
    /// client's `sport` to `vip:dport` to, by its own hash (`ip route get`).
    pub fn router_choice(&self, vip: &str, sport: u16, dport: u16) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.router.name,
                "route",
                "get",
                vip,
                "from",
                "198.18.1.2",
                "iif",
                "r-c",
                "ipproto",
                "udp",
                "sport",
                &sport.to_string(),
                "dport",
                &dport.to_string(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        words.windows(2).find(|w| w[0] == "via").map(|w| w[1].to_owned())
    }

    /// [`Cluster::router_choice`] for many flows of `proto` ("udp", "tcp")
    /// from the client's `sports` at once (one `ip -batch`, not an exec per
    /// flow).
    pub fn router_choices(&self, vip: &str, proto: &str, dport: u16, sports: &[u16]) -> Vec<Option<String>> {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["-n", &self.router.name, "-o", "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for p in sports {
            writeln!(
                stdin,
                "route get {vip} from 198.18.1.2 iif r-c ipproto {proto} sport {p} dport {dport}"
            )
            .unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(vip)).collect();
        assert_eq!(
            lines.len(),
            sports.len(),
            "ip route get answered {} of {}",
            lines.len(),
            sports.len()
        );
        lines
            .iter()
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.windows(2).find(|w| w[0] == "via").map(|w| w[1].to_owned())
            })
            .collect()
    }

    /// Kills gateway `i`'s BIRD or keepalived and redirector (after its
    /// links went).
    pub fn kill_gateway_processes(&mut self, i: usize) {
        let g = &mut self.gateways[i];
        g.bird = None;
        g.keepalived = None;
        g.daemon = None;
    }
}

/// The router's BIRD with a session per gateway, and with `resilient`
/// `ecmp-groups` keeping its routes as resilient groups.
fn router_bgp(router: &NetNs, gateways: &[ClusterGateway], resilient: bool) -> (Bird, Option<Server>) {
    let sessions: String = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| {
            format!(
                "protocol bgp gw{} from redirector_gateway {{ neighbor {} as GATEWAY_AS; }}\n",
                i + 1,
                g.uplink
            )
        })
        .collect();
    let router_bird = Bird::start(
        router,
        &format!(
            "define ROUTER_ID = 198.18.1.1;\ndefine ROUTER_AS = 65000;\ndefine GATEWAY_AS = 65001;\n\
                 define KERNEL_TABLE = {};",
            if resilient { 200 } else { 254 }
        ),
        "router.conf",
        &sessions,
    );
    let groups = resilient
        .then(|| Server::start_bin(router, &lab_binary("ecmp-groups"), "200", &[] as &[&str], false));
    (router_bird, groups)
}

/// [`Cluster::router_hops`] of the router namespace `router`.
pub fn router_hops(router: &str, vip: &str) -> Vec<String> {
    let show = |args: &[&str]| {
        let out = Command::new("ip")
            .arg("-n")
            .arg(router)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let after = |text: &str, key: &str| -> Vec<String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == key)
            .map(|w| w[1].to_owned())
            .collect()
    };
    let route = show(&["route", "show", vip]);
    let mut hops = match after(&route, "nhid").first() {
        Some(group) => {
            let g = show(&["nexthop", "show", "id", group]);
            after(&g, "group")
                .first()
                .map(|members| {
                    members
                        .split('/')
                        .flat_map(|m| {
                            after(
                                &show(&["nexthop", "show", "id", m.split(',').next().unwrap_or(m)]),
                                "via",
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
        None => after(&route, "via"),
    };
    hops.sort();
    hops
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // BIRDs and daemons first, then the namespaces (their own drops).
        self.router_bird = None;
        self.backend_birds.clear();
        for g in &mut self.gateways {
            g.bird = None;
            g.keepalived = None;
            g.daemon = None;
            let _ = std::fs::remove_file(&g.config);
        }
    }
}
