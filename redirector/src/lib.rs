//! redirector: loader, control plane and CLI of the XDP failover redirector.
#![deny(missing_docs)]

pub mod announce;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod fault;
pub mod health;
pub mod hooks;
pub mod lock;
pub mod metrics;
pub mod netlink;
pub mod notify;
pub mod offline;
pub mod policy;
pub mod process;
pub mod state;

/// The compiled redirector XDP object (built by `build.rs`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector"));

/// Lab and benchmark helper programs (`pass`, `trivial`, `restore`), same build.
pub static LAB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab"));
