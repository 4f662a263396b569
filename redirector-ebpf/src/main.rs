//! The redirector XDP program: the packet's path, top to bottom.
//!
//! 1. parse (`parse.rs`) → not ours / malformed / unsupported: pass untouched;
//! 2. VIP traffic: look up the service, choose a backend (`select.rs`), rewrite
//!    (`rewrite.rs`: NAT destination, or nothing at L3 for DSR), then send;
//! 3. a client talking to a NAT backend's service port directly: recorded
//!    (`direct.rs`) and passed untouched, and so are the backend's replies;
//!    any other reply from a NAT backend to a client: rewrite the source back
//!    to the VIP, then send toward the client;
//! 4. send: TTL −1, MACs from the cached next hop, `XDP_TX` or
//!    `bpf_redirect_map`; no next hop yet → the kernel stack delivers it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod acl;
#[cfg(target_arch = "bpf")]
mod direct;
#[cfg(target_arch = "bpf")]
mod flows;
#[cfg(target_arch = "bpf")]
mod frags;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod rewrite;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod signals;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use aya_log_ebpf::debug;
    use redirector_common::{
        Addr, Counter, Endpoint, FlowKey, Ip, Mode, NextHop, PORT_BACKEND, PORT_SERVICE, PROTO_TCP,
        SWITCH_DROP, SWITCH_PASS, ServiceInfo, ablate, addr_bucket, paths, service_slot,
    };

    use crate::{
        acl, direct,
        frags::{self, Datagram},
        icmp::{self, Verdict},
        maps::{
            BACKEND_ADDRS, BACKENDS, CLIENT_HOPS, EGRESS, HOP_REQUESTS, LOCAL_ADDRS, PATHS, PORTS, REVERSE,
            SERVICE_INDEX, SERVICE_VIPS, SERVICES, SWITCH, VIPS, count, count_backend, count_refused, on,
            seen,
        },
        parse::{self, Deferred, IcmpParsed, Packet, Parsed, parse},
        rewrite::{self, Side},
        select, signals,
    };

    // The forwarding path. ICMP, later fragments and packets with IPv4
    // options or IPv6 extension headers go on in programs of their own,
    // reached by tail call (`PATHS`): each has its own 512-byte stack and
    // its own verification, and their code stays off this one (measured:
    // ~6 ns on every forwarded packet when it was inline). inline(always):
    // the macro wraps this in the entry, one frame.
    #[xdp]
    #[inline(always)]
    pub fn redirector(ctx: XdpContext) -> u32 {
        // Another host's frame (flooded, or seen by a promiscuous NIC) is
        // not ours: the stack drops it as the kernel always does.
        if !parse::addressed_here(&ctx) {
            return pass(Counter::Passed);
        }
        let pkt = match parse(&ctx) {
            Parsed::Packet(p) => p,
            Parsed::Icmp(_) => return tail(&ctx, paths::ICMP),
            Parsed::Fragment(_) => return tail(&ctx, paths::FRAGMENT),
            Parsed::Options => return tail(&ctx, paths::OPTIONS),
            Parsed::Other => return pass(Counter::Passed),
            Parsed::Unsupported => return pass(Counter::Unsupported),
            Parsed::Malformed => return pass(Counter::Malformed),
        };
        handle(&ctx, &pkt)
    }

    /// Goes on in program `index` of `PATHS`; if it is missing (userspace
    /// sets them before attaching), the packet goes to the stack untouched.
    #[inline(always)]
    fn tail(ctx: &XdpContext, index: u32) -> u32 {
        // SAFETY: PATHS holds XDP programs of this object, set by userspace.
        let _ = unsafe { PATHS.tail_call(ctx, index) };
        pass(Counter::Unsupported)
    }

    #[xdp]
    #[inline(always)]
    pub fn redirector_icmp(ctx: XdpContext) -> u32 {
        match parse(&ctx) {
            Parsed::Icmp(d) => icmp_path(&ctx, d.v6, d.len),
            _ => pass(Counter::Passed),
        }
    }

    #[xdp]
    #[inline(always)]
    pub fn redirector_fragment(ctx: XdpContext) -> u32 {
        match parse(&ctx) {
            Parsed::Fragment(d) => fragment_path(&ctx, d.v6, d.len),
            _ => pass(Counter::Passed),
        }
    }

    #[xdp]
    #[inline(always)]
    pub fn redirector_options(ctx: XdpContext) -> u32 {
        match parse::with_options(&ctx) {
            Parsed::Packet(p) => handle(&ctx, &p),
            Parsed::Malformed => pass(Counter::Malformed),
            _ => pass(Counter::Unsupported),
        }
    }

    /// A parsed TCP/UDP packet: VIP traffic, direct traffic to a backend, a
    /// NAT reply, or not ours.
    #[inline(always)]
    fn handle(ctx: &XdpContext, pkt: &Packet) -> u32 {
        // One array load per direction keeps most foreign traffic off the hash maps.
        let to_port = port_flags(pkt.dport_be);
        if to_port & PORT_SERVICE != 0 {
            if let Some(svc) = indexed_service(pkt).or_else(|| {
                let vip = Endpoint {
                    addr: pkt.dst,
                    port_be: pkt.dport_be,
                    proto: pkt.proto,
                    _pad: 0,
                };
                // SAFETY: read-only use of a value userspace replaces atomically.
                unsafe { SERVICES.get(&vip) }.copied()
            }) {
                if !acl::admits(svc.id, svc.acl, &pkt.src) {
                    count_refused(svc.id);
                    return xdp_action::XDP_DROP;
                }
                return forward(ctx, pkt, svc.id, svc.mode);
            }
        }
        if to_port & PORT_BACKEND != 0 && BACKEND_ADDRS.get(addr_bucket(&pkt.dst)).copied().unwrap_or(0) != 0
        {
            let backend = Endpoint {
                addr: pkt.dst,
                port_be: pkt.dport_be,
                proto: pkt.proto,
                _pad: 0,
            };
            if let Some(rev) = REVERSE.get_ptr_mut(&backend) {
                // A client talking to a NAT backend itself: not ours to touch.
                direct::record(&pkt.src, pkt.sport_be, rev);
                return pass(Counter::Direct);
            }
        }
        if port_flags(pkt.sport_be) & PORT_BACKEND != 0 {
            let backend = Endpoint {
                addr: pkt.src,
                port_be: pkt.sport_be,
                proto: pkt.proto,
                _pad: 0,
            };
            // SAFETY: as above.
            if let Some(rev) = unsafe { REVERSE.get(&backend) } {
                if direct::is_reply(&pkt.dst, pkt.dport_be, rev) {
                    return pass(Counter::Direct);
                }
                let index = rev.service * 2 + u32::from(rev.slot & 1);
                return reply(ctx, pkt, index, &rev.vip, rev.port_be);
            }
        }
        pass(Counter::Passed)
    }

    #[inline(always)]
    fn icmp_path(ctx: &XdpContext, v6: bool, len: usize) -> u32 {
        let m = match parse::icmp(ctx, Deferred { v6, len }) {
            IcmpParsed::Icmp(m) => m,
            IcmpParsed::Other => return pass(Counter::Passed),
            IcmpParsed::Malformed => return pass(Counter::Malformed),
        };
        let m = &m;
        let action = match icmp::handle(ctx, m) {
            Verdict::Done(action) => return action,
            Verdict::ToBackend(index) => match BACKENDS.get(index) {
                Some(be) => send(ctx, m.v6, &be.hop),
                None => return pass(Counter::Passed),
            },
            Verdict::ToClient(client) => match icmp::client_hop(&client) {
                Some(hop) => send(ctx, m.v6, hop),
                None => return pass(Counter::Unresolved),
            },
        };
        // Counted once: as sent, or (by `send`) as why it was not.
        if action != xdp_action::XDP_PASS {
            count(Counter::IcmpErrorForwarded);
        }
        action
    }

    /// The packet's service from its `SERVICE_INDEX` copy (the whole key
    /// checked): a few instructions and an array load instead of the hash
    /// lookup; `None` sends the caller to `SERVICES`.
    #[inline(always)]
    fn indexed_service(pkt: &Packet) -> Option<ServiceInfo> {
        let e = SERVICE_INDEX.get(service_slot(&pkt.dst, pkt.dport_be, pkt.proto))?;
        (e.valid != 0 && e.port_be == pkt.dport_be && e.proto == pkt.proto && e.vip == pkt.dst)
            .then_some(e.info)
    }

    #[inline(always)]
    fn port_flags(port_be: u16) -> u8 {
        if !on(ablate::PORTS) {
            return PORT_SERVICE | PORT_BACKEND;
        }
        PORTS.get(u32::from(u16::from_be(port_be))).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn pass(c: Counter) -> u32 {
        count(c);
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn forward(ctx: &XdpContext, pkt: &Packet, id: u32, mode: u8) -> u32 {
        // One 8-byte load: every decision below sees the same transition.
        let Some(&st) = SWITCH.get(id) else {
            return pass(Counter::Passed);
        };
        if st.flags & (SWITCH_DROP | SWITCH_PASS) != 0 {
            // Both backends down; the service's all_down policy decides.
            if st.flags & SWITCH_DROP != 0 {
                count(Counter::AllDownDropped);
                return xdp_action::XDP_DROP;
            }
            return pass(Counter::AllDownPassed);
        }
        if on(ablate::TTL) && pkt.ttl <= 1 {
            return pass(Counter::TtlExpired);
        }
        let key = FlowKey {
            addr: pkt.src,
            port_be: pkt.sport_be,
            _pad: 0,
            service: id,
        };
        let slot = select::choose(&key, &st, pkt.proto == PROTO_TCP, pkt.syn);
        let index = id * 2 + u32::from(slot & 1);
        let Some(be) = BACKENDS.get(index) else {
            return pass(Counter::Passed);
        };
        let too_big = icmp::too_big_for(ctx, pkt.v6, be.hop.ifindex);
        // The sender learns the path MTU of the VIP from the VIP. IPv4
        // without DF could be fragmented, by the stack, only in NAT mode: a
        // DSR packet keeps the VIP as destination, which the stack would not
        // route to the backend, so it is answered the same way.
        if let Some(mtu) = too_big
            && (pkt.v6 || pkt.df || mode != Mode::Nat as u8)
        {
            return icmp::send_too_big(ctx, pkt.v6, mtu);
        }
        if mode == Mode::Nat as u8
            && !rewrite::endpoint(
                ctx,
                pkt.v6,
                pkt.l4_off,
                pkt.proto,
                Side::Dst,
                &be.addr,
                be.port_be,
            )
        {
            return pass(Counter::Malformed);
        }
        if pkt.first_fragment {
            let d = Datagram::of(pkt, false);
            frags::record(&d, id, slot & 1, now_tick());
        }
        if too_big.is_some() {
            // IPv4 that may be fragmented: the stack does it (NAT: rewritten already).
            return pass(Counter::Fragmented);
        }
        count_backend(index, frame_len(ctx), false);
        // The silence watch: a NAT backend's answers cross the gateway.
        if mode == Mode::Nat as u8 && (pkt.proto != PROTO_TCP || pkt.syn != 0) {
            seen(index, false);
        }
        send(ctx, pkt.v6, &be.hop)
    }

    #[inline(always)]
    fn reply(ctx: &XdpContext, pkt: &Packet, index: u32, vip: &Ip, port_be: u16) -> u32 {
        let client = Addr { addr: pkt.dst };
        // Userspace never caches a hop toward the gateway's own addresses, so a
        // hit is a real client and only a miss needs the local-address check.
        // SAFETY: read-only use of a value userspace replaces atomically.
        let hop = unsafe { CLIENT_HOPS.get(&client) };
        // SAFETY: as above.
        if hop.is_none() && unsafe { LOCAL_ADDRS.get(&client) }.is_some() {
            // The gateway's own conversation with a backend (a health probe): not a reply.
            return pass(Counter::Passed);
        }
        if pkt.proto == PROTO_TCP {
            // A closed port's answer to a client's SYN: a hint for the
            // daemon; a SYN-ACK: an answer for its silence watch.
            if on(ablate::SIGNALS) {
                signals::tcp_reply(ctx, usize::from(pkt.l4_off), index);
            }
        } else {
            seen(index, true);
        }
        if on(ablate::TTL) && pkt.ttl <= 1 {
            return pass(Counter::TtlExpired);
        }
        // No hop yet: judged by the ingress link (ifindex 0), which it fits;
        // the check still trims a big frame's bytes after its IP packet.
        let too_big = icmp::too_big_for(ctx, pkt.v6, hop.map_or(0, |h| h.ifindex));
        if let Some(mtu) = too_big
            && (pkt.v6 || pkt.df)
        {
            // The backend learns it, about its own (untranslated) packet.
            return icmp::send_too_big(ctx, pkt.v6, mtu);
        }
        if !rewrite::endpoint(ctx, pkt.v6, pkt.l4_off, pkt.proto, Side::Src, vip, port_be) {
            return pass(Counter::Malformed);
        }
        if pkt.first_fragment {
            let d = Datagram::of(pkt, true);
            frags::record(&d, index / 2, (index & 1) as u8, now_tick());
        }
        if too_big.is_some() {
            return pass(Counter::Fragmented);
        }
        count_backend(index, frame_len(ctx), true);
        match hop {
            Some(hop) => send(ctx, pkt.v6, hop),
            None => {
                // Ask userspace to resolve it; the stack delivers this one.
                let _ = HOP_REQUESTS.output::<Addr>(&client, 0);
                pass(Counter::Unresolved)
            }
        }
    }

    #[inline(always)]
    fn now_tick() -> u32 {
        // SAFETY: helper without preconditions.
        redirector_common::flow::seen(unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() })
    }

    /// A later fragment: where its datagram's first fragment went, rewritten
    /// the same way (addresses only: the ports are in the first fragment).
    #[inline(always)]
    fn fragment_path(ctx: &XdpContext, v6: bool, len: usize) -> u32 {
        let Some(f) = parse::fragment(ctx, Deferred { v6, len }) else {
            return pass(Counter::Malformed);
        };
        let f = &f;
        let mut d = Datagram {
            src: &f.src,
            dst: &f.dst,
            id: f.id,
            proto: f.proto,
            reply: false,
        };
        if let Some((service, slot)) = frags::find(&d) {
            let index = service * 2 + u32::from(slot);
            let (Some(be), Some(sv)) = (BACKENDS.get(index), SERVICE_VIPS.get(service)) else {
                return pass(Counter::Passed);
            };
            if f.ttl <= 1 {
                return pass(Counter::TtlExpired);
            }
            if sv.mode == Mode::Nat as u8 && !rewrite::address(ctx, f.v6, Side::Dst, &be.addr) {
                return pass(Counter::Malformed);
            }
            if icmp::too_big_for(ctx, f.v6, be.hop.ifindex).is_some() {
                return pass(Counter::Fragmented);
            }
            count_backend(index, frame_len(ctx), false);
            return send(ctx, f.v6, &be.hop);
        }
        d.reply = true;
        if let Some((service, slot)) = frags::find(&d) {
            let Some(sv) = SERVICE_VIPS.get(service) else {
                return pass(Counter::Passed);
            };
            if f.ttl <= 1 {
                return pass(Counter::TtlExpired);
            }
            let client = Addr { addr: f.dst };
            // SAFETY: read-only use of a value userspace replaces atomically.
            let hop = unsafe { CLIENT_HOPS.get(&client) };
            let too_big = icmp::too_big_for(ctx, f.v6, hop.map_or(0, |h| h.ifindex));
            if !rewrite::address(ctx, f.v6, Side::Src, &sv.vip) {
                return pass(Counter::Malformed);
            }
            if too_big.is_some() {
                return pass(Counter::Fragmented);
            }
            count_backend(service * 2 + u32::from(slot), frame_len(ctx), true);
            return match hop {
                Some(hop) => send(ctx, f.v6, hop),
                None => pass(Counter::Unresolved),
            };
        }
        // SAFETY: as above.
        if unsafe { VIPS.get(&Addr { addr: f.dst }) }.is_some() {
            // Its first fragment was not seen: nowhere to send it. (The
            // program's one log line: off the forwarding paths' stack.)
            debug!(
                ctx,
                "a fragment of datagram {} to a VIP without its first: dropped", f.id
            );
            count(Counter::FragmentDropped);
            return xdp_action::XDP_DROP;
        }
        pass(Counter::Passed)
    }

    #[inline(always)]
    fn frame_len(ctx: &XdpContext) -> u64 {
        (ctx.data_end() - ctx.data()) as u64
    }

    /// Sends toward `hop`. Until the redirect is accepted nothing but the NAT
    /// rewrite has been written, so a packet handed to the stack instead is
    /// still deliverable (addressed to our MAC, TTL intact).
    #[inline(always)]
    fn send(ctx: &XdpContext, v6: bool, hop: &NextHop) -> u32 {
        if hop.ifindex == 0 {
            return pass(Counter::Unresolved);
        }
        let action = if hop.ifindex as usize == ctx.ingress_ifindex() {
            xdp_action::XDP_TX
        } else {
            match EGRESS.redirect(hop.ifindex, u64::from(xdp_action::XDP_PASS)) {
                Ok(a) => a,
                // Counted, not logged: a log record here cost every path an
                // out-of-line frame on a tight stack.
                Err(_) => return pass(Counter::RedirectFailed),
            }
        };
        if on(ablate::TTL) {
            rewrite::dec_ttl(ctx, v6);
        }
        rewrite::set_macs(ctx, hop);
        action
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // An endless loop, as aya's own handler: a reachable panic then makes
        // the verifier reject the program. `unreachable_unchecked` would let
        // the compiler delete the paths (and bounds checks) leading here.
        #[expect(
            clippy::empty_loop,
            reason = "never runs: the verifier refuses reachable loops"
        )]
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
