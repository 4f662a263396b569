//! Types shared by the redirector XDP program (kernel) and its userspace.
//!
//! Everything that crosses the kernel boundary is defined here once, as
//! `#[repr(C)]` + bytemuck `Pod` (padding is a compile error), with a size
//! assertion. Addresses are always 16 bytes: IPv4 is stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so one key type serves both families.
#![no_std]
#![deny(missing_docs)]

pub mod csum;
pub mod flow;
pub mod maps;

pub use flow::{FLOW_WAYS, FlowBucket, FlowEntry, FlowSettings};
pub use maps::*;

/// Bumped whenever a map layout or meaning changes: the pin directory is
/// named after it, so an upgrade never reuses an incompatible map.
/// 2: all_down flags in `SwitchState`, two more counters.
/// 3: set-associative flow tables (`FLOWS`, `EMBRYOS`, `FLOW_SETTINGS`), the datapath counters
///    of the gateway-traffic work (ICMP, fragments, options, allow lists).
/// 4: the `FlowMoved` and signal counters (`SIGNALS`, `SIGNAL_LAST` are new, not pinned).
/// 5: `SERVICE_INDEX` (a build without it would leave its copies stale).
pub const ABI_VERSION: u32 = 5;

/// Optional parts of the forwarding paths a benchmark may switch off at load
/// time (`ABLATE`, a read-only global) to measure what each costs. The
/// daemon always loads 0: the verifier then knows every such branch and
/// removes the dead side, so the switches cost the paths nothing.
pub mod ablate {
    /// Per-backend packet and byte counters (`BACKEND_STATS`).
    pub const STATS: u32 = 1 << 0;
    /// The silence watch's flags (`SEEN`).
    pub const SEEN: u32 = 1 << 1;
    /// TCP replies read for signals (closed-port RST) and SYN-ACKs.
    pub const SIGNALS: u32 = 1 << 2;
    /// The frame-size check against the egress MTU.
    pub const MTU: u32 = 1 << 3;
    /// The TTL check and decrement.
    pub const TTL: u32 = 1 << 4;
    /// The per-port pre-filter (`PORTS`) before the hash lookups.
    pub const PORTS: u32 = 1 << 5;
    /// Every switch above.
    pub const ALL: u32 = STATS | SEEN | SIGNALS | MTU | TTL | PORTS;
    /// Each switch with its name, in benchmark tables.
    pub const NAMES: [(u32, &str); 6] = [
        (STATS, "backend counters"),
        (SEEN, "silence flags"),
        (SIGNALS, "reply signals"),
        (MTU, "MTU check"),
        (TTL, "TTL check + decrement"),
        (PORTS, "port pre-filter"),
    ];
}
