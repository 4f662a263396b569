//! The lab's client as the reliability tests and the soak use it: TCP
//! connections from chosen ports, steady client traffic that records what
//! was lost, and the daemon's status and metrics.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use crate::{
    daemon::{Setup, cli_ok},
    netns::NetNs,
};

/// The lab's TCP service web4 (NAT, backends on port 8080).
pub const WEB4: &str = "198.18.100.1:80";

/// One TCP connection from the client's `port` (0: any) to `to`, its source
/// port reusable at once (as behind a busy NAT); returns who answered.
pub fn connect_from(client: &NetNs, port: u16, to: &str) -> Result<String, String> {
    connect_in(&client.name, port, to)
}

/// [`connect_from`] by namespace name.
pub fn connect_in(ns: &str, port: u16, to: &str) -> Result<String, String> {
    let name = ns.to_owned();
    let to: SocketAddr = to.parse().unwrap();
    thread::spawn(move || {
        let _in = crate::netns::enter(&name);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_reuse_address(true).unwrap();
        let from: SocketAddr = format!("198.18.1.2:{port}").parse().unwrap();
        sock.bind(&from.into()).map_err(|e| format!("bind {from}: {e}"))?;
        sock.connect_timeout(&to.into(), Duration::from_secs(2))
            .map_err(|e| format!("connect from {from}: {e}"))?;
        let mut c: std::net::TcpStream = sock.into();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"hello").map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| e.to_string())?;
        Ok(s)
    })
    .join()
    .unwrap()
}

/// Waits until new connections (fresh ports) reach `who`.
pub fn wait_for(client: &NetNs, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if connect_from(client, 0, WEB4).as_deref() == Ok(who) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("new connections never reached the {who}");
}

/// `redirector status --json` over `sock`.
pub fn status_json(sock: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&cli_ok(sock, &["status", "--json"])).unwrap()
}

/// Every backend of every service is up.
pub fn all_up(st: &serde_json::Value) -> bool {
    st["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["backends"].as_array().unwrap().iter())
        .all(|b| b["health"] == "up")
}

/// `health` of `service`'s backend `slot` (0 primary, 1 secondary) and the
/// service's active backend, from `status --json`.
pub fn health_of(sock: &std::path::Path, service: &str, slot: usize) -> (String, String) {
    let st = status_json(sock);
    let svc = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == service)
        .unwrap()
        .clone();
    (
        svc["backends"][slot]["health"].as_str().unwrap().to_owned(),
        svc["active"].as_str().unwrap().to_owned(),
    )
}

/// Waits (at most 10 s) until `health_of(..).0` is `want`.
pub fn wait_health(sock: &std::path::Path, service: &str, slot: usize, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while health_of(sock, service, slot).0 != want {
        assert!(
            Instant::now() < deadline,
            "{service} backend {slot} never became {want}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Client traffic for the fault-injection tests, until stopped (at most
/// 180 s): one UDP request per ms to dns4 (`seq:N`, answered `NAME seq:N`)
/// and 50 TCP connections per second to web4.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    udp: thread::JoinHandle<(Vec<Instant>, std::collections::BTreeSet<u64>)>,
    tcp: thread::JoinHandle<(u64, Vec<(Instant, String)>)>,
}

/// What the client saw.
pub struct Seen {
    /// UDP requests sent.
    pub udp_sent: u64,
    /// Their sequence numbers that got no answer.
    pub udp_lost: Vec<u64>,
    /// When each of those was sent.
    pub udp_lost_at: Vec<Instant>,
    /// TCP connections tried.
    pub tcp_made: u64,
    /// Why the failed ones failed.
    pub tcp_failed: Vec<String>,
    /// When each of those was begun.
    pub tcp_failed_at: Vec<Instant>,
}

impl Traffic {
    /// Starts both flows from the client namespace.
    pub fn start(client: &NetNs) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let udp = {
            let (stop, ns) = (stop.clone(), client.name.clone());
            thread::spawn(move || {
                let _in = crate::netns::enter(&ns);
                let sock = std::net::UdpSocket::bind("198.18.1.2:0").unwrap();
                sock.set_nonblocking(true).unwrap();
                let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
                let (mut sent_at, mut seen) = (Vec::new(), std::collections::BTreeSet::new());
                let mut buf = [0u8; 128];
                let note = |buf: &[u8], seen: &mut std::collections::BTreeSet<u64>| {
                    let text = String::from_utf8_lossy(buf);
                    if let Some((_, n)) = text.split_once(" seq:") {
                        seen.insert(n.parse().unwrap());
                    }
                };
                let until = Instant::now() + Duration::from_secs(180);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                    sent_at.push(Instant::now());
                    let _ = sock.send_to(format!("seq:{}", sent_at.len()).as_bytes(), vip);
                    thread::sleep(Duration::from_millis(1));
                    while let Ok((n, _)) = sock.recv_from(&mut buf) {
                        note(&buf[..n], &mut seen);
                    }
                }
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    note(&buf[..n], &mut seen);
                }
                (sent_at, seen)
            })
        };
        let tcp = {
            let (stop, ns) = (stop.clone(), client.name.clone());
            thread::spawn(move || {
                let (mut made, mut failed) = (0u64, Vec::new());
                let until = Instant::now() + Duration::from_secs(180);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                    made += 1;
                    let at = Instant::now();
                    match connect_in(&ns, 0, WEB4) {
                        Ok(who) if who == "primary" || who == "secondary" => {}
                        Ok(other) => failed.push((at, format!("answer {other:?}"))),
                        Err(e) => failed.push((at, e)),
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                (made, failed)
            })
        };
        Traffic { stop, udp, tcp }
    }

    /// Stops both flows; what the client saw.
    pub fn stop(self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (sent_at, seen) = self.udp.join().unwrap();
        let (tcp_made, failed) = self.tcp.join().unwrap();
        let udp_lost: Vec<u64> = (1..=sent_at.len() as u64).filter(|n| !seen.contains(n)).collect();
        Seen {
            udp_sent: sent_at.len() as u64,
            udp_lost_at: udp_lost.iter().map(|&n| sent_at[(n - 1) as usize]).collect(),
            udp_lost,
            tcp_made,
            tcp_failed_at: failed.iter().map(|f| f.0).collect(),
            tcp_failed: failed.into_iter().map(|f| f.1).collect(),
        }
    }
}

/// `/metrics` from inside the gateway.
pub fn scrape(s: &Setup) -> String {
    try_scrape(&s.lab.gw).unwrap()
}

/// `/metrics` from inside the gateway namespace `gw` (the lab's endpoint,
/// 198.18.1.1:9630), or why not.
pub fn try_scrape(gw: &NetNs) -> std::io::Result<String> {
    let _in = gw.enter();
    let mut c = std::net::TcpStream::connect("198.18.1.1:9630")?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    c.read_to_string(&mut body)?;
    Ok(body)
}

/// The value of an unlabelled metric in a scrape.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the scrape"))
}
