//! Lab and benchmark helpers, built with the redirector so all share one toolchain:
//! - `pass`: returns `XDP_PASS`; attached to the far ends of lab veths, because
//!   native XDP redirect into a veth only delivers when its peer runs XDP;
//! - `trivial`: returns `XDP_TX` and nothing else — the floor every ratio uses;
//! - `lru_insert`, `lru_insert_nc`: one kernel LRU hash insert keyed by the
//!   IPv4 source (common LRU list / per-CPU lists), then `XDP_TX` — the floor
//!   a flow table built on the kernel's LRU maps cannot go below;
//! - `forward_static`: the least any L2 redirector does — write the MACs of the
//!   one next hop in `STATIC_HOP` and `bpf_redirect_map` to it — a second
//!   reference for what redirector's own logic costs on top of forwarding;
//! - `drop`: returns `XDP_DROP` (a generator's own cost, with `restore`);
//! - `count_drop`: counts the frame in `RECEIVED` and drops it — a receiver
//!   whose own stack costs nothing (the throughput benchmark);
//! - `restore`: copies a template frame from `TEMPLATE` over the packet, then
//!   tail-calls `TARGET[0]`. With `BPF_PROG_TEST_RUN`'s repeat count the kernel
//!   reruns on the same (already rewritten) buffer; restoring first makes every
//!   run see the original packet. `TEMPLATE.vary_off != 0` writes the run
//!   counter over a 32-bit field (the source address) so every run is a new flow.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, DevMapHash, LruHashMap, PerCpuArray, ProgramArray},
        programs::XdpContext,
    };

    use redirector_common::{
        BENCH_TEMPLATE_LEN as TEMPLATE_LEN, BenchTemplate, FlowKey, FlowValue, NextHop, VARY_V4_SPORT,
        VARY_V4_SRC, VARY_V6_SRC,
    };

    const BPF_F_NO_COMMON_LRU: u32 = 2;

    #[map]
    static TEMPLATE: Array<BenchTemplate> = Array::with_max_entries(1, 0);

    #[map]
    static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

    #[map]
    static STATIC_HOP: Array<NextHop> = Array::with_max_entries(1, 0);

    #[map]
    static STATIC_EGRESS: DevMapHash = DevMapHash::with_max_entries(8, 0);

    #[xdp]
    pub fn forward_static(ctx: XdpContext) -> u32 {
        let Some(hop) = STATIC_HOP.get(0) else {
            return xdp_action::XDP_ABORTED;
        };
        let start = ctx.data();
        if start + 14 > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: the 12 MAC bytes are inside the bounds-checked Ethernet header.
        unsafe {
            let eth = start as *mut [u16; 6];
            let d = hop.dst_mac;
            let s = hop.src_mac;
            (*eth)[0] = u16::from_ne_bytes([d[0], d[1]]);
            (*eth)[1] = u16::from_ne_bytes([d[2], d[3]]);
            (*eth)[2] = u16::from_ne_bytes([d[4], d[5]]);
            (*eth)[3] = u16::from_ne_bytes([s[0], s[1]]);
            (*eth)[4] = u16::from_ne_bytes([s[2], s[3]]);
            (*eth)[5] = u16::from_ne_bytes([s[4], s[5]]);
        }
        STATIC_EGRESS
            .redirect(hop.ifindex, 0)
            .unwrap_or(xdp_action::XDP_ABORTED)
    }

    /// What a kernel LRU flow table costs at least: one LRU hash insert of a
    /// flow-table-shaped entry keyed by the IPv4 source address, nothing else.
    /// The benchmark sizes these maps like the flow table; the lab, which
    /// loads this object for `pass`, keeps them small.
    #[map]
    static BARE_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(1024, 0);

    /// The same with per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`): one shared
    /// table, each CPU evicting from its own list.
    #[map]
    static BARE_FLOWS_NC: LruHashMap<FlowKey, FlowValue> =
        LruHashMap::with_max_entries(1024, BPF_F_NO_COMMON_LRU);

    #[xdp]
    pub fn lru_insert(ctx: XdpContext) -> u32 {
        bare_insert(&ctx, &BARE_FLOWS)
    }

    #[xdp]
    pub fn lru_insert_nc(ctx: XdpContext) -> u32 {
        bare_insert(&ctx, &BARE_FLOWS_NC)
    }

    #[inline(always)]
    fn bare_insert(ctx: &XdpContext, map: &LruHashMap<FlowKey, FlowValue>) -> u32 {
        let start = ctx.data();
        if start + VARY_V4_SRC + 4 > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: bounds checked just above.
        let src = unsafe { core::ptr::read_unaligned((start + VARY_V4_SRC) as *const u32) };
        let key = FlowKey {
            addr: [0, 0, 0, src],
            port_be: 0,
            _pad: 0,
            service: 0,
        };
        let value = FlowValue {
            last_seen_ns: 0,
            slot: 1,
            _pad: 0,
        };
        let _ = map.insert(&key, &value, 0);
        xdp_action::XDP_TX
    }

    #[xdp]
    pub fn pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[xdp]
    pub fn trivial(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_TX
    }

    #[xdp]
    pub fn drop(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_DROP
    }

    #[map]
    static RECEIVED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    #[xdp]
    pub fn count_drop(_ctx: XdpContext) -> u32 {
        if let Some(n) = RECEIVED.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; no concurrent writer.
            unsafe { *n += 1 };
        }
        xdp_action::XDP_DROP
    }

    #[xdp]
    pub fn restore(ctx: XdpContext) -> u32 {
        let Some(t) = TEMPLATE.get_ptr_mut(0) else {
            return xdp_action::XDP_ABORTED;
        };
        let start = ctx.data();
        let end = ctx.data_end();
        // Fixed 8-byte steps keep the loop bounded and the copy cheap; benchmark
        // frames are a multiple of 8 bytes long.
        let mut off = 0;
        while off + 8 <= TEMPLATE_LEN {
            if start + off + 8 > end {
                break;
            }
            // SAFETY: bounds checked against data_end and TEMPLATE_LEN just above.
            unsafe {
                let w = core::ptr::read_unaligned((*t).bytes.as_ptr().add(off) as *const u64);
                core::ptr::write_unaligned((start + off) as *mut u64, w);
            }
            off += 8;
        }
        // SAFETY: t is a valid map value; each write is bounds-checked at a
        // constant offset (IPv4 source address, or the last word of the IPv6 one).
        unsafe {
            let voff = (*t).vary_off;
            if voff == VARY_V4_SPORT as u32 {
                (*t).counter = (*t).counter.wrapping_add(1);
                let port = ((*t).counter & 0xffff) as u16;
                if start + VARY_V4_SPORT + 2 <= end {
                    core::ptr::write_unaligned((start + VARY_V4_SPORT) as *mut u16, port.to_be());
                }
            } else if voff == VARY_V4_SRC as u32 || voff == VARY_V6_SRC as u32 {
                (*t).counter = (*t).counter.wrapping_add(1);
                let c = (*t).counter;
                if voff == VARY_V4_SRC as u32 {
                    if start + VARY_V4_SRC + 4 <= end {
                        core::ptr::write_unaligned((start + VARY_V4_SRC) as *mut u32, c);
                    }
                } else if start + VARY_V6_SRC + 4 <= end {
                    core::ptr::write_unaligned((start + VARY_V6_SRC) as *mut u32, c);
                }
            }
        }
        // SAFETY: index 0 holds an XDP program fd set by the benchmark.
        let _ = unsafe { TARGET.tail_call(&ctx, 0) };
        xdp_action::XDP_ABORTED
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
