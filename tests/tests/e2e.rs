//! Real TCP and UDP traffic through veth pairs: client namespace → gateway
//! running redirector (native XDP) → backend namespaces, in NAT and DSR mode,
//! IPv4 and IPv6. Replies must reach the client from the VIP.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redirector::config::Config;
use redirector_common::Counter;
use redirector_tests::{
    lab::{DsrVips, Gateway, LAB_CONFIG, Lab, serve, tcp_request, udp_request},
    netns::in_ns,
    require_root,
};

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
    let cfg = Config::from_str_named(LAB_CONFIG, "lab.toml").unwrap();
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

    // A neighbour change (the primary's NIC is replaced: new MAC) must reach the
    // data plane through the netlink monitor, or the next packets are lost.
    in_ns(
        &lab.primary.name,
        &["ip", "link", "set", "p0", "address", "02:00:00:00:02:99"],
    );
    in_ns(
        &lab.gw.name,
        &[
            "ip",
            "neigh",
            "replace",
            "198.18.2.2",
            "lladdr",
            "02:00:00:00:02:99",
            "dev",
            "g-p",
        ],
    );
    let client = lab.client.enter();
    for i in 0..50 {
        let (who, from) = udp_request(&u4, vip);
        assert_eq!(
            (who.as_str(), from),
            ("primary", vip),
            "request {i} after the MAC change"
        );
    }
    drop(client);
    // Same on the client side: replies must follow the client's new MAC.
    in_ns(
        &lab.client.name,
        &["ip", "link", "set", "c0", "address", "02:00:00:00:01:99"],
    );
    in_ns(
        &lab.gw.name,
        &[
            "ip",
            "neigh",
            "replace",
            "198.18.1.2",
            "lladdr",
            "02:00:00:00:01:99",
            "dev",
            "g-c",
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    let client = lab.client.enter();
    for i in 0..50 {
        let (who, from) = udp_request(&u4, vip);
        assert_eq!(
            (who.as_str(), from),
            ("primary", vip),
            "request {i} after the client's MAC change"
        );
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
    assert!(dns4.fwd_packets >= 301 && dns4.rev_packets >= 301, "{dns4:?}");
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
