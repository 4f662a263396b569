//! Stage 3: rewrite headers. Checksums are patched incrementally (RFC 1624);
//! all offsets are constants within the headers `parse` already validated.
use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::programs::XdpContext;
use redirector_common::{NextHop, PROTO_TCP, csum};

use crate::parse::{ETH_LEN, IPV4_LEN, IPV6_LEN, TCP_LEN, UDP_LEN, ptr_at};

/// Which side of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination (client → backend).
    Dst,
    /// Source (backend reply → client).
    Src,
}

#[inline(always)]
fn rd32(p: *const u8) -> u32 {
    // SAFETY: callers pass pointers inside bounds-checked headers.
    unsafe { read_unaligned(p as *const u32) }
}

#[inline(always)]
fn rd16(p: *const u8) -> u16 {
    // SAFETY: as above.
    unsafe { read_unaligned(p as *const u16) }
}

#[inline(always)]
fn wr16(p: *mut u8, v: u16) {
    // SAFETY: as above.
    unsafe { write_unaligned(p as *mut u16, v) }
}

/// Rewrites one endpoint (address and, when `port_be != 0`, port) and patches
/// the IPv4 header checksum and the TCP/UDP checksum (pseudo-header included).
/// Returns `false` (nothing written) if the headers are not in bounds.
#[inline(always)]
pub fn endpoint(ctx: &XdpContext, v6: bool, proto: u8, side: Side, addr: &[u8; 16], port_be: u16) -> bool {
    if v6 {
        endpoint_v6(ctx, proto, side, addr, port_be)
    } else {
        endpoint_v4(ctx, proto, side, addr, port_be)
    }
}

#[inline(always)]
fn endpoint_v4(ctx: &XdpContext, proto: u8, side: Side, addr: &[u8; 16], port_be: u16) -> bool {
    let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN) else {
        return false;
    };
    let ip = ip as *mut u8;
    let l4_off = ETH_LEN + IPV4_LEN;
    let (a_off, p_off) = match side {
        Side::Dst => (16, 2),
        Side::Src => (12, 0),
    };
    let new_addr = rd32(addr[12..].as_ptr());
    // SAFETY: a_off + 4 <= 20 and the IPv4 checksum at 10..12 are inside the checked header.
    let (old_addr, ip_csum) = unsafe { (rd32(ip.add(a_off)), rd16(ip.add(10))) };
    unsafe {
        // SAFETY: as above.
        write_unaligned(ip.add(a_off) as *mut u32, new_addr);
        wr16(ip.add(10), csum::replace_words(ip_csum, &[old_addr], &[new_addr]));
    }
    l4(
        ctx,
        l4_off,
        proto,
        p_off,
        &[old_addr],
        &[new_addr],
        port_be,
        false,
    )
}

#[inline(always)]
fn endpoint_v6(ctx: &XdpContext, proto: u8, side: Side, addr: &[u8; 16], port_be: u16) -> bool {
    let Some(ip) = ptr_at::<[u8; IPV6_LEN]>(ctx, ETH_LEN) else {
        return false;
    };
    let ip = ip as *mut u8;
    let l4_off = ETH_LEN + IPV6_LEN;
    let (a_off, p_off) = match side {
        Side::Dst => (24, 2),
        Side::Src => (8, 0),
    };
    let mut old = [0u32; 4];
    let mut new = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        // SAFETY: a_off + 16 <= 40, inside the checked header.
        old[i] = unsafe { rd32(ip.add(a_off + i * 4)) };
        new[i] = rd32(addr[i * 4..].as_ptr());
        i += 1;
    }
    let mut i = 0;
    while i < 4 {
        // SAFETY: as above.
        unsafe { write_unaligned(ip.add(a_off + i * 4) as *mut u32, new[i]) };
        i += 1;
    }
    l4(ctx, l4_off, proto, p_off, &old, &new, port_be, true)
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "kept flat so the verifier sees constants"
)]
fn l4<const N: usize>(
    ctx: &XdpContext,
    l4_off: usize,
    proto: u8,
    p_off: usize,
    old_addr: &[u32; N],
    new_addr: &[u32; N],
    port_be: u16,
    v6: bool,
) -> bool {
    if proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<[u8; TCP_LEN]>(ctx, l4_off) else {
            return false;
        };
        let tcp = tcp as *mut u8;
        // SAFETY: ports at 0..4 and the checksum at 16..18 are inside the checked header.
        unsafe {
            let mut acc = csum::start(rd16(tcp.add(16)));
            acc = addr_words(acc, old_addr, new_addr);
            if port_be != 0 {
                acc = csum::add_replace16(acc, rd16(tcp.add(p_off)), port_be);
                wr16(tcp.add(p_off), port_be);
            }
            wr16(tcp.add(16), csum::finish(acc));
        }
    } else {
        let Some(udp) = ptr_at::<[u8; UDP_LEN]>(ctx, l4_off) else {
            return false;
        };
        let udp = udp as *mut u8;
        // SAFETY: ports at 0..4 and the checksum at 6..8 are inside the checked header.
        unsafe {
            let old_csum = rd16(udp.add(6));
            let mut acc = csum::start(old_csum);
            acc = addr_words(acc, old_addr, new_addr);
            if port_be != 0 {
                acc = csum::add_replace16(acc, rd16(udp.add(p_off)), port_be);
                wr16(udp.add(p_off), port_be);
            }
            // IPv4 UDP checksum 0 means "none" and stays 0.
            if v6 || old_csum != 0 {
                wr16(udp.add(6), csum::udp_nonzero(csum::finish(acc)));
            }
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
        if let Some(ip) = ptr_at::<[u8; IPV6_LEN]>(ctx, ETH_LEN) {
            // SAFETY: hop limit at offset 7 of the checked header.
            unsafe { (*ip)[7] = (*ip)[7].wrapping_sub(1) };
        }
    } else if let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN) {
        let ip = ip as *mut u8;
        // SAFETY: TTL/protocol word at 8..10 and checksum at 10..12 are in the header.
        unsafe {
            let old = rd16(ip.add(8));
            *ip.add(8) = (*ip.add(8)).wrapping_sub(1);
            let new = rd16(ip.add(8));
            let acc = csum::add_replace16(csum::start(rd16(ip.add(10))), old, new);
            wr16(ip.add(10), csum::finish(acc));
        }
    }
}

/// Writes the next hop's MACs.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, hop: &NextHop) {
    if let Some(eth) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) {
        let eth = eth as *mut u8;
        // SAFETY: eth covers 14 bytes; MACs are the first 12.
        unsafe {
            core::ptr::copy_nonoverlapping(hop.dst_mac.as_ptr(), eth, 6);
            core::ptr::copy_nonoverlapping(hop.src_mac.as_ptr(), eth.add(6), 6);
        }
    }
}
