//! The data plane in bpffs, so it outlives the daemon: every state map and
//! the XDP link of each interface are pinned under one versioned directory,
//! `<bpffs_dir>/v<ABI_VERSION>/`. A restarted daemon opens the same maps and
//! swaps its program into the pinned links (an atomic `bpf_link_update`: no
//! packet meets an empty interface).
//!
//! aya reuses a pinned map by name without checking it, so before a load
//! every existing pin is compared with what this build and configuration ask
//! for (type, key and value size, capacity); a mismatch is refused with the
//! procedure, never silently reused. A directory of another ABI version is
//! never opened.
use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::MapData;
use redirector_common::{ABI_VERSION, names};
use thiserror::Error;

use super::Sizes;

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted when it is missing.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Errors about pins.
#[derive(Debug, Error)]
pub enum PinError {
    /// A filesystem operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// `bpffs_dir` is not on a bpf filesystem and mounting one failed.
    #[error(
        "{}: not on a bpf filesystem and mounting bpffs on {BPFFS_MOUNT} failed ({source}); mounting needs \
         CAP_SYS_ADMIN: run `mount -t bpf bpf {BPFFS_MOUNT}` once, or set [control] bpffs_dir to a directory \
         on a mounted bpffs", path.display()
    )]
    NoBpffs {
        /// The configured directory.
        path: PathBuf,
        /// Why mounting failed.
        #[source]
        source: std::io::Error,
    },
    /// A pinned map does not match what this version and configuration need.
    #[error(
        "pinned map {}: {what}. It belongs to a data plane with another layout or size; it is never reused \
         silently. To start afresh (drops flow affinity and next-hop caches, traffic pauses until the new \
         program is attached): `redirector detach --bpffs-dir {}`, then start again; or restore the previous \
         value of the setting", path.display(), root.display()
    )]
    Mismatch {
        /// The pin.
        path: PathBuf,
        /// What differs.
        what: String,
        /// The configured bpffs directory.
        root: PathBuf,
    },
    /// The pinned map could not be opened or inspected.
    #[error("pinned map {}: {source}", path.display())]
    Open {
        /// The pin.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The embedded object does not parse (a build problem).
    #[error("parsing the embedded XDP object: {0}")]
    Object(String),
}

/// The versioned pin directory of one data plane.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn statfs_type(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string, st a valid, writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type)
}

/// The deepest existing ancestor of `path` (itself included).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"))
}

impl PinDir {
    /// `<bpffs_dir>/v<ABI_VERSION>` (nothing is created yet).
    pub fn new(bpffs_dir: &Path) -> PinDir {
        PinDir {
            root: bpffs_dir.to_path_buf(),
            dir: bpffs_dir.join(format!("v{ABI_VERSION}")),
        }
    }

    /// The pins of another version's directory `dir` under `root`.
    pub(super) fn at(root: &Path, dir: &Path) -> PinDir {
        PinDir {
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
        }
    }

    /// The configured bpffs directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The versioned directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes sure the directory is on a bpffs (mounting bpffs on
    /// `/sys/fs/bpf` if nothing is mounted there: needs CAP_SYS_ADMIN) and exists.
    pub fn prepare(&self) -> Result<(), PinError> {
        let on_bpffs = |p: &Path| statfs_type(existing_ancestor(p)).is_ok_and(|t| t == BPF_FS_MAGIC);
        if !on_bpffs(&self.root) {
            let target = Path::new(BPFFS_MOUNT);
            let mounted = mount_bpffs(target);
            if let Err(source) = mounted.and_then(|()| {
                if on_bpffs(&self.root) {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!(
                        "{} is not below {BPFFS_MOUNT}",
                        self.root.display()
                    )))
                }
            }) {
                return Err(PinError::NoBpffs {
                    path: self.root.clone(),
                    source,
                });
            }
            log::info!("mounted bpffs on {BPFFS_MOUNT}");
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))
    }

    /// Pin path of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Pin path of the XDP link on interface `ifname`.
    pub fn link(&self, ifname: &str) -> PathBuf {
        self.dir.join(format!("link_{ifname}"))
    }

    /// Does a data plane live here (its switch states are pinned)?
    pub fn exists(&self) -> bool {
        self.map(names::SWITCH).exists()
    }

    /// Is anything pinned here (a data plane, or what is left of one)? A
    /// start then adopts: it checks every pin and, if refused, removes none.
    pub fn anything(&self) -> bool {
        fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some())
    }

    /// Directories of other ABI versions under the root (an older or newer
    /// redirector's data plane).
    pub fn other_versions(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p != &self.dir
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('v') && n[1..].parse::<u32>().is_ok())
            })
            .collect()
    }

    /// Compares every existing map pin with what `object` declares and
    /// `sizes` asks for; nothing is reused unless all match.
    pub fn check(&self, object: &[u8], sizes: Sizes) -> Result<(), PinError> {
        let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
        for name in names::PINNED {
            let path = self.map(name);
            if !path.exists() {
                continue;
            }
            if let Some(what) = compare(&obj, name, &path, sizes)? {
                return Err(PinError::Mismatch {
                    path,
                    what: what.to_string(),
                    root: self.root.clone(),
                });
            }
        }
        Ok(())
    }

    /// Removes every pin this version created and the directory (links
    /// unpinned here detach once no process holds them).
    pub fn remove(&self) -> Result<(), PinError> {
        if !self.dir.exists() {
            return Ok(());
        }
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            fs::remove_file(&path).map_err(io(&path))?;
        }
        fs::remove_dir(&self.dir).map_err(io(&self.dir))?;
        // The root too, when nothing else lives there.
        let _ = fs::remove_dir(&self.root);
        Ok(())
    }
}

fn mount_bpffs(target: &Path) -> std::io::Result<()> {
    fs::create_dir_all(target)?;
    let t = CString::new(target.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let src = c"bpf";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), t.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How a pinned map differs from what this build declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Difference {
    /// An array whose capacity grew, all else equal: its entries carry over.
    Grown {
        /// Its capacity.
        old: u32,
    },
    /// Anything else: never reused.
    Other(String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Grown { old } => write!(f, "capacity {old}, smaller than this version's"),
            Difference::Other(what) => f.write_str(what),
        }
    }
}

/// How the map pinned at `path` differs from `name` in `obj` under `sizes`
/// (type, key and value size, flags, capacity); `None` when it matches.
pub(super) fn compare(
    obj: &aya_obj::Object,
    name: &str,
    path: &Path,
    sizes: Sizes,
) -> Result<Option<Difference>, PinError> {
    let Some(def) = obj.maps.get(name) else {
        return Err(PinError::Object(format!("no map {name}")));
    };
    let max = super::max_entries(name, sizes).unwrap_or_else(|| def.max_entries());
    let open = |source| PinError::Open {
        path: path.to_path_buf(),
        source,
    };
    let pinned = MapData::from_pin(path).map_err(open)?;
    let info = pinned.info().map_err(open)?;
    let kind = info.map_type().map_err(open)? as u32;
    if kind != def.map_type() {
        return Ok(Some(Difference::Other(format!(
            "map type {kind}, expected {}",
            def.map_type()
        ))));
    }
    if info.key_size() != def.key_size() {
        return Ok(Some(Difference::Other(format!(
            "{}-byte keys, expected {}",
            info.key_size(),
            def.key_size()
        ))));
    }
    // Device maps' value size is set by the loader, not the object.
    let devmap = matches!(
        kind,
        k if k == aya::maps::MapType::DevMap as u32 || k == aya::maps::MapType::DevMapHash as u32
    );
    if !devmap && info.value_size() != def.value_size() {
        return Ok(Some(Difference::Other(format!(
            "{}-byte values, expected {}",
            info.value_size(),
            def.value_size()
        ))));
    }
    // The kernel marks device maps read-only for programs itself.
    const BPF_F_RDONLY_PROG: u32 = 1 << 7;
    let kernel_flags = if devmap { BPF_F_RDONLY_PROG } else { 0 };
    if info.map_flags() & !kernel_flags != def.map_flags() {
        return Ok(Some(Difference::Other(format!(
            "map flags {:#x}, expected {:#x}",
            info.map_flags(),
            def.map_flags()
        ))));
    }
    if info.max_entries() != max {
        let array =
            kind == aya::maps::MapType::Array as u32 || kind == aya::maps::MapType::PerCpuArray as u32;
        if array && info.max_entries() < max && super::max_entries(name, sizes).is_none() {
            return Ok(Some(Difference::Grown {
                old: info.max_entries(),
            }));
        }
        return Ok(Some(Difference::Other(format!(
            "capacity {}, but this configuration asks for {max} (max_services / flow_table_size changed?)",
            info.max_entries()
        ))));
    }
    Ok(None)
}
