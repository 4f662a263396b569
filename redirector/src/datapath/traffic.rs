//! Every backend's traffic counters in one system call: the per-CPU
//! `BACKEND_STATS` (packets) or `HANDSHAKES` (TCP SYNs and SYN-ACKs) array
//! read with `BPF_MAP_LOOKUP_BATCH`, for the daemon's silence watch, which
//! looks every millisecond. A lookup per backend (aya's way) would cost a
//! system call per backend per look.
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use redirector_common::{BackendStats, Handshakes};

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// What a backend was sent and answered with, summed over CPUs: packets,
/// or TCP SYNs and SYN-ACKs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Client → backend packets (SYNs).
    pub fwd: u64,
    /// Backend → client packets (SYN-ACKs).
    pub rev: u64,
}

/// Reads the first entries of `BACKEND_STATS` or `HANDSHAKES` at once.
#[derive(Debug)]
pub struct TrafficReader {
    fd: OwnedFd,
    cpus: usize,
    /// 8-byte words per value, and the words holding `fwd` and `rev`.
    words: usize,
    fwd_word: usize,
    rev_word: usize,
    keys: Vec<u32>,
    values: Vec<u64>,
    out: Vec<Traffic>,
}

impl TrafficReader {
    /// A reader of the map `fd` (a duplicate of `HANDSHAKES` when
    /// `handshakes`, else of `BACKEND_STATS`).
    pub(super) fn new(fd: OwnedFd, handshakes: bool) -> std::io::Result<TrafficReader> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        // Field order of the two `#[repr(C)]` structs, all u64.
        let (size, fwd_word, rev_word) = if handshakes {
            (size_of::<Handshakes>(), 0, 1)
        } else {
            (size_of::<BackendStats>(), 0, 2)
        };
        Ok(TrafficReader {
            fd,
            cpus,
            words: size / 8,
            fwd_word,
            rev_word,
            keys: Vec::new(),
            values: Vec::new(),
            out: Vec::new(),
        })
    }

    /// The counters of backends `0 .. entries` (`BACKENDS` indexes).
    pub fn read(&mut self, entries: u32) -> std::io::Result<&[Traffic]> {
        let n = entries as usize;
        self.keys.resize(n, 0);
        // A per-CPU value is one 8-byte-aligned copy per possible CPU
        // (both structs are whole u64s: no padding between them).
        self.values.resize(n * self.cpus * self.words, 0);
        let mut next = 0u32;
        let mut attr = BatchAttr {
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: self.keys.as_mut_ptr() as u64,
            values: self.values.as_mut_ptr() as u64,
            count: entries,
            map_fd: u32::try_from(self.fd.as_fd().as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `entries` keys and
        // `entries × cpus` values that outlive the call; the kernel writes at
        // most `count` elements and one key to `out_batch`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        // ENOENT: the end of the map was reached; `count` says how far.
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        let got = (attr.count as usize).min(n);
        self.out.clear();
        self.out.resize(n, Traffic::default());
        for (i, key) in self.keys.iter().take(got).enumerate() {
            let Some(slot) = self.out.get_mut(*key as usize) else {
                continue;
            };
            for cpu in self
                .values
                .chunks_exact(self.words)
                .skip(i * self.cpus)
                .take(self.cpus)
            {
                slot.fwd += cpu.get(self.fwd_word).copied().unwrap_or(0);
                slot.rev += cpu.get(self.rev_word).copied().unwrap_or(0);
            }
        }
        Ok(&self.out)
    }
}
