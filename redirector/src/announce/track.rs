//! The track file (`[announce] track_file`): one integer that keepalived's
//! `track_file` reads, so a VRRP pair of gateways follows each gateway's
//! ability to forward.
//!
//! keepalived multiplies the value by the tracking `weight` and adds it to
//! the instance's priority; a product of -254 or less (or, with `weight 0`,
//! any value but 0) puts the instance in FAULT, giving the address up. So:
//! - `0`: every VIP can be served;
//! - `1..=253`: that many VIPs cannot (all their backends down): with a
//!   negative weight, a gateway that can serve fewer VIPs than its peer
//!   loses mastership, two equally able ones keep it where it is;
//! - [`FAULT`] (254): this gateway should not hold the address at all
//!   (an operator's `withdraw`, a detached data plane).
//!
//! A clean stop leaves the file as it is (the data plane keeps forwarding);
//! a dead daemon cannot change it, which is why the docs also track the
//! process. Writes go to a temporary file renamed over the old one: a
//! reader sees the old value or the new one, never a torn one.
use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

/// The value that puts a tracking instance in FAULT whatever its negative
/// weight (keepalived clamps the product at -254).
pub const FAULT: u32 = 254;
/// The most VIPs the file counts before [`FAULT`].
const MOST: u32 = FAULT - 1;

/// The value for `unservable` VIPs that cannot be served (or [`FAULT`]).
pub fn value(unservable: usize, fault: bool) -> u32 {
    if fault {
        FAULT
    } else {
        u32::try_from(unservable).unwrap_or(MOST).min(MOST)
    }
}

/// The file and what it last held.
#[derive(Debug)]
pub struct TrackFile {
    path: PathBuf,
    last: Option<u32>,
}

impl TrackFile {
    /// For `path`; reads what a previous run left there (`None`: no file or
    /// not a number).
    pub fn open(path: &Path) -> TrackFile {
        TrackFile {
            path: path.to_owned(),
            last: read(path),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file holds, as far as this process knows.
    pub fn last(&self) -> Option<u32> {
        self.last
    }

    /// Writes `value` unless the file holds it already. An error leaves
    /// `last` alone, so the next call tries again.
    pub fn set(&mut self, value: u32) -> io::Result<bool> {
        if self.last == Some(value) {
            return Ok(false);
        }
        write(&self.path, value)?;
        self.last = Some(value);
        Ok(true)
    }
}

/// The number in the file at `path`, if it holds one.
pub fn read(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes `value` to `path` atomically (temporary file, then rename), the
/// directory created if missing.
pub fn write(path: &Path, value: u32) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // No fsync: readers need atomicity (the rename), not durability (the
    // file lives in /run and is rewritten at the next start), and the
    // event loop writes it.
    std::fs::File::create(&tmp)?.write_all(format!("{value}\n").as_bytes())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_count_vips_and_fault_tops_them() {
        assert_eq!(value(0, false), 0);
        assert_eq!(value(3, false), 3);
        assert_eq!(value(10_000, false), 253);
        assert_eq!(value(0, true), FAULT);
    }

    #[test]
    fn set_writes_changes_only_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("redirector-track-{}", std::process::id()));
        let path = dir.join("sub").join("track");
        let mut t = TrackFile::open(&path);
        assert_eq!(t.last(), None);
        assert!(t.set(2).is_ok_and(|w| w));
        assert!(t.set(2).is_ok_and(|w| !w));
        assert_eq!(read(&path), Some(2));
        assert_eq!(TrackFile::open(&path).last(), Some(2));
        assert!(t.set(FAULT).is_ok());
        assert_eq!(read(&path), Some(FAULT));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
