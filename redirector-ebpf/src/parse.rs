//! Stage 1: parse and validate Ethernet / IPv4 / IPv6 / TCP / UDP headers.
//!
//! Only packets whose headers are complete and self-consistent come out as a
//! [`Packet`]; everything else is classified so the caller can count it and
//! pass it on untouched.
//!
//! Headers are `repr(C, packed(2))` views of packet memory: Ethernet frames
//! are at least 2-byte aligned in every XDP path, so reading through them is
//! sound, and the compiler emits a few wide loads instead of byte-by-byte
//! copies (which cost ~40 ns per packet in an earlier version).
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use redirector_common::{Ip, PROTO_TCP, PROTO_UDP, V4_MAPPED_WORD, flow::syn_tag};

pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const IPV4_LEN: usize = size_of::<Ipv4Hdr>();
pub const IPV6_LEN: usize = size_of::<Ipv6Hdr>();
pub const TCP_LEN: usize = size_of::<TcpHdr>();
pub const UDP_LEN: usize = size_of::<UdpHdr>();
pub const FRAG_LEN: usize = size_of::<FragHdr>();

const ETH_P_IPV4: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

#[repr(C, packed(2))]
pub struct EthHdr {
    /// MACs as 16-bit words: copied with three stores instead of a memcpy call.
    pub dst: [u16; 3],
    pub src: [u16; 3],
    pub proto: u16,
}

#[repr(C, packed(2))]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C, packed(2))]
pub struct Ipv6Hdr {
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub next: u8,
    pub hop: u8,
    pub src: Ip,
    pub dst: Ip,
}

#[repr(C, packed(2))]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub csum: u16,
    pub urg: u16,
}

#[repr(C, packed(2))]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub csum: u16,
}

/// Returns a pointer to a `T` at `off`, or `None` if it would cross `data_end`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[repr(C, packed(2))]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub csum: u16,
    /// Echo: identifier and sequence; "fragmentation needed": unused and
    /// next-hop MTU; IPv6 "packet too big": the MTU.
    pub rest: u32,
}

pub const ICMP_LEN: usize = size_of::<IcmpHdr>();
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// Where an ICMP error's quoted IP header starts (no outer options/extensions).
pub const INNER4_OFF: usize = ETH_LEN + IPV4_LEN + ICMP_LEN;
pub const INNER6_OFF: usize = ETH_LEN + IPV6_LEN + ICMP_LEN;

/// What the parser found.
pub enum Parsed {
    /// A complete IPv4/IPv6 TCP/UDP packet.
    Packet(Packet),
    /// An ICMP / ICMPv6 message, parsed further by [`icmp`] (kept out of
    /// this enum so the common path moves less).
    Icmp(Deferred),
    /// A non-first fragment (no ports): goes where its first fragment went;
    /// parsed further by [`fragment`].
    Fragment(Deferred),
    /// TCP/UDP behind IPv4 options or IPv6 extension headers: for
    /// [`with_options`], in a program of its own.
    Options,
    /// Not IP, or IP with a transport we do not touch: pass untouched.
    Other,
    /// IPv4 fragment or options, IPv6 extension header: pass untouched.
    Unsupported,
    /// Truncated or inconsistent headers: pass untouched and count.
    Malformed,
}

/// A packet whose IP header is validated (no IPv4 options; for an IPv6
/// fragment, the fragment header right after the IPv6 header) and whose
/// parsing continues on its own path.
#[derive(Clone, Copy)]
pub struct Deferred {
    pub v6: bool,
    /// IP payload bytes.
    pub len: usize,
}

/// What [`icmp`] found.
pub enum IcmpParsed {
    Icmp(Icmp),
    /// An ICMP message this program leaves to the stack.
    Other,
    Malformed,
}

/// Reads an ICMP message's IP header (validated by [`parse`]) and the message.
#[inline(always)]
pub fn icmp(ctx: &XdpContext, d: Deferred) -> IcmpParsed {
    if d.v6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return IcmpParsed::Malformed;
        };
        // SAFETY: bounds-checked, 2-byte aligned header.
        let h = unsafe { &*ip };
        parse_icmp(ctx, true, h.src, h.dst, h.hop, d.len)
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return IcmpParsed::Malformed;
        };
        // SAFETY: bounds-checked, 2-byte aligned header.
        let h = unsafe { &*ip };
        let (src, dst) = ([0, 0, V4_MAPPED_WORD, h.src], [0, 0, V4_MAPPED_WORD, h.dst]);
        parse_icmp(ctx, false, src, dst, h.ttl, d.len)
    }
}

/// Reads a non-first fragment's identity (headers validated by [`parse`]).
#[inline(always)]
pub fn fragment(ctx: &XdpContext, d: Deferred) -> Option<Fragment> {
    if d.v6 {
        let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN)?;
        let fh = ptr_at::<FragHdr>(ctx, ETH_LEN + IPV6_LEN)?;
        // SAFETY: bounds-checked, 2-byte aligned headers.
        let (h, f) = unsafe { (&*ip, &*fh) };
        Some(Fragment {
            v6: true,
            proto: f.next,
            src: h.src,
            dst: h.dst,
            id: u32::from_be(f.id),
            ttl: h.hop,
        })
    } else {
        let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)?;
        // SAFETY: bounds-checked, 2-byte aligned header.
        let h = unsafe { &*ip };
        Some(Fragment {
            v6: false,
            proto: h.proto,
            src: [0, 0, V4_MAPPED_WORD, h.src],
            dst: [0, 0, V4_MAPPED_WORD, h.dst],
            id: u32::from(u16::from_be(h.id)),
            ttl: h.ttl,
        })
    }
}

/// What an ICMP message is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request (ping).
    Echo,
    /// An error quoting a TCP/UDP packet (its ports are in `Icmp::inner`).
    Error,
}

/// A validated ICMP / ICMPv6 message: outer addresses, and for errors the
/// quoted packet's endpoints. Offsets are constants (no outer IPv4 options or
/// IPv6 extension headers, a quoted IPv4 header without options, a quoted
/// IPv6 header followed directly by TCP/UDP).
pub struct Icmp {
    pub v6: bool,
    /// ICMP message bytes (header and quote): the IP payload length.
    pub len: usize,
    pub kind: IcmpKind,
    pub src: Ip,
    pub dst: Ip,
    pub ttl: u8,
    /// The quoted packet: protocol, source, destination, ports.
    pub inner_proto: u8,
    pub inner_src: Ip,
    pub inner_dst: Ip,
    pub inner_sport_be: u16,
    pub inner_dport_be: u16,
}

/// A non-first IPv4 fragment, or IPv6 fragment (fragment header right
/// after the IPv6 header) with a non-zero offset.
pub struct Fragment {
    pub v6: bool,
    pub proto: u8,
    pub src: Ip,
    pub dst: Ip,
    pub id: u32,
    pub ttl: u8,
}

#[repr(C, packed(2))]
pub struct FragHdr {
    pub next: u8,
    pub reserved: u8,
    /// Offset (13 bits, in 8-byte units) << 3 | M flag.
    pub off_m: u16,
    pub id: u32,
}

/// Fields of a validated packet. Header offsets are constants per family
/// (no IPv4 options, no IPv6 extension headers), so the verifier can track
/// every later access.
pub struct Packet {
    pub v6: bool,
    pub proto: u8,
    /// Source and destination addresses, IPv4-mapped for v4.
    pub src: Ip,
    pub dst: Ip,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP SYN without ACK (the first packet of a connection): its
    /// [`syn_tag`](redirector_common::flow::syn_tag), which a retransmission
    /// repeats; 0 for every other packet.
    pub syn: u16,
    /// TTL or hop limit.
    pub ttl: u8,
    /// IPv4 "don't fragment" (IPv6: always true, routers never fragment).
    pub df: bool,
    /// Where the transport header starts (after IPv4 options, IPv6
    /// extension or fragment headers, when there are).
    pub l4_off: u16,
    /// The first fragment of a datagram (the later ones follow it), and the
    /// datagram's identification.
    pub first_fragment: bool,
    pub frag_id: u32,
}

/// Whether the frame is addressed to the interface it arrived on: its
/// destination MAC is the one `INGRESS_MACS` holds for it. An interface
/// without an entry (a test run, a slot two interfaces share) checks
/// nothing; broadcast and multicast frames are not addressed here (no VIP
/// traffic comes that way).
#[inline(always)]
pub fn addressed_here(ctx: &XdpContext) -> bool {
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(e) = crate::maps::INGRESS_MACS.get(redirector_common::ingress_slot(ifindex)) else {
        return true;
    };
    if e.ifindex != ifindex || ifindex == 0 {
        return true;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return true;
    };
    // SAFETY: eth is bounds-checked and 2-byte aligned (see the module comment).
    let dst = unsafe { (*eth).dst };
    dst[0] == e.mac[0] && dst[1] == e.mac[1] && dst[2] == e.mac[2]
}

// Inlined into each program: as a BPF function its context pointers would
// travel as arguments, which the verifier refuses.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let frame_len = ctx.data_end() - ctx.data();
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed;
    };
    // SAFETY: eth is bounds-checked and 2-byte aligned (see the module comment).
    match unsafe { (*eth).proto } {
        ETH_P_IPV4 => parse_v4(ctx, frame_len),
        ETH_P_IPV6 => parse_v6(ctx, frame_len),
        _ => Parsed::Other,
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, frame_len: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Parsed::Malformed;
    };
    // SAFETY: ip is bounds-checked and 2-byte aligned.
    let h = unsafe { &*ip };
    let vihl = h.vihl;
    let tot_len = u16::from_be(h.tot_len) as usize;
    if vihl >> 4 != 4 || vihl & 0xf < 5 {
        return Parsed::Malformed;
    }
    let ihl = ((vihl & 0xf) as usize) * 4;
    if tot_len < ihl || ETH_LEN + tot_len > frame_len {
        return Parsed::Malformed;
    }
    let proto = h.proto;
    if proto == PROTO_ICMP && ihl == IPV4_LEN && u16::from_be(h.frag) & 0x3fff == 0 {
        return Parsed::Icmp(Deferred {
            v6: false,
            len: tot_len - IPV4_LEN,
        });
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Parsed::Other;
    }
    if ihl != IPV4_LEN {
        return Parsed::Options;
    }
    let src = [0, 0, V4_MAPPED_WORD, h.src];
    let dst = [0, 0, V4_MAPPED_WORD, h.dst];
    let frag = u16::from_be(h.frag);
    if frag & 0x1fff != 0 {
        return Parsed::Fragment(Deferred {
            v6: false,
            len: tot_len - IPV4_LEN,
        });
    }
    let id = u32::from(u16::from_be(h.id));
    let l4 = L4At {
        off: ETH_LEN + IPV4_LEN,
        len: tot_len - IPV4_LEN,
        first_fragment: frag & 0x2000 != 0,
        frag_id: id,
    };
    parse_l4(ctx, false, proto, src, dst, h.ttl, l4, frag & 0x4000 != 0)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, frame_len: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
        return Parsed::Malformed;
    };
    // SAFETY: ip is bounds-checked and 2-byte aligned.
    let h = unsafe { &*ip };
    let payload_len = u16::from_be(h.payload_len) as usize;
    if u32::from_be(h.vtc_flow) >> 28 != 6 || ETH_LEN + IPV6_LEN + payload_len > frame_len {
        return Parsed::Malformed;
    }
    let next = h.next;
    if next == PROTO_ICMPV6 {
        return Parsed::Icmp(Deferred {
            v6: true,
            len: payload_len,
        });
    }
    if next == 44 {
        return parse_v6_fragment(ctx, h, payload_len);
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        // Extension headers (hop-by-hop 0, routing 43, dst opts 60, ...)
        // would hide the port; everything else is not ours.
        return match next {
            0 | 43 | 60 => Parsed::Options,
            44 | 51 | 50 | 135 | 139 | 140 => Parsed::Unsupported,
            _ => Parsed::Other,
        };
    }
    let (src, dst) = (h.src, h.dst);
    let l4 = L4At {
        off: ETH_LEN + IPV6_LEN,
        len: payload_len,
        first_fragment: false,
        frag_id: 0,
    };
    parse_l4(ctx, true, next, src, dst, h.hop, l4, true)
}

/// Parses a TCP/UDP packet behind IPv4 options or IPv6 extension headers
/// that no router acts on; everything else is [`Parsed::Unsupported`]. The
/// transport offset varies here, so this runs in a program of its own
/// (`redirector_options`), off the main program's stack and verification.
///
/// IPv4: forwarded unless an option asks routers for work — record route 7,
/// timestamp 68, loose and strict source route 131 and 137, router alert
/// 148 — or is malformed. IPv6: hop-by-hop options made of padding only
/// (first), destination options, a routing header with no segments left;
/// at most [`MAX_EXT`] headers of at most [`MAX_EXT_LEN`] bytes each.
#[inline(always)]
pub fn with_options(ctx: &XdpContext) -> Parsed {
    let frame_len = ctx.data_end() - ctx.data();
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed;
    };
    // SAFETY: eth is bounds-checked and 2-byte aligned.
    match unsafe { (*eth).proto } {
        ETH_P_IPV4 => v4_with_options(ctx, frame_len),
        ETH_P_IPV6 => v6_with_extensions(ctx, frame_len),
        _ => Parsed::Unsupported,
    }
}

#[inline(always)]
fn v4_with_options(ctx: &XdpContext, frame_len: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Parsed::Malformed;
    };
    // SAFETY: ip is bounds-checked and 2-byte aligned.
    let h = unsafe { &*ip };
    let ihl = usize::from(h.vihl & 0xf) * 4;
    let tot_len = u16::from_be(h.tot_len) as usize;
    let proto = h.proto;
    if h.vihl >> 4 != 4 || ihl <= IPV4_LEN || tot_len < ihl || ETH_LEN + tot_len > frame_len {
        return Parsed::Malformed;
    }
    if proto != PROTO_TCP && proto != PROTO_UDP || !ipv4_options_ok(ctx, ihl) {
        return Parsed::Unsupported;
    }
    let frag = u16::from_be(h.frag);
    if frag & 0x1fff != 0 {
        // A later fragment: the fragment path handles it.
        return Parsed::Unsupported;
    }
    let l4 = L4At {
        off: ETH_LEN + ihl,
        len: tot_len - ihl,
        first_fragment: frag & 0x2000 != 0,
        frag_id: u32::from(u16::from_be(h.id)),
    };
    let (src, dst) = ([0, 0, V4_MAPPED_WORD, h.src], [0, 0, V4_MAPPED_WORD, h.dst]);
    parse_l4(ctx, false, proto, src, dst, h.ttl, l4, frag & 0x4000 != 0)
}

/// Are these IPv4 options forwardable as they are? Only a boolean comes
/// out: a walk result the verifier tracked precisely would make it verify
/// the rest of the program once per possible length.
#[inline(never)]
fn ipv4_options_ok(ctx: &XdpContext, ihl: usize) -> bool {
    let end = ETH_LEN + (ihl & 0x3c);
    let mut at = ETH_LEN + IPV4_LEN;
    let mut n = 0;
    while n < 40 && at < end {
        // Two bytes (kind, length) at a time: a transport header follows the
        // options, so they exist; a 1-byte read at a variable offset loses
        // the verifier's packet range.
        let Some(t) = ptr_at::<[u8; 2]>(ctx, at & 0x7f) else {
            return false;
        };
        // SAFETY: bounds-checked bytes.
        let [kind, len] = unsafe { *t };
        match kind {
            0 => return true,
            1 => at += 1,
            7 | 68 | 131 | 137 | 148 => return false,
            _ => {
                let len = usize::from(len);
                if len < 2 || at + len > end {
                    return false;
                }
                at += len;
            }
        }
        n += 1;
    }
    at == end
}

/// Extension headers a walk may cross, and their largest size.
const MAX_EXT: usize = 4;
const MAX_EXT_LEN: usize = 64;

#[inline(always)]
fn v6_with_extensions(ctx: &XdpContext, frame_len: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
        return Parsed::Malformed;
    };
    // SAFETY: ip is bounds-checked and 2-byte aligned.
    let h = unsafe { &*ip };
    let payload_len = u16::from_be(h.payload_len) as usize;
    if u32::from_be(h.vtc_flow) >> 28 != 6 || ETH_LEN + IPV6_LEN + payload_len > frame_len {
        return Parsed::Malformed;
    }
    let walked = ipv6_extensions(ctx, h.next);
    // Clamped; and the result stays imprecise for the verifier (see above).
    let ext_len = (walked & 0xffff) as usize & 0x1f8;
    let next = (walked >> 16) as u8;
    if walked == 0 || ext_len == 0 || ext_len > MAX_EXT * MAX_EXT_LEN || ext_len > payload_len {
        return Parsed::Unsupported;
    }
    let l4 = L4At {
        off: ETH_LEN + IPV6_LEN + ext_len,
        len: payload_len - ext_len,
        first_fragment: false,
        frag_id: 0,
    };
    let (src, dst) = (h.src, h.dst);
    parse_l4(ctx, true, next, src, dst, h.hop, l4, true)
}

/// Walks the extension headers after the IPv6 header: `next << 16 |
/// their length` when TCP/UDP follows headers no router acts on, else 0.
#[inline(never)]
fn ipv6_extensions(ctx: &XdpContext, first: u8) -> u32 {
    let mut next = first;
    let mut len = 0usize;
    let mut k = 0;
    while k < MAX_EXT {
        if next == PROTO_TCP || next == PROTO_UDP {
            break;
        }
        let off = ETH_LEN + IPV6_LEN + (len & 0x1f8);
        let Some(h) = ptr_at::<[u8; 4]>(ctx, off) else {
            return 0;
        };
        // SAFETY: bounds-checked bytes.
        let h = unsafe { *h };
        let this = (usize::from(h[1]) + 1) * 8;
        if this > MAX_EXT_LEN {
            return 0;
        }
        let ok = match next {
            0 => k == 0 && padding_only(ctx, off, this),
            60 => true,
            43 => h[3] == 0,
            _ => false,
        };
        if !ok {
            return 0;
        }
        next = h[0];
        len += this;
        k += 1;
    }
    if next == PROTO_TCP || next == PROTO_UDP {
        (u32::from(next) << 16) | len as u32
    } else {
        0
    }
}

/// Are the options of the hop-by-hop header at `off` (`len` bytes) only
/// Pad1 and PadN?
#[inline(always)]
fn padding_only(ctx: &XdpContext, off: usize, len: usize) -> bool {
    let mut at = 2;
    let mut n = 0;
    while n < MAX_EXT_LEN && at < len {
        // Two bytes at a time (see the IPv4 walk): a Pad1 in the header's
        // last byte still has the next header's first byte after it.
        let Some(o) = ptr_at::<[u8; 2]>(ctx, (off + at) & 0x1ff) else {
            return false;
        };
        // SAFETY: bounds-checked bytes.
        let o = unsafe { *o };
        match o[0] {
            0 => at += 1,
            1 => at += 2 + usize::from(o[1]),
            _ => return false,
        }
        n += 1;
    }
    at == len
}

/// An IPv6 packet whose first extension header is a fragment header.
#[inline(always)]
fn parse_v6_fragment(ctx: &XdpContext, h: &Ipv6Hdr, payload_len: usize) -> Parsed {
    let Some(fh) = ptr_at::<FragHdr>(ctx, ETH_LEN + IPV6_LEN) else {
        return Parsed::Malformed;
    };
    if payload_len < FRAG_LEN {
        return Parsed::Malformed;
    }
    // SAFETY: bounds-checked, 2-byte aligned header.
    let (next, off_m, id) = unsafe { ((*fh).next, u16::from_be((*fh).off_m), u32::from_be((*fh).id)) };
    if next != PROTO_TCP && next != PROTO_UDP {
        return Parsed::Unsupported;
    }
    if off_m & 0xfff8 != 0 {
        return Parsed::Fragment(Deferred {
            v6: true,
            len: payload_len,
        });
    }
    let (src, dst) = (h.src, h.dst);
    let l4 = L4At {
        off: ETH_LEN + IPV6_LEN + FRAG_LEN,
        len: payload_len - FRAG_LEN,
        // M clear with offset 0: an atomic fragment (RFC 6946), a whole packet.
        first_fragment: off_m & 1 != 0,
        frag_id: id,
    };
    parse_l4(ctx, true, next, src, dst, h.hop, l4, true)
}

/// Where the transport header is and what follows from the IP layer.
struct L4At {
    off: usize,
    /// Bytes from `off` to the end of this packet's IP payload.
    len: usize,
    first_fragment: bool,
    frag_id: u32,
}

/// ICMP echo requests and errors quoting a TCP/UDP packet; every other
/// ICMP message is [`IcmpParsed::Other`] (the stack's).
#[inline(always)]
fn parse_icmp(ctx: &XdpContext, v6: bool, src: Ip, dst: Ip, ttl: u8, l4_len: usize) -> IcmpParsed {
    let off = if v6 {
        ETH_LEN + IPV6_LEN
    } else {
        ETH_LEN + IPV4_LEN
    };
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, off) else {
        return IcmpParsed::Malformed;
    };
    if l4_len < ICMP_LEN {
        return IcmpParsed::Malformed;
    }
    // SAFETY: bounds-checked, 2-byte aligned header.
    let (kind, code) = unsafe { ((*icmp).kind, (*icmp).code) };
    let echo = if v6 { kind == 128 } else { kind == 8 };
    let mut out = Icmp {
        v6,
        len: l4_len,
        kind: IcmpKind::Echo,
        src,
        dst,
        ttl,
        inner_proto: 0,
        inner_src: [0; 4],
        inner_dst: [0; 4],
        inner_sport_be: 0,
        inner_dport_be: 0,
    };
    if echo && code == 0 {
        return IcmpParsed::Icmp(out);
    }
    // Errors: IPv4 destination unreachable 3, time exceeded 11, parameter
    // problem 12; IPv6 destination unreachable 1, packet too big 2, time
    // exceeded 3, parameter problem 4.
    let error = if v6 {
        (1..=4).contains(&kind)
    } else {
        kind == 3 || kind == 11 || kind == 12
    };
    if !error {
        return IcmpParsed::Other;
    }
    out.kind = IcmpKind::Error;
    // The quote must hold the inner IP header and the inner ports.
    if v6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, INNER6_OFF) else {
            return IcmpParsed::Other;
        };
        let Some(ports) = ptr_at::<[u16; 2]>(ctx, INNER6_OFF + IPV6_LEN) else {
            return IcmpParsed::Other;
        };
        if l4_len < ICMP_LEN + IPV6_LEN + 4 {
            return IcmpParsed::Malformed;
        }
        // SAFETY: bounds-checked, 2-byte aligned.
        unsafe {
            let h = &*ip;
            if u32::from_be(h.vtc_flow) >> 28 != 6 || (h.next != PROTO_TCP && h.next != PROTO_UDP) {
                return IcmpParsed::Other;
            }
            out.inner_proto = h.next;
            out.inner_src = h.src;
            out.inner_dst = h.dst;
            out.inner_sport_be = (*ports)[0];
            out.inner_dport_be = (*ports)[1];
        }
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, INNER4_OFF) else {
            return IcmpParsed::Other;
        };
        let Some(ports) = ptr_at::<[u16; 2]>(ctx, INNER4_OFF + IPV4_LEN) else {
            return IcmpParsed::Other;
        };
        if l4_len < ICMP_LEN + IPV4_LEN + 4 {
            return IcmpParsed::Malformed;
        }
        // SAFETY: bounds-checked, 2-byte aligned.
        unsafe {
            let h = &*ip;
            // A quoted header with options, or a non-first fragment (no ports):
            // not one this program translates.
            if h.vihl != 0x45 || u16::from_be(h.frag) & 0x1fff != 0 {
                return IcmpParsed::Other;
            }
            if h.proto != PROTO_TCP && h.proto != PROTO_UDP {
                return IcmpParsed::Other;
            }
            out.inner_proto = h.proto;
            out.inner_src = [0, 0, V4_MAPPED_WORD, h.src];
            out.inner_dst = [0, 0, V4_MAPPED_WORD, h.dst];
            out.inner_sport_be = (*ports)[0];
            out.inner_dport_be = (*ports)[1];
        }
    }
    IcmpParsed::Icmp(out)
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "kept flat so the verifier sees constants"
)]
fn parse_l4(ctx: &XdpContext, v6: bool, proto: u8, src: Ip, dst: Ip, ttl: u8, at: L4At, df: bool) -> Parsed {
    let off = at.off;
    let l4_len = at.len;
    let (sport_be, dport_be, syn) = if proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, off) else {
            return Parsed::Malformed;
        };
        // SAFETY: tcp is bounds-checked and 2-byte aligned.
        let t = unsafe { &*tcp };
        let doff = (t.doff >> 4) as usize * 4;
        if doff < TCP_LEN || doff > l4_len {
            return Parsed::Malformed;
        }
        (
            t.sport,
            t.dport,
            if t.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
                syn_tag(u32::from_be(t.seq))
            } else {
                0
            },
        )
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, off) else {
            return Parsed::Malformed;
        };
        // SAFETY: udp is bounds-checked and 2-byte aligned.
        let u = unsafe { &*udp };
        let len = u16::from_be(u.len) as usize;
        // IPv6 UDP must carry a checksum (RFC 8200 §8.1); a zero one cannot be
        // patched incrementally into a valid one. A first fragment holds only
        // the start of the datagram its length field counts.
        let short = if at.first_fragment {
            len < l4_len
        } else {
            len > l4_len
        };
        if len < UDP_LEN || short || (v6 && u.csum == 0) {
            return Parsed::Malformed;
        }
        (u.sport, u.dport, 0)
    };
    Parsed::Packet(Packet {
        v6,
        proto,
        src,
        dst,
        sport_be,
        dport_be,
        syn,
        ttl,
        df,
        l4_off: off as u16,
        first_fragment: at.first_fragment,
        frag_id: at.frag_id,
    })
}
