//! Upgrades without a detach: a data plane pinned by an older redirector
//! (`<bpffs_dir>/v<M>`, M < this ABI version) is taken over instead of
//! refused, so flows, flow affinity, next-hop caches and counters survive
//! and traffic never meets an interface without a program.
//!
//! 1. [`plan`] (before anything is loaded): every old pin is compared with
//!    this build's map of that name. A map that matches is moved (a rename
//!    within bpffs) into this version's directory, where the load adopts it
//!    as on any restart; the old links move too, so the attach swaps this
//!    build's program into them (`bpf_link_update`: no gap). An array whose
//!    only change is a larger capacity (`COUNTERS` when a counter is added)
//!    stays behind and is copied into the fresh map after the load. Any
//!    other difference refuses the start before a single pin moved: the old
//!    data plane keeps forwarding, the message names the map.
//! 2. [`Migration::finish`] (after the load, before the attach): the grown
//!    arrays' entries are copied, then the old directory is removed.
use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::maps::MapData;
use log::info;
use redirector_common::{ABI_VERSION, names};

use super::{
    Sizes,
    pin::{Difference, PinDir, PinError, compare},
};

/// A takeover in progress.
#[derive(Debug)]
pub struct Migration {
    /// The old version's directory.
    from: PathBuf,
    /// Its version.
    version: u32,
    /// Arrays to copy into this version's larger ones: name and old capacity.
    grown: Vec<(&'static str, u32)>,
}

/// The older data plane under `pins`' root to take over, if any, with its
/// matching pins and links already moved into `pins`' directory.
///
/// Nothing is planned when no other version is pinned; a newer version, or
/// more than one, is refused as before (by the caller's check). A takeover
/// interrupted by a failed start is resumed: what was moved stays.
pub fn plan(pins: &PinDir, object: &[u8], sizes: Sizes) -> Result<Option<Migration>, PinError> {
    let others = pins.other_versions();
    let [from] = others.as_slice() else {
        return Ok(None);
    };
    let Some(version) = version_of(from).filter(|&v| v < ABI_VERSION) else {
        return Ok(None);
    };
    let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    let old = PinDir::at(pins.root(), from);
    // Every check first: a refusal moves nothing.
    let (mut moves, mut grown) = (Vec::new(), Vec::new());
    for name in names::PINNED {
        let path = old.map(name);
        if !path.exists() {
            continue;
        }
        let taken = pins.map(name).exists();
        match compare(&obj, name, &path, sizes)? {
            // Already taken over by an interrupted start: left to remove.
            None if taken => {}
            None => moves.push((path, pins.map(name))),
            Some(Difference::Grown { old }) => grown.push((name, old)),
            Some(Difference::Other(what)) => {
                return Err(PinError::Mismatch {
                    path,
                    what: format!(
                        "{what}; version {version}'s map cannot be carried over into version {ABI_VERSION}"
                    ),
                    root: pins.root().to_path_buf(),
                });
            }
        }
    }
    for entry in fs::read_dir(from).map_err(|source| PinError::Io {
        path: from.clone(),
        source,
    })? {
        let Ok(entry) = entry else { continue };
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with("link_") && !pins.dir().join(&file).exists() {
            moves.push((entry.path(), pins.dir().join(&file)));
        }
    }
    pins.prepare()?;
    for (src, dst) in &moves {
        fs::rename(src, dst).map_err(|source| PinError::Io {
            path: src.clone(),
            source,
        })?;
    }
    info!(
        "taking over the data plane of version {version} ({}): {} pins moved into {}, {} arrays to copy",
        from.display(),
        moves.len(),
        pins.dir().display(),
        grown.len()
    );
    Ok(Some(Migration {
        from: from.clone(),
        version,
        grown,
    }))
}

impl Migration {
    /// The old version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Copies the grown arrays' entries from the old pins into `dp`'s maps,
    /// then removes the old directory.
    pub fn finish(self, dp: &super::Datapath) -> Result<(), PinError> {
        let old = PinDir::at(&self.from, &self.from);
        for (name, entries) in &self.grown {
            let path = old.map(name);
            let open = |source| PinError::Open {
                path: path.clone(),
                source,
            };
            let src = MapData::from_pin(&path).map_err(open)?;
            let dst = dp.map_data(name).map_err(|e| PinError::Object(e.to_string()))?;
            let size = value_bytes(&src).map_err(open)?;
            copy_entries(&src, dst, *entries, size).map_err(|source| PinError::Io {
                path: path.clone(),
                source,
            })?;
        }
        for entry in fs::read_dir(&self.from).map_err(|source| PinError::Io {
            path: self.from.clone(),
            source,
        })? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            fs::remove_file(&path).map_err(|source| PinError::Io { path, source })?;
        }
        fs::remove_dir(&self.from).map_err(|source| PinError::Io {
            path: self.from.clone(),
            source,
        })
    }
}

/// `v<N>` → N.
fn version_of(dir: &Path) -> Option<u32> {
    dir.file_name()?.to_str()?.strip_prefix('v')?.parse().ok()
}

/// Bytes of one value as the syscalls see it (per-CPU arrays: one 8-byte
/// aligned copy per possible CPU).
fn value_bytes(map: &MapData) -> Result<usize, aya::maps::MapError> {
    let info = map.info()?;
    let size = info.value_size() as usize;
    let per_cpu = matches!(info.map_type()?, aya::maps::MapType::PerCpuArray);
    Ok(if per_cpu {
        let cpus = aya::util::nr_cpus().map_or(1, |n| n);
        size.next_multiple_of(8) * cpus
    } else {
        size
    })
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

fn elem(cmd: libc::c_long, map: &MapData, key: &mut u32, value: &mut [u8]) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: u32::try_from(map.fd().as_fd().as_raw_fd()).unwrap_or(u32::MAX),
        key: std::ptr::from_mut(key) as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: `attr` points at a key and a value buffer of the map's value
    // size (all CPUs' copies) that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Entries `0 .. entries` of array `src` into array `dst` (same value size).
fn copy_entries(src: &MapData, dst: &MapData, entries: u32, size: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; size];
    for mut key in 0..entries {
        elem(BPF_MAP_LOOKUP_ELEM, src, &mut key, &mut buf)?;
        elem(BPF_MAP_UPDATE_ELEM, dst, &mut key, &mut buf)?;
    }
    Ok(())
}
