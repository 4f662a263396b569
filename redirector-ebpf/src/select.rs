//! Stage 2: choose the backend slot for a packet of a service.
//!
//! Flow state is written only where it changes a decision. Flows without an
//! entry belong to the primary while it is up, so steady state (active =
//! primary) writes nothing. While the secondary is active, a flow that would
//! otherwise be sent there is pinned with an entry, so it finishes there after a
//! failback. A TCP non-SYN without an entry while the primary is up is an
//! established primary flow (drain or manual flip): it stays on the primary.
//! An entry whose backend is down is re-pointed to the active backend, so flows
//! on a dead backend move and do not return to it later.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use redirector_common::{Counter, FlowKey, FlowValue, SLOT_PRIMARY, SLOT_SECONDARY, SwitchState};

use crate::maps::{FLOWS, count};

const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn choose(key: &FlowKey, st: &SwitchState, tcp: bool, syn: bool) -> u8 {
    let active = st.active & 1;
    if active == SLOT_PRIMARY && !st.pinned() {
        // No flow entry can exist: skip the table entirely (steady state).
        return SLOT_PRIMARY;
    }
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the value lives in the map; concurrent updates of these plain
        // fields by other CPUs are benign (last writer wins, same meaning).
        unsafe {
            let slot = ((*v).slot & 1) as u8;
            if st.is_up(slot) {
                let now = bpf_ktime_get_coarse_ns();
                if now.wrapping_sub((*v).last_seen_ns) > REFRESH_NS {
                    (*v).last_seen_ns = now;
                }
                return slot;
            }
        }
        // Its backend is down: the flow moves to the active one for good.
        if active == SLOT_PRIMARY {
            // Without an entry a flow follows the primary anyway; dropping the
            // entry lets the service leave the pinned state sooner.
            let _ = FLOWS.remove(key);
        } else {
            // SAFETY: as above.
            unsafe {
                if (*v).slot != u32::from(active) {
                    (*v).slot = u32::from(active);
                }
                (*v).last_seen_ns = bpf_ktime_get_coarse_ns();
            }
        }
        return active;
    }
    if tcp && !syn && st.is_up(SLOT_PRIMARY) {
        // An established primary flow (drain, manual flip, load sharing).
        return SLOT_PRIMARY;
    }
    let mut target = active;
    if active == SLOT_PRIMARY {
        // Load sharing: a fixed share of new flows, chosen by a hash of the
        // flow (so every packet of a flow decides alike), goes to the
        // secondary while both are up and it takes new flows; those get an
        // entry, so they stay there.
        let share_ok = st.share > 0 && st.is_up(SLOT_SECONDARY) && st.drained & 0b10 == 0;
        if !share_ok || flow_hash(key) % 100 >= u32::from(st.share) {
            return SLOT_PRIMARY;
        }
        target = SLOT_SECONDARY;
    }
    let value = FlowValue {
        // SAFETY: helper without preconditions.
        last_seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
        slot: u32::from(target),
        _pad: 0,
    };
    // An LRU insert evicts when full; if it still fails, following the active
    // backend is the documented degradation, never a drop.
    match FLOWS.insert(key, &value, 0) {
        Ok(()) => count(Counter::FlowInserted),
        Err(_) => count(Counter::FlowInsertFailed),
    }
    target
}

/// A well-mixed 32-bit hash of the client's address and port and the service
/// (murmur3's finaliser over the folded words): spreads load sharing evenly.
#[inline(always)]
fn flow_hash(key: &FlowKey) -> u32 {
    let mut h =
        key.addr[0] ^ key.addr[1].rotate_left(7) ^ key.addr[2].rotate_left(13) ^ key.addr[3].rotate_left(19);
    h ^= u32::from(key.port_be) ^ key.service.rotate_left(16);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
