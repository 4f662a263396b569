//! Hints in the traffic that a backend failed, for the daemon to confirm
//! with a probe: a closed port's RST to a client's SYN, and a destination
//! unreachable about a client's packet to a backend. Only these rare packets
//! pay anything (a header byte or two, a timestamp, one ring-buffer record at
//! most every `SIGNAL_INTERVAL_NS` per backend); the forwarding path does
//! not. Answers to the gateway's own probes never get here (they are the
//! stack's, see `reply` and `icmp::error`).
//!
//! Such a packet is *evidence* rather than a hint when a client cannot have
//! forged it: it comes from the backend's own address, arrived on a link
//! the operator declared backend-facing (`BACKEND_IFACES`) that is the
//! backend's next hop, from that hop's MAC. The daemon then counts it as a
//! failed verdict; a hint only asks for a probe.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use redirector_common::{
    Counter, EVIDENCE_INTERVAL_NS, SIGNAL_INTERVAL_NS, SIGNAL_RST_CLOSED, SIGNAL_UNREACHABLE, Signal,
};

use crate::{
    maps::{BACKEND_IFACES, BACKENDS, SIGNAL_LAST, SIGNALS, count, seen},
    parse::ptr_at,
};

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A TCP reply from backend `index` (`BACKENDS` index) whose header starts at
/// `l4_off`: a RST|ACK with sequence 0 answers a SYN on a closed port; a
/// SYN|ACK accepts one (counted for the silence watch).
#[inline(always)]
pub fn tcp_reply(ctx: &XdpContext, l4_off: usize, index: u32) {
    // Sequence number at offset 4, flags at 13.
    let Some(seq) = ptr_at::<[u8; 4]>(ctx, l4_off + 4) else {
        return;
    };
    let Some(flags) = ptr_at::<u8>(ctx, l4_off + 13) else {
        return;
    };
    // SAFETY: bounds-checked single-byte-aligned reads.
    let (seq, flags) = unsafe { (*seq, *flags) };
    if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK {
        seen(index, true);
    }
    if flags & (TCP_RST | TCP_ACK) == TCP_RST | TCP_ACK && seq == [0; 4] {
        // A NAT reply: its source is the backend's address and port.
        report(index, SIGNAL_RST_CLOSED, from_backends_hop(ctx, index));
    }
}

/// An ICMP (v6) destination unreachable about a client's packet to backend
/// `index`: port, host or address unreachable, or administratively
/// prohibited. `kind`/`code` are the message's type and code; `own` says
/// the message comes from the backend's own address (not a router's).
#[inline(always)]
pub fn unreachable(ctx: &XdpContext, index: u32, v6: bool, kind: u8, code: u8, own: bool) {
    let hint = if v6 {
        // Destination unreachable: admin prohibited 1, address 3, port 4.
        kind == 1 && matches!(code, 1 | 3 | 4)
    } else {
        // Destination unreachable: host 1, port 3, host/admin prohibited 10, 13.
        kind == 3 && matches!(code, 1 | 3 | 10 | 13)
    };
    if hint {
        report(index, SIGNAL_UNREACHABLE, own && from_backends_hop(ctx, index));
    }
}

/// The frame arrived on a backend-facing link that is backend `index`'s
/// next hop, sent by that hop's MAC.
#[inline(always)]
fn from_backends_hop(ctx: &XdpContext, index: u32) -> bool {
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: read-only lookup in a map userspace writes once per start.
    if unsafe { BACKEND_IFACES.get(&ingress) }.is_none() {
        return false;
    }
    let Some(be) = BACKENDS.get(index) else {
        return false;
    };
    let Some(src) = ptr_at::<[u8; 6]>(ctx, 6) else {
        return false;
    };
    // SAFETY: bounds-checked read of the Ethernet source address.
    be.hop.ifindex == ingress && unsafe { *src } == be.hop.dst_mac
}

/// One record per backend per `SIGNAL_INTERVAL_NS` at most
/// (`EVIDENCE_INTERVAL_NS` for evidence).
#[inline(always)]
fn report(index: u32, kind: u8, evidence: bool) {
    let Some(last) = SIGNAL_LAST.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let interval = if evidence {
        EVIDENCE_INTERVAL_NS
    } else {
        SIGNAL_INTERVAL_NS
    };
    // SAFETY: a valid array slot; a race between CPUs lets at most one
    // extra record through.
    unsafe {
        if now.wrapping_sub(*last) < interval && *last != 0 {
            count(Counter::SignalLimited);
            return;
        }
        *last = now;
    }
    let signal = Signal {
        service: index / 2,
        slot: (index & 1) as u8,
        kind,
        evidence: u8::from(evidence),
        _pad: 0,
    };
    if SIGNALS.output::<Signal>(&signal, 0).is_ok() {
        count(Counter::SignalReported);
    }
}
