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
pub const ABI_VERSION: u32 = 4;
