//! Direct flows: a client talking to a NAT backend's service port itself,
//! not through a VIP. The gateway sees such a flow's packets on their way in
//! and records the flow; a reply from the backend that belongs to one is not
//! a NAT reply and passes untouched. A backend whose endpoint never saw a
//! direct flow costs its replies nothing (`ReverseInfo::direct`).
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use redirector_common::{
    FlowKey, Ip, ReverseInfo,
    flow::{key_hash, seen},
};

use crate::{
    flows::{self, Table},
    maps::{DIRECT, FLOW_SETTINGS},
};

#[inline(always)]
fn key(client: &Ip, port_be: u16, rev: &ReverseInfo) -> FlowKey {
    FlowKey {
        addr: *client,
        port_be,
        _pad: 0,
        service: rev.service * 2 + u32::from(rev.slot & 1),
    }
}

/// A packet from `client:port_be` to the backend endpoint of `rev`: records
/// (or refreshes) its flow, then marks the endpoint as having direct flows.
#[inline(always)]
pub fn record(client: &Ip, port_be: u16, rev: *mut ReverseInfo) {
    let Some(cfg) = FLOW_SETTINGS.get(0) else {
        return;
    };
    // SAFETY: rev points at a REVERSE value; plain reads.
    let k = key(client, port_be, unsafe { &*rev });
    let hash = key_hash(&k, cfg.seed);
    // SAFETY: helper without preconditions.
    let now = seen(unsafe { bpf_ktime_get_coarse_ns() });
    let table = Table::new(&DIRECT, cfg.direct_buckets);
    match table.find(hash) {
        Some((e, _)) => flows::touch(e, now),
        None => table.insert(hash, k.service / 2, 0, now),
    }
    // After the entry: a reply that sees the flag finds the entry.
    // SAFETY: one byte of a map value; every writer writes 1.
    unsafe {
        if (*rev).direct == 0 {
            core::ptr::write_volatile(&raw mut (*rev).direct, 1);
        }
    }
}

/// Is a reply from the backend endpoint of `rev` to `client:port_be` part of
/// a direct flow?
#[inline(always)]
pub fn is_reply(client: &Ip, port_be: u16, rev: &ReverseInfo) -> bool {
    rev.direct != 0 && is_direct_reply(client, port_be, rev)
}

#[inline(always)]
fn is_direct_reply(client: &Ip, port_be: u16, rev: &ReverseInfo) -> bool {
    let Some(cfg) = FLOW_SETTINGS.get(0) else {
        return false;
    };
    let hash = key_hash(&key(client, port_be, rev), cfg.seed);
    Table::new(&DIRECT, cfg.direct_buckets).find(hash).is_some()
}
