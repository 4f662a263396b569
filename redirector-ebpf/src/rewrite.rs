//! Stage 3: rewrite headers. Checksums are patched incrementally (RFC 1624)
//! on the 32-bit words that change; the headers were validated by `parse`.
use aya_ebpf::programs::XdpContext;
use redirector_common::{Ip, NextHop, PROTO_TCP, csum};

use crate::parse::{ETH_LEN, EthHdr, FRAG_LEN, IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, ptr_at};

/// Which side of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination (client → backend).
    Dst,
    /// Source (backend reply → client).
    Src,
}

/// Rewrites one endpoint (address and, when `port_be != 0`, port) and patches
/// the IPv4 header checksum and the TCP/UDP checksum (pseudo-header included).
/// `l4_off`: where the transport header starts. Returns `false` (nothing
/// written) if the headers are not in bounds.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "kept flat so the verifier sees constants"
)]
pub fn endpoint(
    ctx: &XdpContext,
    v6: bool,
    l4_off: u16,
    proto: u8,
    side: Side,
    addr: &Ip,
    port_be: u16,
) -> bool {
    // One copy per common transport offset, so every access there is at a
    // constant; options and extension headers (their own program) take the
    // general copy.
    const V4: usize = ETH_LEN + IPV4_LEN;
    const V6: usize = ETH_LEN + IPV6_LEN;
    const V6_FRAG: usize = ETH_LEN + IPV6_LEN + FRAG_LEN;
    match (v6, usize::from(l4_off)) {
        (false, V4) => endpoint_at(ctx, false, proto, side, addr, port_be, V4),
        (true, V6) => endpoint_at(ctx, true, proto, side, addr, port_be, V6),
        (true, V6_FRAG) => endpoint_at(ctx, true, proto, side, addr, port_be, V6_FRAG),
        (v6, off) => endpoint_at(ctx, v6, proto, side, addr, port_be, off & 0x1ff),
    }
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "kept flat so the verifier sees constants"
)]
fn endpoint_at(
    ctx: &XdpContext,
    v6: bool,
    proto: u8,
    side: Side,
    addr: &Ip,
    port_be: u16,
    l4_off: usize,
) -> bool {
    // Check every header before writing any, so `false` really means untouched.
    let l4_ok = if proto == PROTO_TCP {
        ptr_at::<TcpHdr>(ctx, l4_off).is_some()
    } else {
        ptr_at::<UdpHdr>(ctx, l4_off).is_some()
    };
    if !l4_ok {
        return false;
    }
    if v6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return false;
        };
        // SAFETY: bounds-checked, 2-byte aligned header (see parse.rs).
        let h = unsafe { &mut *ip };
        let old = match side {
            Side::Dst => h.dst,
            Side::Src => h.src,
        };
        let new = *addr;
        match side {
            Side::Dst => h.dst = new,
            Side::Src => h.src = new,
        }
        l4(ctx, l4_off, proto, side, &old, &new, port_be, true)
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return false;
        };
        // SAFETY: bounds-checked, 2-byte aligned header.
        let h = unsafe { &mut *ip };
        let new = addr[3];
        let old = match side {
            Side::Dst => h.dst,
            Side::Src => h.src,
        };
        match side {
            Side::Dst => h.dst = new,
            Side::Src => h.src = new,
        }
        h.csum = csum::replace_words(h.csum, &[old], &[new]);
        l4(ctx, l4_off, proto, side, &[old], &[new], port_be, false)
    }
}

/// Rewrites one address of a packet without a transport header in reach
/// (a non-first fragment): the IPv4 header checksum is the only one to patch.
#[inline(always)]
pub fn address(ctx: &XdpContext, v6: bool, side: Side, addr: &Ip) -> bool {
    if v6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return false;
        };
        // SAFETY: bounds-checked, 2-byte aligned header.
        let h = unsafe { &mut *ip };
        match side {
            Side::Dst => h.dst = *addr,
            Side::Src => h.src = *addr,
        }
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return false;
        };
        // SAFETY: bounds-checked, 2-byte aligned header.
        let h = unsafe { &mut *ip };
        let old = match side {
            Side::Dst => h.dst,
            Side::Src => h.src,
        };
        match side {
            Side::Dst => h.dst = addr[3],
            Side::Src => h.src = addr[3],
        }
        h.csum = csum::replace_words(h.csum, &[old], &[addr[3]]);
    }
    true
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "kept flat so the verifier sees constants"
)]
fn l4<const N: usize>(
    ctx: &XdpContext,
    off: usize,
    proto: u8,
    side: Side,
    old_addr: &[u32; N],
    new_addr: &[u32; N],
    port_be: u16,
    v6: bool,
) -> bool {
    if proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, off) else {
            return false;
        };
        // SAFETY: bounds-checked, 2-byte aligned header.
        let t = unsafe { &mut *tcp };
        let mut acc = addr_words(csum::start(t.csum), old_addr, new_addr);
        if port_be != 0 {
            let port = match side {
                Side::Dst => &mut t.dport,
                Side::Src => &mut t.sport,
            };
            acc = csum::add_replace16(acc, *port, port_be);
            *port = port_be;
        }
        t.csum = csum::finish(acc);
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, off) else {
            return false;
        };
        // SAFETY: bounds-checked, 2-byte aligned header.
        let u = unsafe { &mut *udp };
        let old_csum = u.csum;
        let mut acc = addr_words(csum::start(old_csum), old_addr, new_addr);
        if port_be != 0 {
            let port = match side {
                Side::Dst => &mut u.dport,
                Side::Src => &mut u.sport,
            };
            acc = csum::add_replace16(acc, *port, port_be);
            *port = port_be;
        }
        // IPv4 UDP checksum 0 means "none" and stays 0.
        if v6 || old_csum != 0 {
            u.csum = csum::udp_nonzero(csum::finish(acc));
        }
    }
    true
}

#[inline(always)]
fn addr_words<const N: usize>(mut acc: u64, old: &[u32; N], new: &[u32; N]) -> u64 {
    let mut i = 0;
    while i < N {
        acc = csum::add_replace32(acc, old[i], new[i]);
        i += 1;
    }
    acc
}

/// Decrements TTL / hop limit (the caller checked it is > 1).
#[inline(always)]
pub fn dec_ttl(ctx: &XdpContext, v6: bool) {
    if v6 {
        if let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) {
            // SAFETY: bounds-checked, 2-byte aligned header.
            unsafe { (*ip).hop = (*ip).hop.wrapping_sub(1) };
        }
    } else if let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) {
        // SAFETY: bounds-checked, 2-byte aligned header.
        let h = unsafe { &mut *ip };
        // TTL and protocol share one 16-bit word of the header checksum.
        let old = u16::from_ne_bytes([h.ttl, h.proto]);
        h.ttl = h.ttl.wrapping_sub(1);
        let new = u16::from_ne_bytes([h.ttl, h.proto]);
        h.csum = csum::finish(csum::add_replace16(csum::start(h.csum), old, new));
    }
}

/// Writes the next hop's MACs.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, hop: &NextHop) {
    if let Some(eth) = ptr_at::<EthHdr>(ctx, 0) {
        // SAFETY: bounds-checked, 2-byte aligned header.
        unsafe {
            (*eth).dst = mac_words(&hop.dst_mac);
            (*eth).src = mac_words(&hop.src_mac);
        }
    }
}

#[inline(always)]
fn mac_words(m: &[u8; 6]) -> [u16; 3] {
    [
        u16::from_ne_bytes([m[0], m[1]]),
        u16::from_ne_bytes([m[2], m[3]]),
        u16::from_ne_bytes([m[4], m[5]]),
    ]
}
