//! Issue 10, fault 9: the two writers of `BACKENDS` (the decision loop's
//! whole entries, the resolver's next hops) on the real maps. A test binary
//! of its own: it sets a fault hook in its own environment before any thread
//! starts.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use redirector::{
    config::{Backend, Failover, HealthCheck, Mode, Protocol, Service},
    datapath::{Datapath, Sizes, addr16},
};
use redirector_common::NextHop;
use redirector_tests::require_root;

fn service(primary: &str) -> Service {
    Service {
        name: "web".into(),
        vip: "198.18.100.1".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
        mode: Mode::Nat,
        primary: Backend {
            addr: primary.parse().unwrap(),
            port: Some(8080),
        },
        secondary: Backend {
            addr: "198.18.3.2".parse().unwrap(),
            port: Some(8080),
        },
        health: HealthCheck::default_for(Protocol::Tcp),
        failover: Failover::default(),
        allow: Vec::new(),
        deny: Vec::new(),
    }
}

fn hop(ifindex: u32, last: u8) -> NextHop {
    NextHop {
        ifindex,
        dst_mac: [2, 0, 0, 0, 2, last],
        src_mac: [2, 0, 0, 0, 2, 1],
    }
}

#[test]
fn a_hop_update_never_loses_a_whole_entry_written_meanwhile_nor_lands_on_another_backend() {
    if !require_root("a_hop_update_never_loses_a_whole_entry_written_meanwhile") {
        return;
    }
    // SAFETY: set before this process starts a second thread (one test only).
    unsafe { std::env::set_var("REDIRECTOR_FAULT_HOP_WRITE_MS", "200") };
    let mut dp = Datapath::load(Sizes {
        max_services: 1024,
        flow_entries: 4096,
    })
    .unwrap();
    let (old, new): (IpAddr, IpAddr) = ("198.18.2.2".parse().unwrap(), "198.18.4.2".parse().unwrap());
    dp.set_backends(5, &service("198.18.2.2"), [hop(3, 2), hop(4, 2)])
        .unwrap();

    // The resolver updates the old backend's hop (slowly) while a reload
    // gives id 5 to a service whose primary is another host.
    let mut maps = dp.hop_maps().unwrap();
    let resolver = std::thread::spawn(move || maps.set_backend_hop(5, 0, old, hop(3, 9)).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    dp.set_backends(5, &service("198.18.4.2"), [hop(6, 2), hop(4, 2)])
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "the whole-entry write did not wait for the hop update in progress"
    );
    assert!(
        resolver.join().unwrap(),
        "the hop update began while the entry was the old backend's"
    );
    let e = dp.backend_entry(5, 0).unwrap();
    assert_eq!(
        e.addr,
        addr16(new),
        "the hop update wrote the old backend's address back"
    );
    assert_eq!(e.hop, hop(6, 2));

    // A tracking that the reload made stale: nothing is written.
    let mut maps = dp.hop_maps().unwrap();
    assert!(!maps.set_backend_hop(5, 0, old, hop(3, 9)).unwrap());
    let e = dp.backend_entry(5, 0).unwrap();
    assert_eq!(
        (e.addr, e.hop),
        (addr16(new), hop(6, 2)),
        "the old backend's hop on the new one"
    );
}
