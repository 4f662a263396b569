//! The flow tables' layout and hashing (`FLOWS`, `EMBRYOS`, `DIRECT`, `FRAGS`), shared by the program (which reads
//! and writes them per packet) and userspace (which maps them to sweep).
//!
//! A flow table is an array of buckets, each [`FLOW_WAYS`] entries in one
//! 64-byte cache line (a set-associative cache, as in CPUs), not a kernel
//! LRU hash: a lookup is a keyed hash and one cache line; an insert writes
//! 16 bytes into it — no lock, no LRU list, no free list — a fraction of an
//! LRU insert (`cargo xtask bench datapath` shows both). A full bucket
//! evicts its least recently seen entry.
//!
//! An entry holds no key, only a 64-bit keyed fingerprint of key and backend
//! slot (`fp`), written with one aligned 8-byte store: a reader never sees
//! half of one, and a CPU writing an entry while another reads it cannot
//! make the reader match the wrong flow or slot. The seed is random per data
//! plane, so clients cannot aim their flows at one bucket or fingerprint.
use bytemuck::{Pod, Zeroable};

use crate::FlowKey;

/// Entries per bucket.
pub const FLOW_WAYS: usize = 4;

/// One flow's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEntry {
    /// [`fingerprint`] of the key and the backend slot; 0 = empty.
    pub fp: u64,
    /// Service id (userspace sweeps by service; matching uses `fp` alone).
    pub service: u16,
    /// TCP: the [`syn_tag`] of the SYN that opened the connection, so a
    /// retransmitted SYN keeps its backend and a new connection from the same
    /// client port does not; 0 for UDP.
    pub tag: u16,
    /// [`seen`] of the last packet (refreshed at most once per tick).
    pub seen: u32,
}

/// One bucket, one cache line: the value type of the `FLOWS` and `EMBRYOS` arrays.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowBucket {
    /// The entries.
    pub ways: [FlowEntry; FLOW_WAYS],
}

/// Value of `FLOW_SETTINGS[0]`, written by userspace before the program
/// runs and kept with the pinned tables (a restart must hash alike).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowSettings {
    /// Hash key, random per data plane.
    pub seed: u64,
    /// Buckets of `FLOWS`; 0 = not set yet (the program writes no entry).
    pub flow_buckets: u32,
    /// Buckets of `EMBRYOS`.
    pub embryo_buckets: u32,
    /// Buckets of `DIRECT`.
    pub direct_buckets: u32,
    /// Buckets of `FRAGS`.
    pub frag_buckets: u32,
}

/// `seen` ticks: `CLOCK_MONOTONIC` ns >> 30, about 1.07 s; wraps after
/// 146 years.
pub const SEEN_SHIFT: u32 = 30;

/// The tick of a `CLOCK_MONOTONIC` time in ns.
#[inline(always)]
pub const fn seen(ns: u64) -> u32 {
    (ns >> SEEN_SHIFT) as u32
}

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xbf58_476d_1ce4_e5b9;

#[inline(always)]
const fn mix(h: u64, w: u64) -> u64 {
    let x = (h ^ w).wrapping_mul(K2);
    x ^ (x >> 31)
}

/// Keyed 64-bit hash of a flow key.
#[inline(always)]
pub const fn key_hash(key: &FlowKey, seed: u64) -> u64 {
    let a = key.addr;
    let mut h = seed ^ K1;
    h = mix(h, a[0] as u64 | (a[1] as u64) << 32);
    h = mix(h, a[2] as u64 | (a[3] as u64) << 32);
    h = mix(h, key.port_be as u64 | (key.service as u64) << 32);
    h ^= h >> 29;
    h = h.wrapping_mul(K1);
    h ^ (h >> 32)
}

/// Keyed 64-bit hash of an IP datagram's identity (RFC 791 / 8200: source,
/// destination, protocol, identification), for `FRAGS`; `reply` keeps the
/// two directions of a NAT flow apart.
#[inline(always)]
pub const fn frag_hash(src: &crate::Ip, dst: &crate::Ip, id: u32, proto: u8, reply: bool, seed: u64) -> u64 {
    let mut h = seed ^ K2;
    h = mix(h, src[0] as u64 | (src[1] as u64) << 32);
    h = mix(h, src[2] as u64 | (src[3] as u64) << 32);
    h = mix(h, dst[0] as u64 | (dst[1] as u64) << 32);
    h = mix(h, dst[2] as u64 | (dst[3] as u64) << 32);
    h = mix(h, id as u64 | (proto as u64) << 32 | (reply as u64) << 40);
    h ^= h >> 29;
    h = h.wrapping_mul(K1);
    h ^ (h >> 32)
}

/// A SYN's tag: 16 bits of its initial sequence number, never 0. A
/// retransmitted SYN repeats it; a new connection from the same client port
/// has a new random ISN (RFC 6528), so its tag differs but for a 1-in-32768
/// chance, where it keeps the earlier choice (a backend that is up).
#[inline(always)]
pub const fn syn_tag(seq: u32) -> u16 {
    ((seq ^ (seq >> 16)) as u16) | 1
}

/// The bucket a hash falls in (multiply-shift: no division, any bucket count).
#[inline(always)]
pub const fn bucket(hash: u64, buckets: u32) -> u32 {
    (((hash >> 32) * buckets as u64) >> 32) as u32
}

/// An entry's `fp` for a key's hash and a backend slot: never 0, different per slot.
#[inline(always)]
pub const fn fingerprint(hash: u64, slot: u8) -> u64 {
    (hash ^ (slot as u64 + 1).wrapping_mul(K1)) | 1
}

impl FlowEntry {
    /// The backend slot, if this is the entry of the key whose hash is `hash`.
    #[inline(always)]
    pub fn slot_for(&self, hash: u64) -> Option<u8> {
        let fp = self.fp;
        if fp == fingerprint(hash, 0) {
            Some(0)
        } else if fp == fingerprint(hash, 1) {
            Some(1)
        } else {
            None
        }
    }
}

const _: () = {
    assert!(core::mem::size_of::<FlowEntry>() == 16);
    assert!(core::mem::size_of::<FlowBucket>() == 64);
    assert!(core::mem::size_of::<FlowSettings>() == 24);
};

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            addr: crate::ip_from_v4([198, 18, 1, 2]),
            port_be: port.to_be(),
            _pad: 0,
            service: 3,
        }
    }

    #[test]
    fn buckets_cover_the_range_evenly() {
        let buckets = 1000;
        let mut hits = [0u32; 1000];
        for port in 0..u16::MAX {
            let b = bucket(key_hash(&key(port), 0x1234_5678_9abc), buckets);
            hits[b as usize] += 1;
        }
        // 65535 keys over 1000 buckets: ~65 each.
        assert!(hits.iter().all(|&n| (25..=110).contains(&n)), "{hits:?}");
    }

    #[test]
    fn the_seed_changes_every_bucket_choice() {
        let same = (0..1000)
            .filter(|&p| key_hash(&key(p), 1) == key_hash(&key(p), 2))
            .count();
        assert_eq!(same, 0);
    }

    #[test]
    fn an_entry_matches_its_key_and_slot_only() {
        let (a, b) = (key(1), key(2));
        let (ha, hb) = (key_hash(&a, 7), key_hash(&b, 7));
        let e = FlowEntry {
            fp: fingerprint(ha, 1),
            ..FlowEntry::default()
        };
        assert_eq!(e.slot_for(ha), Some(1));
        assert_eq!(e.slot_for(hb), None);
        assert_ne!(fingerprint(ha, 0), fingerprint(ha, 1));
        // Empty.
        assert_eq!(FlowEntry::default().slot_for(ha), None);
        assert_eq!(FlowEntry::default().slot_for(0), None);
    }
}
