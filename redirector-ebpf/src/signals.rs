//! Hints in the traffic that a backend failed, for the daemon to confirm
//! with a probe: a closed port's RST to a client's SYN, and a destination
//! unreachable about a client's packet to a backend. Only these rare packets
//! pay anything (a header byte or two, a timestamp, one ring-buffer record at
//! most every `SIGNAL_INTERVAL_NS` per backend); the forwarding path does
//! not. Answers to the gateway's own probes never get here (they are the
//! stack's, see `reply` and `icmp::error`).
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use redirector_common::{Counter, SIGNAL_INTERVAL_NS, SIGNAL_RST_CLOSED, SIGNAL_UNREACHABLE, Signal};

use crate::{
    maps::{SIGNAL_LAST, SIGNALS, count},
    parse::ptr_at,
};

const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A TCP reply from backend `index` (`BACKENDS` index) whose header starts at
/// `l4_off`: a RST|ACK with sequence 0 answers a SYN on a closed port.
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
    if flags & (TCP_RST | TCP_ACK) == TCP_RST | TCP_ACK && seq == [0; 4] {
        report(index, SIGNAL_RST_CLOSED);
    }
}

/// An ICMP (v6) destination unreachable about a client's packet to backend
/// `index`: port, host or address unreachable, or administratively
/// prohibited. `kind`/`code` are the message's type and code.
#[inline(always)]
pub fn unreachable(index: u32, v6: bool, kind: u8, code: u8) {
    let hint = if v6 {
        // Destination unreachable: admin prohibited 1, address 3, port 4.
        kind == 1 && matches!(code, 1 | 3 | 4)
    } else {
        // Destination unreachable: host 1, port 3, host/admin prohibited 10, 13.
        kind == 3 && matches!(code, 1 | 3 | 10 | 13)
    };
    if hint {
        report(index, SIGNAL_UNREACHABLE);
    }
}

/// One record per backend per `SIGNAL_INTERVAL_NS` at most.
#[inline(always)]
fn report(index: u32, kind: u8) {
    let Some(last) = SIGNAL_LAST.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a valid array slot; a race between CPUs lets at most one
    // extra record through.
    unsafe {
        if now.wrapping_sub(*last) < SIGNAL_INTERVAL_NS && *last != 0 {
            count(Counter::SignalLimited);
            return;
        }
        *last = now;
    }
    let signal = Signal {
        service: index / 2,
        slot: (index & 1) as u8,
        kind,
        _pad: [0; 2],
    };
    if SIGNALS.output::<Signal>(&signal, 0).is_ok() {
        count(Counter::SignalReported);
    }
}
