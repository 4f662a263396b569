//! One daemon per data plane. A running daemon holds an exclusive `flock(2)`
//! on its bpffs directory, its state directory and a lock file beside its
//! control socket, for as long as it lives: the kernel releases the locks when
//! the process dies, however it dies, so a lock is never stale. A second
//! daemon on any of them is refused before it touches anything, and an
//! offline `redirector detach` is refused while a daemon holds the pins.
//!
//! The holder's pid comes from `/proc/locks` (the inode of the locked file).
use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Errors taking the instance lock.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "{} is in use by another redirector daemon{}: one daemon per pin directory, state directory and \
         control socket. Stop it first (or give this one its own [control] socket, state_dir and bpffs_dir)",
        path.display(),
        pid.map_or(String::new(), |p| format!(" (pid {p})"))
    )]
    Held {
        /// The locked directory or file.
        path: PathBuf,
        /// The holder, when `/proc/locks` tells.
        pid: Option<u32>,
    },
    /// Opening or locking failed.
    #[error("locking {}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
}

/// Held locks; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    held: Vec<File>,
}

/// The lock file that stands for a control socket (a socket file is
/// replaced on every start, so it cannot carry the lock itself).
pub fn socket_lock(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl InstanceLock {
    /// Locks every path in `dirs` (existing directories) and `files`
    /// (created, mode 0600, if missing), in order; all or none.
    pub fn acquire(dirs: &[&Path], files: &[&Path]) -> Result<InstanceLock, LockError> {
        let mut held = Vec::new();
        let open = |path: &Path, dir: bool| {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut o = std::fs::OpenOptions::new();
            if dir {
                o.read(true).custom_flags(libc::O_DIRECTORY);
            } else {
                o.read(true).write(true).create(true).truncate(false).mode(0o600);
            }
            o.open(path).map_err(|source| LockError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let paths = dirs
            .iter()
            .map(|p| (*p, true))
            .chain(files.iter().map(|p| (*p, false)));
        for (path, dir) in paths {
            let f = open(path, dir)?;
            // SAFETY: flock on an fd we own; no memory is involved.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    LockError::Held {
                        path: path.to_path_buf(),
                        pid: holder(&f),
                    }
                } else {
                    LockError::Io {
                        path: path.to_path_buf(),
                        source: err,
                    }
                });
            }
            held.push(f);
        }
        Ok(InstanceLock { held })
    }

    /// Holds `more` too, for as long as `self`.
    pub fn extend(&mut self, more: InstanceLock) {
        self.held.extend(more.held);
    }
}

/// The pid holding a `FLOCK` on `f`'s inode, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:16:5092 0 EOF`, device in hex).
fn holder(f: &File) -> Option<u32> {
    let meta = f.metadata().ok()?;
    let dev = meta.dev();
    let want = (libc::major(dev), libc::minor(dev), meta.ino());
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid: u32 = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let major = u32::from_str_radix(id.next()?, 16).ok()?;
        let minor = u32::from_str_radix(id.next()?, 16).ok()?;
        let ino: u64 = id.next()?.parse().ok()?;
        ((major, minor, ino) == want).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_goes() {
        let dir = std::env::temp_dir().join(format!("rdr-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("ctl.sock.lock");
        let first = InstanceLock::acquire(&[&dir], &[&file]).unwrap_or_else(|e| panic!("{e}"));
        // flock locks belong to open file descriptions: a second open in the
        // same process conflicts like another process would.
        match InstanceLock::acquire(&[&dir], &[]) {
            Err(LockError::Held { path, pid }) => {
                assert_eq!(path, dir);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(matches!(
            InstanceLock::acquire(&[], &[&file]),
            Err(LockError::Held { .. })
        ));
        drop(first);
        // Another test's fork may hold a copy of the fds until its exec
        // (they are close-on-exec): the lock is free again right after.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let again = loop {
            match InstanceLock::acquire(&[&dir], &[&file]) {
                Err(LockError::Held { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                other => break other,
            }
        };
        again.unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_socket_lock_sits_beside_the_socket() {
        assert_eq!(
            socket_lock(Path::new("/run/redirector/ctl.sock")),
            PathBuf::from("/run/redirector/ctl.sock.lock")
        );
    }
}
