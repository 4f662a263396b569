//! The flow tables seen from userspace: the arrays (`FLOWS`, `EMBRYOS`,
//! `DIRECT`) memory-mapped, so a sweep reads them at memory speed and clears an entry
//! with one aligned store, as the program does (`redirector_common::flow`).
use std::{collections::HashSet, os::fd::OwnedFd, ptr::NonNull, time::Duration};

use redirector_common::{
    FlowBucket, FlowEntry, FlowKey, FlowSettings,
    flow::{SEEN_SHIFT, bucket, key_hash, seen},
};

/// One table, mapped.
struct Mapped {
    base: NonNull<FlowBucket>,
    buckets: usize,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value; every
// access is a volatile read or an aligned word store (the program's rule).
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(fd: OwnedFd, buckets: u32) -> std::io::Result<Mapped> {
        let buckets = buckets as usize;
        let (base, len) = super::mmap::map_shared::<FlowBucket>(&fd, buckets * size_of::<FlowBucket>())?;
        Ok(Mapped {
            base,
            buckets,
            len,
            _fd: fd,
        })
    }

    fn entry(&self, b: usize, way: usize) -> *mut FlowEntry {
        debug_assert!(b < self.buckets && way < redirector_common::FLOW_WAYS);
        // SAFETY: b < buckets and way < FLOW_WAYS: inside the mapping.
        unsafe { (*self.base.as_ptr().add(b)).ways.as_mut_ptr().add(way) }
    }

    fn read(&self, b: usize, way: usize) -> FlowEntry {
        // SAFETY: inside the mapping (see `entry`); the program may be
        // writing it: a torn copy fails `FlowEntry::is` like in the kernel.
        unsafe { std::ptr::read_volatile(self.entry(b, way)) }
    }

    fn clear(&self, b: usize, way: usize) {
        // SAFETY: inside the mapping; one aligned 8-byte store, as the program's remove.
        unsafe { std::ptr::write_volatile(&raw mut (*self.entry(b, way)).fp, 0) };
    }

    /// Every entry, read consistently (the program writes `fp` last; an
    /// entry whose `fp` changed while it was read is skipped this time).
    fn entries(&self) -> impl Iterator<Item = (usize, usize, FlowEntry)> + '_ {
        (0..self.buckets).flat_map(move |b| {
            (0..redirector_common::FLOW_WAYS).filter_map(move |w| {
                let e = self.read(b, w);
                let fp = self.read(b, w).fp;
                (e.fp != 0 && e.fp == fp).then_some((b, w, e))
            })
        })
    }

    /// The entry of `key` and its backend slot.
    fn find(&self, key: &FlowKey, seed: u64) -> Option<(FlowEntry, u8)> {
        if self.buckets == 0 {
            return None;
        }
        let hash = key_hash(key, seed);
        let b = bucket(hash, u32::try_from(self.buckets).unwrap_or(u32::MAX)) as usize;
        (0..redirector_common::FLOW_WAYS).find_map(|w| {
            let e = self.read(b, w);
            e.slot_for(hash).map(|slot| (e, slot))
        })
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The flow tables (see [`super::Datapath::flow_table`]).
pub struct FlowTable {
    flows: Mapped,
    embryos: Mapped,
    direct: Mapped,
    seed: u64,
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Entries removed.
    pub removed: usize,
    /// Entries left.
    pub kept: usize,
    /// Services that still have entries.
    pub live: HashSet<u32>,
}

impl FlowTable {
    /// Maps `FLOWS`, `EMBRYOS`, `DIRECT` (duplicated fds the table owns).
    pub(super) fn new(fds: [OwnedFd; 3], settings: FlowSettings) -> std::io::Result<Self> {
        let [flows, embryos, direct] = fds;
        Ok(FlowTable {
            flows: Mapped::new(flows, settings.flow_buckets)?,
            embryos: Mapped::new(embryos, settings.embryo_buckets)?,
            direct: Mapped::new(direct, settings.direct_buckets)?,
            seed: settings.seed,
        })
    }

    /// Is there a direct flow from `client:port` to backend `index`
    /// (`service * 2 + slot`)?
    pub fn direct(&self, key: &FlowKey) -> bool {
        self.direct.find(key, self.seed).is_some()
    }

    /// The backend slot `FLOWS` pins `key` to.
    pub fn flow(&self, key: &FlowKey) -> Option<u8> {
        self.flows.find(key, self.seed).map(|(_, slot)| slot)
    }

    /// The backend slot of `key`'s SYN entry (a TCP handshake not completed yet).
    pub fn embryo(&self, key: &FlowKey) -> Option<u8> {
        self.embryos.find(key, self.seed).map(|(_, slot)| slot)
    }

    /// Entries in `FLOWS`.
    pub fn count(&self) -> usize {
        self.flows.entries().count()
    }

    /// Removes every entry of service `id` (every table).
    pub fn clear_service(&self, id: u32) {
        for t in [&self.flows, &self.embryos, &self.direct] {
            for (b, w, _) in t.entries().filter(|(_, _, e)| u32::from(e.service) == id) {
                t.clear(b, w);
            }
        }
    }

    /// Removes entries idle longer than their service's `idle[id]` (services
    /// beyond `idle` count as idle), in both tables: a SYN's entry counts as
    /// live too, since a handshake in flight must still find it. An entry
    /// the program refreshed or replaced since it was read is kept.
    pub fn sweep(&mut self, idle: &[Duration]) -> Swept {
        let now = seen(super::monotonic_ns());
        // In ticks. An entry is refreshed at most once per tick, so one tick of
        // slack keeps a flow seen within its idle time; zero sweeps everything.
        let stale = |e: &FlowEntry| {
            let idle = idle
                .get(usize::from(e.service))
                .copied()
                .unwrap_or(Duration::ZERO);
            let ticks = u64::try_from(idle.as_nanos() >> SEEN_SHIFT).unwrap_or(u64::MAX);
            idle.is_zero() || u64::from(now.wrapping_sub(e.seen)) > ticks.saturating_add(1)
        };
        let mut swept = Swept::default();
        // Direct flows age like the service's flows but pin nothing.
        let direct: Vec<_> = self.direct.entries().collect();
        for (b, w, e) in direct {
            if stale(&e) && self.direct.read(b, w) == e {
                self.direct.clear(b, w);
            }
        }
        // SYN entries first: a handshake's entry moves from `EMBRYOS` to `FLOWS`
        // (its ACK), so one that moves while the tables are read is seen in
        // one of them; one that moves back (a SYN from a reused client port
        // replaces a finished connection's entry) is seen by the last look.
        for t in [&self.embryos, &self.flows] {
            let all: Vec<_> = t.entries().collect();
            for (b, w, e) in all {
                // Re-read just before clearing: the program may have refreshed it.
                if stale(&e) && t.read(b, w) == e {
                    t.clear(b, w);
                    swept.removed += 1;
                } else {
                    swept.live.insert(u32::from(e.service));
                    swept.kept += 1;
                }
            }
        }
        for (_, _, e) in self.embryos.entries() {
            swept.live.insert(u32::from(e.service));
        }
        swept
    }
}
