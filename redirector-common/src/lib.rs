//! Types shared by the redirector XDP program (kernel) and its userspace.
//!
//! Everything that crosses the kernel boundary is defined here once, as
//! `#[repr(C)]` + bytemuck `Pod` (padding is a compile error), with a size
//! assertion. Addresses are always 16 bytes: IPv4 is stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so one key type serves both families.
#![no_std]
#![deny(missing_docs)]

pub mod csum;
pub mod maps;

pub use maps::*;

/// Bumped whenever a map layout or meaning changes. Nothing is pinned yet;
/// once maps outlive the daemon, their pin directory is named after this so an
/// upgrade never reuses an incompatible map.
/// 2: all_down flags in `SwitchState`, two more counters.
pub const ABI_VERSION: u32 = 2;
