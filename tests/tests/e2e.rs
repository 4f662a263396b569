//! Real TCP and UDP traffic through veth pairs: client namespace → gateway
//! running redirector (native XDP) → backend namespaces, in NAT and DSR mode,
//! IPv4 and IPv6. Replies must reach the client from the VIP.
#![expect(clippy::unwrap_used, reason = "tests")]

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

use redirector::{config::Config, daemon::Daemon, datapath::Datapath};
use redirector_common::Counter;
use redirector_tests::{
    lab::{DsrVips, Lab},
    netns::NetNs,
    require_root,
};

const CONFIG: &str = r#"
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

/// Backend servers answering with their name, until `stop` is set.
fn serve(
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
        let ns = NetNs { name: nsname };
        let _in = ns.enter();
        std::mem::forget(ns); // owned by the Lab; only entered here
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
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut idle = true;
            for l in &listeners {
                if let Ok((mut c, _)) = l.accept() {
                    idle = false;
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    if c.read(&mut buf).is_ok() {
                        let _ = c.write_all(name.as_bytes());
                    }
                }
            }
            for s in &sockets {
                while let Ok((_, from)) = s.recv_from(&mut buf) {
                    idle = false;
                    let _ = s.send_to(name.as_bytes(), from);
                }
            }
            if idle {
                thread::sleep(Duration::from_millis(1));
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    h
}

fn tcp_request(to: SocketAddr) -> String {
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
fn udp_request(sock: &UdpSocket, to: SocketAddr) -> (String, SocketAddr) {
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        sock.send_to(b"hello", to).unwrap();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            return (String::from_utf8_lossy(&buf[..n]).into_owned(), from);
        }
    }
    panic!("no UDP answer from {to}");
}

struct Gateway {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<Datapath>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Gateway {
    /// Runs the real daemon (Daemon::start + run) in a thread inside the gateway namespace.
    fn start(ns: &NetNs, cfg: Config) -> Gateway {
        let nsname = ns.name.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let ns = NetNs { name: nsname };
            let _in = ns.enter();
            std::mem::forget(ns);
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
    fn stop(mut self) -> Datapath {
        let _ = self.stop.take().unwrap().send(());
        let dp = self.done.recv_timeout(Duration::from_secs(10)).unwrap();
        self.thread.take().unwrap().join().unwrap();
        dp
    }
}

#[test]
fn real_traffic_nat_and_dsr_ipv4_and_ipv6() {
    if !require_root("real_traffic_nat_and_dsr_ipv4_and_ipv6") {
        return;
    }
    let lab = Lab::new(
        "e2e",
        &DsrVips {
            v4: &["198.18.100.2"],
            v6: &["2001:2::200"],
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let servers = [
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
    let cfg = Config::from_str_named(CONFIG, "e2e.toml").unwrap();
    let gw = Gateway::start(&lab.gw, cfg);

    let client = lab.client.enter();
    // TCP: the handshake only completes if replies come from the VIP.
    assert_eq!(tcp_request("198.18.100.1:80".parse().unwrap()), "primary");
    assert_eq!(tcp_request("[2001:2::100]:80".parse().unwrap()), "primary");
    assert_eq!(
        tcp_request("198.18.100.2:80".parse().unwrap()),
        "primary",
        "DSR TCP"
    );
    // UDP: the answer's source address is what the client sees.
    let u4 = UdpSocket::bind("0.0.0.0:0").unwrap();
    u4.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let u6 = UdpSocket::bind("[::]:0").unwrap();
    u6.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    for (sock, vip) in [
        (&u4, "198.18.100.1:53"),
        (&u6, "[2001:2::100]:53"),
        (&u6, "[2001:2::200]:53"),
    ] {
        let vip: SocketAddr = vip.parse().unwrap();
        let (who, from) = udp_request(sock, vip);
        assert_eq!((who.as_str(), from), ("primary", vip), "UDP via {vip}");
    }
    // Steady state: 200 more requests, all answered from the VIP.
    let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
    for i in 0..200 {
        let (who, from) = udp_request(&u4, vip);
        assert_eq!((who.as_str(), from), ("primary", vip), "request {i}");
    }
    drop(client);

    // The gateway's own probe of a NAT backend port is not a client reply.
    {
        let _in = lab.gw.enter();
        assert_eq!(tcp_request("198.18.2.2:8080".parse().unwrap()), "primary");
    }

    let dp = gw.stop();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
    let dns4 = dp.backend_stats(1, 0).unwrap();
    assert!(dns4.fwd_packets >= 201 && dns4.rev_packets >= 201, "{dns4:?}");
    assert_eq!(
        dp.backend_stats(1, 1).unwrap().fwd_packets,
        0,
        "nothing to the secondary"
    );
    let c = dp.counters().unwrap();
    // All but the first packets of each flow took the XDP redirect path, not the stack.
    assert!(
        c[Counter::Unresolved as usize] < 40,
        "unresolved next hops: {c:?}"
    );
    assert_eq!(c[Counter::RedirectFailed as usize], 0, "{c:?}");
    eprintln!(
        "counters: {:?}",
        Counter::ALL
            .iter()
            .map(|k| (k.name(), c[*k as usize]))
            .collect::<Vec<_>>()
    );
}
