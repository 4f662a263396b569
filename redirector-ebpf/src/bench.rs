//! Benchmark helpers, built with the redirector so both share one toolchain:
//! - `trivial`: returns `XDP_TX` and nothing else — the floor every ratio uses;
//! - `restore`: copies a template frame from `TEMPLATE` over the packet, then
//!   tail-calls `TARGET[0]`. With `BPF_PROG_TEST_RUN`'s repeat count the kernel
//!   reruns on the same (already rewritten) buffer; restoring first makes every
//!   run see the original packet. `TEMPLATE.vary != 0` adds the run number to
//!   the source port so every run is a new flow.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, ProgramArray},
        programs::XdpContext,
    };

    pub const TEMPLATE_LEN: usize = 128;

    #[repr(C)]
    pub struct Template {
        pub bytes: [u8; TEMPLATE_LEN],
        /// Offset of the source port to vary (0 = do not vary).
        pub vary_off: u32,
        pub counter: u32,
    }

    #[map]
    static TEMPLATE: Array<Template> = Array::with_max_entries(1, 0);

    #[map]
    static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

    #[xdp]
    pub fn trivial(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_TX
    }

    #[xdp]
    pub fn restore(ctx: XdpContext) -> u32 {
        let Some(t) = TEMPLATE.get_ptr_mut(0) else {
            return xdp_action::XDP_ABORTED;
        };
        let start = ctx.data();
        let end = ctx.data_end();
        // Fixed 8-byte steps keep the loop bounded and the copy cheap.
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
        let mut i = 0;
        while i < 7 {
            let o = off + i;
            if o >= TEMPLATE_LEN || start + o + 1 > end {
                break;
            }
            // SAFETY: bounds checked just above.
            unsafe { *((start + o) as *mut u8) = (*t).bytes[o] };
            i += 1;
        }
        // SAFETY: t is a valid map value; the port write is bounds-checked.
        unsafe {
            let voff = (*t).vary_off as usize;
            if voff != 0 && voff < TEMPLATE_LEN - 2 && start + voff + 2 <= end {
                (*t).counter = (*t).counter.wrapping_add(1);
                let c = (*t).counter as u16;
                core::ptr::write_unaligned((start + voff) as *mut u16, c.to_be());
            }
        }
        // SAFETY: index 0 holds an XDP program fd set by the benchmark.
        let _ = unsafe { TARGET.tail_call(&ctx, 0) };
        xdp_action::XDP_ABORTED
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects any program that could reach a panic.
        unsafe { core::hint::unreachable_unchecked() }
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
