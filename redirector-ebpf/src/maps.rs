//! Map definitions. Sizes here are defaults; the loader sets the real ones.
use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use redirector_common::{
    AclKey, Addr, Backend, BackendStats, Counter, DEFAULT_ACL_ENTRIES, DEFAULT_CLIENT_HOPS,
    DEFAULT_FLOW_ENTRIES, DEFAULT_MAX_SERVICES, EMBRYO_SHARE, Endpoint, FLOW_WAYS, FRAG_BUCKETS, FlowBucket,
    FlowSettings, IndexedService, NextHop, ReverseInfo, Seen, ServiceInfo, ServiceVip, SwitchState, ablate,
};

/// A benchmark's switches (`redirector_common::ablate`). The daemon loads
/// 0, and read-only: the verifier then removes every switched-off side.
#[unsafe(no_mangle)]
static ABLATE: Global<u32> = Global::new(0);

/// Is the optional `part` (an `ablate` bit) of the paths on?
#[inline(always)]
pub fn on(part: u32) -> bool {
    ABLATE.load() & part == 0
}

#[map]
pub static SERVICES: HashMap<Endpoint, ServiceInfo> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static SWITCH: Array<SwitchState> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_SERVICES * 2, 0);

#[map]
pub static REVERSE: HashMap<Endpoint, ReverseInfo> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES * 2, 0);

/// `BPF_F_MMAPABLE`: userspace maps the flow tables to sweep them.
const MMAPABLE: u32 = 1 << 10;

/// Set-associative flow tables (see `redirector_common::flow`).
#[map]
pub static FLOWS: Array<FlowBucket> =
    Array::with_max_entries(DEFAULT_FLOW_ENTRIES / FLOW_WAYS as u32, MMAPABLE);

#[map]
pub static EMBRYOS: Array<FlowBucket> =
    Array::with_max_entries(DEFAULT_FLOW_ENTRIES / EMBRYO_SHARE / FLOW_WAYS as u32, MMAPABLE);

#[map]
pub static DIRECT: Array<FlowBucket> =
    Array::with_max_entries(DEFAULT_FLOW_ENTRIES / EMBRYO_SHARE / FLOW_WAYS as u32, MMAPABLE);

#[map]
pub static FRAGS: Array<FlowBucket> = Array::with_max_entries(FRAG_BUCKETS, 0);

#[map]
pub static SERVICE_VIPS: Array<ServiceVip> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static FLOW_SETTINGS: Array<FlowSettings> = Array::with_max_entries(1, 0);

/// Allow/deny prefixes of every service (see `AclKey`); userspace sizes them.
#[map]
pub static ALLOW: LpmTrie<AclKey, u8> = LpmTrie::with_max_entries(DEFAULT_ACL_ENTRIES, 0);

#[map]
pub static DENY: LpmTrie<AclKey, u8> = LpmTrie::with_max_entries(DEFAULT_ACL_ENTRIES, 0);

#[map]
pub static REFUSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static VIPS: HashMap<Addr, u8> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static CLIENT_HOPS: LruHashMap<Addr, NextHop> = LruHashMap::with_max_entries(DEFAULT_CLIENT_HOPS, 0);

#[map]
pub static LOCAL_ADDRS: HashMap<Addr, u8> = HashMap::with_max_entries(4096, 0);

#[map]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(64, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES * 2, 0);

#[map]
pub static SEEN: Array<Seen> = Array::with_max_entries(DEFAULT_MAX_SERVICES * 2, MMAPABLE);

#[map]
pub static PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map]
pub static SERVICE_INDEX: Array<IndexedService> =
    Array::with_max_entries(redirector_common::SERVICE_INDEX_SLOTS, 0);

#[map]
pub static BACKEND_ADDRS: Array<u8> = Array::with_max_entries(65536, 0);

/// The programs the forwarding path goes on in, by `redirector_common::paths`.
#[map]
pub static PATHS: ProgramArray = ProgramArray::with_max_entries(redirector_common::paths::COUNT, 0);

#[map]
pub static HOP_REQUESTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[map]
pub static SIGNALS: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);

#[map]
pub static SIGNAL_LAST: Array<u64> = Array::with_max_entries(DEFAULT_MAX_SERVICES * 2, 0);

#[map]
pub static BACKEND_IFACES: HashMap<u32, u8> =
    HashMap::with_max_entries(redirector_common::MAX_BACKEND_IFACES, 0);

#[map]
pub static INGRESS_MACS: Array<redirector_common::IngressMac> =
    Array::with_max_entries(redirector_common::INGRESS_SLOTS, 0);

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
pub fn count_refused(service: u32) {
    count(Counter::Refused);
    if let Some(v) = REFUSED.get_ptr_mut(service) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *v += 1 };
    }
}

/// A request forwarded to backend `index` (`answer`: false), or its answer
/// to a client (true), for the silence watch: a store only when the flag
/// is clear (the daemon clears it at each look).
#[inline(always)]
pub fn seen(index: u32, answer: bool) {
    if !on(ablate::SEEN) {
        return;
    }
    if let Some(s) = SEEN.get_ptr_mut(index) {
        // SAFETY: a valid array slot; racing stores all write 1.
        unsafe {
            let flag = if answer {
                &raw mut (*s).answered
            } else {
                &raw mut (*s).asked
            };
            if *flag == 0 {
                *flag = 1;
            }
        }
    }
}

#[inline(always)]
pub fn count_backend(index: u32, bytes: u64, reply: bool) {
    if !on(ablate::STATS) {
        return;
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            if reply {
                (*s).rev_packets += 1;
                (*s).rev_bytes += bytes;
            } else {
                (*s).fwd_packets += 1;
                (*s).fwd_bytes += bytes;
            }
        }
    }
}
