//! Real TCP and UDP traffic through veth pairs: client namespace → gateway
//! running redirector (native XDP) → backend namespaces, in NAT and DSR mode,
//! IPv4 and IPv6. Replies must reach the client from the VIP.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use redirector_common::Counter;
use redirector_tests::{
    lab::{Running, lab_config_with, live_counters, tcp_request, udp_request},
    netns::{NetNs, in_ns},
    require_root,
};

/// A host's NIC is replaced (new MAC) and the gateway learns it; the daemon
/// hears of it asynchronously (microseconds), so don't race the event.
fn replace_mac(host: &NetNs, dev: &str, gw: &NetNs, gw_dev: &str, addr: &str, mac: &str) {
    in_ns(&host.name, &["ip", "link", "set", dev, "address", mac]);
    in_ns(
        &gw.name,
        &["ip", "neigh", "replace", addr, "lladdr", mac, "dev", gw_dev],
    );
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn real_traffic_nat_and_dsr_ipv4_and_ipv6() {
    if !require_root("real_traffic_nat_and_dsr_ipv4_and_ipv6") {
        return;
    }
    // Not a failover test: the NIC replacements below briefly blackhole a
    // backend, which the default probes (5 ms) would rightly call a failure.
    let run = Running::start_with(
        "e2e",
        &lab_config_with("[service.health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nfall = 5"),
        false,
    );
    let lab = &run.lab;

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
    // Warm-up done (neighbours resolved); give the daemon a moment to cache
    // the client's next hop, then the steady state must stay entirely in XDP:
    // 200 more requests, all answered from the VIP, none through the stack.
    std::thread::sleep(Duration::from_millis(200));
    let before = live_counters(&lab.gw, "g-c");
    let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
    for i in 0..200 {
        let (who, from) = udp_request(&u4, vip);
        assert_eq!((who.as_str(), from), ("primary", vip), "request {i}");
    }
    let after = live_counters(&lab.gw, "g-c");
    let unresolved = Counter::Unresolved as usize;
    assert_eq!(
        after[unresolved], before[unresolved],
        "steady state went through the stack: {after:?}"
    );
    drop(client);

    // Neighbour changes (a backend's, then the client's NIC replaced) must
    // reach the data plane through the netlink monitor, or packets are lost.
    for (host, dev, gw_dev, addr, mac) in [
        (&lab.primary, "p0", "g-p", "198.18.2.2", "02:00:00:00:02:99"),
        (&lab.client, "c0", "g-c", "198.18.1.2", "02:00:00:00:01:99"),
    ] {
        replace_mac(host, dev, &lab.gw, gw_dev, addr, mac);
        let before = live_counters(&lab.gw, "g-c");
        let inside = lab.client.enter();
        for i in 0..50 {
            let (who, from) = udp_request(&u4, vip);
            assert_eq!(
                (who.as_str(), from),
                ("primary", vip),
                "request {i} after {addr} moved to {mac}"
            );
        }
        drop(inside);
        let after = live_counters(&lab.gw, "g-c");
        assert_eq!(
            after[unresolved], before[unresolved],
            "after {addr} moved: {after:?}"
        );
    }

    // The gateway's own probe of a NAT backend port is not a client reply.
    {
        let _in = lab.gw.enter();
        assert_eq!(tcp_request("198.18.2.2:8080".parse().unwrap()), "primary");
    }

    let (dp, _lab) = run.stop();
    let dns4 = dp.backend_stats(1, 0).unwrap();
    assert!(dns4.fwd_packets >= 301 && dns4.rev_packets >= 301, "{dns4:?}");
    assert_eq!(
        dp.backend_stats(1, 1).unwrap().fwd_packets,
        0,
        "nothing to the secondary"
    );
    let c = dp.counters().unwrap();
    assert_eq!(c[Counter::RedirectFailed as usize], 0, "{c:?}");
    eprintln!(
        "counters: {:?}",
        Counter::ALL
            .iter()
            .map(|k| (k.name(), c[*k as usize]))
            .collect::<Vec<_>>()
    );
}

#[test]
fn direct_traffic_to_a_backend_works_beside_vip_traffic() {
    if !require_root("direct_traffic_to_a_backend_works_beside_vip_traffic") {
        return;
    }
    let run = Running::start("direct");
    let lab = &run.lab;
    let _client = lab.client.enter();
    let u4 = UdpSocket::bind("0.0.0.0:0").unwrap();
    u4.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let u6 = UdpSocket::bind("[::]:0").unwrap();
    u6.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    // Other sockets (client ports) for the direct exchanges: one client port
    // talking to a backend both ways would be one flow at the backend.
    let d4 = UdpSocket::bind("0.0.0.0:0").unwrap();
    d4.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let d6 = UdpSocket::bind("[::]:0").unwrap();
    d6.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    // Warm up the neighbours and the client's next hop through the VIPs.
    assert_eq!(tcp_request("198.18.100.1:80".parse().unwrap()), "primary");
    udp_request(&u4, "198.18.100.1:53".parse().unwrap());
    udp_request(&u6, "[2001:2::100]:53".parse().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let before = live_counters(&lab.gw, "g-c");
    for round in 0..20 {
        // The same backend endpoints, through the VIP and directly, interleaved.
        for (vip, direct) in [
            ("198.18.100.1:80", "198.18.2.2:8080"),
            ("[2001:2::100]:80", "[2001:2:0:2::2]:8080"),
        ] {
            assert_eq!(
                tcp_request(vip.parse().unwrap()),
                "primary",
                "round {round} {vip}"
            );
            assert_eq!(
                tcp_request(direct.parse().unwrap()),
                "primary",
                "round {round} {direct}"
            );
        }
        for (sock, dsock, vip, direct) in [
            (&u4, &d4, "198.18.100.1:53", "198.18.2.2:53"),
            (&u6, &d6, "[2001:2::100]:53", "[2001:2:0:2::2]:53"),
        ] {
            let (vip, direct): (SocketAddr, SocketAddr) = (vip.parse().unwrap(), direct.parse().unwrap());
            assert_eq!(
                udp_request(sock, vip),
                ("primary".to_owned(), vip),
                "round {round}"
            );
            assert_eq!(
                udp_request(dsock, direct),
                ("primary".to_owned(), direct),
                "round {round}: a direct answer must come from the backend itself"
            );
        }
    }
    let after = live_counters(&lab.gw, "g-c");
    let delta = |c: Counter| after[c as usize] - before[c as usize];
    assert!(
        delta(Counter::Direct) >= 20 * 4,
        "direct requests seen: {}",
        delta(Counter::Direct)
    );
    assert_eq!(
        delta(Counter::FlowInserted),
        0,
        "VIP steady state wrote flow entries"
    );
    assert_eq!(delta(Counter::SynEntry), 0, "VIP steady state wrote SYN entries");
}

/// `ip route get` in a namespace: where the path MTU cache shows.
fn route_get(ns: &NetNs, dst: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ip", "route", "get", dst])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bulk:N` to `to`: N bytes each way over one TCP connection.
fn bulk(to: SocketAddr, n: usize) -> usize {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(format!("bulk:{n}\n").as_bytes()).unwrap();
    c.write_all(&vec![b'y'; n]).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    got.len()
}

#[test]
fn path_mtu_discovery_works_through_the_vip() {
    if !require_root("path_mtu_discovery_works_through_the_vip") {
        return;
    }
    let run = Running::start("pmtu");
    let lab = &run.lab;
    // The link between the gateway and the primary carries 1400 bytes.
    in_ns(&lab.gw.name, &["ip", "link", "set", "g-p", "mtu", "1400"]);
    in_ns(&lab.primary.name, &["ip", "link", "set", "p0", "mtu", "1400"]);
    let _client = lab.client.enter();
    for (bind, vip, payload) in [
        ("0.0.0.0:0", "198.18.100.1:53", 1472),
        ("[::]:0", "[2001:2::100]:53", 1452),
    ] {
        let vip: SocketAddr = vip.parse().unwrap();
        let sock = UdpSocket::bind(bind).unwrap();
        // Linux sets DF on UDP by default (IP_PMTUDISC_WANT); a 1500-byte
        // packet leaves the client, and the gateway must answer "too big".
        let host = vip.ip().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !route_get(&lab.client, &host).contains("mtu 1400") {
            assert!(
                std::time::Instant::now() < deadline,
                "no path MTU of 1400 for {host}: {}",
                route_get(&lab.client, &host)
            );
            let _ = sock.send_to(&vec![0x5a; payload], vip);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Larger than the path MTU both ways, IPv4 and IPv6.
    for vip in ["198.18.100.1:80", "[2001:2::100]:80"] {
        assert_eq!(bulk(vip.parse().unwrap(), 200_000), 200_000, "{vip}");
    }
    let c = live_counters(&lab.gw, "g-c");
    assert!(c[Counter::TooBig as usize] >= 2, "{c:?}");
}

/// Sends `payload` (with an `echo:` prefix, so the server sends it all back)
/// and returns the answer, retrying a few times.
fn echo_big(sock: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut msg = b"echo:".to_vec();
    msg.extend_from_slice(payload);
    let mut buf = vec![0u8; 65536];
    for _ in 0..5 {
        sock.send_to(&msg, to).unwrap();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from, to, "answered from elsewhere");
            return buf[..n].to_vec();
        }
    }
    panic!("no answer from {to} to a {}-byte datagram", msg.len());
}

#[test]
fn fragmented_datagrams_reach_one_backend_whole_also_when_pinned_to_the_standby() {
    if !require_root("fragmented_datagrams_reach_one_backend_whole_also_when_pinned_to_the_standby") {
        return;
    }
    let mut run = Running::start("frag");
    let payload: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let answer = |who: &str| {
        let mut a = format!("{who} echo:").into_bytes();
        a.extend_from_slice(&payload);
        a
    };
    let vips: [(&str, SocketAddr); 2] = [
        ("0.0.0.0:0", "198.18.100.1:53".parse().unwrap()),
        ("[::]:0", "[2001:2::100]:53".parse().unwrap()),
    ];
    let socket = |bind: &str| {
        let _c = run.lab.client.enter();
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    };
    // 4000 bytes each way: fragmented by the client and by the backend.
    for (bind, vip) in vips {
        let s = socket(bind);
        let _c = run.lab.client.enter();
        let got = echo_big(&s, vip, &payload);
        assert!(
            got == answer("primary"),
            "{vip}: {} bytes: {:?}…",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(20)])
        );
    }
    // Pinned to the secondary: the primary dies, these flows move there and
    // get entries; it comes back, they stay.
    let pinned: Vec<UdpSocket> = vips.iter().map(|(b, _)| socket(b)).collect();
    run.primary.kill();
    for (s, (_, vip)) in pinned.iter().zip(vips) {
        let _c = run.lab.client.enter();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !echo_big(s, vip, b"x").starts_with(b"secondary") {
            assert!(std::time::Instant::now() < deadline, "no failover");
        }
    }
    run.primary = redirector_tests::lab::Server::start(
        &run.lab.primary,
        "primary",
        "198.18.2.2",
        "2001:2:0:2::2",
        false,
    );
    for (bind, vip) in vips {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // A new client port each time: one asked while the secondary is
        // still active would be pinned there.
        while !echo_big(&socket(bind), vip, b"x").starts_with(b"primary") {
            assert!(std::time::Instant::now() < deadline, "no failback");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for (s, (_, vip)) in pinned.iter().zip(vips) {
        let _c = run.lab.client.enter();
        let got = echo_big(s, vip, &payload);
        assert!(
            got == answer("secondary"),
            "{vip}: pinned flow: {} bytes: {:?}…",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(20)])
        );
    }
    let c = live_counters(&run.lab.gw, "g-c");
    assert_eq!(c[Counter::FragmentDropped as usize], 0, "{c:?}");
}
