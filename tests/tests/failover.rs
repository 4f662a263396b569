//! The control plane with real traffic in the lab: the daemon probes both
//! backends, fails over when the primary's server process is SIGKILLed or its
//! link goes down, and fails back by policy; flows that started on the
//! secondary stay there. Behaviour only: speed lives in `cargo xtask bench failover`.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use redirector_tests::{
    lab::{Running, Server, lab_config_with, tcp_request},
    netns::in_ns,
    require_root,
};

/// The lab's services with a short failback delay, so the test waits little.
fn config(extra: &str) -> String {
    lab_config_with(&format!(
        "[service.failover]\nfailback_delay = \"300ms\"\n{extra}"
    ))
}

/// Sends `seq:N` datagrams on one socket (one flow) until the answer comes
/// from `who` or `within` passes; returns how many were sent.
fn until_answered_by(sock: &UdpSocket, vip: SocketAddr, who: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 128];
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        sock.send_to(format!("seq:{n}").as_bytes(), vip).unwrap();
        if let Ok((len, from)) = sock.recv_from(&mut buf) {
            let answer = String::from_utf8_lossy(&buf[..len]).into_owned();
            assert_eq!(from, vip, "answers come from the VIP");
            if answer.starts_with(who) {
                return n;
            }
        }
    }
    panic!("no answer from {who} via {vip} within {within:?} ({n} sent)");
}

/// Opens new flows (a fresh socket each time: flows started while the
/// secondary was active stay there) until one is answered by `who`.
fn until_new_flow_answered_by(vip: SocketAddr, who: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let s = udp(20);
        let mut buf = [0u8; 128];
        s.send_to(b"hello", vip).unwrap();
        if let Ok((len, _)) = s.recv_from(&mut buf)
            && buf[..len].starts_with(who.as_bytes())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no new flow answered by {who} via {vip} within {within:?}");
}

fn udp(read_timeout_ms: u64) -> UdpSocket {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(read_timeout_ms)))
        .unwrap();
    s
}

/// One answer on `sock` (retrying lost datagrams a few times).
fn answer(sock: &UdpSocket, vip: SocketAddr) -> String {
    let mut buf = [0u8; 128];
    for _ in 0..20 {
        sock.send_to(b"hello", vip).unwrap();
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..len]).into_owned();
        }
    }
    panic!("no answer via {vip}");
}

#[test]
fn fails_over_on_kill_and_link_down_and_fails_back() {
    if !require_root("fails_over_on_kill_and_link_down_and_fails_back") {
        return;
    }
    let mut run = Running::start_with("fo", &config(""), false);
    let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
    let web: SocketAddr = "198.18.100.1:80".parse().unwrap();
    let client = run.lab.client.enter();
    let flow = udp(20);
    until_answered_by(&flow, vip, "primary", Duration::from_secs(5));
    assert_eq!(tcp_request(web), "primary");

    // 1. The primary's server process dies.
    run.primary.kill();
    until_answered_by(&flow, vip, "secondary", Duration::from_secs(5));
    assert_eq!(tcp_request(web), "secondary");
    // A new flow goes to the secondary too.
    assert!(answer(&udp(200), vip).starts_with("secondary"));

    // 2. It comes back: after the failback delay new flows go to the primary;
    // the flow that moved to the secondary stays there.
    drop(client);
    run.primary = Server::start(&run.lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", false);
    let client = run.lab.client.enter();
    until_new_flow_answered_by(vip, "primary", Duration::from_secs(5));
    assert!(
        answer(&flow, vip).starts_with("secondary"),
        "a flow on the secondary stays there"
    );
    assert_eq!(tcp_request(web), "primary");

    // 3. The primary's link goes down (inside its namespace).
    drop(client);
    in_ns(&run.lab.primary.name, &["ip", "link", "set", "p0", "down"]);
    let client = run.lab.client.enter();
    let flow2 = udp(20);
    until_answered_by(&flow2, vip, "secondary", Duration::from_secs(5));
    assert_eq!(tcp_request(web), "secondary");

    // The link comes back (its routes went with it): failback again.
    drop(client);
    in_ns(&run.lab.primary.name, &["ip", "link", "set", "p0", "up"]);
    in_ns(
        &run.lab.primary.name,
        &["ip", "route", "replace", "198.18.0.0/15", "via", "198.18.2.1"],
    );
    let _client = run.lab.client.enter();
    until_new_flow_answered_by(vip, "primary", Duration::from_secs(10));
    drop(_client);
    let (_dp, _lab) = run.stop();
}

#[test]
fn manual_failback_waits_for_the_operator() {
    if !require_root("manual_failback_waits_for_the_operator") {
        return;
    }
    let mut run = Running::start_with("fbm", &config("failback = \"manual\""), false);
    let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
    {
        let _c = run.lab.client.enter();
        until_answered_by(&udp(20), vip, "primary", Duration::from_secs(5));
    }
    run.primary.kill();
    {
        let _c = run.lab.client.enter();
        until_answered_by(&udp(20), vip, "secondary", Duration::from_secs(5));
    }
    run.primary = Server::start(&run.lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", false);
    // Well past rise + failback_delay: still on the secondary.
    std::thread::sleep(Duration::from_secs(1));
    {
        let _c = run.lab.client.enter();
        for _ in 0..5 {
            assert!(answer(&udp(200), vip).starts_with("secondary"), "manual failback");
        }
    }
    let _ = run.stop();
}
