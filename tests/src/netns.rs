//! Private network namespaces for tests, removed on drop even when a test panics.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output on failure.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v);
}

/// A network namespace named `rdr-<tag>-<pid>-<n>`; deleted on drop.
pub struct NetNs {
    /// Its name (for `ip netns exec`).
    pub name: String,
}

impl NetNs {
    /// Creates a fresh namespace with `lo` up.
    pub fn new(tag: &str) -> NetNs {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("rdr-{tag}-{}-{n}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        in_ns(&ns.name, &["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Creates the namespace `name` exactly (a fixed lab's), with `lo` up.
    pub fn named(name: &str) -> NetNs {
        sh(&["ip", "netns", "add", name]);
        let ns = NetNs {
            name: name.to_owned(),
        };
        in_ns(&ns.name, &["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Keeps the namespace when this value goes (a lab meant to outlive the process).
    pub fn keep(self) {
        std::mem::forget(self);
    }

    /// Adds veth pairs `(a, b)` inside this namespace, both ends up.
    pub fn add_veths(&self, pairs: &[(&str, &str)]) {
        for (a, b) in pairs {
            in_ns(
                &self.name,
                &["ip", "link", "add", a, "type", "veth", "peer", "name", b],
            );
            in_ns(&self.name, &["ip", "link", "set", a, "up"]);
            in_ns(&self.name, &["ip", "link", "set", b, "up"]);
        }
    }

    /// Switches the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Entered {
        enter(&self.name)
    }
}

/// Switches the calling thread into the namespace `name` (owned elsewhere)
/// until the guard drops.
pub fn enter(name: &str) -> Entered {
    let orig = File::open("/proc/thread-self/ns/net").unwrap();
    let target = File::open(format!("/var/run/netns/{name}")).unwrap();
    // SAFETY: valid namespace fds; only this thread's namespace changes.
    let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into {name}: {}", std::io::Error::last_os_error());
    Entered { orig }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Kill anything we started in it, then remove it.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) of a process inside our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Returns the thread to its original namespace on drop.
pub struct Entered {
    orig: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: orig is the namespace fd this thread came from.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// ifindex of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}
