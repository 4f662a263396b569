//! Stage 2: choose the backend slot for a packet of a service.
//!
//! Flow state is written only where it changes a decision. Flows without an
//! entry belong to the primary while it is up, so steady state (active =
//! primary) writes nothing. While the secondary is active (or takes a share),
//! a flow sent there is pinned with an entry, so it finishes there after a
//! failback. An entry whose backend is down is re-pointed to the active
//! backend, so flows on a dead backend move and do not return to it later.
//!
//! TCP writes its entry in two steps: the SYN's into `EMBRYOS`, moved to
//! `FLOWS` by the first packet after it (the handshake's ACK). A SYN flood
//! therefore churns `EMBRYOS` only and never evicts an established flow's
//! entry. Both tables are set-associative arrays (`flows.rs`): an insert is
//! a hash and a 16-byte write in one cache line.
//!
//! A TCP non-SYN with neither entry is an established flow that began
//! elsewhere: on the primary while it is up (a drain, a manual flip, the
//! unshared part of load sharing), else it follows the active backend without
//! an entry (a connection that began on a dead primary has nothing to keep).
//!
//! A SYN is a new connection and never follows an older connection's entry:
//! client ports are reused (behind a NAT within seconds), and an entry lives
//! until `tcp_flow_idle`. Entries carry the opening SYN's tag (16 bits of its
//! sequence number), so a retransmitted SYN keeps its backend, as Katran's
//! consistent hash gives it the same one.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use redirector_common::{
    Counter, FlowKey, SLOT_PRIMARY, SLOT_SECONDARY, SwitchState,
    flow::{key_hash, seen},
};

use crate::{
    flows::{self, Table},
    maps::{EMBRYOS, FLOW_SETTINGS, FLOWS, SERVICE_VIPS, count},
};

#[inline(always)]
pub fn choose(key: &FlowKey, st: &SwitchState, tcp: bool, syn: u16) -> u8 {
    let active = st.active & 1;
    if active == SLOT_PRIMARY && !st.pinned() {
        // No flow entry can exist: skip the tables entirely (steady state).
        return SLOT_PRIMARY;
    }
    let Some(cfg) = FLOW_SETTINGS.get(0) else {
        return active;
    };
    let hash = key_hash(key, cfg.seed);
    // SAFETY: helper without preconditions.
    let now = seen(unsafe { bpf_ktime_get_coarse_ns() });
    let table = Table::new(&FLOWS, cfg.flow_buckets);
    let embryos = Table::new(&EMBRYOS, cfg.embryo_buckets);
    if syn != 0 {
        return choose_syn(key, st, active, hash, syn, now, &table, &embryos);
    }
    if let Some((e, slot)) = table.find(hash) {
        if st.is_up(slot) {
            flows::touch(e, now);
            return slot;
        }
        // Its backend is down: the flow moves to the active one for good.
        count(Counter::FlowMoved);
        if active == SLOT_PRIMARY {
            // Without an entry a flow follows the primary anyway; dropping the
            // entry lets the service leave the pinned state sooner.
            flows::remove(e);
        } else {
            flows::repoint(e, hash, active, now);
        }
        return active;
    }
    if tcp {
        // The handshake completed: the flow now has an entry to keep.
        if let Some((e, slot)) = embryos.find(hash)
            && st.is_up(slot)
        {
            let tag = flows::tag(e);
            flows::remove(e);
            table.insert_tagged(hash, key.service, slot, tag, now);
            count(Counter::FlowInserted);
            return slot;
        }
        return if st.is_up(SLOT_PRIMARY) {
            SLOT_PRIMARY
        } else {
            active
        };
    }
    let target = new_flow_target(key, st, active);
    // With load sharing configured, every UDP flow keeps its backend with an
    // entry, the primary's too: when sharing starts again (the secondary
    // back, undrained, `share` raised) it applies to new flows only, never
    // moving a live flow (a QUIC connection) to the other backend. TCP needs
    // none: only SYNs are shared, established flows stay where they are.
    if target != SLOT_PRIMARY || st.share > 0 {
        table.insert(hash, key.service, target, now);
        count(Counter::FlowInserted);
    }
    target
}

/// A SYN opens a new connection, chosen afresh as the state stands now. An
/// entry it meets is either its own handshake's (the same tag: a
/// retransmission, which keeps its backend while that is up) or a finished
/// connection's from the same client port (a reused port: the entry is
/// replaced, or a failback and a drain would not hold for that port).
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "kept flat so the verifier sees scalars")]
fn choose_syn(
    key: &FlowKey,
    st: &SwitchState,
    active: u8,
    hash: u64,
    syn: u16,
    now: u32,
    table: &Table,
    embryos: &Table,
) -> u8 {
    if let Some((e, slot)) = table.find(hash) {
        if flows::tag(e) == syn && st.is_up(slot) {
            flows::touch(e, now);
            return slot;
        }
        flows::remove(e);
    }
    let old = embryos.find(hash);
    if let Some((e, slot)) = old
        && flows::tag(e) == syn
        && st.is_up(slot)
    {
        flows::touch(e, now);
        return slot;
    }
    let target = new_flow_target(key, st, active);
    if target == SLOT_PRIMARY {
        // A flow without an entry goes to the primary: the handshake's ACK
        // follows the SYN there.
        if let Some((e, _)) = old {
            flows::remove(e);
        }
        return SLOT_PRIMARY;
    }
    match old {
        Some((e, _)) => flows::repoint_tagged(e, hash, target, syn, now),
        None => embryos.insert_tagged(hash, key.service, target, syn, now),
    }
    count(Counter::SynEntry);
    target
}

/// Where the packets of an existing flow go, written nowhere: for ICMP
/// errors about the flow (`icmp.rs`), which must reach the same backend.
#[inline(always)]
pub fn lookup(key: &FlowKey, st: &SwitchState, tcp: bool) -> u8 {
    let active = st.active & 1;
    if active == SLOT_PRIMARY && !st.pinned() {
        return SLOT_PRIMARY;
    }
    let Some(cfg) = FLOW_SETTINGS.get(0) else {
        return active;
    };
    let hash = key_hash(key, cfg.seed);
    if let Some((_, slot)) = Table::new(&FLOWS, cfg.flow_buckets).find(hash)
        && st.is_up(slot)
    {
        return slot;
    }
    if tcp {
        if let Some((_, slot)) = Table::new(&EMBRYOS, cfg.embryo_buckets).find(hash)
            && st.is_up(slot)
        {
            return slot;
        }
        return if st.is_up(SLOT_PRIMARY) {
            SLOT_PRIMARY
        } else {
            active
        };
    }
    new_flow_target(key, st, active)
}

/// Where a new flow goes: the active backend, or with load sharing a fixed
/// share of new flows, chosen by a hash of the flow (so every packet of a flow
/// decides alike), to the secondary while both are up and it takes new flows.
#[inline(always)]
fn new_flow_target(key: &FlowKey, st: &SwitchState, active: u8) -> u8 {
    if active != SLOT_PRIMARY {
        return active;
    }
    let share_ok = st.share > 0 && st.is_up(SLOT_SECONDARY) && st.drained & 0b10 == 0;
    if share_ok && share_hash(key) % 100 < u32::from(st.share) {
        SLOT_SECONDARY
    } else {
        SLOT_PRIMARY
    }
}

/// A well-mixed 32-bit hash of the client's address and port and the
/// service's VIP (murmur3's finaliser over the folded words): spreads load
/// sharing evenly, and depends on nothing a gateway assigns locally (the
/// service id), so every gateway of a cluster with the same configuration
/// shares the same flows.
#[inline(always)]
fn share_hash(key: &FlowKey) -> u32 {
    let vip = SERVICE_VIPS.get(key.service).map_or([0; 4], |v| v.vip);
    let mut h =
        key.addr[0] ^ key.addr[1].rotate_left(7) ^ key.addr[2].rotate_left(13) ^ key.addr[3].rotate_left(19);
    h ^= u32::from(key.port_be) ^ (vip[0] ^ vip[1] ^ vip[2] ^ vip[3]).rotate_left(16);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
