//! The DNS recipe (docs/examples/dns/) with a real server, dnsmasq, on both
//! backends: `kind = "dns"` health checks with a real query, 53/udp and
//! 53/tcp in one group. A killed primary resolver: both services move,
//! queries answered by the secondary within milliseconds. Only the UDP side
//! failing (a firewall drops 53/udp): the TCP service follows its group.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    collections::BTreeMap,
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

use redirector_tests::{
    daemon::{Setup, cli_ok},
    netns::{NetNs, in_ns},
    require_root,
};

/// What each resolver answers for `www.lab`: which one answered.
const PRIMARY_ANSWER: [u8; 4] = [198, 18, 50, 1];
const SECONDARY_ANSWER: [u8; 4] = [198, 18, 50, 2];

fn dnsmasq_available(test: &str) -> bool {
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
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(ns: &NetNs, addr: &str, answer: [u8; 4]) -> Dnsmasq {
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

    fn kill(&mut self) {
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
fn query(id: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(b"\x03www\x03lab\x00\x00\x01\x00\x01");
    m
}

/// The A record of an answer to `id` (the last 4 bytes of a one-answer reply).
fn answer_of(reply: &[u8], id: u16) -> Option<[u8; 4]> {
    if reply.len() < 16 || reply[..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 || reply[3] & 0x0f != 0 {
        return None;
    }
    reply[reply.len() - 4..].try_into().ok()
}

fn query_once(ns: &str, to: SocketAddr) -> Option<[u8; 4]> {
    let name = ns.to_owned();
    thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&name);
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
fn queries(client: &NetNs, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<(Duration, Option<[u8; 4]>)>> {
    let name = client.name.clone();
    thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&name);
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

fn config() -> String {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/dns/redirector.toml");
    std::fs::read_to_string(example).unwrap().replace(
        "interfaces = [\"eth0\", \"eth1\"]\nbackend_interfaces = [\"eth1\"]",
        "interfaces = [\"g-c\", \"g-p\", \"g-s\"]\nbackend_interfaces = [\"g-p\", \"g-s\"]\nxdp_mode = \"driver\"",
    )
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn active(sock: &std::path::Path, service: &str) -> String {
    let st = cli_ok(sock, &["status"]);
    st.lines()
        .find(|l| l.starts_with(&format!("{service} ")))
        .and_then(|l| l.split("active ").nth(1))
        .unwrap_or("")
        .to_owned()
}

fn tcp_answer(client: &NetNs) -> String {
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

#[test]
fn a_killed_resolver_and_a_resolver_whose_udp_side_fails() {
    if !require_root("dns recipe") || !dnsmasq_available("dns recipe") {
        return;
    }
    let mut s = Setup::with_config("dn", &config());
    // The lab's own servers hold port 53: the resolvers take it.
    s.primary.kill();
    s.secondary.kill();
    let mut primary = Dnsmasq::start(&s.lab.primary, "198.18.2.2", PRIMARY_ANSWER);
    let _secondary = Dnsmasq::start(&s.lab.secondary, "198.18.3.2", SECONDARY_ANSWER);
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_for("dns-udp healthy", Duration::from_secs(5), || {
        let st = cli_ok(&sock, &["status"]);
        st.lines()
            .skip_while(|l| !l.starts_with("dns-udp "))
            .skip(1)
            .take(2)
            .all(|l| l.contains(" up "))
    });

    // The primary resolver dies.
    let stop = Arc::new(AtomicBool::new(false));
    let t = queries(&s.lab.client, stop.clone());
    thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    primary.kill();
    wait_for("dns-udp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-udp") == "secondary"
    });
    wait_for("dns-tcp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-tcp") == "secondary"
    });
    let moved = killed_at.elapsed();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = t.join().unwrap();
    let unanswered: Vec<Duration> = sent
        .iter()
        .filter(|(_, a)| a.is_none())
        .map(|(at, _)| *at)
        .collect();
    let mut by = BTreeMap::new();
    for (_, a) in &sent {
        *by.entry(*a).or_insert(0usize) += 1;
    }
    let window = match (unanswered.first(), unanswered.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    eprintln!(
        "dnsmasq killed: {} of {} queries unanswered within {window:.1?}; both services moved within {moved:.1?}",
        unanswered.len(),
        sent.len()
    );
    assert!(unanswered.len() < 100, "{} queries lost", unanswered.len());
    assert!(
        by.get(&Some(SECONDARY_ANSWER)).is_some_and(|n| *n > 100),
        "{by:?}"
    );
    assert_eq!(tcp_answer(&s.lab.client), "198.18.50.2");

    // Back (failback after 1 s), then only its UDP side fails: the TCP
    // service follows its group although its own probes pass.
    drop(primary);
    let _primary = Dnsmasq::start(&s.lab.primary, "198.18.2.2", PRIMARY_ANSWER);
    wait_for("dns-udp back on the primary", Duration::from_secs(10), || {
        active(&sock, "dns-udp") == "primary"
    });
    wait_for("dns-tcp back on the primary", Duration::from_secs(10), || {
        active(&sock, "dns-tcp") == "primary"
    });
    assert_eq!(tcp_answer(&s.lab.client), "198.18.50.1");
    let p = s.lab.primary.name.clone();
    in_ns(&p, &["nft", "add", "table", "inet", "rdrtest"]);
    in_ns(
        &p,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "rdrtest",
            "in",
            "{ type filter hook input priority 0; }",
        ],
    );
    in_ns(
        &p,
        &[
            "nft", "add", "rule", "inet", "rdrtest", "in", "udp", "dport", "53", "drop",
        ],
    );
    wait_for("dns-udp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-udp") == "secondary"
    });
    wait_for("dns-tcp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-tcp") == "secondary"
    });
    let st = cli_ok(&sock, &["status"]);
    let tcp_primary = st
        .lines()
        .skip_while(|l| !l.starts_with("dns-tcp "))
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        tcp_primary.contains(" up ") && tcp_primary.contains("DOWN FOR dns-udp OF ITS GROUP"),
        "{tcp_primary}"
    );
    let answer = tcp_answer(&s.lab.client);
    assert_eq!(
        answer,
        "198.18.50.2",
        "{}\n{}",
        cli_ok(&sock, &["status"]),
        cli_ok(&sock, &["events"])
    );
    // The firewall goes: both return together.
    in_ns(&p, &["nft", "delete", "table", "inet", "rdrtest"]);
    // Together: the group's failback waits for the UDP side's delay.
    let mut first = None;
    wait_for("both back on the primary", Duration::from_secs(10), || {
        let (u, t) = (active(&sock, "dns-udp"), active(&sock, "dns-tcp"));
        if first.is_none() && (u == "primary" || t == "primary") {
            first = Some((Instant::now(), u.clone(), t.clone()));
        }
        u == "primary" && t == "primary"
    });
    let (at, u, t) = first.unwrap();
    assert!(
        at.elapsed() < Duration::from_millis(200),
        "failback apart: first seen udp {u}, tcp {t}, both {:?} later\n{}",
        at.elapsed(),
        cli_ok(&sock, &["events"])
    );
}
