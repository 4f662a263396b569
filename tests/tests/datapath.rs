//! In-kernel tests of the compiled XDP object via BPF_PROG_TEST_RUN.
//! Inputs and expected outputs are built by etherparse, never by our code.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{net::IpAddr, time::Duration};

use redirector::config::{Backend, Failover, HealthCheck, Mode, Protocol, Service};
use redirector::datapath::both_up;
use redirector_common::{
    Counter, NextHop, SLOT_PRIMARY, SLOT_SECONDARY, SWITCH_DROP, SWITCH_PASS, SWITCH_PINNED, SwitchState,
};
use redirector_tests::{
    Harness,
    action::{DROP, PASS, REDIRECT, TX},
    netns::{Entered, NetNs, ifindex},
    packets::{L4, Rng, Spec, assert_checksums, checksums_ok},
    require_root,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
const GW_IN_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
const P_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 2];
const GW_P_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 1];
const S_MAC: [u8; 6] = [0x02, 0, 0, 0, 3, 2];
const GW_S_MAC: [u8; 6] = [0x02, 0, 0, 0, 3, 1];

/// One service of the test matrix.
#[derive(Clone)]
struct Svc {
    id: u32,
    svc: Service,
    client: IpAddr,
}

impl Svc {
    fn l4(&self, syn: bool) -> L4 {
        match self.svc.protocol {
            Protocol::Tcp => L4::Tcp { syn, ack: !syn },
            Protocol::Udp => L4::Udp,
        }
    }
    /// A client packet to the VIP.
    fn request(&self, sport: u16, syn: bool) -> Spec {
        Spec::new(self.client, sport, self.svc.vip, self.svc.port, self.l4(syn))
    }
    fn backend(&self, slot: u8) -> &Backend {
        if slot == SLOT_PRIMARY {
            &self.svc.primary
        } else {
            &self.svc.secondary
        }
    }
    /// What the program must emit for `req` sent to backend `slot`.
    fn forwarded(&self, req: &Spec, slot: u8) -> Spec {
        let mut out = req.clone();
        let be = self.backend(slot);
        if self.svc.mode == Mode::Nat {
            out.dst = be.addr;
            out.dport = be.port.unwrap_or(self.svc.port);
        }
        out.ttl -= 1;
        (out.dmac, out.smac) = if slot == SLOT_PRIMARY {
            (P_MAC, GW_P_MAC)
        } else {
            (S_MAC, GW_S_MAC)
        };
        out
    }
}

/// Field order matters: the data plane goes first, the namespace last.
struct Lab {
    h: Harness,
    svcs: Vec<Svc>,
    if_in: u32,
    _entered: Entered,
    _ns: NetNs,
}

fn service(
    name: &str,
    vip: &str,
    port: u16,
    proto: Protocol,
    mode: Mode,
    p: (&str, Option<u16>),
    s: (&str, Option<u16>),
) -> Service {
    Service {
        name: name.into(),
        vip: ip(vip),
        port,
        protocol: proto,
        mode,
        primary: Backend {
            addr: ip(p.0),
            port: p.1,
        },
        secondary: Backend {
            addr: ip(s.0),
            port: s.1,
        },
        health: HealthCheck::default_for(proto),
        failover: Failover::default(),
        allow: Vec::new(),
        deny: Vec::new(),
    }
}

impl Lab {
    /// The next hop toward the clients: behind the ingress interface.
    fn client_hop(&self) -> NextHop {
        NextHop {
            ifindex: self.if_in,
            dst_mac: CLIENT_MAC,
            src_mac: GW_IN_MAC,
        }
    }

    /// Makes the clients of `s` reachable through the ingress interface.
    fn serve(&mut self, s: &Svc) {
        let hop = self.client_hop();
        self.h
            .dp
            .hop_maps()
            .unwrap()
            .set_client_hop(s.client, hop)
            .unwrap();
    }

    /// The lab's service called `name`.
    fn named(&self, name: &str) -> Svc {
        self.svcs
            .iter()
            .find(|s| s.svc.name == name)
            .unwrap_or_else(|| panic!("no service {name} in the lab"))
            .clone()
    }

    /// The services of one protocol.
    fn of(&self, proto: Protocol) -> Vec<Svc> {
        self.svcs
            .iter()
            .filter(|s| s.svc.protocol == proto)
            .cloned()
            .collect()
    }
}

/// A router on the client's side (the source of ICMP errors about replies).
fn client_side_router(client: IpAddr) -> IpAddr {
    if client.is_ipv4() {
        ip("198.18.1.254")
    } else {
        ip("2001:2:0:1::fe")
    }
}

/// The backends' next hops (inside the lab's namespace).
fn hops() -> [NextHop; 2] {
    [
        NextHop {
            ifindex: ifindex("p0"),
            dst_mac: P_MAC,
            src_mac: GW_P_MAC,
        },
        NextHop {
            ifindex: ifindex("s0"),
            dst_mac: S_MAC,
            src_mac: GW_S_MAC,
        },
    ]
}

fn lab(tag: &str) -> Option<Lab> {
    lab_with(tag, 4096)
}

/// [`lab`] with a flow table of `flow_entries`.
fn lab_with(tag: &str, flow_entries: u32) -> Option<Lab> {
    if !require_root(tag) {
        return None;
    }
    let ns = NetNs::new(tag);
    ns.add_veths(&[("in0", "in1"), ("p0", "p1"), ("s0", "s1")]);
    let entered = ns.enter();
    let (if_in, if_p, if_s) = (ifindex("in0"), ifindex("p0"), ifindex("s0"));
    let mut h = Harness::with_flow_entries(if_in, flow_entries);
    for i in [if_in, if_p, if_s] {
        h.dp.add_egress(i).unwrap();
    }
    h.dp.hop_maps().unwrap().add_local_addr(ip("198.18.2.1")).unwrap();
    h.dp.hop_maps()
        .unwrap()
        .add_local_addr(ip("2001:2:0:2::1"))
        .unwrap();
    let c4 = ip("198.18.1.2");
    let c6 = ip("2001:2:0:1::2");
    let specs = [
        service(
            "nat-tcp4",
            "198.18.100.1",
            80,
            Protocol::Tcp,
            Mode::Nat,
            ("198.18.2.2", Some(8080)),
            ("198.18.3.2", None),
        ),
        service(
            "nat-udp4",
            "198.18.100.1",
            53,
            Protocol::Udp,
            Mode::Nat,
            ("198.18.2.2", None),
            ("198.18.3.2", Some(5353)),
        ),
        service(
            "nat-tcp6",
            "2001:2::100",
            80,
            Protocol::Tcp,
            Mode::Nat,
            ("2001:2:0:2::2", Some(8080)),
            ("2001:2:0:3::2", None),
        ),
        service(
            "nat-udp6",
            "2001:2::100",
            53,
            Protocol::Udp,
            Mode::Nat,
            ("2001:2:0:2::2", None),
            ("2001:2:0:3::2", Some(5353)),
        ),
        service(
            "dsr-tcp4",
            "198.18.100.2",
            80,
            Protocol::Tcp,
            Mode::Dsr,
            ("198.18.2.2", None),
            ("198.18.3.2", None),
        ),
        service(
            "dsr-udp4",
            "198.18.100.2",
            53,
            Protocol::Udp,
            Mode::Dsr,
            ("198.18.2.2", None),
            ("198.18.3.2", None),
        ),
        service(
            "dsr-tcp6",
            "2001:2::200",
            80,
            Protocol::Tcp,
            Mode::Dsr,
            ("2001:2:0:2::2", None),
            ("2001:2:0:3::2", None),
        ),
        service(
            "dsr-udp6",
            "2001:2::200",
            53,
            Protocol::Udp,
            Mode::Dsr,
            ("2001:2:0:2::2", None),
            ("2001:2:0:3::2", None),
        ),
    ];
    let [hop_p, hop_s] = hops();
    let mut svcs = Vec::new();
    for (id, svc) in specs.into_iter().enumerate() {
        let id = u32::try_from(id).unwrap();
        h.dp.set_service(id, &svc, [hop_p, hop_s], both_up(SLOT_PRIMARY))
            .unwrap();
        let client = if svc.vip.is_ipv4() { c4 } else { c6 };
        svcs.push(Svc { id, svc, client });
    }
    Some(Lab {
        h,
        svcs,
        if_in,
        _entered: entered,
        _ns: ns,
    })
}

#[test]
fn forward_every_mode_family_and_protocol() {
    let Some(mut lab) = lab("fwd") else { return };
    for s in lab.svcs.clone() {
        for slot in [SLOT_PRIMARY, SLOT_SECONDARY] {
            lab.h.dp.set_switch(s.id, both_up(slot)).unwrap();
            // SYN: a new flow, sent to the active backend.
            let req = s.request(40000 + u16::from(slot), true);
            let (act, out) = lab.h.run(&req.build());
            assert_eq!(act, REDIRECT, "{}: slot {slot}", s.svc.name);
            assert_eq!(
                out,
                s.forwarded(&req, slot).build(),
                "{}: slot {slot}",
                s.svc.name
            );
            assert_checksums(&out);
        }
        lab.h.dp.set_switch(s.id, both_up(SLOT_PRIMARY)).unwrap();
    }
}

#[test]
fn ipv4_udp_zero_checksum_stays_zero() {
    let Some(mut lab) = lab("udp0") else { return };
    let s = lab.named("nat-udp4");
    lab.h.dp.set_switch(s.id, both_up(SLOT_SECONDARY)).unwrap(); // secondary remaps the port
    let mut req = s.request(40001, false);
    req.udp_zero_csum = true;
    let (act, out) = lab.h.run(&req.build());
    assert_eq!(act, REDIRECT);
    let mut want = s.forwarded(&req, SLOT_SECONDARY);
    want.udp_zero_csum = true;
    assert_eq!(out, want.build());
    assert_eq!(&out[40..42], &[0, 0]);
}

#[test]
fn replies_from_nat_backends_are_translated_back() {
    let Some(mut lab) = lab("rev") else { return };
    let client_hop = lab.client_hop();
    for s in lab.svcs.clone().into_iter().filter(|s| s.svc.mode == Mode::Nat) {
        for slot in [SLOT_PRIMARY, SLOT_SECONDARY] {
            let be = *s.backend(slot);
            let bport = be.port.unwrap_or(s.svc.port);
            let mut reply = Spec::new(be.addr, bport, s.client, 40000, s.l4(false));
            reply.smac = if slot == SLOT_PRIMARY { P_MAC } else { S_MAC };
            reply.dmac = if slot == SLOT_PRIMARY { GW_P_MAC } else { GW_S_MAC };
            let mut want = reply.clone();
            want.src = s.svc.vip;
            want.sport = s.svc.port;

            // Next hop to the client not known yet: the stack gets the translated packet.
            lab.h.dp.hop_maps().unwrap().remove_client_hop(s.client).unwrap();
            let unresolved = lab.h.counter(Counter::Unresolved);
            let (act, out) = lab.h.run(&reply.build());
            assert_eq!(act, PASS, "{}", s.svc.name);
            assert_eq!(out, want.build(), "{}", s.svc.name);
            assert_eq!(lab.h.counter(Counter::Unresolved), unresolved + 1);

            // Known: redirected (XDP_TX: the client is behind the ingress interface here).
            lab.h
                .dp
                .hop_maps()
                .unwrap()
                .set_client_hop(s.client, client_hop)
                .unwrap();
            let (act, out) = lab.h.run(&reply.build());
            want.ttl -= 1;
            (want.dmac, want.smac) = (CLIENT_MAC, GW_IN_MAC);
            assert_eq!(act, TX, "{}", s.svc.name);
            assert_eq!(out, want.build(), "{}", s.svc.name);
            assert_checksums(&out);
            let stats = lab.h.dp.backend_stats(s.id, slot).unwrap();
            assert_eq!(stats.rev_packets, 2, "{}", s.svc.name);
        }
    }
}

#[test]
fn not_ours_passes_byte_for_byte() {
    let Some(mut lab) = lab("other") else { return };
    let s4 = lab.svcs[0].clone();
    let s6 = lab.svcs[2].clone();
    let mut frames = vec![
        // Right VIP, wrong port; right port, wrong address; wrong protocol.
        Spec::new(
            s4.client,
            1000,
            s4.svc.vip,
            81,
            L4::Tcp {
                syn: true,
                ack: false,
            },
        )
        .build(),
        Spec::new(
            s4.client,
            1000,
            ip("198.18.100.9"),
            80,
            L4::Tcp {
                syn: true,
                ack: false,
            },
        )
        .build(),
        Spec::new(s4.client, 1000, s4.svc.vip, 80, L4::Udp).build(),
        Spec::new(
            s6.client,
            1000,
            ip("2001:2::999"),
            80,
            L4::Tcp {
                syn: true,
                ack: false,
            },
        )
        .build(),
        // The gateway's own health probe answered by a backend: not a client reply.
        Spec::new(
            ip("198.18.2.2"),
            8080,
            ip("198.18.2.1"),
            50000,
            L4::Tcp {
                syn: false,
                ack: true,
            },
        )
        .build(),
        Spec::new(
            ip("2001:2:0:2::2"),
            8080,
            ip("2001:2:0:2::1"),
            50000,
            L4::Tcp {
                syn: false,
                ack: true,
            },
        )
        .build(),
        // A backend talking from another port.
        Spec::new(
            ip("198.18.2.2"),
            22,
            s4.client,
            50000,
            L4::Tcp {
                syn: false,
                ack: true,
            },
        )
        .build(),
    ];
    // ARP and ICMP to the VIP.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    frames.push(arp);
    let mut icmp = Spec::new(s4.client, 0, s4.svc.vip, 0, L4::Udp).build();
    icmp[14 + 9] = 1;
    frames.push(icmp);
    for f in frames {
        let (act, out) = lab.h.run(&f);
        assert_eq!(act, PASS);
        assert_eq!(out, f);
    }
    for s in &lab.svcs {
        let st = lab.h.dp.backend_stats(s.id, SLOT_PRIMARY).unwrap();
        assert_eq!(st.fwd_packets + st.rev_packets, 0, "{}", s.svc.name);
    }
}

#[test]
fn every_truncation_of_a_vip_packet_passes_untouched() {
    let Some(mut lab) = lab("trunc") else { return };
    for s in lab.svcs.clone() {
        let full = s.request(40000, true).build();
        for len in 14..full.len() {
            let before = lab.h.counter(Counter::Malformed);
            let (act, out) = lab.h.run(&full[..len]);
            assert_eq!(act, PASS, "{} truncated to {len}", s.svc.name);
            assert_eq!(out, &full[..len], "{} truncated to {len}", s.svc.name);
            assert_eq!(
                lab.h.counter(Counter::Malformed),
                before + 1,
                "{} len {len}",
                s.svc.name
            );
        }
    }
}

#[test]
fn random_bytes_pass_untouched() {
    let Some(mut lab) = lab("rand") else { return };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vip_frame = lab.svcs[0].request(40000, true).build();
    let mut forwarded = 0;
    for i in 0..3000 {
        let len = 14 + (rng.next_u64() % 180) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 {
            // Half keep a valid Ethernet/IP prefix so the parser goes deeper.
            let n = len.min(14 + (rng.next_u64() % 40) as usize);
            f[..n].copy_from_slice(&vip_frame[..n]);
        }
        let (act, out) = lab.h.run(&f);
        if act != PASS {
            // Only a complete, consistent VIP packet may be forwarded, and the
            // rewrite must keep its checksums exactly as (in)valid as they were.
            assert_eq!(act, REDIRECT, "frame {i}");
            assert_eq!(checksums_ok(&f), checksums_ok(&out), "frame {i}");
            forwarded += 1;
        } else {
            assert_eq!(out, f, "frame {i}");
        }
    }
    eprintln!("{forwarded} of 3000 random frames were complete VIP packets and forwarded");
}

#[test]
fn expiring_ttl_goes_to_the_stack_untouched() {
    let Some(mut lab) = lab("ttl") else { return };
    for s in lab.svcs.clone() {
        let mut req = s.request(40000, true);
        req.ttl = 1;
        let f = req.build();
        let before = lab.h.counter(Counter::TtlExpired);
        let (act, out) = lab.h.run(&f);
        assert_eq!((act, &out), (PASS, &f), "{}", s.svc.name);
        assert_eq!(lab.h.counter(Counter::TtlExpired), before + 1);
    }
}

#[test]
fn unresolved_next_hop_goes_to_the_stack_deliverable() {
    let Some(mut lab) = lab("unres") else { return };
    for s in lab.svcs.clone() {
        lab.h
            .dp
            .hop_maps()
            .unwrap()
            .set_backend_hop(
                s.id,
                SLOT_PRIMARY,
                s.svc.primary.addr,
                NextHop {
                    ifindex: 0,
                    dst_mac: [0; 6],
                    src_mac: [0; 6],
                },
            )
            .unwrap();
        let req = s.request(40000, true);
        let (act, out) = lab.h.run(&req.build());
        // NAT: rewritten to the backend, but MACs and TTL left for the stack's own forwarding.
        let mut want = req.clone();
        if s.svc.mode == Mode::Nat {
            want.dst = s.svc.primary.addr;
            want.dport = s.svc.primary.port.unwrap_or(s.svc.port);
        }
        assert_eq!(act, PASS, "{}", s.svc.name);
        assert_eq!(out, want.build(), "{}", s.svc.name);
        // Egress not in the redirect map: also handed to the stack, counted apart.
        lab.h
            .dp
            .hop_maps()
            .unwrap()
            .set_backend_hop(
                s.id,
                SLOT_PRIMARY,
                s.svc.primary.addr,
                NextHop {
                    ifindex: 1,
                    dst_mac: P_MAC,
                    src_mac: GW_P_MAC,
                },
            )
            .unwrap();
        let before = lab.h.counter(Counter::RedirectFailed);
        let (act, out) = lab.h.run(&req.build());
        assert_eq!((act, out), (PASS, want.build()), "{}", s.svc.name);
        assert_eq!(lab.h.counter(Counter::RedirectFailed), before + 1);
    }
    assert!(lab.h.counter(Counter::Unresolved) >= 8);
}

#[test]
fn egress_equal_to_ingress_uses_xdp_tx() {
    let Some(mut lab) = lab("tx") else { return };
    let s = lab.svcs[0].clone();
    let hop = NextHop {
        ifindex: lab.if_in,
        dst_mac: P_MAC,
        src_mac: GW_P_MAC,
    };
    lab.h
        .dp
        .hop_maps()
        .unwrap()
        .set_backend_hop(s.id, SLOT_PRIMARY, s.svc.primary.addr, hop)
        .unwrap();
    let req = s.request(40000, true);
    let (act, out) = lab.h.run(&req.build());
    assert_eq!(act, TX);
    assert_eq!(out, s.forwarded(&req, SLOT_PRIMARY).build());
}

/// Sends `sport`'s packet and returns the backend slot it went to.
fn slot_of(lab: &mut Lab, s: &Svc, sport: u16, syn: bool) -> u8 {
    slot_of_req(lab, s, s.request(sport, syn))
}

/// Sends a TCP packet of the connection whose SYN carried `isn` (a new
/// connection from the same client port has another) and returns its slot.
fn slot_of_conn(lab: &mut Lab, s: &Svc, sport: u16, isn: u32, syn: bool) -> u8 {
    let mut req = s.request(sport, syn);
    req.seq = if syn { isn } else { isn.wrapping_add(1) };
    slot_of_req(lab, s, req)
}

fn slot_of_req(lab: &mut Lab, s: &Svc, req: Spec) -> u8 {
    let sport = req.sport;
    let (act, out) = lab.h.run(&req.build());
    assert_eq!(act, REDIRECT, "{} sport {sport}", s.svc.name);
    for slot in [SLOT_PRIMARY, SLOT_SECONDARY] {
        if out == s.forwarded(&req, slot).build() {
            return slot;
        }
    }
    panic!("{} sport {sport}: output matches neither backend", s.svc.name);
}

/// Once a service has run on the secondary, entries may exist: the state
/// keeps SWITCH_PINNED until a sweep finds none (see the sweep test).
fn state(active: u8, up: u8) -> SwitchState {
    SwitchState {
        active,
        up,
        drained: 0,
        flags: SWITCH_PINNED,
        share: 0,
        _pad: 0,
        generation: 0,
    }
}

#[test]
fn tcp_flow_affinity_across_flip_and_failback() {
    let Some(mut lab) = lab("affin") else { return };
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    for s in lab.of(Protocol::Tcp) {
        let id = s.id;
        // Steady state: new flows to the primary, no flow entry written.
        assert_eq!(slot_of(&mut lab, &s, 1000, true), p);
        assert_eq!(lab.h.dp.flow(s.client, 1000, id).unwrap(), None, "{}", s.svc.name);
        // Manual flip to the secondary with the primary up (drain): the
        // established flow stays, a new one goes to the secondary.
        lab.h.dp.set_switch(id, state(s2, 0b11)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 1000, false), p, "{}", s.svc.name);
        assert_eq!(slot_of(&mut lab, &s, 2000, true), s2);
        assert_eq!(slot_of(&mut lab, &s, 2000, false), s2);
        // Failback: flows that started on the secondary finish there; new ones go to the primary.
        lab.h.dp.set_switch(id, state(p, 0b11)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 2000, false), s2, "{}", s.svc.name);
        assert_eq!(slot_of(&mut lab, &s, 1000, false), p);
        assert_eq!(slot_of(&mut lab, &s, 3000, true), p);
        // The primary goes down: everything moves to the secondary.
        lab.h.dp.set_switch(id, state(s2, 0b10)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 1000, false), s2);
        assert_eq!(slot_of(&mut lab, &s, 3000, false), s2);
        // It comes back: the flows that began on the secondary stay there; a
        // connection that began on the dead primary has nothing to keep (the
        // secondary never knew it) and got no entry.
        lab.h.dp.set_switch(id, state(p, 0b11)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 2000, false), s2, "{}", s.svc.name);
        assert_eq!(slot_of(&mut lab, &s, 1000, false), p, "{}", s.svc.name);
        assert_eq!(lab.h.dp.flow(s.client, 1000, id).unwrap(), None);
        assert_eq!(slot_of(&mut lab, &s, 4000, true), p);
    }
}

#[test]
fn udp_flow_affinity_and_backend_down_resteer() {
    let Some(mut lab) = lab("udpaff") else { return };
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    for s in lab.of(Protocol::Udp) {
        let id = s.id;
        // Primary down: flows go to the secondary and are pinned there.
        lab.h.dp.set_switch(id, state(s2, 0b10)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 4000, false), s2);
        let pinned = lab.h.dp.flow(s.client, 4000, id).unwrap().unwrap();
        assert_eq!(pinned, s2);
        // Failback: the pinned flow finishes on the secondary, a new one goes to the primary.
        lab.h.dp.set_switch(id, state(p, 0b11)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 4000, false), s2, "{}", s.svc.name);
        assert_eq!(slot_of(&mut lab, &s, 5000, false), p);
        assert_eq!(lab.h.dp.flow(s.client, 5000, id).unwrap(), None);
        // The secondary dies: its flow moves to the primary and stays there
        // when the secondary returns.
        lab.h.dp.set_switch(id, state(p, 0b01)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 4000, false), p, "{}", s.svc.name);
        lab.h.dp.set_switch(id, state(p, 0b11)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 4000, false), p, "{}", s.svc.name);
    }
}

#[test]
fn per_backend_counters_count_packets_and_bytes() {
    let Some(mut lab) = lab("stats") else { return };
    let s = lab.svcs[1].clone();
    let f = s.request(40000, false).build();
    for _ in 0..5 {
        assert_eq!(lab.h.run(&f).0, REDIRECT);
    }
    let st = lab.h.dp.backend_stats(s.id, SLOT_PRIMARY).unwrap();
    assert_eq!((st.fwd_packets, st.fwd_bytes), (5, 5 * f.len() as u64));
    assert_eq!(
        lab.h.dp.backend_stats(s.id, SLOT_SECONDARY).unwrap().fwd_packets,
        0
    );
}

#[test]
fn sweep_clears_pinned_and_steady_state_skips_the_flow_table() {
    let Some(mut lab) = lab("sweep") else { return };
    let s = lab.svcs[0].clone();
    // A flow pinned to the secondary while it was active.
    lab.h.dp.set_switch(s.id, state(SLOT_SECONDARY, 0b10)).unwrap();
    assert_eq!(slot_of(&mut lab, &s, 7000, true), SLOT_SECONDARY);
    lab.h.dp.set_switch(s.id, state(SLOT_PRIMARY, 0b11)).unwrap();
    assert_eq!(slot_of(&mut lab, &s, 7000, false), SLOT_SECONDARY);
    // A sweep that keeps the live entry keeps the service pinned.
    lab.h
        .dp
        .sweep_flows(&[std::time::Duration::from_secs(60); 8])
        .unwrap();
    assert!(lab.h.dp.switch(s.id).unwrap().pinned());
    assert_eq!(slot_of(&mut lab, &s, 7000, false), SLOT_SECONDARY);
    // Once idle entries are gone, the flag clears and packets skip the table.
    lab.h.dp.sweep_flows(&[std::time::Duration::ZERO; 8]).unwrap();
    assert_eq!(lab.h.dp.flow_count().unwrap(), 0);
    assert!(!lab.h.dp.switch(s.id).unwrap().pinned());
    assert_eq!(slot_of(&mut lab, &s, 7000, false), SLOT_PRIMARY);
}

#[test]
fn ipv6_udp_without_checksum_is_malformed_and_untouched() {
    let Some(mut lab) = lab("udp6z") else { return };
    let s = lab.named("nat-udp6");
    let mut f = s.request(40001, false).build();
    // Zero the UDP checksum (invalid in IPv6).
    f[14 + 40 + 6] = 0;
    f[14 + 40 + 7] = 0;
    let before = lab.h.counter(Counter::Malformed);
    let (act, out) = lab.h.run(&f);
    assert_eq!((act, out), (PASS, f));
    assert_eq!(lab.h.counter(Counter::Malformed), before + 1);
}

#[test]
fn udp_checksum_that_computes_to_zero_is_sent_as_all_ones() {
    let Some(mut lab) = lab("udpffff") else { return };
    for name in ["nat-udp4", "nat-udp6"] {
        let s = lab.named(name);
        // Find a payload whose forwarded packet's UDP checksum computes to 0
        // (etherparse then writes 0xffff, as RFC 768 requires).
        let mut req = s.request(40002, false);
        let mut found = None;
        for w in 0..=u16::MAX {
            req.payload = w.to_be_bytes().to_vec();
            let want = s.forwarded(&req, SLOT_PRIMARY).build();
            let off = want.len() - 2 - 2; // checksum sits 4 bytes before the 2-byte payload
            if want[off..off + 2] == [0xff, 0xff] {
                found = Some(want);
                break;
            }
        }
        let want = found.expect("some payload gives a zero checksum");
        let (act, out) = lab.h.run(&req.build());
        assert_eq!(act, REDIRECT, "{name}");
        assert_eq!(out, want, "{name}");
    }
}

#[test]
fn all_down_drop_and_pass_apply_to_every_packet_of_the_service() {
    let Some(mut lab) = lab("alldown") else { return };
    for s in lab.svcs.clone() {
        let id = s.id;
        // A pinned flow on the secondary first: all_down must override it too.
        lab.h.dp.set_switch(id, state(SLOT_SECONDARY, 0b10)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 6000, true), SLOT_SECONDARY);
        for (flag, want, counter) in [
            (SWITCH_DROP, DROP, Counter::AllDownDropped),
            (SWITCH_PASS, PASS, Counter::AllDownPassed),
        ] {
            let mut st = state(SLOT_SECONDARY, 0);
            st.flags |= flag;
            lab.h.dp.set_switch(id, st).unwrap();
            let before = lab.h.counter(counter);
            for (sport, syn) in [(6000, false), (6001, true)] {
                let req = s.request(sport, syn).build();
                let (act, out) = lab.h.run(&req);
                assert_eq!(act, want, "{} sport {sport}", s.svc.name);
                if want == PASS {
                    assert_eq!(out, req, "{}: passed byte-for-byte", s.svc.name);
                }
            }
            assert_eq!(lab.h.counter(counter), before + 2, "{}", s.svc.name);
        }
        // A backend back: forwarding resumes, the pinned flow where it was.
        lab.h.dp.set_switch(id, state(SLOT_SECONDARY, 0b10)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 6000, false), SLOT_SECONDARY);
    }
}

#[test]
fn load_sharing_sends_its_share_of_new_flows_to_the_secondary_and_keeps_them_there() {
    let Some(mut lab) = lab("share") else { return };
    for s in lab.svcs.clone() {
        let id = s.id;
        let mut st = state(SLOT_PRIMARY, 0b11);
        st.share = 30;
        lab.h.dp.set_switch(id, st).unwrap();
        let before = lab.h.counter(Counter::FlowInserted);
        let mut to_secondary = 0u64;
        for sport in 20000..21000u16 {
            let first = slot_of(&mut lab, &s, sport, true);
            // Every later packet of the flow goes the same way.
            assert_eq!(
                slot_of(&mut lab, &s, sport, false),
                first,
                "{} sport {sport}",
                s.svc.name
            );
            if first == SLOT_SECONDARY {
                to_secondary += 1;
            }
        }
        assert!(
            (230..=370).contains(&to_secondary),
            "{}: {to_secondary} of 1000 shared",
            s.svc.name
        );
        // TCP: only the shared flows have entries; UDP: every flow keeps its
        // backend with one (sharing that starts again moves no live flow).
        let entries = if s.svc.protocol == Protocol::Udp {
            1000
        } else {
            to_secondary
        };
        assert_eq!(
            lab.h.counter(Counter::FlowInserted) - before,
            entries,
            "{}",
            s.svc.name
        );
        // A drained secondary takes no shared flows; the shared ones stay.
        st.drained = 0b10;
        lab.h.dp.set_switch(id, st).unwrap();
        for sport in 21000..21100u16 {
            assert_eq!(slot_of(&mut lab, &s, sport, true), SLOT_PRIMARY, "{}", s.svc.name);
        }
    }
}

#[test]
fn tcp_entry_is_written_when_the_handshake_completes() {
    let Some(mut lab) = lab("embryo") else { return };
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    for s in lab.of(Protocol::Tcp) {
        let id = s.id;
        // Drain of the primary: it is up, new flows go to the secondary.
        lab.h.dp.set_switch(id, state(s2, 0b11)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 1000, true), s2, "{}", s.svc.name);
        assert!(lab.h.dp.embryo(s.client, 1000, id).unwrap().is_some());
        assert_eq!(lab.h.dp.flow(s.client, 1000, id).unwrap(), None);
        // The ACK moves the entry to the flow table.
        assert_eq!(slot_of(&mut lab, &s, 1000, false), s2, "{}", s.svc.name);
        assert_eq!(lab.h.dp.embryo(s.client, 1000, id).unwrap(), None);
        assert_eq!(lab.h.dp.flow(s.client, 1000, id).unwrap(), Some(s2));
        // A SYN sent to the secondary, then retransmitted after the primary
        // became active again: the handshake keeps its backend (its ACK follows).
        assert_eq!(slot_of(&mut lab, &s, 1001, true), s2);
        lab.h.dp.set_switch(id, state(p, 0b11)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 1001, true), s2, "{}", s.svc.name);
        assert_eq!(slot_of(&mut lab, &s, 1001, false), s2, "{}", s.svc.name);
        assert_eq!(lab.h.dp.flow(s.client, 1001, id).unwrap(), Some(s2));
        assert_eq!(slot_of(&mut lab, &s, 1000, false), s2, "{}", s.svc.name);
        // A retransmission whose backend went down meanwhile moves.
        lab.h.dp.set_switch(id, state(s2, 0b11)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 1002, true), s2);
        lab.h.dp.set_switch(id, state(p, 0b01)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 1002, true), p, "{}", s.svc.name);
        assert_eq!(slot_of(&mut lab, &s, 1002, false), p, "{}", s.svc.name);
    }
}

/// Issue 10, fault 12: when load sharing starts again (the secondary back,
/// undrained, `share` raised), live UDP flows stay where they are; only new
/// flows are shared.
#[test]
fn sharing_that_starts_again_moves_no_live_udp_flow() {
    // Some 1,000 flows stay live: a table that never evicts one (with 4,096
    // entries, in 4-way buckets, a few were evicted now and then, and a flow
    // without an entry is decided afresh).
    let Some(mut lab) = lab_with("shareudp", 262_144) else {
        return;
    };
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    for s in lab.of(Protocol::Udp) {
        let id = s.id;
        let name = s.svc.name.clone();
        let moved = lab.h.counter(Counter::FlowMoved);
        let mut st = state(p, 0b01);
        st.share = 50;
        // The secondary is down: every flow goes to the primary.
        lab.h.dp.set_switch(id, st).unwrap();
        for port in 30000..30100u16 {
            assert_eq!(slot_of(&mut lab, &s, port, false), p, "{name}");
        }
        // Back (and, separately, undrained or share raised: the same state):
        // the live flows stay, new ones are shared.
        st.up = 0b11;
        lab.h.dp.set_switch(id, st).unwrap();
        for port in 30000..30100u16 {
            assert_eq!(slot_of(&mut lab, &s, port, false), p, "{name} port {port} moved");
        }
        let shared = (31000..31100u16)
            .filter(|&port| slot_of(&mut lab, &s, port, false) == s2)
            .count();
        assert!(
            (30..=70).contains(&shared),
            "{name}: {shared} of 100 new flows shared"
        );
        // The secondary drained, then undrained: no live flow moves either way.
        st.drained = 0b10;
        lab.h.dp.set_switch(id, st).unwrap();
        for port in 32000..32050u16 {
            assert_eq!(slot_of(&mut lab, &s, port, false), p, "{name}");
        }
        st.drained = 0;
        lab.h.dp.set_switch(id, st).unwrap();
        for port in 32000..32050u16 {
            assert_eq!(slot_of(&mut lab, &s, port, false), p, "{name} port {port} moved");
        }
        assert_eq!(lab.h.counter(Counter::FlowMoved), moved, "{name}: no flow moved");
        // The primary goes down: each of its live flows with an entry moves
        // once, and is counted once (the harness's small flow table may have
        // evicted a few entries; those flows follow the active backend as
        // any flow without an entry does).
        let with_entry = (30000..30100u16)
            .filter(|&port| lab.h.dp.flow(s.client, port, id).unwrap() == Some(p))
            .count() as u64;
        assert!(
            with_entry >= 90,
            "{name}: {with_entry} of 100 flows kept their entry"
        );
        st.up = 0b10;
        st.active = s2;
        lab.h.dp.set_switch(id, st).unwrap();
        for _ in 0..2 {
            for port in 30000..30100u16 {
                assert_eq!(slot_of(&mut lab, &s, port, false), s2, "{name}");
            }
        }
        assert_eq!(lab.h.counter(Counter::FlowMoved), moved + 100, "{name}");
    }
}

/// Issue 10, fault 0: a client port reused for a new connection (as behind a
/// busy NAT) is chosen afresh; a finished connection's entry never decides it.
#[test]
fn a_syn_from_a_reused_client_port_is_a_new_connection() {
    let Some(mut lab) = lab("synreuse") else { return };
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    for s in lab.of(Protocol::Tcp) {
        let id = s.id;
        let name = s.svc.name.clone();
        // The primary is down: connections from ports 3000.. go to the
        // secondary and get entries there.
        lab.h.dp.set_switch(id, state(s2, 0b10)).unwrap();
        for port in 3000..3020u16 {
            assert_eq!(slot_of_conn(&mut lab, &s, port, 7, true), s2, "{name}");
            assert_eq!(slot_of_conn(&mut lab, &s, port, 7, false), s2, "{name}");
            assert_eq!(lab.h.dp.flow(s.client, port, id).unwrap(), Some(s2));
        }
        // Failback: the old connections finish on the secondary ...
        lab.h.dp.set_switch(id, state(p, 0b11)).unwrap();
        for port in 3000..3010u16 {
            assert_eq!(slot_of_conn(&mut lab, &s, port, 7, false), s2, "{name}");
        }
        // ... new connections from the same ports go to the primary, and so
        // do their later packets: the stale entry is gone.
        for port in 3000..3010u16 {
            assert_eq!(slot_of_conn(&mut lab, &s, port, 8, true), p, "{name} port {port}");
            assert_eq!(
                slot_of_conn(&mut lab, &s, port, 8, false),
                p,
                "{name} port {port}"
            );
            assert_eq!(lab.h.dp.flow(s.client, port, id).unwrap(), None, "{name}");
            assert_eq!(lab.h.dp.embryo(s.client, port, id).unwrap(), None, "{name}");
        }
        // A drained secondary takes no new connection from a reused port
        // (active primary, secondary drained, its old flows still pinned).
        let mut drained = state(p, 0b11);
        drained.drained = 0b10;
        lab.h.dp.set_switch(id, drained).unwrap();
        for port in 3010..3020u16 {
            assert_eq!(
                slot_of_conn(&mut lab, &s, port, 7, false),
                s2,
                "{name}: established stays"
            );
            assert_eq!(slot_of_conn(&mut lab, &s, port, 9, true), p, "{name} port {port}");
            assert_eq!(
                slot_of_conn(&mut lab, &s, port, 9, false),
                p,
                "{name} port {port}"
            );
        }
        // While the secondary is active, a reused port's new connection is
        // chosen afresh too: same backend, new entry with the new tag.
        lab.h.dp.set_switch(id, state(s2, 0b10)).unwrap();
        assert_eq!(slot_of_conn(&mut lab, &s, 3100, 1, true), s2, "{name}");
        assert_eq!(slot_of_conn(&mut lab, &s, 3100, 1, false), s2, "{name}");
        assert_eq!(lab.h.dp.flow(s.client, 3100, id).unwrap(), Some(s2));
        assert_eq!(slot_of_conn(&mut lab, &s, 3100, 2, true), s2, "{name}");
        assert_eq!(
            lab.h.dp.flow(s.client, 3100, id).unwrap(),
            None,
            "{name}: replaced"
        );
        assert!(lab.h.dp.embryo(s.client, 3100, id).unwrap().is_some());
        assert_eq!(slot_of_conn(&mut lab, &s, 3100, 2, false), s2, "{name}");
        assert_eq!(lab.h.dp.flow(s.client, 3100, id).unwrap(), Some(s2));
    }
}

#[test]
fn syn_flood_on_the_secondary_never_evicts_established_flows() {
    let Some(mut lab) = lab("synflood") else { return };
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    for name in ["nat-tcp4", "dsr-tcp6"] {
        let s = lab.named(name);
        let id = s.id;
        lab.h.dp.set_switch(id, state(s2, 0b10)).unwrap();
        // Established flows on the secondary (handshake completed).
        for sport in 1000..1010 {
            assert_eq!(slot_of(&mut lab, &s, sport, true), s2);
            assert_eq!(slot_of(&mut lab, &s, sport, false), s2);
        }
        let inserted = lab.h.counter(Counter::FlowInserted);
        let syns = lab.h.counter(Counter::SynEntry);
        // Three times the flow table's capacity in SYNs of never-seen flows.
        let flood = 3 * lab.h.dp.sizes().flow_entries;
        for i in 0..flood {
            let sport = 10_000 + u16::try_from(i % 50_000).unwrap();
            let mut req = s.request(sport, true);
            req.src = match s.client {
                IpAddr::V4(_) => IpAddr::from([198, 19, (i >> 8) as u8, i as u8]),
                IpAddr::V6(_) => format!("2001:2:0:9::{i:x}").parse().unwrap(),
            };
            assert_eq!(lab.h.run(&req.build()).0, REDIRECT);
        }
        assert_eq!(
            lab.h.counter(Counter::SynEntry) - syns,
            u64::from(flood),
            "{name}"
        );
        assert_eq!(lab.h.counter(Counter::FlowInserted), inserted, "{name}");
        // Every established flow kept its entry, and stays on the secondary
        // after the failback.
        lab.h.dp.set_switch(id, state(p, 0b11)).unwrap();
        for sport in 1000..1010 {
            assert!(
                lab.h.dp.flow(s.client, sport, id).unwrap().is_some(),
                "{name} {sport}"
            );
            assert_eq!(slot_of(&mut lab, &s, sport, false), s2, "{name} {sport}");
        }
        assert_eq!(slot_of(&mut lab, &s, 2000, true), p);
    }
}

/// Pins the calling thread to one CPU; test-run executes the program there.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to CPU {cpu}"
        );
    }
}

#[test]
fn a_flow_keeps_its_backend_when_its_packets_land_on_different_cpus() {
    let Some(mut lab) = lab("twocpu") else { return };
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if cpus < 2 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs two CPUs, and CI=true forbids skipping"
        );
        eprintln!("SKIPPED: one CPU");
        return;
    }
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    for s in lab.svcs.clone() {
        let id = s.id;
        // Primary drained: new flows to the secondary, the primary still up.
        lab.h.dp.set_switch(id, state(s2, 0b11)).unwrap();
        let syn_cpu0 = lab.h.dp.counter_per_cpu(Counter::SynEntry).unwrap();
        let ins_cpu1 = lab.h.dp.counter_per_cpu(Counter::FlowInserted).unwrap();
        pin_to_cpu(0);
        assert_eq!(slot_of(&mut lab, &s, 3000, true), s2, "{}", s.svc.name);
        pin_to_cpu(1);
        assert_eq!(slot_of(&mut lab, &s, 3000, false), s2, "{}", s.svc.name);
        // The first packet's entry was written on CPU 0 (TCP: the SYN's; UDP:
        // the flow's), the second packet ran on CPU 1.
        let (c, first) = if s.svc.protocol == Protocol::Tcp {
            (Counter::SynEntry, syn_cpu0)
        } else {
            (Counter::FlowInserted, ins_cpu1.clone())
        };
        assert_eq!(
            lab.h.dp.counter_per_cpu(c).unwrap()[0],
            first[0] + 1,
            "{}",
            s.svc.name
        );
        if s.svc.protocol == Protocol::Tcp {
            // The handshake completed on CPU 1.
            assert_eq!(
                lab.h.dp.counter_per_cpu(Counter::FlowInserted).unwrap()[1],
                ins_cpu1[1] + 1,
                "{}",
                s.svc.name
            );
        }
        // After the failback, packets on either CPU stay on the secondary.
        lab.h.dp.set_switch(id, state(p, 0b11)).unwrap();
        for cpu in [0, 1] {
            pin_to_cpu(cpu);
            assert_eq!(slot_of(&mut lab, &s, 3000, false), s2, "{} cpu {cpu}", s.svc.name);
        }
    }
    let all: Vec<usize> = (0..cpus).collect();
    // SAFETY: as in pin_to_cpu.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in all {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn allow_and_deny_lists_drop_refused_clients_and_count_them() {
    let Some(mut lab) = lab("acl") else { return };
    let prefixes = |list: &[&str]| -> Vec<redirector::config::Prefix> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    };
    let mut s4 = lab.named("nat-tcp4");
    let mut s6 = lab.named("dsr-udp6");
    s4.svc.allow = prefixes(&["198.18.1.0/24"]);
    s4.svc.deny = prefixes(&["198.18.1.128/25"]);
    s6.svc.deny = prefixes(&["2001:2:0:1::/64"]);
    for s in [&s4, &s6] {
        lab.h.dp.set_acl(s.id, &s.svc.allow, &s.svc.deny).unwrap();
        lab.h.dp.publish_service(s.id, &s.svc).unwrap();
    }
    let verdict = |lab: &mut Lab, s: &Svc, client: &str| {
        let mut req = s.request(41000, true);
        req.src = ip(client);
        let frame = req.build();
        let (act, out) = lab.h.run(&frame);
        if act == DROP {
            // Dropped, so nothing to compare; a drop never rewrites in place either.
            assert_eq!(out, frame);
        }
        act
    };
    let refused = lab.h.counter(Counter::Refused);
    assert_eq!(verdict(&mut lab, &s4, "198.18.1.2"), REDIRECT);
    assert_eq!(
        verdict(&mut lab, &s4, "198.18.1.200"),
        DROP,
        "denied inside the allowed /24"
    );
    assert_eq!(
        verdict(&mut lab, &s4, "198.19.0.1"),
        DROP,
        "outside the allow list"
    );
    assert_eq!(verdict(&mut lab, &s6, "2001:2:0:1::2"), DROP);
    assert_eq!(
        verdict(&mut lab, &s6, "2001:2:0:7::2"),
        REDIRECT,
        "no allow list: everyone else"
    );
    assert_eq!(lab.h.counter(Counter::Refused) - refused, 3);
    assert_eq!(lab.h.dp.refused(s4.id).unwrap(), 2);
    assert_eq!(lab.h.dp.refused(s6.id).unwrap(), 1);
    // Another service on the same VIP has no lists.
    let udp4 = lab.named("nat-udp4");
    assert_eq!(verdict(&mut lab, &udp4, "198.19.0.1"), REDIRECT);

    // A reload's change: the deny list goes, the allow list widens.
    s4.svc.allow = prefixes(&["198.18.0.0/15"]);
    s4.svc.deny = Vec::new();
    lab.h.dp.set_acl(s4.id, &s4.svc.allow, &s4.svc.deny).unwrap();
    lab.h.dp.publish_service(s4.id, &s4.svc).unwrap();
    assert_eq!(verdict(&mut lab, &s4, "198.18.1.200"), REDIRECT);
    assert_eq!(verdict(&mut lab, &s4, "198.19.0.1"), REDIRECT);
    // Removing the service clears its prefixes: a new service on its id starts open.
    lab.h.dp.remove_service(s4.id).unwrap();
    let mut fresh = s4.svc.clone();
    fresh.allow = Vec::new();
    lab.h
        .dp
        .set_service(s4.id, &fresh, hops(), both_up(SLOT_PRIMARY))
        .unwrap();
    assert_eq!(verdict(&mut lab, &s4, "198.19.200.1"), REDIRECT);
}

#[test]
fn direct_traffic_to_a_nat_backend_is_never_translated() {
    let Some(mut lab) = lab("direct") else { return };
    for s in lab.svcs.clone().into_iter().filter(|s| s.svc.mode == Mode::Nat) {
        lab.serve(&s);
        let be = s.svc.primary;
        let bport = be.port.unwrap_or(s.svc.port);
        let direct = lab.h.counter(Counter::Direct);
        // A VIP flow and a direct flow from the same client to the same backend endpoint.
        let vip_req = s.request(42000, true);
        assert_eq!(lab.h.run(&vip_req.build()).0, REDIRECT, "{}", s.svc.name);
        let to_backend = Spec::new(s.client, 42001, be.addr, bport, s.l4(true)).build();
        let (act, out) = lab.h.run(&to_backend);
        assert_eq!(
            (act, &out),
            (PASS, &to_backend),
            "{}: direct request touched",
            s.svc.name
        );
        // The backend's replies: the VIP flow's is translated, the direct one's is not.
        let reply = |cport| {
            let mut r = Spec::new(be.addr, bport, s.client, cport, s.l4(false));
            (r.smac, r.dmac) = (P_MAC, GW_P_MAC);
            r
        };
        let (act, out) = lab.h.run(&reply(42000).build());
        let mut want = reply(42000);
        (want.src, want.sport, want.ttl) = (s.svc.vip, s.svc.port, 63);
        (want.dmac, want.smac) = (CLIENT_MAC, GW_IN_MAC);
        assert_eq!((act, out), (TX, want.build()), "{}: VIP reply", s.svc.name);
        let direct_reply = reply(42001).build();
        let (act, out) = lab.h.run(&direct_reply);
        assert_eq!(
            (act, &out),
            (PASS, &direct_reply),
            "{}: direct reply translated",
            s.svc.name
        );
        assert_eq!(lab.h.counter(Counter::Direct) - direct, 2, "{}", s.svc.name);
        // Steady state on the primary: the VIP flow wrote no flow entry.
        assert_eq!(lab.h.counter(Counter::FlowInserted), 0);
    }
}

/// ICMP errors, built by etherparse.
#[derive(Clone, Copy)]
enum IcmpErr {
    /// IPv4 "fragmentation needed" / IPv6 "packet too big".
    TooBig(u16),
    /// Port unreachable.
    Port,
}

fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    macs: ([u8; 6], [u8; 6]),
    ttl: u8,
    e: IcmpErr,
    quote: &[u8],
) -> Vec<u8> {
    use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4::DestUnreachableHeader, icmpv6};
    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let t = match e {
                IcmpErr::TooBig(mtu) => DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
                IcmpErr::Port => DestUnreachableHeader::Port,
            };
            eth.ipv4(s.octets(), d.octets(), ttl)
                .icmpv4(Icmpv4Type::DestinationUnreachable(t))
                .write(&mut out, quote)
                .unwrap();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let t = match e {
                IcmpErr::TooBig(mtu) => Icmpv6Type::PacketTooBig { mtu: u32::from(mtu) },
                IcmpErr::Port => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
            };
            eth.ipv6(s.octets(), d.octets(), ttl)
                .icmpv6(t)
                .write(&mut out, quote)
                .unwrap();
        }
        _ => panic!("mixed families"),
    }
    out
}

/// The IP packet of a frame (what an ICMP error quotes).
fn ip_packet(spec: &Spec) -> Vec<u8> {
    spec.build()[14..].to_vec()
}

#[test]
fn icmp_errors_about_vip_flows_reach_the_party_that_owns_the_flow() {
    let Some(mut lab) = lab("icmperr") else { return };
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    for s in lab.svcs.clone() {
        let name = &s.svc.name;
        lab.serve(&s);
        let router = client_side_router(s.client);
        // A flow that began while the secondary was active, then a failback:
        // it stays pinned to the (now non-active) secondary.
        lab.h.dp.set_switch(s.id, state(s2, 0b10)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 43000, true), s2);
        assert_eq!(slot_of(&mut lab, &s, 43000, false), s2);
        lab.h.dp.set_switch(s.id, state(p, 0b11)).unwrap();
        for (cport, slot) in [(43000, s2), (43001, p)] {
            // A router on the client's side reports a reply too big: the error
            // goes to the flow's backend, about the packet that backend sent.
            let be = *s.backend(slot);
            let bport = be.port.unwrap_or(s.svc.port);
            let reply = Spec::new(s.svc.vip, s.svc.port, s.client, cport, s.l4(false));
            let err = icmp_error(
                router,
                s.svc.vip,
                (CLIENT_MAC, GW_IN_MAC),
                64,
                IcmpErr::TooBig(1400),
                &ip_packet(&reply),
            );
            let (act, out) = lab.h.run(&err);
            let (dmac, smac) = if slot == p {
                (P_MAC, GW_P_MAC)
            } else {
                (S_MAC, GW_S_MAC)
            };
            let want = if s.svc.mode == Mode::Nat {
                let own = Spec::new(be.addr, bport, s.client, cport, s.l4(false));
                icmp_error(
                    router,
                    be.addr,
                    (smac, dmac),
                    63,
                    IcmpErr::TooBig(1400),
                    &ip_packet(&own),
                )
            } else {
                icmp_error(
                    router,
                    s.svc.vip,
                    (smac, dmac),
                    63,
                    IcmpErr::TooBig(1400),
                    &ip_packet(&reply),
                )
            };
            assert_eq!(act, REDIRECT, "{name} cport {cport}");
            assert_eq!(out, want, "{name} cport {cport}: error about a reply");
            redirector_tests::packets::frame_checksums(&out).unwrap();
        }
        if s.svc.mode == Mode::Dsr {
            continue;
        }
        // The backend itself reports its port unreachable about a translated
        // request: the client gets it from the VIP, about its own packet.
        let be = s.svc.primary;
        let bport = be.port.unwrap_or(s.svc.port);
        let translated = Spec::new(s.client, 43002, be.addr, bport, s.l4(false));
        let err = icmp_error(
            be.addr,
            s.client,
            (P_MAC, GW_P_MAC),
            64,
            IcmpErr::Port,
            &ip_packet(&translated),
        );
        let (act, out) = lab.h.run(&err);
        let sent = Spec::new(s.client, 43002, s.svc.vip, s.svc.port, s.l4(false));
        let want = icmp_error(
            s.svc.vip,
            s.client,
            (GW_IN_MAC, CLIENT_MAC),
            63,
            IcmpErr::Port,
            &ip_packet(&sent),
        );
        assert_eq!(act, TX, "{name}");
        assert_eq!(out, want, "{name}: error about a request");
        redirector_tests::packets::frame_checksums(&out).unwrap();
        // The same from a router between the gateway and the backend: its source stays.
        let hop: IpAddr = if s.client.is_ipv4() {
            ip("198.18.2.254")
        } else {
            ip("2001:2:0:2::fe")
        };
        let err = icmp_error(
            hop,
            s.client,
            (P_MAC, GW_P_MAC),
            64,
            IcmpErr::TooBig(1280),
            &ip_packet(&translated),
        );
        let want = icmp_error(
            hop,
            s.client,
            (GW_IN_MAC, CLIENT_MAC),
            63,
            IcmpErr::TooBig(1280),
            &ip_packet(&sent),
        );
        assert_eq!(lab.h.run(&err), (TX, want), "{name}: router's error");
    }
    assert!(lab.h.counter(Counter::IcmpErrorForwarded) > 0);
}

#[test]
fn icmp_echo_to_a_vip_is_answered_or_passed_never_forwarded() {
    use etherparse::PacketBuilder;
    let Some(mut lab) = lab("echo") else { return };
    for (client, vip, other) in [
        (ip("198.18.1.2"), ip("198.18.100.1"), ip("198.18.7.7")),
        (ip("2001:2:0:1::2"), ip("2001:2::100"), ip("2001:2:0:7::7")),
    ] {
        let echo = |from: IpAddr, to: IpAddr, reply: bool, macs: ([u8; 6], [u8; 6]), ttl: u8| {
            let eth = PacketBuilder::ethernet2(macs.0, macs.1);
            let mut out = Vec::new();
            match (from, to) {
                (IpAddr::V4(f), IpAddr::V4(t)) => {
                    let b = eth.ipv4(f.octets(), t.octets(), ttl);
                    if reply {
                        b.icmpv4_echo_reply(7, 9)
                    } else {
                        b.icmpv4_echo_request(7, 9)
                    }
                    .write(&mut out, b"ping payload")
                    .unwrap();
                }
                (IpAddr::V6(f), IpAddr::V6(t)) => {
                    let b = eth.ipv6(f.octets(), t.octets(), ttl);
                    if reply {
                        b.icmpv6_echo_reply(7, 9)
                    } else {
                        b.icmpv6_echo_request(7, 9)
                    }
                    .write(&mut out, b"ping payload")
                    .unwrap();
                }
                _ => unreachable!(),
            }
            out
        };
        let req = echo(client, vip, false, (CLIENT_MAC, GW_IN_MAC), 60);
        let (act, out) = lab.h.run(&req);
        assert_eq!(act, TX, "{vip}");
        assert_eq!(out, echo(vip, client, true, (GW_IN_MAC, CLIENT_MAC), 64), "{vip}");
        redirector_tests::packets::frame_checksums(&out).unwrap();
        // Not a VIP: the stack's.
        let req = echo(client, other, false, (CLIENT_MAC, GW_IN_MAC), 60);
        assert_eq!(lab.h.run(&req), (PASS, req.clone()));
        // icmp_echo = "pass": untouched to the stack.
        lab.h.dp.set_icmp_echo(false).unwrap();
        let req = echo(client, vip, false, (CLIENT_MAC, GW_IN_MAC), 60);
        assert_eq!(lab.h.run(&req), (PASS, req.clone()));
        lab.h.dp.set_icmp_echo(true).unwrap();
    }
    assert_eq!(lab.h.counter(Counter::EchoAnswered), 2);
}

/// "Fragmentation needed" / "packet too big" as the program builds it: from
/// `from` to `to`, TTL 64, IPv4 without DF and id 0, quoting `quote`.
fn too_big(from: IpAddr, to: IpAddr, macs: ([u8; 6], [u8; 6]), mtu: u16, quote: &[u8]) -> Vec<u8> {
    use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder};
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::ICMP, f.octets(), t.octets()).unwrap();
            h.dont_fragment = false;
            h.identification = 0;
            let mut out = Vec::new();
            PacketBuilder::ethernet2(macs.0, macs.1)
                .ip(IpHeaders::Ipv4(h, Default::default()))
                .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
                ))
                .write(&mut out, &quote[..84])
                .unwrap();
            out
        }
        _ => icmp_error(from, to, macs, 64, IcmpErr::TooBig(mtu), &quote[..128]),
    }
}

#[test]
fn packets_too_big_for_their_link_get_icmp_and_ipv4_without_df_goes_to_the_stack() {
    let Some(mut lab) = lab("toobig") else { return };
    redirector_tests::netns::sh(&["ip", "link", "set", "p0", "mtu", "1400"]);
    redirector_tests::netns::sh(&["ip", "link", "set", "in0", "mtu", "1400"]);
    let big = |mut spec: Spec| {
        // 1450-byte IP packets: over the 1400-byte links.
        let hdr = spec.build().len() - spec.payload.len() - 14;
        spec.payload = vec![0x5a; 1450 - hdr];
        spec
    };
    for s in lab.svcs.clone() {
        let name = &s.svc.name;
        lab.serve(&s);
        // A request to the VIP (primary link MTU 1400): the client hears it from the VIP.
        let req = big(s.request(44000, false));
        let (act, out) = lab.h.run(&req.build());
        let want = too_big(
            s.svc.vip,
            s.client,
            (GW_IN_MAC, CLIENT_MAC),
            1400,
            &ip_packet(&req),
        );
        assert_eq!(act, TX, "{name}");
        assert_eq!(out, want, "{name}: too big toward the backend");
        redirector_tests::packets::frame_checksums(&out).unwrap();
        if s.svc.mode == Mode::Nat {
            // A NAT reply too big for the client's link: the backend hears it,
            // about its own packet.
            let be = s.svc.primary;
            let bport = be.port.unwrap_or(s.svc.port);
            let mut reply = big(Spec::new(be.addr, bport, s.client, 44000, s.l4(false)));
            (reply.smac, reply.dmac) = (P_MAC, GW_P_MAC);
            let (act, out) = lab.h.run(&reply.build());
            let want = too_big(s.client, be.addr, (GW_P_MAC, P_MAC), 1400, &ip_packet(&reply));
            assert_eq!(act, TX, "{name}");
            assert_eq!(out, want, "{name}: too big toward the client");
        }
    }
    assert!(lab.h.counter(Counter::TooBig) >= 8);

    // IPv4 without "don't fragment": rewritten, then the stack fragments it.
    let s = lab.named("nat-udp4");
    let mut frame = big(s.request(44001, false)).build();
    frame[14 + 6] &= !0x40; // clear DF
    fix_ipv4_header_checksum(&mut frame);
    let (act, out) = lab.h.run(&frame);
    assert_eq!(act, PASS);
    let p = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip4)) = p.net else {
        panic!("not IPv4")
    };
    assert_eq!(
        ip4.header().destination(),
        [198, 18, 2, 2],
        "NAT rewrite before the stack"
    );
    assert_eq!(ip4.header().ttl(), 64, "the stack decrements the TTL");
    redirector_tests::packets::frame_checksums(&out).unwrap();
    assert_eq!(lab.h.counter(Counter::Fragmented), 1);
}

fn fix_ipv4_header_checksum(frame: &mut [u8]) {
    let mut h = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..])
        .unwrap()
        .to_header();
    h.header_checksum = h.calc_header_checksum();
    let mut bytes = Vec::new();
    h.write(&mut bytes).unwrap();
    frame[14..14 + bytes.len()].copy_from_slice(&bytes);
}

/// Splits a whole Ethernet + IP frame into IP fragments of `chunk` payload
/// bytes (a multiple of 8), datagram id `id`: built here from etherparse's
/// whole packet, byte by byte as RFC 791 / RFC 8200 lay them out.
fn fragments(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    let v6 = frame[12..14] == [0x86, 0xdd];
    let hdr = if v6 { 40 } else { 20 };
    let (eth, ip, payload) = (&frame[..14], &frame[14..14 + hdr], &frame[14 + hdr..]);
    let mut out = Vec::new();
    for (i, part) in payload.chunks(chunk).enumerate() {
        let off = i * chunk;
        let more = off + part.len() < payload.len();
        let mut f = eth.to_vec();
        if v6 {
            let mut h = ip.to_vec();
            let next = h[6];
            h[6] = 44;
            h[4..6].copy_from_slice(&u16::try_from(8 + part.len()).unwrap().to_be_bytes());
            f.extend_from_slice(&h);
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&(u16::try_from(off).unwrap() | u16::from(more)).to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        } else {
            let mut h = etherparse::Ipv4HeaderSlice::from_slice(ip).unwrap().to_header();
            h.total_len = u16::try_from(20 + part.len()).unwrap();
            h.identification = u16::try_from(id).unwrap();
            h.dont_fragment = false;
            h.more_fragments = more;
            h.fragment_offset = etherparse::IpFragOffset::try_new(u16::try_from(off / 8).unwrap()).unwrap();
            h.header_checksum = h.calc_header_checksum();
            h.write(&mut f).unwrap();
        }
        f.extend_from_slice(part);
        out.push(f);
    }
    out
}

#[test]
fn every_fragment_of_a_datagram_goes_where_its_first_went() {
    let Some(mut lab) = lab("frags") else { return };
    let (p, s2) = (SLOT_PRIMARY, SLOT_SECONDARY);
    let mut id = 100;
    for name in ["nat-udp4", "nat-udp6", "dsr-udp6", "nat-tcp4"] {
        let s = lab.named(name);
        lab.serve(&s);
        let big = |mut spec: Spec| {
            spec.payload = (0..3000u32).map(|i| i as u8).collect();
            spec
        };
        // Steady state, then a flow pinned to the non-active secondary.
        lab.h.dp.set_switch(s.id, state(s2, 0b10)).unwrap();
        assert_eq!(slot_of(&mut lab, &s, 45001, true), s2);
        assert_eq!(slot_of(&mut lab, &s, 45001, false), s2);
        lab.h.dp.set_switch(s.id, state(p, 0b11)).unwrap();
        for (sport, slot) in [(45000, p), (45001, s2)] {
            id += 1;
            let req = big(s.request(sport, false));
            let sent = fragments(&req.build(), 1448, id);
            let want = fragments(&s.forwarded(&req, slot).build(), 1448, id);
            for (k, (f, w)) in sent.iter().zip(&want).enumerate() {
                let (act, out) = lab.h.run(f);
                assert_eq!(act, REDIRECT, "{name} sport {sport} fragment {k}");
                assert_eq!(&out, w, "{name} sport {sport} fragment {k}");
                redirector_tests::packets::frame_checksums(&out).unwrap();
            }
        }
        // A later fragment before its first: nowhere to go, dropped.
        id += 1;
        let sent = fragments(&big(s.request(45002, false)).build(), 1448, id);
        let dropped = lab.h.counter(Counter::FragmentDropped);
        assert_eq!(lab.h.run(&sent[1]).0, DROP, "{name}");
        assert_eq!(lab.h.counter(Counter::FragmentDropped), dropped + 1);
        if s.svc.mode == Mode::Nat {
            // A fragmented NAT reply: every fragment from the VIP.
            id += 1;
            let be = s.svc.primary;
            let bport = be.port.unwrap_or(s.svc.port);
            let mut reply = big(Spec::new(be.addr, bport, s.client, 45000, s.l4(false)));
            (reply.smac, reply.dmac) = (P_MAC, GW_P_MAC);
            let mut back = reply.clone();
            (back.src, back.sport, back.ttl) = (s.svc.vip, s.svc.port, reply.ttl - 1);
            (back.dmac, back.smac) = (CLIENT_MAC, GW_IN_MAC);
            let sent = fragments(&reply.build(), 1448, id);
            let want = fragments(&back.build(), 1448, id);
            for (k, (f, w)) in sent.iter().zip(&want).enumerate() {
                assert_eq!(lab.h.run(f), (TX, w.clone()), "{name} reply fragment {k}");
            }
        }
    }
    // Fragments that are not ours pass untouched.
    let other = Spec::new(ip("198.18.1.2"), 1000, ip("198.18.7.7"), 53, L4::Udp);
    let mut other = other.clone();
    other.payload = vec![1; 3000];
    for f in fragments(&other.build(), 1448, 9) {
        assert_eq!(lab.h.run(&f), (PASS, f.clone()));
    }
}

/// What `cargo xtask fuzz datapath` found, pinned down.
#[test]
fn fuzzer_findings_stay_fixed() {
    let Some(mut lab) = lab("fuzzfound") else { return };
    redirector_tests::netns::sh(&["ip", "link", "set", "p0", "mtu", "1280"]);
    for name in ["nat-udp4", "nat-tcp6"] {
        let s = lab.named(name);
        lab.serve(&s);
        let router = client_side_router(s.client);
        let reply = Spec::new(s.svc.vip, s.svc.port, s.client, 46000, s.l4(false));
        // 1. Bytes after the IP packet: the quoted L4 checksum is judged by
        //    the message's end, not the frame's; checksums stay valid.
        let short_quote = &ip_packet(&reply)[..if s.client.is_ipv4() { 28 } else { 48 }];
        let mut err = icmp_error(
            router,
            s.svc.vip,
            (CLIENT_MAC, GW_IN_MAC),
            64,
            IcmpErr::TooBig(1400),
            short_quote,
        );
        err.extend_from_slice(&[0xee; 24]);
        let (act, out) = lab.h.run(&err);
        assert_eq!(act, REDIRECT, "{name}");
        redirector_tests::packets::frame_checksums(&out).unwrap();
        assert_eq!(
            &out[out.len() - 24..],
            &[0xee; 24],
            "{name}: trailing bytes changed"
        );
        // 4. An error about a reply addressed elsewhere than the VIP (here the
        //    gateway): not about a flow of ours, passed untouched.
        let gw: IpAddr = if s.client.is_ipv4() {
            ip("198.18.2.1")
        } else {
            ip("2001:2:0:2::1")
        };
        let err = icmp_error(
            router,
            gw,
            (CLIENT_MAC, GW_IN_MAC),
            64,
            IcmpErr::TooBig(1400),
            &ip_packet(&reply),
        );
        assert_eq!(lab.h.run(&err), (PASS, err.clone()), "{name}");
        // 3. A packet that fits its link, in a frame with bytes after it: forwarded
        //    (trimmed to its IP packet), not answered "too big".
        let mut req = s.request(46001, false);
        req.payload = vec![7; 1200];
        let mut frame = req.build();
        frame.extend_from_slice(&[0xee; 100]);
        let (act, out) = lab.h.run(&frame);
        assert_eq!(act, REDIRECT, "{name}");
        assert_eq!(out, s.forwarded(&req, SLOT_PRIMARY).build(), "{name}");
    }
    // 2. An ICMPv6 error whose quote is not IPv6: not translated.
    let s = lab.named("nat-tcp6");
    let mut quote = ip_packet(&Spec::new(s.svc.vip, s.svc.port, s.client, 46002, s.l4(false)));
    quote[0] = 0x45;
    let err = icmp_error(
        ip("2001:2:0:1::fe"),
        s.svc.vip,
        (CLIENT_MAC, GW_IN_MAC),
        64,
        IcmpErr::TooBig(1400),
        &quote,
    );
    assert_eq!(lab.h.run(&err), (PASS, err.clone()));
}

/// `frame` (Ethernet + IPv4, no options) with IPv4 options `opts` (a multiple
/// of 4 bytes) after its header; the L4 checksum does not cover them.
fn with_v4_options(frame: &[u8], opts: &[u8]) -> Vec<u8> {
    let mut h = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..])
        .unwrap()
        .to_header();
    h.options = etherparse::Ipv4Options::try_from(opts).unwrap();
    h.total_len += u16::try_from(opts.len()).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut out = frame[..14].to_vec();
    h.write(&mut out).unwrap();
    out.extend_from_slice(&frame[34..]);
    out
}

/// `frame` (Ethernet + IPv6, no extension headers) with one 8-byte extension
/// header of type `kind` and body `body` in front of its transport header.
fn with_v6_extension(frame: &[u8], kind: u8, body: [u8; 6]) -> Vec<u8> {
    let mut out = frame[..54].to_vec();
    let next = out[14 + 6];
    out[14 + 6] = kind;
    let len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[next, 0]);
    out.extend_from_slice(&body);
    out.extend_from_slice(&frame[54..]);
    out
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_routers_need_not_act_on_are_forwarded() {
    let Some(mut lab) = lab("options") else { return };
    let unsupported = lab.h.counter(Counter::Unsupported);
    let mut passed = 0;
    for name in ["nat-tcp4", "nat-udp4", "dsr-tcp4"] {
        let s = lab.named(name);
        let req = s.request(47000, true);
        // NOP NOP NOP EOL: forwarded with its options, rewritten as usual.
        let opts = [1, 1, 1, 0];
        let (act, out) = lab.h.run(&with_v4_options(&req.build(), &opts));
        assert_eq!(act, REDIRECT, "{name}");
        assert_eq!(
            out,
            with_v4_options(&s.forwarded(&req, SLOT_PRIMARY).build(), &opts),
            "{name}"
        );
        assert_checksums(&out);
        // Record route, router alert: the stack's, untouched.
        for opts in [[7, 7, 4, 0, 0, 0, 0, 0], [148, 4, 0, 0, 1, 1, 1, 0]] {
            let frame = with_v4_options(&req.build(), &opts);
            assert_eq!(lab.h.run(&frame), (PASS, frame.clone()), "{name} {opts:?}");
            passed += 1;
        }
    }
    for name in ["nat-udp6", "nat-tcp6", "dsr-udp6"] {
        let s = lab.named(name);
        let req = s.request(47001, true);
        let want = s.forwarded(&req, SLOT_PRIMARY).build();
        // Destination options; hop-by-hop of padding only; a routing header
        // with no segments left.
        for (kind, body) in [
            (60, [1, 4, 0, 0, 0, 0]),
            (0, [1, 4, 0, 0, 0, 0]),
            (43, [0, 0, 0, 0, 0, 0]),
        ] {
            let (act, out) = lab.h.run(&with_v6_extension(&req.build(), kind, body));
            assert_eq!(act, REDIRECT, "{name} {kind}");
            assert_eq!(out, with_v6_extension(&want, kind, body), "{name} {kind}");
            assert_checksums(&out);
        }
        // Hop-by-hop router alert, a routing header with a segment left.
        for (kind, body) in [(0, [5, 2, 0, 0, 1, 0]), (43, [0, 1, 0, 0, 0, 0])] {
            let frame = with_v6_extension(&req.build(), kind, body);
            assert_eq!(lab.h.run(&frame), (PASS, frame.clone()), "{name} {kind}");
            passed += 1;
        }
    }
    assert_eq!(lab.h.counter(Counter::Unsupported) - unsupported, passed);
    // A NAT reply with options: translated back like any reply.
    let s = lab.named("nat-udp4");
    lab.serve(&s);
    let mut reply = Spec::new(s.svc.primary.addr, 53, s.client, 47000, s.l4(false));
    (reply.smac, reply.dmac) = (P_MAC, GW_P_MAC);
    let mut back = reply.clone();
    (back.src, back.sport, back.ttl) = (s.svc.vip, s.svc.port, 63);
    (back.dmac, back.smac) = (CLIENT_MAC, GW_IN_MAC);
    let opts = [1, 1, 1, 0];
    assert_eq!(
        lab.h.run(&with_v4_options(&reply.build(), &opts)),
        (TX, with_v4_options(&back.build(), &opts))
    );
}

/// A backend's TCP segment to a client with these flags and sequence number.
fn backend_tcp(s: &Svc, slot: u8, cport: u16, seq: u32, rst: bool) -> Vec<u8> {
    backend_tcp_to(s, s.client, slot, cport, seq, rst)
}

/// [`backend_tcp`] to address `to`.
fn backend_tcp_to(s: &Svc, to: IpAddr, slot: u8, cport: u16, seq: u32, rst: bool) -> Vec<u8> {
    use etherparse::PacketBuilder;
    let be = *s.backend(slot);
    let bport = be.port.unwrap_or(s.svc.port);
    let macs = if slot == SLOT_PRIMARY {
        (P_MAC, GW_P_MAC)
    } else {
        (S_MAC, GW_S_MAC)
    };
    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
    let ip = match (be.addr, to) {
        (IpAddr::V4(a), IpAddr::V4(c)) => eth.ipv4(a.octets(), c.octets(), 64),
        (IpAddr::V6(a), IpAddr::V6(c)) => eth.ipv6(a.octets(), c.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut tcp = ip.tcp(bport, cport, seq, 0).ack(1);
    if rst {
        tcp = tcp.rst();
    }
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).unwrap();
    out
}

/// Issue 11: hints in the traffic. A NAT backend's RST|ACK with sequence 0
/// (its kernel's answer to a SYN on a closed port) and its port unreachable
/// about a client's request are reported to the daemon — at most one per
/// backend per 10 ms — and still reach the client as before. An
/// application's reset (a real sequence number), plain replies and the
/// answers to the gateway's own probes are not hints.
#[test]
fn a_closed_ports_rst_and_a_backends_unreachable_are_reported_at_most_every_10_ms() {
    let Some(mut lab) = lab("signals") else { return };
    let client_hop = lab.client_hop();
    let mut ring = lab.h.dp.take_signals().unwrap();
    let taken = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let mut v = Vec::new();
        while let Some(item) = ring.next() {
            v.push(bytemuck::pod_read_unaligned::<redirector_common::Signal>(&item));
        }
        v
    };
    for s in lab.svcs.clone().into_iter().filter(|s| s.svc.mode == Mode::Nat) {
        let name = &s.svc.name;
        lab.h
            .dp
            .hop_maps()
            .unwrap()
            .set_client_hop(s.client, client_hop)
            .unwrap();
        // Nothing from the rate limit of an earlier service's backends.
        std::thread::sleep(Duration::from_millis(11));
        let (reported, limited) = (
            lab.h.counter(Counter::SignalReported),
            lab.h.counter(Counter::SignalLimited),
        );
        let hint = if s.svc.protocol == Protocol::Tcp {
            // Not hints: a plain reply and an application's reset.
            for (seq, rst) in [(5000, false), (5000, true)] {
                let (act, _) = lab.h.run(&backend_tcp(&s, SLOT_PRIMARY, 40000, seq, rst));
                assert_eq!(act, TX, "{name}");
            }
            assert_eq!(lab.h.counter(Counter::SignalReported), reported, "{name}");
            // The answer to the gateway's own probe of a closed port: the
            // probe's to judge, never counted twice as a signal.
            let own = if s.client.is_ipv4() {
                ip("198.18.2.1")
            } else {
                ip("2001:2:0:2::1")
            };
            let (act, _) = lab.h.run(&backend_tcp_to(&s, own, SLOT_PRIMARY, 40000, 0, true));
            assert_eq!(act, PASS, "{name}");
            assert_eq!(lab.h.counter(Counter::SignalReported), reported, "{name}");
            assert_eq!(lab.h.counter(Counter::SignalLimited), limited, "{name}");
            backend_tcp(&s, SLOT_PRIMARY, 40000, 0, true)
        } else {
            let be = s.svc.primary;
            let bport = be.port.unwrap_or(s.svc.port);
            let translated = Spec::new(s.client, 43002, be.addr, bport, s.l4(false));
            icmp_error(
                be.addr,
                s.client,
                (P_MAC, GW_P_MAC),
                64,
                IcmpErr::Port,
                &ip_packet(&translated),
            )
        };
        // The hint goes on to the client as before, and is reported once.
        let (act, _) = lab.h.run(&hint);
        assert_eq!(act, TX, "{name}");
        assert_eq!(lab.h.counter(Counter::SignalReported), reported + 1, "{name}");
        let got = taken(&mut ring);
        let kind = if s.svc.protocol == Protocol::Tcp {
            redirector_common::SIGNAL_RST_CLOSED
        } else {
            redirector_common::SIGNAL_UNREACHABLE
        };
        assert_eq!(
            got,
            [redirector_common::Signal {
                service: s.id,
                slot: SLOT_PRIMARY,
                kind,
                evidence: 0,
                _pad: 0
            }],
            "{name}"
        );
        // A storm: limited to one per 10 ms.
        for _ in 0..50 {
            lab.h.run(&hint);
        }
        assert_eq!(lab.h.counter(Counter::SignalReported), reported + 1, "{name}");
        assert_eq!(lab.h.counter(Counter::SignalLimited), limited + 50, "{name}");
        assert!(taken(&mut ring).is_empty(), "{name}");
        std::thread::sleep(Duration::from_millis(11));
        lab.h.run(&hint);
        assert_eq!(lab.h.counter(Counter::SignalReported), reported + 2, "{name}");
        assert_eq!(taken(&mut ring).len(), 1, "{name}");
    }
}

/// Issue 11: evidence. The same refusals count as evidence (a verdict, not
/// a mere hint) only when no client could have sent them: from the
/// backend's own address, arriving on a `backend_interfaces` link that is
/// the backend's next hop, from that hop's MAC. Evidence is limited to one
/// per backend per ms.
#[test]
fn a_refusal_is_evidence_only_from_the_backends_own_hop_on_a_backend_interface() {
    let Some(mut lab) = lab("evidence") else { return };
    let client_hop = lab.client_hop();
    let (if_in, [hop_p, hop_s]) = (lab.if_in, hops());
    let mut ring = lab.h.dp.take_signals().unwrap();
    let mut taken = || {
        let mut v = Vec::new();
        while let Some(item) = ring.next() {
            v.push(bytemuck::pod_read_unaligned::<redirector_common::Signal>(&item));
        }
        v.into_iter().map(|s| s.evidence).collect::<Vec<_>>()
    };
    lab.h.dp.add_backend_iface(hop_p.ifindex).unwrap();
    lab.h.dp.add_backend_iface(hop_s.ifindex).unwrap();
    for s in lab.svcs.clone().into_iter().filter(|s| s.svc.mode == Mode::Nat) {
        let name = &s.svc.name;
        lab.h
            .dp
            .hop_maps()
            .unwrap()
            .set_client_hop(s.client, client_hop)
            .unwrap();
        let be = s.svc.primary;
        // A refusal by the backend itself, and the same error from another
        // address on its link (a router's): never evidence.
        let (refusal, from_router) = if s.svc.protocol == Protocol::Tcp {
            (backend_tcp(&s, SLOT_PRIMARY, 40000, 0, true), None)
        } else {
            let bport = be.port.unwrap_or(s.svc.port);
            let quoted = ip_packet(&Spec::new(s.client, 43002, be.addr, bport, s.l4(false)));
            let router = if s.client.is_ipv4() {
                ip("198.18.2.254")
            } else {
                ip("2001:2:0:2::fe")
            };
            let err = |src| icmp_error(src, s.client, (P_MAC, GW_P_MAC), 64, IcmpErr::Port, &quoted);
            (err(be.addr), Some(err(router)))
        };
        let mut spoofed = refusal.clone();
        spoofed[6..12].copy_from_slice(&CLIENT_MAC);
        let cases: [(&str, u32, &[u8], u8); 4] = [
            (
                "the backend's hop on its backend interface",
                hop_p.ifindex,
                &refusal,
                1,
            ),
            ("the client-facing interface", if_in, &refusal, 0),
            (
                "another backend interface than the backend's hop",
                hop_s.ifindex,
                &refusal,
                0,
            ),
            (
                "another MAC on the backend's interface",
                hop_p.ifindex,
                &spoofed,
                0,
            ),
        ];
        for (case, ingress, frame, evidence) in cases {
            std::thread::sleep(Duration::from_millis(11));
            lab.h.ingress_ifindex = ingress;
            let (act, _) = lab.h.run(frame);
            // Forwarded to the client as before, whatever it is reported as.
            assert!(act == TX || act == REDIRECT, "{name}, {case}: {act}");
            assert_eq!(taken(), [evidence], "{name}, {case}");
        }
        if let Some(frame) = from_router {
            std::thread::sleep(Duration::from_millis(11));
            lab.h.ingress_ifindex = hop_p.ifindex;
            lab.h.run(&frame);
            assert_eq!(taken(), [0], "{name}, from a router's address");
        }
        // Evidence is limited to one per ms (a hint to one per 10 ms).
        std::thread::sleep(Duration::from_millis(11));
        lab.h.ingress_ifindex = hop_p.ifindex;
        let limited = lab.h.counter(Counter::SignalLimited);
        for _ in 0..20 {
            lab.h.run(&refusal);
        }
        assert_eq!(taken(), [1], "{name}");
        assert_eq!(lab.h.counter(Counter::SignalLimited), limited + 19, "{name}");
        std::thread::sleep(Duration::from_millis(2));
        lab.h.run(&refusal);
        assert_eq!(taken(), [1], "{name}: a second one after 1 ms");
        lab.h.ingress_ifindex = if_in;
    }
}

/// Issue 11: the silence watch's flags. A NAT backend is flagged *asked*
/// by a client's UDP packet or TCP SYN (not by a later TCP segment: a
/// closed connection's last ACK expects no answer) and *answered* by its
/// UDP reply or SYN-ACK (not by another TCP segment, nor by an answer to
/// the gateway's own probe); DSR backends are never flagged (their answers
/// bypass the gateway). Taking the flags clears them.
#[test]
fn requests_and_answers_raise_the_silence_flags_of_nat_backends_only() {
    let Some(mut lab) = lab("seen") else { return };
    let client_hop = lab.client_hop();
    let seen = lab.h.dp.seen_map().unwrap();
    for s in lab.svcs.clone() {
        let name = &s.svc.name;
        let index = s.id * 2 + u32::from(SLOT_PRIMARY);
        let tcp = s.svc.protocol == Protocol::Tcp;
        lab.h
            .dp
            .hop_maps()
            .unwrap()
            .set_client_hop(s.client, client_hop)
            .unwrap();
        assert_eq!(seen.take(index), Some((false, false)), "{name}");
        let (act, _) = lab.h.run(&s.request(41000, true).build());
        assert_eq!(act, REDIRECT, "{name}");
        let nat = s.svc.mode == Mode::Nat;
        assert_eq!(seen.take(index), Some((nat, false)), "{name}: a request");
        assert_eq!(seen.take(index), Some((false, false)), "{name}: taken");
        if tcp {
            lab.h.run(&s.request(41000, false).build());
            assert_eq!(seen.take(index), Some((false, false)), "{name}: a later segment");
        }
        if !nat {
            continue;
        }
        let be = s.svc.primary;
        let bport = be.port.unwrap_or(s.svc.port);
        let answer = |to: IpAddr, l4: L4| {
            let mut r = Spec::new(be.addr, bport, to, 41000, l4);
            (r.smac, r.dmac) = (P_MAC, GW_P_MAC);
            r.build()
        };
        let (reply, other) = if tcp {
            (
                answer(s.client, L4::Tcp { syn: true, ack: true }),
                Some(answer(
                    s.client,
                    L4::Tcp {
                        syn: false,
                        ack: true,
                    },
                )),
            )
        } else {
            (answer(s.client, L4::Udp), None)
        };
        if let Some(other) = other {
            lab.h.run(&other);
            assert_eq!(seen.take(index), Some((false, false)), "{name}: a plain ACK");
        }
        let own = if s.client.is_ipv4() {
            ip("198.18.2.1")
        } else {
            ip("2001:2:0:2::1")
        };
        let probe = if tcp {
            answer(own, L4::Tcp { syn: true, ack: true })
        } else {
            answer(own, L4::Udp)
        };
        lab.h.run(&probe);
        assert_eq!(seen.take(index), Some((false, false)), "{name}: a probe's answer");
        let (act, _) = lab.h.run(&reply);
        assert_eq!(act, TX, "{name}");
        assert_eq!(seen.take(index), Some((false, true)), "{name}: an answer");
    }
}

/// `SERVICE_INDEX` copies one `SERVICES` entry per slot (a cheap hash of
/// the key; an array load instead of the hash lookup). Two services whose
/// keys share a slot are each forwarded to their own backends, whichever
/// the slot copies; a removed service is forwarded no more (its copy is
/// cleared before its key goes) and its slot passes to the other; a
/// service published again on another id is forwarded by that id's state.
#[test]
fn services_sharing_an_index_slot_are_each_forwarded_and_a_removed_one_is_not() {
    let Some(mut lab) = lab("svcindex") else { return };
    let base = lab.named("nat-tcp4");
    // Two more VIPs of the benchmarking range whose port-80 TCP keys share a slot.
    let index_slot = |a: [u8; 4]| {
        let addr = redirector::datapath::addr16(IpAddr::from(a));
        redirector_common::service_slot(&addr, 80u16.to_be(), 6)
    };
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..=u16::MAX)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            [198, 19, hi, lo]
        })
        .find_map(|v| seen.insert(index_slot(v), v).map(|w| (w, v)))
        .unwrap();
    let mk = |id: u32, v: [u8; 4]| Svc {
        id,
        svc: Service {
            name: format!("vip-{}", v[3]),
            vip: IpAddr::from(v),
            ..base.svc.clone()
        },
        ..base.clone()
    };
    let (first, second) = (mk(10, a), mk(11, b));
    let check = |lab: &mut Lab, s: &Svc, slot: u8, what: &str| {
        lab.serve(s);
        let req = s.request(41000, true);
        let (act, out) = lab.h.run(&req.build());
        assert_eq!(act, REDIRECT, "{what}: {}", s.svc.name);
        assert_eq!(out, s.forwarded(&req, slot).build(), "{what}: {}", s.svc.name);
    };
    lab.h
        .dp
        .set_service(first.id, &first.svc, hops(), both_up(SLOT_PRIMARY))
        .unwrap();
    lab.h
        .dp
        .set_service(second.id, &second.svc, hops(), both_up(SLOT_SECONDARY))
        .unwrap();
    check(&mut lab, &first, SLOT_PRIMARY, "sharing a slot");
    check(&mut lab, &second, SLOT_SECONDARY, "sharing a slot");
    // The slot copies the first; removing it hands the slot to the second.
    lab.h.dp.remove_service(first.id).unwrap();
    let f = first.request(41000, true).build();
    let (act, out) = lab.h.run(&f);
    assert_eq!((act, &out), (PASS, &f), "a removed service is still forwarded");
    check(&mut lab, &second, SLOT_SECONDARY, "after a removal");
    // Published again on a free id, on its secondary: now the slot's other key.
    let again = Svc {
        id: 20,
        ..first.clone()
    };
    lab.h
        .dp
        .set_service(again.id, &again.svc, hops(), both_up(SLOT_SECONDARY))
        .unwrap();
    check(&mut lab, &again, SLOT_SECONDARY, "published again");
    lab.h.dp.remove_service(second.id).unwrap();
    let f = second.request(41000, true).build();
    assert_eq!(lab.h.run(&f), (PASS, f), "a removed service is still forwarded");
    // Alone in its slot: forwarded by its own id, flips included.
    check(&mut lab, &again, SLOT_SECONDARY, "alone in its slot");
    lab.h.dp.set_switch(again.id, both_up(SLOT_PRIMARY)).unwrap();
    check(&mut lab, &again, SLOT_PRIMARY, "alone, flipped");
    // The lab's own services (several per port) are untouched by all this.
    check(&mut lab, &base, SLOT_PRIMARY, "another service");
}

/// Issue 12: gateways of a cluster assign service ids locally, so the load-
/// sharing hash must not depend on them. The same service published under
/// another id shares exactly the same client flows.
#[test]
fn load_sharing_picks_the_same_flows_whatever_the_services_local_id() {
    let Some(mut lab) = lab("shareid") else { return };
    let s = lab.named("nat-udp4");
    let st = SwitchState {
        share: 50,
        ..state(SLOT_PRIMARY, 0b11)
    };
    let decide = |lab: &mut Lab, s: &Svc| -> Vec<u8> {
        lab.h.dp.set_switch(s.id, st).unwrap();
        // Fresh flows (and the entries of the previous id's removed).
        (30000..30400u16).map(|p| slot_of(lab, s, p, true)).collect()
    };
    let first = decide(&mut lab, &s);
    let shared = first.iter().filter(|&&x| x == SLOT_SECONDARY).count();
    assert!((140..=260).contains(&shared), "{shared} of 400 shared");
    lab.h.dp.remove_service(s.id).unwrap();
    let moved = Svc { id: 30, ..s.clone() };
    lab.h
        .dp
        .set_service(moved.id, &moved.svc, hops(), both_up(SLOT_PRIMARY))
        .unwrap();
    assert_eq!(
        decide(&mut lab, &moved),
        first,
        "the shared flows depend on the local id"
    );
}

/// A frame that reaches the program addressed to another host's MAC (a
/// switch flooding an unknown destination, a promiscuous or virtual NIC)
/// is not ours: forwarding it too would duplicate it. With the ingress
/// interface's MAC known, it goes to the stack untouched — for a VIP, a
/// NAT reply and ICMP alike — while frames to that MAC are forwarded.
#[test]
fn frames_addressed_to_another_mac_pass_untouched() {
    let Some(mut lab) = lab("othermac") else { return };
    let s = lab.named("nat-udp4");
    let own = [0x02, 0, 0, 0, 0x01, 0x01];
    let req = s.request(40000, false);
    // Before the interface's MAC is known: no check (test runs, a shared slot).
    let (act, _) = lab.h.run(&req.build());
    assert_eq!(act, REDIRECT);
    let if_in = lab.if_in;
    lab.h.dp.hop_maps().unwrap().set_ingress_mac(if_in, own).unwrap();
    let mut to_us = req.clone();
    to_us.dmac = own;
    let (act, out) = lab.h.run(&to_us.build());
    assert_eq!(act, REDIRECT);
    assert_eq!(out, s.forwarded(&to_us, SLOT_PRIMARY).build());
    for other in [
        [0x02, 0, 0, 0, 0x01, 0x02],
        [0xff; 6],
        [0x01, 0x00, 0x5e, 0, 0, 1],
        [0x02, 0, 0, 0, 0x02, 0x01],
    ] {
        let mut frame = req.clone();
        frame.dmac = other;
        let bytes = frame.build();
        let (act, out) = lab.h.run(&bytes);
        assert_eq!((act, &out), (PASS, &bytes), "to {other:02x?}");
    }
    // Another interface's entry in another slot does not matter.
    lab.h
        .dp
        .hop_maps()
        .unwrap()
        .set_ingress_mac(if_in + 1, [0x02, 0, 0, 0, 9, 9])
        .unwrap();
    let (act, _) = lab.h.run(&to_us.build());
    assert_eq!(act, REDIRECT);
}
