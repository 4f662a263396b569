//! The flow tables: find, insert, remove in a set-associative bucket array
//! (layout and the concurrency rule in `redirector_common::flow`).
use aya_ebpf::maps::Array;
use redirector_common::{
    Counter, FLOW_WAYS, FlowBucket, FlowEntry,
    flow::{bucket, fingerprint},
};

use crate::maps::count;

/// One table.
pub struct Table {
    map: &'static Array<FlowBucket>,
    buckets: u32,
}

impl Table {
    #[inline(always)]
    pub fn new(map: &'static Array<FlowBucket>, buckets: u32) -> Table {
        Table { map, buckets }
    }

    #[inline(always)]
    fn bucket(&self, hash: u64) -> Option<*mut FlowBucket> {
        if self.buckets == 0 {
            // Settings not written yet: no table.
            return None;
        }
        self.map.get_ptr_mut(bucket(hash, self.buckets))
    }

    /// The entry of the key whose hash is `hash`, and its backend slot.
    #[inline(always)]
    pub fn find(&self, hash: u64) -> Option<(*mut FlowEntry, u8)> {
        let b = self.bucket(hash)?;
        let mut way = 0;
        while way < FLOW_WAYS {
            // SAFETY: b points at a map value of FLOW_WAYS entries; way < FLOW_WAYS.
            let e = unsafe { (*b).ways.as_mut_ptr().add(way) };
            // SAFETY: as above; `fp` is read with one aligned load.
            if let Some(slot) = unsafe { (*e).slot_for(hash) } {
                return Some((e, slot));
            }
            way += 1;
        }
        None
    }

    /// Writes the key whose hash is `hash` → `slot`: into a free way of its
    /// bucket, else over the least recently seen entry (counted as an
    /// eviction). The caller found no entry for the key.
    #[inline(always)]
    pub fn insert(&self, hash: u64, service: u32, slot: u8, now: u32) {
        self.insert_tagged(hash, service, slot, 0, now);
    }

    /// [`Table::insert`] with a TCP connection's [`syn_tag`](redirector_common::flow::syn_tag).
    #[inline(always)]
    pub fn insert_tagged(&self, hash: u64, service: u32, slot: u8, tag: u16, now: u32) {
        let Some(b) = self.bucket(hash) else {
            return;
        };
        let mut victim = 0;
        let mut oldest = 0u32;
        let mut free = false;
        let mut way = 0;
        while way < FLOW_WAYS {
            // SAFETY: as in `find`.
            let e = unsafe { &*(*b).ways.as_ptr().add(way) };
            if e.fp == 0 {
                victim = way;
                free = true;
                break;
            }
            let age = now.wrapping_sub(e.seen);
            if way == 0 || age > oldest {
                victim = way;
                oldest = age;
            }
            way += 1;
        }
        if !free {
            count(Counter::FlowEvicted);
        }
        // SAFETY: victim < FLOW_WAYS, inside the map value.
        unsafe {
            let e = (*b).ways.as_mut_ptr().add(victim);
            // Invalidate first, validate last: userspace reads `service` and
            // `seen` only between two equal reads of `fp`.
            core::ptr::write_volatile(&raw mut (*e).fp, 0);
            core::ptr::write_volatile(&raw mut (*e).service, service as u16);
            core::ptr::write_volatile(&raw mut (*e).tag, tag);
            core::ptr::write_volatile(&raw mut (*e).seen, now);
            core::ptr::write_volatile(&raw mut (*e).fp, fingerprint(hash, slot));
        }
    }
}

/// Re-points an entry to `slot`: one store of its fingerprint.
#[inline(always)]
pub fn repoint(e: *mut FlowEntry, hash: u64, slot: u8, now: u32) {
    // SAFETY: e points into a map value (from `Table::find`).
    unsafe {
        core::ptr::write_volatile(&raw mut (*e).seen, now);
        core::ptr::write_volatile(&raw mut (*e).fp, fingerprint(hash, slot));
    }
}

/// Re-points an entry to `slot` for a new TCP connection with `tag`.
#[inline(always)]
pub fn repoint_tagged(e: *mut FlowEntry, hash: u64, slot: u8, tag: u16, now: u32) {
    // SAFETY: e points into a map value (from `Table::find`).
    unsafe { core::ptr::write_volatile(&raw mut (*e).tag, tag) };
    repoint(e, hash, slot, now);
}

/// An entry's TCP tag (0: none).
#[inline(always)]
pub fn tag(e: *mut FlowEntry) -> u16 {
    // SAFETY: e points into a map value (from `Table::find`).
    unsafe { core::ptr::read_volatile(&raw const (*e).tag) }
}

/// Refreshes an entry's `seen` (one aligned store; last writer wins).
#[inline(always)]
pub fn touch(e: *mut FlowEntry, now: u32) {
    // SAFETY: e points into a map value (from `Table::find`).
    unsafe {
        if (*e).seen != now {
            core::ptr::write_volatile(&raw mut (*e).seen, now);
        }
    }
}

/// Removes an entry.
#[inline(always)]
pub fn remove(e: *mut FlowEntry) {
    // SAFETY: e points into a map value (from `Table::find`).
    unsafe { core::ptr::write_volatile(&raw mut (*e).fp, 0) };
}
