//! Stage 1: parse and validate Ethernet / IPv4 / IPv6 / TCP / UDP headers.
//!
//! Only packets whose headers are complete and self-consistent come out as a
//! [`Packet`]; everything else is classified so the caller can count it and
//! pass it on untouched.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use redirector_common::{PROTO_TCP, PROTO_UDP};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const TCP_LEN: usize = 20;
pub const UDP_LEN: usize = 8;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

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

/// What the parser found.
pub enum Parsed {
    /// A complete IPv4/IPv6 TCP/UDP packet.
    Packet(Packet),
    /// Not IP, or IP with a transport we do not touch: pass untouched.
    Other,
    /// IPv4 fragment or options, IPv6 extension header: pass untouched.
    Unsupported,
    /// Truncated or inconsistent headers: pass untouched and count.
    Malformed,
}

/// Offsets and fields of a validated packet. Offsets are compile-time
/// constants per family so the verifier can track every access.
pub struct Packet {
    pub v6: bool,
    pub proto: u8,
    /// Source and destination addresses, IPv4-mapped for v4.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP SYN without ACK: the first packet of a connection.
    pub syn: bool,
    /// TTL or hop limit.
    pub ttl: u8,
}

#[inline(always)]
fn be16(p: *const u8) -> u16 {
    // SAFETY: callers pass pointers the bounds checks already covered.
    unsafe { u16::from_be_bytes([*p, *p.add(1)]) }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let frame_len = ctx.data_end() - ctx.data();
    let Some(eth) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) else {
        return Parsed::Malformed;
    };
    // SAFETY: eth covers 14 bytes inside the packet.
    let ethertype = unsafe { be16((eth as *const u8).add(12)) };
    match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, frame_len),
        ETH_P_IPV6 => parse_v6(ctx, frame_len),
        _ => Parsed::Other,
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, frame_len: usize) -> Parsed {
    let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN) else {
        return Parsed::Malformed;
    };
    let ip = ip as *const u8;
    // SAFETY: ip covers the 20-byte fixed header.
    let (vihl, tot_len, frag, ttl, proto) = unsafe {
        (
            *ip,
            be16(ip.add(2)) as usize,
            be16(ip.add(6)),
            *ip.add(8),
            *ip.add(9),
        )
    };
    if vihl >> 4 != 4 || vihl & 0xf < 5 {
        return Parsed::Malformed;
    }
    let ihl = ((vihl & 0xf) as usize) * 4;
    if tot_len < ihl || ETH_LEN + tot_len > frame_len {
        return Parsed::Malformed;
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Parsed::Other;
    }
    // MF set or a fragment offset: no (or no reliable) L4 header.
    if frag & 0x3fff != 0 || ihl != IPV4_LEN {
        return Parsed::Unsupported;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[10] = 0xff;
    src[11] = 0xff;
    dst[10] = 0xff;
    dst[11] = 0xff;
    // SAFETY: addresses are at 12..20 of the checked header.
    unsafe {
        core::ptr::copy_nonoverlapping(ip.add(12), src.as_mut_ptr().add(12), 4);
        core::ptr::copy_nonoverlapping(ip.add(16), dst.as_mut_ptr().add(12), 4);
    }
    parse_l4(ctx, false, proto, src, dst, ttl, tot_len - IPV4_LEN)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, frame_len: usize) -> Parsed {
    let Some(ip) = ptr_at::<[u8; IPV6_LEN]>(ctx, ETH_LEN) else {
        return Parsed::Malformed;
    };
    let ip = ip as *const u8;
    // SAFETY: ip covers the 40-byte fixed header.
    let (ver, payload_len, next, hop) =
        unsafe { (*ip >> 4, be16(ip.add(4)) as usize, *ip.add(6), *ip.add(7)) };
    if ver != 6 || ETH_LEN + IPV6_LEN + payload_len > frame_len {
        return Parsed::Malformed;
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        // Extension headers (hop-by-hop 0, routing 43, fragment 44, dst opts 60, ...)
        // would hide the port; everything else is not ours.
        return match next {
            0 | 43 | 44 | 60 | 51 | 50 | 135 | 139 | 140 => Parsed::Unsupported,
            _ => Parsed::Other,
        };
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    // SAFETY: addresses are at 8..40 of the checked header.
    unsafe {
        core::ptr::copy_nonoverlapping(ip.add(8), src.as_mut_ptr(), 16);
        core::ptr::copy_nonoverlapping(ip.add(24), dst.as_mut_ptr(), 16);
    }
    parse_l4(ctx, true, next, src, dst, hop, payload_len)
}

#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    v6: bool,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    ttl: u8,
    l4_len: usize,
) -> Parsed {
    let off = if v6 {
        ETH_LEN + IPV6_LEN
    } else {
        ETH_LEN + IPV4_LEN
    };
    let (sport_be, dport_be, syn) = if proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<[u8; TCP_LEN]>(ctx, off) else {
            return Parsed::Malformed;
        };
        let tcp = tcp as *const u8;
        // SAFETY: tcp covers the 20-byte fixed header.
        let (sp, dp, doff, flags) = unsafe {
            (
                core::ptr::read_unaligned(tcp as *const u16),
                core::ptr::read_unaligned(tcp.add(2) as *const u16),
                (*tcp.add(12) >> 4) as usize * 4,
                *tcp.add(13),
            )
        };
        if doff < TCP_LEN || doff > l4_len {
            return Parsed::Malformed;
        }
        (sp, dp, flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN)
    } else {
        let Some(udp) = ptr_at::<[u8; UDP_LEN]>(ctx, off) else {
            return Parsed::Malformed;
        };
        let udp = udp as *const u8;
        // SAFETY: udp covers the 8-byte header.
        let (sp, dp, len) = unsafe {
            (
                core::ptr::read_unaligned(udp as *const u16),
                core::ptr::read_unaligned(udp.add(2) as *const u16),
                be16(udp.add(4)) as usize,
            )
        };
        if len < UDP_LEN || len > l4_len {
            return Parsed::Malformed;
        }
        (sp, dp, false)
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
    })
}
