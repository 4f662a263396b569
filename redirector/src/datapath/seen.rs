//! The silence watch's flags (`SEEN`) seen from userspace: the array
//! memory-mapped, so a look at every backend is a few thousand atomic swaps
//! in memory, with no system call, whatever the number of services.
use std::{
    os::fd::OwnedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use redirector_common::Seen;

/// `SEEN`, mapped.
#[derive(Debug)]
pub struct SeenMap {
    base: NonNull<Seen>,
    entries: usize,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: plain shared memory owned by this value; every access is an
// atomic swap of an aligned u32.
unsafe impl Send for SeenMap {}

impl SeenMap {
    /// Maps the array `fd` of `entries` values.
    pub(super) fn new(fd: OwnedFd, entries: u32) -> std::io::Result<SeenMap> {
        let entries = entries as usize;
        let (base, len) = super::mmap::map_shared::<Seen>(&fd, entries * size_of::<Seen>())?;
        Ok(SeenMap {
            base,
            entries,
            len,
            _fd: fd,
        })
    }

    /// Backend `index`'s flags since the last call — (asked, answered) —
    /// cleared at once, so a request or answer is never lost between the
    /// read and the clear. `None` outside the array.
    pub fn take(&self, index: u32) -> Option<(bool, bool)> {
        let i = index as usize;
        if i >= self.entries {
            return None;
        }
        // SAFETY: i < entries: inside the mapping; `Seen` is two aligned
        // u32s, which the program stores to and this swaps atomically.
        let (asked, answered) = unsafe {
            let s = self.base.as_ptr().add(i);
            (
                AtomicU32::from_ptr(&raw mut (*s).asked),
                AtomicU32::from_ptr(&raw mut (*s).answered),
            )
        };
        // A load first: an idle backend's line is never written.
        let take =
            |flag: &AtomicU32| flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::AcqRel) != 0;
        Some((take(asked), take(answered)))
    }
}

impl SeenMap {
    /// Raises both flags of backend `index`, as traffic would (benchmarks
    /// and tests of the watch).
    pub fn raise(&self, index: u32) {
        if (index as usize) < self.entries {
            // SAFETY: inside the mapping, as in `take`.
            unsafe {
                let s = self.base.as_ptr().add(index as usize);
                AtomicU32::from_ptr(&raw mut (*s).asked).store(1, Ordering::Relaxed);
                AtomicU32::from_ptr(&raw mut (*s).answered).store(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for SeenMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
