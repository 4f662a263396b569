//! ICMP and ICMPv6: echo requests to a VIP, errors about VIP flows, and the
//! "too big" errors this program sends itself.
//!
//! - Echo to a VIP: answered from the VIP (`icmp_echo = "answer"`) or passed
//!   to the stack; never forwarded to a backend.
//! - An error quoting a packet *from* a VIP (a router on the client's side
//!   about a reply): goes to the backend that owns the flow, quoted headers
//!   translated back in NAT mode (the backend sees its own packet), as is in DSR.
//! - An error quoting a packet *to* a NAT backend (a router on the backend's
//!   side, or the backend itself, about a translated request): goes to the
//!   client, quoted headers translated to the VIP (an error from the backend
//!   itself also comes from the VIP).
//! - A packet too big for its egress link: "fragmentation needed" / "packet
//!   too big" from its destination, quoting it (Katran builds these the same
//!   way), so the sender lowers its path MTU.
//!
//! Every checksum is kept valid: the quoted IP and L4 checksums (where the
//! quote holds them) and the outer ICMP one, incrementally (RFC 1624).
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_check_mtu, bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use redirector_common::{
    Addr, Counter, Endpoint, FlowKey, Ip, Mode, PROTO_TCP, ReverseInfo, SWITCH_DROP, SWITCH_PASS,
    VIP_ECHO_ANSWER, csum,
};

use crate::{
    acl, direct,
    maps::{BACKENDS, CLIENT_HOPS, HOP_REQUESTS, LOCAL_ADDRS, REVERSE, SERVICES, SWITCH, VIPS, count},
    parse::{
        ETH_LEN, EthHdr, ICMP_LEN, INNER4_OFF, INNER6_OFF, IPV4_LEN, IPV6_LEN, Icmp, IcmpHdr, IcmpKind,
        Ipv4Hdr, Ipv6Hdr, PROTO_ICMP, PROTO_ICMPV6, ptr_at,
    },
    select, signals,
};

/// What to do with an ICMP message: an action, after the caller's `send`
/// toward a next hop when `Send` (so TTL and MACs are written one way).
pub enum Verdict {
    /// Return this action.
    Done(u32),
    /// Translated; send toward this backend (`BACKENDS` index).
    ToBackend(u32),
    /// Translated; send toward the client `Ip` (a `CLIENT_HOPS` key).
    ToClient(Ip),
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, m: &Icmp) -> Verdict {
    match m.kind {
        IcmpKind::Echo => Verdict::Done(echo(ctx, m)),
        IcmpKind::Error => error(ctx, m),
    }
}

#[inline(always)]
fn pass(c: Counter) -> Verdict {
    count(c);
    Verdict::Done(xdp_action::XDP_PASS)
}

/// Echo request: answered from the VIP, or passed, per the VIP's flag.
#[inline(always)]
fn echo(ctx: &XdpContext, m: &Icmp) -> u32 {
    // SAFETY: read-only use of a value userspace replaces atomically.
    let Some(&flags) = (unsafe { VIPS.get(&Addr { addr: m.dst }) }) else {
        count(Counter::Passed);
        return xdp_action::XDP_PASS;
    };
    if flags & VIP_ECHO_ANSWER == 0 {
        count(Counter::Passed);
        return xdp_action::XDP_PASS;
    }
    let l4 = if m.v6 {
        ETH_LEN + IPV6_LEN
    } else {
        ETH_LEN + IPV4_LEN
    };
    let (Some(eth), Some(icmp)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<IcmpHdr>(ctx, l4)) else {
        count(Counter::Malformed);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked, 2-byte aligned headers; parse validated the IP header.
    unsafe {
        // Back where it came from: swap MACs and addresses. Swapping leaves
        // every checksum over the addresses (IPv4 header, ICMPv6 pseudo-header) as is.
        let e = &mut *eth;
        let (d, s) = (e.dst, e.src);
        e.dst = s;
        e.src = d;
        let h = &mut *icmp;
        let old = u16::from_ne_bytes([h.kind, h.code]);
        h.kind = if m.v6 { 129 } else { 0 };
        let new = u16::from_ne_bytes([h.kind, h.code]);
        h.csum = csum::finish(csum::add_replace16(csum::start(h.csum), old, new));
        if m.v6 {
            if let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) {
                let ip = &mut *ip;
                let (s, d) = (ip.src, ip.dst);
                ip.src = d;
                ip.dst = s;
                ip.hop = 64;
            }
        } else if let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) {
            let ip = &mut *ip;
            let (s, d) = (ip.src, ip.dst);
            ip.src = d;
            ip.dst = s;
            let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
            ip.ttl = 64;
            let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
            ip.csum = csum::finish(csum::add_replace16(csum::start(ip.csum), old, new));
        }
    }
    count(Counter::EchoAnswered);
    xdp_action::XDP_TX
}

#[inline(always)]
fn error(ctx: &XdpContext, m: &Icmp) -> Verdict {
    // An error about a packet is sent to that packet's source; anything
    // else (e.g. addressed to the gateway itself) is not about a flow here.
    if m.dst != m.inner_src {
        return pass(Counter::Passed);
    }
    let tcp = m.inner_proto == PROTO_TCP;
    // About a reply: the quoted packet came from a VIP.
    let from_vip = Endpoint {
        addr: m.inner_src,
        port_be: m.inner_sport_be,
        proto: m.inner_proto,
        _pad: 0,
    };
    // SAFETY: read-only use of a value userspace replaces atomically.
    if let Some(svc) = unsafe { SERVICES.get(&from_vip) } {
        // Judged by the client inside it, like the flow's own packets.
        if !acl::admits(svc.id, svc.acl, &m.inner_dst) {
            crate::maps::count_refused(svc.id);
            return Verdict::Done(xdp_action::XDP_DROP);
        }
        let Some(&st) = SWITCH.get(svc.id) else {
            return pass(Counter::Passed);
        };
        if st.flags & (SWITCH_DROP | SWITCH_PASS) != 0 || m.ttl <= 1 {
            return pass(Counter::Passed);
        }
        let key = FlowKey {
            addr: m.inner_dst,
            port_be: m.inner_dport_be,
            _pad: 0,
            service: svc.id,
        };
        let index = svc.id * 2 + u32::from(select::lookup(&key, &st, tcp) & 1);
        let Some(be) = BACKENDS.get(index) else {
            return pass(Counter::Passed);
        };
        if svc.mode == Mode::Nat as u8 {
            let ok = if m.v6 {
                translate::<true>(
                    ctx,
                    m,
                    Some((Outer::Dst, &be.addr)),
                    Inner::Src,
                    &be.addr,
                    be.port_be,
                )
            } else {
                translate::<false>(
                    ctx,
                    m,
                    Some((Outer::Dst, &be.addr)),
                    Inner::Src,
                    &be.addr,
                    be.port_be,
                )
            };
            if !ok {
                return pass(Counter::Malformed);
            }
        }
        return Verdict::ToBackend(index);
    }
    // About a translated request: the quoted packet went to a NAT backend.
    let to_backend = Endpoint {
        addr: m.inner_dst,
        port_be: m.inner_dport_be,
        proto: m.inner_proto,
        _pad: 0,
    };
    // SAFETY: as above.
    let Some(rev) = (unsafe { REVERSE.get(&to_backend) }) else {
        return pass(Counter::Passed);
    };
    let rev: ReverseInfo = *rev;
    // SAFETY: as above.
    if unsafe { LOCAL_ADDRS.get(&Addr { addr: m.inner_src }) }.is_some() {
        // About the gateway's own packet (a health probe): the stack's.
        return pass(Counter::Passed);
    }
    if direct::is_reply(&m.inner_src, m.inner_sport_be, &rev) {
        return pass(Counter::Direct);
    }
    // A client's packet to this backend could not be delivered: a hint for
    // the daemon (its type and code say whether it is one).
    let l4 = if m.v6 {
        ETH_LEN + IPV6_LEN
    } else {
        ETH_LEN + IPV4_LEN
    };
    if let Some(h) = ptr_at::<IcmpHdr>(ctx, l4) {
        // SAFETY: bounds-checked read of the message's first two bytes.
        let (kind, code) = unsafe { ((*h).kind, (*h).code) };
        signals::unreachable(
            ctx,
            rev.service * 2 + u32::from(rev.slot & 1),
            m.v6,
            kind,
            code,
            m.src == m.inner_dst,
        );
    }
    if m.ttl <= 1 {
        return pass(Counter::TtlExpired);
    }
    // From the backend itself: then from the VIP, as its replies are.
    let outer = (m.src == m.inner_dst).then_some((Outer::Src, &rev.vip));
    let ok = if m.v6 {
        translate::<true>(ctx, m, outer, Inner::Dst, &rev.vip, rev.port_be)
    } else {
        translate::<false>(ctx, m, outer, Inner::Dst, &rev.vip, rev.port_be)
    };
    if !ok {
        return pass(Counter::Malformed);
    }
    Verdict::ToClient(m.dst)
}

/// The client's next hop for an error about its flow, or the stack.
#[inline(always)]
pub fn client_hop(client: &Ip) -> Option<&'static redirector_common::NextHop> {
    let key = Addr { addr: *client };
    // SAFETY: read-only use of a value userspace replaces atomically.
    let hop = unsafe { CLIENT_HOPS.get(&key) };
    if hop.is_none() {
        let _ = HOP_REQUESTS.output::<Addr>(&key, 0);
    }
    hop
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outer {
    Src,
    Dst,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Inner {
    Src,
    Dst,
}

/// Rewrites the quoted packet's `inner` address (and port, when `port_be`
/// is not 0) and optionally one outer address, with every checksum patched.
/// Returns `false` with nothing written if a header is out of bounds.
#[inline(always)]
fn translate<const V6: bool>(
    ctx: &XdpContext,
    m: &Icmp,
    outer: Option<(Outer, &Ip)>,
    inner: Inner,
    addr: &Ip,
    port_be: u16,
) -> bool {
    let (icmp_off, inner_off, inner_ip_len) = if V6 {
        (ETH_LEN + IPV6_LEN, INNER6_OFF, IPV6_LEN)
    } else {
        (ETH_LEN + IPV4_LEN, INNER4_OFF, IPV4_LEN)
    };
    let l4_off = inner_off + inner_ip_len;
    let (Some(icmp), Some(ports)) = (ptr_at::<IcmpHdr>(ctx, icmp_off), ptr_at::<[u16; 2]>(ctx, l4_off))
    else {
        return false;
    };
    // The quoted L4 checksum, if the quote (not just the frame) holds it.
    let l4_csum_off = l4_off + if m.inner_proto == PROTO_TCP { 16 } else { 6 };
    let l4_csum = if l4_csum_off + 2 <= icmp_off + m.len {
        ptr_at::<u16>(ctx, l4_csum_off)
    } else {
        None
    };
    // SAFETY: every pointer is bounds-checked and 2-byte aligned.
    unsafe {
        let mut icmp_acc = csum::start((*icmp).csum);
        // The quoted addresses and port.
        let (old, new) = if V6 {
            let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, inner_off) else {
                return false;
            };
            let ip = &mut *ip;
            let old = if inner == Inner::Src { ip.src } else { ip.dst };
            if inner == Inner::Src {
                ip.src = *addr;
            } else {
                ip.dst = *addr;
            }
            (old, *addr)
        } else {
            let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, inner_off) else {
                return false;
            };
            let ip = &mut *ip;
            let old = if inner == Inner::Src { ip.src } else { ip.dst };
            if inner == Inner::Src {
                ip.src = addr[3];
            } else {
                ip.dst = addr[3];
            }
            let old_csum = ip.csum;
            ip.csum = csum::replace_words(ip.csum, &[old], &[addr[3]]);
            icmp_acc = csum::add_replace16(icmp_acc, old_csum, ip.csum);
            ([0, 0, 0, old], [0, 0, 0, addr[3]])
        };
        let mut l4_acc = l4_csum.map(|c| csum::start(*c));
        let mut i = if V6 { 0 } else { 3 };
        while i < 4 {
            icmp_acc = csum::add_replace32(icmp_acc, old[i], new[i]);
            l4_acc = l4_acc.map(|a| csum::add_replace32(a, old[i], new[i]));
            i += 1;
        }
        if port_be != 0 {
            let i = usize::from(inner == Inner::Dst);
            let old = (*ports)[i];
            icmp_acc = csum::add_replace16(icmp_acc, old, port_be);
            l4_acc = l4_acc.map(|a| csum::add_replace16(a, old, port_be));
            (*ports)[i] = port_be;
        }
        if let (Some(c), Some(acc)) = (l4_csum, l4_acc) {
            // IPv4 UDP without a checksum keeps none.
            if V6 || m.inner_proto == PROTO_TCP || *c != 0 {
                let old_c = *c;
                let mut new_c = csum::finish(acc);
                if m.inner_proto != PROTO_TCP {
                    new_c = csum::udp_nonzero(new_c);
                }
                *c = new_c;
                icmp_acc = csum::add_replace16(icmp_acc, old_c, new_c);
            }
        }
        if let Some((side, to)) = outer {
            if V6 {
                let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
                    return false;
                };
                let ip = &mut *ip;
                let old = if side == Outer::Src { ip.src } else { ip.dst };
                if side == Outer::Src {
                    ip.src = *to;
                } else {
                    ip.dst = *to;
                }
                // ICMPv6's checksum covers the pseudo-header's addresses.
                let mut j = 0;
                while j < 4 {
                    icmp_acc = csum::add_replace32(icmp_acc, old[j], to[j]);
                    j += 1;
                }
            } else {
                let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
                    return false;
                };
                let ip = &mut *ip;
                let old = if side == Outer::Src { ip.src } else { ip.dst };
                if side == Outer::Src {
                    ip.src = to[3];
                } else {
                    ip.dst = to[3];
                }
                ip.csum = csum::replace_words(ip.csum, &[old], &[to[3]]);
            }
        }
        (*icmp).csum = csum::finish(icmp_acc);
    }
    true
}

/// The MTU of `ifindex` if this packet's IP datagram exceeds it
/// (`bpf_check_mtu`). Below 576 (IPv4) / 1280 (IPv6) bytes every link
/// carries it: no check. A big frame with bytes after its IP packet (not
/// Ethernet padding, which only small frames have) is trimmed first, so it
/// is judged, and sent, by its IP length.
#[inline(always)]
pub fn too_big_for(ctx: &XdpContext, v6: bool, ifindex: u32) -> Option<u32> {
    if !crate::maps::on(redirector_common::ablate::MTU) {
        return None;
    }
    let frame = ctx.data_end() - ctx.data();
    if frame - ETH_LEN <= if v6 { 1280 } else { 576 } {
        return None;
    }
    let mtu = check_mtu(ctx, v6, ifindex);
    (mtu != 0).then_some(mtu)
}

/// The big-packet part of [`too_big_for`]: the MTU, or 0 when the packet fits.
#[inline(always)]
fn check_mtu(ctx: &XdpContext, v6: bool, ifindex: u32) -> u32 {
    let frame = ctx.data_end() - ctx.data();
    let ip_len = if v6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return 0;
        };
        // SAFETY: bounds-checked, 2-byte aligned header (validated by parse).
        IPV6_LEN + u16::from_be(unsafe { (*ip).payload_len }) as usize
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return 0;
        };
        // SAFETY: as above.
        u16::from_be(unsafe { (*ip).tot_len }) as usize
    };
    if frame > ETH_LEN + ip_len {
        // SAFETY: shrinking by less than the frame (parse checked ip_len fits).
        let _ = unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((frame - ETH_LEN - ip_len) as i32)) };
    }
    let mut mtu = ip_len as u32;
    // SAFETY: ctx is the program's context; mtu is a valid in/out pointer
    // (in: the L3 length to judge; out: the device MTU).
    let r = unsafe { bpf_check_mtu(ctx.ctx.cast(), ifindex, &mut mtu, 0, 0) };
    // 1 = BPF_MTU_CHK_RET_FRAG_NEEDED; errors (no such device) decide nothing.
    if r == 1 { mtu.max(1) } else { 0 }
}

/// Bytes of the offending packet an IPv4 "fragmentation needed" quotes:
/// its IP header and 64 bytes (RFC 792 asks for 8; more helps the sender).
const QUOTE4: usize = IPV4_LEN + 64;
/// ICMPv6 "packet too big" quote (the whole reply stays far below 1280).
const QUOTE6: usize = IPV6_LEN + 88;

/// Turns the packet into ICMP "fragmentation needed" (IPv4) / "packet too
/// big" (IPv6) from its destination to its source, quoting its start, and
/// sends it back where it came from. Its own BPF function: rare, and kept
/// out of the forwarding path's code.
#[inline(never)]
pub fn send_too_big(ctx: &XdpContext, v6: bool, mtu: u32) -> u32 {
    count(Counter::TooBig);
    let (ip_len, quote) = if v6 {
        (IPV6_LEN, QUOTE6)
    } else {
        (IPV4_LEN, QUOTE4)
    };
    let len = ctx.data_end() - ctx.data();
    if len > ETH_LEN + quote {
        // SAFETY: shrinking by a positive amount smaller than the packet.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((len - ETH_LEN - quote) as i32)) } != 0 {
            return xdp_action::XDP_DROP;
        }
    }
    // SAFETY: growing the headroom; the kernel checks it is available.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -((ip_len + ICMP_LEN) as i32)) } != 0 {
        return xdp_action::XDP_DROP;
    }
    if v6 {
        too_big6(ctx, mtu)
    } else {
        too_big4(ctx, mtu)
    }
}

#[inline(always)]
fn too_big4(ctx: &XdpContext, mtu: u32) -> u32 {
    const OLD_ETH: usize = IPV4_LEN + ICMP_LEN;
    let (Some(eth), Some(old_eth), Some(ip), Some(icmp), Some(quoted), Some(_end)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<EthHdr>(ctx, OLD_ETH),
        ptr_at::<Ipv4Hdr>(ctx, ETH_LEN),
        ptr_at::<IcmpHdr>(ctx, ETH_LEN + IPV4_LEN),
        ptr_at::<Ipv4Hdr>(ctx, INNER4_OFF),
        ptr_at::<[u8; QUOTE4]>(ctx, INNER4_OFF),
    ) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: every header is bounds-checked above and 2-byte aligned.
    unsafe {
        let (dst, src) = ((*old_eth).src, (*old_eth).dst);
        (*eth).dst = dst;
        (*eth).src = src;
        (*eth).proto = 0x0800_u16.to_be();
        let (to, from) = ((*quoted).src, (*quoted).dst);
        *ip = Ipv4Hdr {
            vihl: 0x45,
            tos: 0,
            tot_len: ((IPV4_LEN + ICMP_LEN + QUOTE4) as u16).to_be(),
            id: 0,
            frag: 0,
            ttl: 64,
            proto: PROTO_ICMP,
            csum: 0,
            src: from,
            dst: to,
        };
        (*ip).csum = fold_csum(bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            ip.cast(),
            IPV4_LEN as u32,
            0,
        ));
        *icmp = IcmpHdr {
            kind: 3,
            code: 4,
            csum: 0,
            rest: u32::from(mtu.min(0xffff) as u16).to_be(),
        };
        (*icmp).csum = fold_csum(bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp.cast(),
            (ICMP_LEN + QUOTE4) as u32,
            0,
        ));
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn too_big6(ctx: &XdpContext, mtu: u32) -> u32 {
    const OLD_ETH: usize = IPV6_LEN + ICMP_LEN;
    let (Some(eth), Some(old_eth), Some(ip), Some(icmp), Some(quoted), Some(_end)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<EthHdr>(ctx, OLD_ETH),
        ptr_at::<Ipv6Hdr>(ctx, ETH_LEN),
        ptr_at::<IcmpHdr>(ctx, ETH_LEN + IPV6_LEN),
        ptr_at::<Ipv6Hdr>(ctx, INNER6_OFF),
        ptr_at::<[u8; QUOTE6]>(ctx, INNER6_OFF),
    ) else {
        return xdp_action::XDP_DROP;
    };
    const PAYLOAD: usize = ICMP_LEN + QUOTE6;
    // SAFETY: every header is bounds-checked above and 2-byte aligned.
    unsafe {
        let (dst, src) = ((*old_eth).src, (*old_eth).dst);
        (*eth).dst = dst;
        (*eth).src = src;
        (*eth).proto = 0x86dd_u16.to_be();
        let (to, from) = ((*quoted).src, (*quoted).dst);
        *ip = Ipv6Hdr {
            vtc_flow: 0x6000_0000_u32.to_be(),
            payload_len: (PAYLOAD as u16).to_be(),
            next: PROTO_ICMPV6,
            hop: 64,
            src: from,
            dst: to,
        };
        *icmp = IcmpHdr {
            kind: 2,
            code: 0,
            csum: 0,
            rest: mtu.to_be(),
        };
        // Pseudo-header: both addresses, the length and the next header.
        let mut pseudo = [0u32; 10];
        let mut i = 0;
        while i < 4 {
            pseudo[i] = from[i];
            pseudo[4 + i] = to[i];
            i += 1;
        }
        pseudo[8] = (PAYLOAD as u32).to_be();
        pseudo[9] = u32::from(PROTO_ICMPV6).to_be();
        let seed = bpf_csum_diff(core::ptr::null_mut(), 0, pseudo.as_mut_ptr(), 40, 0);
        (*icmp).csum = fold_csum(bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp.cast(),
            PAYLOAD as u32,
            seed as u32,
        ));
    }
    xdp_action::XDP_TX
}

/// `bpf_csum_diff`'s 32-bit partial sum → the 16-bit Internet checksum.
#[inline(always)]
fn fold_csum(sum: i64) -> u16 {
    csum::finish(sum as u32 as u64)
}
