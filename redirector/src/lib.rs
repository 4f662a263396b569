//! redirector: loader, control plane and CLI of the XDP failover redirector.
#![deny(missing_docs)]

pub mod config;
//TMP pub mod daemon;
pub mod datapath;
//TMP pub mod netlink;

/// The compiled redirector XDP object (built by `build.rs` with aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector"));

/// Benchmark helper programs (`trivial`, `restore`), same toolchain and build.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
