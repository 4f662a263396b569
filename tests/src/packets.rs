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
    /// TCP sequence number (a new connection from a reused port has a new one).
    pub seq: u32,
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
            seq: 1000,
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
                let mut b = ip.tcp(self.sport, self.dport, self.seq, 64240);
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

/// Every checksum `frame` carries, checked with etherparse — a superset of
/// [`checksums_ok`], which stays as it is: the IPv4 header (options
/// included); TCP and UDP with their pseudo-header (IPv4 UDP 0 = none);
/// ICMPv4 over the whole message; ICMPv6 with its pseudo-header; and the
/// IPv4 header an ICMP error quotes, when it is there whole. A fragment's or
/// another protocol's payload cannot be checked: only its IP header is.
/// `Err` says what is wrong, including a frame etherparse cannot parse or
/// one that carries no IP packet.
pub fn frame_checksums(frame: &[u8]) -> Result<(), String> {
    if whole_ipv6_fragment(frame) {
        // No transport to check, and IPv6 has no header checksum.
        return Ok(());
    }
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| format!("etherparse: {e}"))?;
    let Some(net) = &p.net else {
        return Err("no IP header".into());
    };
    if let NetSlice::Ipv4(ip) = net {
        let h = ip.header().to_header();
        let want = h.calc_header_checksum();
        if h.header_checksum != want {
            return Err(format!(
                "IPv4 header checksum {:#06x}, want {want:#06x}",
                h.header_checksum
            ));
        }
    }
    let mismatch = |what: &str, got: u16, want: u16| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what} checksum {got:#06x}, want {want:#06x}"))
        }
    };
    match (net, &p.transport) {
        (_, None) => Ok(()),
        (NetSlice::Ipv4(ip), Some(TransportSlice::Tcp(tcp))) => {
            let h = ip.header().to_header();
            let want = tcp
                .to_header()
                .calc_checksum_ipv4(&h, tcp.payload())
                .map_err(|e| format!("TCP/IPv4 checksum: {e}"))?;
            mismatch("TCP/IPv4", tcp.checksum(), want)
        }
        (NetSlice::Ipv4(ip), Some(TransportSlice::Udp(udp))) => {
            if udp.checksum() == 0 {
                return Ok(());
            }
            let h = ip.header().to_header();
            let want = udp
                .to_header()
                .calc_checksum_ipv4(&h, udp.payload())
                .map_err(|e| format!("UDP/IPv4 checksum: {e}"))?;
            mismatch("UDP/IPv4", udp.checksum(), want)
        }
        (NetSlice::Ipv6(ip), Some(TransportSlice::Tcp(tcp))) => {
            let h = ip.header().to_header();
            let want = tcp
                .to_header()
                .calc_checksum_ipv6(&h, tcp.payload())
                .map_err(|e| format!("TCP/IPv6 checksum: {e}"))?;
            mismatch("TCP/IPv6", tcp.checksum(), want)
        }
        (NetSlice::Ipv6(ip), Some(TransportSlice::Udp(udp))) => {
            let h = ip.header().to_header();
            let want = udp
                .to_header()
                .calc_checksum_ipv6(&h, udp.payload())
                .map_err(|e| format!("UDP/IPv6 checksum: {e}"))?;
            mismatch("UDP/IPv6", udp.checksum(), want)
        }
        (_, Some(TransportSlice::Icmpv4(icmp))) => {
            // RFC 1071: the sum over the message, checksum included, is all ones.
            if etherparse::checksum::Sum16BitWords::new()
                .add_slice(icmp.slice())
                .ones_complement()
                != 0
            {
                return Err(format!("ICMPv4 checksum {:#06x} is wrong", icmp.checksum()));
            }
            if matches!(icmp.type_u8(), 3 | 4 | 5 | 11 | 12) {
                quoted_ipv4_header(icmp.payload())?;
            }
            Ok(())
        }
        (NetSlice::Ipv6(ip), Some(TransportSlice::Icmpv6(icmp))) => {
            let h = ip.header();
            if icmp.is_checksum_valid(h.source(), h.destination()) {
                Ok(())
            } else {
                Err(format!("ICMPv6 checksum {:#06x} is wrong", icmp.checksum()))
            }
        }
        (NetSlice::Ipv4(_), Some(TransportSlice::Icmpv6(_))) => Err("ICMPv6 in IPv4".into()),
    }
}

/// The checksum of the IPv4 header at the start of an ICMP error's payload,
/// when the whole header is there (a quote too short to hold it is not an error).
fn quoted_ipv4_header(quote: &[u8]) -> Result<(), String> {
    let Some(&vihl) = quote.first() else {
        return Ok(());
    };
    let ihl = usize::from(vihl & 0xf) * 4;
    if vihl >> 4 != 4 || ihl < 20 || quote.len() < ihl {
        return Ok(());
    }
    if etherparse::checksum::Sum16BitWords::new()
        .add_slice(&quote[..ihl])
        .ones_complement()
        != 0
    {
        return Err("the IPv4 header quoted by an ICMP error has a wrong checksum".into());
    }
    Ok(())
}

/// Does an IPv6 packet with these extension headers carry a fragment (RFC
/// 8200 §4.5: a fragment header with an offset or the M flag)? Decoded from
/// the bytes: etherparse before 0.20 reads the offset and M from the wrong
/// bits of the header (JulianSchmid/etherparse#150), so it takes some last
/// fragments for whole packets and parses their data as a transport header.
pub fn ipv6_fragmented(exts: &etherparse::Ipv6ExtensionsSlice<'_>) -> bool {
    exts.clone().into_iter().any(|e| match e {
        etherparse::Ipv6ExtensionSlice::Fragment(f) => {
            let b = f.slice();
            // Offset: the top 13 bits of bytes 2..4; M: the lowest bit.
            u16::from_be_bytes([b[2], b[3]]) & 0xfff9 != 0
        }
        _ => false,
    })
}

/// An IPv6 fragment whose IP layer is complete (its payload as long as its
/// header says): nothing more of it can be parsed.
fn whole_ipv6_fragment(frame: &[u8]) -> bool {
    matches!(
        etherparse::LaxSlicedPacket::from_ethernet(frame),
        Ok(etherparse::LaxSlicedPacket {
            net: Some(etherparse::LaxNetSlice::Ipv6(ip)),
            ..
        }) if ipv6_fragmented(ip.extensions()) && !ip.payload().incomplete
    )
}

/// Does `frame` parse with etherparse, as a whole (lengths consistent)? An
/// IPv6 fragment is judged by its IP layer (see [`ipv6_fragmented`]).
pub fn parses(frame: &[u8]) -> Result<(), String> {
    if whole_ipv6_fragment(frame) {
        return Ok(());
    }
    SlicedPacket::from_ethernet(frame)
        .map(|_| ())
        .map_err(|e| format!("etherparse: {e}"))
}
