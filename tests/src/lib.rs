//! Shared helpers of the root-only tests: privilege checks that never skip
//! silently in CI, private network namespaces that are always removed, and a
//! test-run harness around the real compiled XDP object.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

pub mod bird;
pub mod cases;
pub mod client;
pub mod cluster;
pub mod daemon;
pub mod dns;
pub mod keepalived;
pub mod lab;
pub mod netns;
pub mod packets;
pub mod postgres;
pub mod web;

use aya::programs::{TestRun, TestRunOptions};
use redirector::datapath::{Datapath, Sizes};

/// XDP return codes.
pub mod action {
    /// XDP_DROP.
    pub const DROP: u32 = 1;
    /// XDP_PASS.
    pub const PASS: u32 = 2;
    /// XDP_TX.
    pub const TX: u32 = 3;
    /// XDP_REDIRECT.
    pub const REDIRECT: u32 = 4;
}

/// True when the test may run. Without root it returns false (the caller
/// skips, loudly) — except under `CI=true`, where it panics: CI never skips.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root, and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test}: needs root (run `cargo xtask test` as root)");
    false
}

/// The real data plane, loaded for test runs.
pub struct Harness {
    /// The loaded object and its maps.
    pub dp: Datapath,
    /// `xdp_md` given to test runs: sets the ingress interface.
    pub ingress_ifindex: u32,
}

impl Harness {
    /// Loads the embedded object with small maps.
    pub fn new(ingress_ifindex: u32) -> Harness {
        Self::with_flow_entries(ingress_ifindex, 4096)
    }

    /// [`Harness::new`] with a flow table of `flow_entries` (a test that
    /// keeps many flows needs one that does not evict them).
    pub fn with_flow_entries(ingress_ifindex: u32, flow_entries: u32) -> Harness {
        let dp = Datapath::load(Sizes {
            max_services: 1024,
            flow_entries,
        })
        .unwrap();
        Harness { dp, ingress_ifindex }
    }

    /// Runs the program once on `frame`; returns the action and the output frame.
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let mut ctx = [0u32; 6];
        ctx[1] = u32::try_from(frame.len()).unwrap();
        ctx[3] = self.ingress_ifindex;
        let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let prog = self.dp.program().unwrap();
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: if self.ingress_ifindex == 0 {
                    None
                } else {
                    Some(&ctx_bytes)
                },
                repeat: 1,
                ..Default::default()
            })
            .unwrap();
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Global counter value.
    pub fn counter(&self, c: redirector_common::Counter) -> u64 {
        self.dp.counters().unwrap()[c as usize]
    }
}
