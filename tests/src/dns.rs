//! The DNS recipe's servers in the lab: dnsmasq on a backend, queries
//! through the VIP (tests/tests/dns.rs, the recipes benchmark, the demo).
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// What each resolver answers for `www.lab`: which one answered.
pub const PRIMARY_ANSWER: [u8; 4] = [198, 18, 50, 1];
pub const SECONDARY_ANSWER: [u8; 4] = [198, 18, 50, 2];

pub fn dnsmasq_available(test: &str) -> bool {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: dnsmasq is not installed (`cargo xtask bootstrap` installs it), and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test}: dnsmasq is not installed");
    false
}

/// dnsmasq in `ns` on `addr`, answering `www.lab` and `health.lab` from
/// local data (no upstream); killed on drop.
pub struct Dnsmasq(Child);

impl Dnsmasq {
    pub fn start(ns: &NetNs, addr: &str, answer: [u8; 4]) -> Dnsmasq {
        let ip = std::net::Ipv4Addr::from(answer);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "/usr/sbin/dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
            ])
            .args([
                "--bind-interfaces",
                &format!("--listen-address={addr}"),
                "--except-interface=lo",
            ])
            .arg(format!("--address=/www.lab/{ip}"))
            .arg(format!("--address=/health.lab/{ip}"))
            .args(["--pid-file=", "--user=root", "--log-facility=-", "--cache-size=0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Dnsmasq(child);
        // Bound once it answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        let target: SocketAddr = format!("{addr}:53").parse().unwrap();
        while query_once(&ns.name, target).is_none() {
            assert!(Instant::now() < deadline, "dnsmasq on {addr} does not answer");
            thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A query for `www.lab` A with id `id`.
pub fn query(id: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(b"\x03www\x03lab\x00\x00\x01\x00\x01");
    m
}

/// The A record of an answer to `id` (the last 4 bytes of a one-answer reply).
pub fn answer_of(reply: &[u8], id: u16) -> Option<[u8; 4]> {
    if reply.len() < 16 || reply[..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 || reply[3] & 0x0f != 0 {
        return None;
    }
    reply[reply.len() - 4..].try_into().ok()
}

pub fn query_once(ns: &str, to: SocketAddr) -> Option<[u8; 4]> {
    let name = ns.to_owned();
    thread::spawn(move || {
        let _in = crate::netns::enter(&name);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        s.send_to(&query(7), to).ok()?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).ok()?;
        answer_of(&buf[..n], 7)
    })
    .join()
    .unwrap()
}

/// One query per ms to the VIP, a new flow every 50, until stopped: per
/// query, when it was sent and who answered it (if anyone).
pub fn queries(
    client: &NetNs,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<(Duration, Option<[u8; 4]>)>> {
    let name = client.name.clone();
    thread::spawn(move || {
        let _in = crate::netns::enter(&name);
        let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
        let start = Instant::now();
        let mut sent: Vec<(Duration, Option<[u8; 4]>)> = Vec::new();
        let mut sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let drain = |sock: &UdpSocket, sent: &mut Vec<(Duration, Option<[u8; 4]>)>, buf: &mut [u8]| {
            while let Ok(n) = sock.recv(buf) {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some(a) = answer_of(&buf[..n], id)
                    && let Some(q) = sent.get_mut(usize::from(id))
                {
                    q.1 = Some(a);
                }
            }
        };
        while !stop.load(Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(30)
            && sent.len() < 60_000
        {
            let id = u16::try_from(sent.len()).unwrap();
            if id % 50 == 0 && id > 0 {
                thread::sleep(Duration::from_millis(20));
                drain(&sock, &mut sent, &mut buf);
                sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_nonblocking(true).unwrap();
            }
            sent.push((start.elapsed(), None));
            let _ = sock.send_to(&query(id), vip);
            thread::sleep(Duration::from_millis(1));
            drain(&sock, &mut sent, &mut buf);
        }
        thread::sleep(Duration::from_millis(100));
        drain(&sock, &mut sent, &mut buf);
        sent
    })
}

pub fn config() -> String {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/dns/redirector.toml");
    std::fs::read_to_string(example).unwrap().replace(
        "interfaces = [\"eth0\", \"eth1\"]\nbackend_interfaces = [\"eth1\"]",
        "interfaces = [\"g-c\", \"g-p\", \"g-s\"]\nbackend_interfaces = [\"g-p\", \"g-s\"]\nxdp_mode = \"driver\"",
    )
}

pub fn tcp_answer(client: &NetNs) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.name,
            "dig",
            "+tcp",
            "+short",
            "+time=1",
            "+tries=1",
            "@198.18.100.1",
            "www.lab",
            "A",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
