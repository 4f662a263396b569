//! Test packets built and checked with etherparse — an independent
//! implementation, so the program is never checked against our own code.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::net::IpAddr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// Transport of a test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with the given flags.
    Tcp {
        /// SYN flag.
        syn: bool,
        /// ACK flag.
        ack: bool,
    },
    /// UDP.
    Udp,
}

/// Everything that defines a test frame.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Ethernet source.
    pub smac: [u8; 6],
    /// Ethernet destination.
    pub dmac: [u8; 6],
    /// IP source.
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// TTL / hop limit.
    pub ttl: u8,
    /// Transport.
    pub l4: L4,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// IPv4 UDP only: send checksum 0 ("none").
    pub udp_zero_csum: bool,
}

impl Spec {
    /// A frame from `src:sport` to `dst:dport`.
    pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, l4: L4) -> Spec {
        Spec {
            smac: [0x02, 0, 0, 0, 1, 2],
            dmac: [0x02, 0, 0, 0, 1, 1],
            src,
            dst,
            ttl: 64,
            l4,
            sport,
            dport,
            payload: b"redirector test payload".to_vec(),
            udp_zero_csum: false,
        }
    }

    /// Serialises with etherparse (checksums computed by etherparse).
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.smac, self.dmac);
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), self.ttl),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), self.ttl),
            _ => panic!("mixed families"),
        };
        let mut out = Vec::new();
        match self.l4 {
            L4::Tcp { syn, ack } => {
                let mut b = ip.tcp(self.sport, self.dport, 1000, 64240);
                if syn {
                    b = b.syn();
                }
                if ack {
                    b = b.ack(1);
                }
                b.write(&mut out, &self.payload).unwrap();
            }
            L4::Udp => {
                ip.udp(self.sport, self.dport)
                    .write(&mut out, &self.payload)
                    .unwrap();
                if self.udp_zero_csum {
                    assert!(self.src.is_ipv4(), "IPv6 UDP must have a checksum");
                    out[14 + 20 + 6] = 0;
                    out[14 + 20 + 7] = 0;
                }
            }
        }
        out
    }
}

/// Parses `frame` with etherparse and checks every checksum it carries
/// (IPv4 header, TCP/UDP with pseudo-header; IPv4 UDP 0 = none is valid).
pub fn assert_checksums(frame: &[u8]) {
    if let Err(e) = std::panic::catch_unwind(|| check(frame)) {
        std::panic::resume_unwind(e);
    }
}

/// Like [`assert_checksums`], as a boolean.
pub fn checksums_ok(frame: &[u8]) -> bool {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(|| check(frame)).is_ok();
    std::panic::set_hook(prev);
    ok
}

fn check(frame: &[u8]) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let net = p.net.unwrap();
    let transport = p.transport.unwrap();
    match (&net, &transport) {
        (NetSlice::Ipv4(ip), TransportSlice::Tcp(tcp)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            let want = tcp.to_header().calc_checksum_ipv4(&h, tcp.payload()).unwrap();
            assert_eq!(tcp.checksum(), want, "TCP/IPv4 checksum");
        }
        (NetSlice::Ipv4(ip), TransportSlice::Udp(udp)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            if udp.checksum() != 0 {
                let want = udp.to_header().calc_checksum_ipv4(&h, udp.payload()).unwrap();
                assert_eq!(udp.checksum(), want, "UDP/IPv4 checksum");
            }
        }
        (NetSlice::Ipv6(ip), TransportSlice::Tcp(tcp)) => {
            let h = ip.header().to_header();
            let want = tcp.to_header().calc_checksum_ipv6(&h, tcp.payload()).unwrap();
            assert_eq!(tcp.checksum(), want, "TCP/IPv6 checksum");
        }
        (NetSlice::Ipv6(ip), TransportSlice::Udp(udp)) => {
            let h = ip.header().to_header();
            let want = udp.to_header().calc_checksum_ipv6(&h, udp.payload()).unwrap();
            assert_eq!(udp.checksum(), want, "UDP/IPv6 checksum");
        }
        other => panic!("unexpected packet {other:?}"),
    }
}

/// A deterministic xorshift generator: reproducible "random" frames.
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
